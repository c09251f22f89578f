//! turmoil's simulated TCP under tonic: the peer channels connect through it, the peer service accepts from it.
//!
//! turmoil's TCP has no retransmission: a segment dropped by a partition or by random loss leaves a gap that the
//! receiver waits on forever, so the connection hangs instead of recovering after the fault heals, where a real
//! one would retransmit. The channels therefore ping every 250 ms and give up on a connection after 250 ms
//! without an answer (HTTP/2 keep-alive), and tonic reconnects: a healed link carries traffic again within about
//! half a second, as a real one would within a retransmission timeout or two.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use trestle_raft::PeerChannels;

/// How often an idle or busy peer connection is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// Peer channels whose connections are turmoil TCP streams to the host and port of the peer URL.
pub(super) fn peer_channels() -> PeerChannels {
    PeerChannels::with_connect(|endpoint: Endpoint| -> Channel {
        endpoint
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(tower::service_fn(|uri: http::Uri| async move {
                let host = uri
                    .host()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?
                    .to_owned();
                let port = uri.port_u16().unwrap_or(80);
                let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }))
    })
}

/// An accepted turmoil connection, as tonic's server wants it.
#[derive(Debug)]
pub(super) struct SimConn(turmoil::net::TcpStream);

impl Connected for SimConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.peer_addr().ok()
    }
}

impl AsyncRead for SimConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The connections a turmoil listener accepts, as a stream for `serve_with_incoming`.
pub(super) fn incoming(listener: turmoil::net::TcpListener) -> impl Stream<Item = io::Result<SimConn>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((next, listener))
    })
}

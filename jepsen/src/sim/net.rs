//! turmoil's simulated TCP under tonic: the node's listeners accept from it and its peer channels connect
//! through it (trestle-raft's `NodeNetwork::Custom`).
//!
//! turmoil's TCP has no retransmission: a segment dropped by a partition or by random loss leaves a gap that the
//! receiver waits on forever, so the connection hangs instead of recovering after the fault heals, where a real
//! one would retransmit. The channels therefore ping every 250 ms and give up on a connection after 250 ms
//! without an answer (HTTP/2 keep-alive), and tonic reconnects: a healed link carries traffic again within about
//! half a second, as a real one would within a retransmission timeout or two.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use trestle_raft::{Accepted, ConnectFn, ListenFn};

/// How often an idle or busy peer connection is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// Connections to peers: turmoil TCP streams to the host and port of the peer URL.
pub(super) fn connect() -> ConnectFn {
    Arc::new(|endpoint: Endpoint| -> Channel {
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

/// Listeners on turmoil's TCP for the node's peer and client ports.
pub(super) fn listen() -> ListenFn {
    Arc::new(|addr: SocketAddr| {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let next = listener.accept().await.map(|(stream, _)| Accepted::new(stream));
                Some((next, listener))
            });
            Ok((bound, incoming.boxed()))
        })
    })
}

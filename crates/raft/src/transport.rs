//! How a node reaches the network: plain TCP (the default), or listeners and connections the application supplies
//! ([`NodeNetwork::Custom`]) — the seam through which a simulation runs [`Node::start`](crate::Node::start) over a
//! simulated network.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::network::ConnectFn;

/// A connection a custom listener accepted: any byte stream.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// One accepted connection, as the node's gRPC servers take it.
pub struct Accepted(Box<dyn Connection>);

impl Accepted {
    /// Wraps an accepted connection.
    pub fn new(connection: impl Connection) -> Self {
        Self(Box::new(connection))
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accepted")
    }
}

impl Connected for Accepted {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Accepted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

/// The connections a custom listener accepts.
pub type Incoming = BoxStream<'static, io::Result<Accepted>>;

/// Binds a custom listener on an address and returns the address bound and the connections it accepts.
pub type ListenFn =
    Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, io::Result<(SocketAddr, Incoming)>> + Send + Sync>;

/// How a node listens and connects to its peers.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NodeNetwork {
    /// TCP sockets (with TLS when configured). The default.
    #[default]
    Tcp,
    /// The application's listeners for the peer and client ports, and its connections to peers (see
    /// [`PeerChannels::with_connect`](crate::PeerChannels::with_connect)). No TLS and no `/health` or `/metrics`
    /// listener: those need TCP.
    Custom {
        /// Binds the peer and client ports.
        listen: ListenFn,
        /// Connects to a peer.
        connect: ConnectFn,
    },
}

impl std::fmt::Debug for NodeNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("Tcp"),
            Self::Custom { .. } => f.write_str("Custom"),
        }
    }
}

/// A bound port: a TCP listener, or a custom one's connections.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Custom(Incoming),
}

impl Listener {
    /// Serves `routes` on this listener with `server` until `shutdown` is cancelled.
    pub(crate) async fn serve(
        self,
        mut server: tonic::transport::Server,
        routes: tonic::service::Routes,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let router = server.add_routes(routes);
        match self {
            Self::Tcp(listener) => {
                // The builder's `tcp_nodelay` applies only to sockets tonic accepts itself; set it on ours, or
                // Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
            Self::Custom(incoming) => {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
        }
    }
}

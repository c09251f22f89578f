//! The way from the runner's cache clients to one cache node, and where the cache workload's partitions happen.
//!
//! Cache nodes have no peers, so cutting links between node namespaces (what partitions do to `trestle serve`)
//! changes nothing for them: the faults that matter are between a client and a node. Each cache node gets a
//! [`Gate`]: a listener on `127.0.0.1` in the runner's namespace that forwards every connection to the node (the
//! onward socket made inside the node's namespace in netns mode). While the gate is **cut**, bytes in either
//! direction are held and new connections wait; when the cut heals, the connections that held bytes and those
//! that waited are closed, so what was in flight is lost, as when a partition outlasts TCP's retransmissions.
//! Connections that carried nothing during the cut go on. A client sees requests time out during the cut, then
//! closed connections.
//!
//! A killed node refuses the onward connection, so the gate closes the client's at once; a paused (SIGSTOPped)
//! node accepts and answers nothing until it resumes, then executes what it was sent, late.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::workload::BoxFuture;

/// Opens a connection to the node (from inside its namespace, in netns mode).
pub(crate) type Connect = Arc<dyn Fn() -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync>;

/// A forwarder in front of one cache node that can cut the clients off from it.
pub(crate) struct Gate {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Gate {
    /// Listens on `127.0.0.1` (a free port) and forwards every connection through `connect`.
    pub(crate) async fn spawn(connect: Connect) -> io::Result<Gate> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let state = cut.subscribe();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(forward(inbound, Arc::clone(&connect), state.clone()));
            }
        });
        Ok(Gate { addr, cut, accept })
    }

    /// Where clients dial the node.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the clients off from the node (`true`) or heals the cut (`false`).
    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Whether the gate is cut now.
    pub(crate) fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Connections in flight end with the node (killed at teardown); held ones end when `cut` is dropped.
        self.accept.abort();
    }
}

/// Waits until the cut heals (or the gate is gone).
async fn healed(state: &mut watch::Receiver<bool>) {
    let _ = state.wait_for(|cut| !*cut).await;
}

async fn forward(inbound: TcpStream, connect: Connect, mut state: watch::Receiver<bool>) {
    if *state.borrow_and_update() {
        // Opened during a cut: it waits, and is closed when the cut heals.
        healed(&mut state).await;
        return;
    }
    let Ok(outbound) = connect().await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (client_read, client_write) = inbound.into_split();
    let (node_read, node_write) = outbound.into_split();
    // Either direction ending (a close, or bytes held through a cut) closes the whole connection.
    tokio::select! {
        () = pump(client_read, node_write, state.clone()) => {}
        () = pump(node_read, client_write, state) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *state.borrow_and_update() {
            // Held until the cut heals, then lost with the connection.
            healed(&mut state).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server and a gate in front of it.
    async fn echo_gate() -> Gate {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Gate::spawn(Arc::new(move || Box::pin(TcpStream::connect(target))))
            .await
            .expect("gate")
    }

    async fn round_trip(s: &mut TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(bytes).await?;
        let mut got = vec![0u8; bytes.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_and_a_cut_holds_bytes_then_closes_the_connection() {
        let gate = echo_gate().await;
        let mut s = TcpStream::connect(gate.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"ping").await.unwrap(), b"ping");

        gate.set_cut(true);
        assert!(gate.is_cut());
        s.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        // Nothing comes back while the cut lasts.
        let held = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        assert!(held.is_err(), "bytes crossed a cut gate: {held:?}");

        gate.set_cut(false);
        // The connection that held bytes is closed on heal: end of stream or a reset, never the echo.
        let after = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(after, Ok(Ok(0)) | Ok(Err(_))), "{after:?}");
        // New connections work again.
        let mut s = TcpStream::connect(gate.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"pong").await.unwrap(), b"pong");
    }

    #[tokio::test]
    async fn a_connection_opened_during_a_cut_waits_and_is_closed_on_heal() {
        let gate = echo_gate().await;
        gate.set_cut(true);
        let mut s = TcpStream::connect(gate.addr()).await.unwrap();
        s.write_all(b"lost").await.unwrap();
        let mut buf = [0u8; 4];
        let held = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        assert!(held.is_err(), "{held:?}");
        gate.set_cut(false);
        let after = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(after, Ok(Ok(0)) | Ok(Err(_))), "{after:?}");
    }
}

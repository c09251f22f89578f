//! The per-link fault proxy: a small TCP proxy in front of every node's peer (Raft) port.
//!
//! Each node advertises the proxy's address as its peer URL, so every Raft connection from node `i` to node `j`
//! passes through node `j`'s proxy. The proxy learns `i` from the connection ([`Identify`]: the source address in
//! root mode, the owning process in loopback mode) and applies the faults of the link `{i, j}` (faults are
//! symmetric) to every chunk of bytes, in both directions:
//!
//! - **blackhole**: bytes are held, not forwarded, until the fault is lifted; then they flow again in order, as TCP
//!   retransmission would deliver them after a partition heals (gRPC keepalives usually give up first);
//! - **delay** (+ jitter): each chunk is forwarded no earlier than its arrival plus the delay; order is kept, as
//!   TCP keeps it. Reordering is therefore not possible inside one connection;
//! - **loss**: with this probability per chunk the connection is cut (both directions closed), which is what a
//!   lossy link does to a TCP stream once retransmissions give up.
//!
//! The kernel has no netem qdisc here, so this is how delay and loss are made; in loopback mode it also makes
//! partitions. Counters prove that faults touched real traffic.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The faults on one link (both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LinkFault {
    /// Hold every byte until lifted.
    pub blackhole: bool,
    /// Added to every chunk's delivery time.
    pub delay: Duration,
    /// A uniformly random extra delay in `0..jitter` (order is kept).
    pub jitter: Duration,
    /// Probability, per chunk, of cutting the connection.
    pub loss: f64,
}

impl LinkFault {
    /// No fault.
    pub fn is_clear(&self) -> bool {
        *self == LinkFault::default()
    }
}

/// The faults of every link, keyed by the pair `(min, max)` of node indices.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultTable {
    links: HashMap<(usize, usize), LinkFault>,
}

impl FaultTable {
    pub(crate) fn get(&self, a: usize, b: usize) -> LinkFault {
        self.links.get(&(a.min(b), a.max(b))).copied().unwrap_or_default()
    }

    pub(crate) fn set(&mut self, a: usize, b: usize, fault: LinkFault) {
        let key = (a.min(b), a.max(b));
        if fault.is_clear() {
            self.links.remove(&key);
        } else {
            self.links.insert(key, fault);
        }
    }

    pub(crate) fn update(&mut self, a: usize, b: usize, change: impl FnOnce(&mut LinkFault)) {
        let mut f = self.get(a, b);
        change(&mut f);
        self.set(a, b, f);
    }
}

/// What the proxies did, summed over all of them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections accepted.
    pub(crate) connections: AtomicU64,
    /// Connections whose source node could not be told (closed at once).
    pub(crate) unidentified: AtomicU64,
    /// Chunks held by a blackhole.
    pub(crate) held: AtomicU64,
    /// Chunks delayed.
    pub(crate) delayed: AtomicU64,
    /// Connections cut by loss.
    pub(crate) cut: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> [u64; 5] {
        [
            self.connections.load(Ordering::Relaxed),
            self.unidentified.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
        ]
    }
}

/// Tells which node opened a connection: `(peer address, local address)` to a node index. May block (it may read
/// `/proc`); it runs on the blocking pool.
pub(crate) type Identify = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<usize> + Send + Sync>;

/// A boxed future, for the connector.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Opens the upstream connection to the real node.
pub(crate) type Connect = Arc<dyn Fn() -> BoxFuture<io::Result<TcpStream>> + Send + Sync>;

/// Everything one proxy needs.
pub(crate) struct Proxy {
    pub(crate) dst: usize,
    pub(crate) identify: Identify,
    pub(crate) connect: Connect,
    pub(crate) faults: watch::Receiver<Arc<FaultTable>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) seed: u64,
}

impl Proxy {
    /// Serves `listener` until the task is aborted.
    pub(crate) fn spawn(self, listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move {
            let shared = Arc::new(self);
            let mut conn_no: u64 = 0;
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                conn_no += 1;
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.serve(stream, peer, conn_no).await });
            }
        })
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, conn_no: u64) {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(local) = stream.local_addr() else { return };
        let identify = Arc::clone(&self.identify);
        let src = tokio::task::spawn_blocking(move || identify(peer, local))
            .await
            .ok()
            .flatten();
        let Some(src) = src else {
            self.counters.unidentified.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(upstream) = (self.connect)().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (a_read, a_write) = stream.into_split();
        let (b_read, b_write) = upstream.into_split();
        let seed = self.seed ^ conn_no.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let link = (src, self.dst);
        tokio::select! {
            () = pump(a_read, b_write, link, self.faults.clone(), Arc::clone(&self.counters), seed) => {}
            () = pump(b_read, a_write, link, self.faults.clone(), Arc::clone(&self.counters), seed ^ 1) => {}
        }
    }
}

/// Copies one direction, applying the link's faults. Returns when the source closes or the link cuts it; the
/// caller then drops both directions.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: (usize, usize),
    mut faults: watch::Receiver<Arc<FaultTable>>,
    counters: Arc<Counters>,
    seed: u64,
) {
    let (queue, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let mut fault = faults.borrow().get(link.0, link.1);
            if fault.blackhole {
                counters.held.fetch_add(1, Ordering::Relaxed);
                if faults
                    .wait_for(|t| !t.get(link.0, link.1).blackhole)
                    .await
                    .is_err()
                {
                    return true;
                }
                fault = faults.borrow().get(link.0, link.1);
            }
            if fault.loss > 0.0 && rng.random::<f64>() < fault.loss {
                counters.cut.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let mut at = Instant::now();
            if !fault.delay.is_zero() || !fault.jitter.is_zero() {
                counters.delayed.fetch_add(1, Ordering::Relaxed);
                let jitter = if fault.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    fault.jitter.mul_f64(rng.random::<f64>())
                };
                at += fault.delay + jitter;
            }
            at = at.max(last);
            last = at;
            if queue.send((at, buf[..n].to_vec())).is_err() {
                return true;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = pending.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // A cut stops the whole connection (the caller drops both halves); an end of stream first delivers what is
    // queued (the reader's end drops the queue's sender, so the writer drains it and stops).
    tokio::pin!(writer);
    tokio::select! {
        cut = reader => if !cut { writer.await },
        () = &mut writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_symmetric_and_clearing_removes_them() {
        let mut t = FaultTable::default();
        t.update(2, 0, |f| f.blackhole = true);
        assert!(t.get(0, 2).blackhole);
        assert!(!t.get(0, 1).blackhole);
        t.update(0, 2, |f| f.blackhole = false);
        assert!(t.links.is_empty());
    }

    #[tokio::test]
    async fn proxy_forwards_holds_and_releases() {
        let upstream = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let up_addr = upstream.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let (tx, rx) = watch::channel(Arc::new(FaultTable::default()));
        let counters = Arc::new(Counters::default());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = Proxy {
            dst: 1,
            identify: Arc::new(|_, _| Some(0)),
            connect: Arc::new(move || Box::pin(TcpStream::connect(up_addr))),
            faults: rx,
            counters: Arc::clone(&counters),
            seed: 1,
        }
        .spawn(listener);
        let mut c = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await.unwrap_or_else(|e| panic!("{e}"));
        c.read_exact(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf, b"hello");

        let mut table = FaultTable::default();
        table.update(0, 1, |f| f.blackhole = true);
        tx.send_replace(Arc::new(table));
        c.write_all(b"world").await.unwrap_or_else(|e| panic!("{e}"));
        let held = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "bytes crossed a blackholed link");
        tx.send_replace(Arc::new(FaultTable::default()));
        c.read_exact(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf, b"world");
        assert!(counters.held.load(Ordering::Relaxed) >= 1);
        task.abort();
    }
}

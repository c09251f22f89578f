//! Helpers shared by the network tests: a raw protocol connection and waiting with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port free at the time of the call (for a server process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A raw connection that sends bytes and reads replies up to a terminator.
pub struct Raw {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends `request` followed by `mn\r\n`, and returns everything answered before the `MN\r\n` that ends it.
    pub async fn exchange(&mut self, request: &[u8]) -> String {
        self.stream.write_all(request).await.expect("write");
        self.stream.write_all(b"mn\r\n").await.expect("write");
        // The request's own `mn`s are answered too: wait for all of them and ours.
        let text = String::from_utf8_lossy(request);
        let noops = text.split("\r\n").filter(|line| *line == "mn").count() + 1;
        let mut reply = Vec::new();
        for _ in 0..noops {
            reply.extend(self.read_until(b"MN\r\n").await);
        }
        String::from_utf8_lossy(&reply[..reply.len() - 4]).into_owned()
    }

    /// Reads until the replies end with `end` (5 s deadline).
    pub async fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = self.pending.windows(end.len()).position(|w| w == end) {
                let rest = self.pending.split_off(at + end.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            let mut buf = [0u8; 65536];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {:?} within 5 s; got {:?}",
                        String::from_utf8_lossy(end),
                        String::from_utf8_lossy(&self.pending)
                    )
                })
                .expect("read");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads until the peer closes; returns what it sent.
    pub async fn read_to_close(&mut self) -> String {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_to_end(&mut rest))
            .await
            .expect("closed within 5 s")
            .expect("read");
        self.pending.extend_from_slice(&rest);
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// Polls `check` every 10 ms until it holds or `within` passes (real time).
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of a node that can be partitioned: while partitioned, connections it holds stop
/// forwarding in both directions and new ones are accepted and never answered (requests time out, as across a
/// network partition); healing closes those connections and forwards again.
pub struct Proxy {
    pub addr: SocketAddr,
    partitioned: tokio::sync::watch::Sender<bool>,
    /// Each forwarded chunk waits a pseudo-random time below this many microseconds (0: none), so requests on
    /// different connections overtake one another.
    jitter_micros: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (partitioned, _) = tokio::sync::watch::channel(false);
        let state = partitioned.subscribe();
        let jitter_micros = Arc::new(AtomicU64::new(0));
        let jitter = jitter_micros.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                let seed = u64::from(addr.port()) << 32 | n;
                tokio::spawn(proxy_connection(
                    client,
                    target,
                    state.clone(),
                    jitter.clone(),
                    seed,
                ));
            }
        });
        Self {
            addr,
            partitioned,
            jitter_micros,
        }
    }

    /// Delays each forwarded chunk by a pseudo-random time below `max` (zero: no delay).
    pub fn set_jitter(&self, max: Duration) {
        self.jitter_micros.store(
            u64::try_from(max.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

/// xorshift64: a small deterministic generator for test randomness.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = (*state).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    jitter: Arc<AtomicU64>,
    mut random: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let max = jitter.load(Ordering::Relaxed);
        if max > 0 {
            // Injected latency (a fault), not a wait for a condition.
            tokio::time::sleep(Duration::from_micros(next_random(&mut random) % max)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn proxy_connection(
    client: TcpStream,
    target: SocketAddr,
    mut state: tokio::sync::watch::Receiver<bool>,
    jitter: Arc<AtomicU64>,
    seed: u64,
) {
    if *state.borrow_and_update() {
        let _ = state.wait_for(|p| !*p).await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    // The halves outlive the forwarding, so a partition leaves the connections open and silent.
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = async {
        tokio::select! {
            () = pump(&mut client_read, &mut server_write, jitter.clone(), seed) => {}
            () = pump(&mut server_read, &mut client_write, jitter.clone(), seed ^ 0x9e37_79b9) => {}
        }
    };
    let partitioned = tokio::select! {
        () = forward => false,
        _ = state.wait_for(|p| *p) => true,
    };
    if partitioned {
        // Silent until the partition heals; then the connection closes.
        let _ = state.wait_for(|p| !*p).await;
    }
}

/// A plain HTTP/1.0 GET; returns the status line and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

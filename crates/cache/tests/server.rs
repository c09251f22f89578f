//! The node over real sockets: a real memcached client crate, pipelining, the connection limit, `/metrics` and
//! `/health`, and graceful shutdown.

mod support;

use std::time::Duration;

use support::{Raw, eventually, http_get};
use trestle_cache::{NodeConfig, RunningNode, ServerConfig, StoreConfig};

async fn start(server: ServerConfig) -> RunningNode {
    let config = NodeConfig::new("127.0.0.1:0".parse().expect("addr"))
        .with_metrics_listen(Some("127.0.0.1:0".parse().expect("addr")))
        .with_server(server)
        .with_store(StoreConfig::with_memory(64 << 20));
    RunningNode::start(config).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memcache_crate_works_against_the_node() {
    let node = start(ServerConfig::default()).await;
    let url = format!(
        "memcache://{}?timeout=5&tcp_nodelay=true&protocol=ascii",
        node.memcached_addr()
    );
    tokio::task::spawn_blocking(move || {
        let client = memcache::Client::connect(url).expect("client");
        client.set("greeting", "hello", 0).expect("set");
        let value: Option<String> = client.get("greeting").expect("get");
        assert_eq!(value.as_deref(), Some("hello"));
        // The crate maps NOT_STORED to Ok: the value must be unchanged.
        client.add("greeting", "again", 0).expect("add");
        let value: Option<String> = client.get("greeting").expect("get");
        assert_eq!(value.as_deref(), Some("hello"));
        client.append("greeting", " world").expect("append");
        client.prepend("greeting", ">").expect("prepend");
        let value: Option<String> = client.get("greeting").expect("get");
        assert_eq!(value.as_deref(), Some(">hello world"));
        client.set("n", 10u64, 0).expect("set");
        assert_eq!(client.increment("n", 5).expect("incr"), 15);
        assert_eq!(client.decrement("n", 20).expect("decr"), 0);
        let many: std::collections::HashMap<String, String> =
            client.gets(&["greeting", "missing", "n"]).expect("gets");
        assert_eq!(many.len(), 2);
        assert!(client.delete("greeting").expect("delete"));
        assert!(!client.delete("greeting").expect("delete"));
        assert!(client.touch("n", 100).expect("touch"));
        let version = client.version().expect("version");
        assert!(version[0].1.starts_with("1.6"), "{version:?}");
        client.flush().expect("flush");
        let value: Option<String> = client.get("n").expect("get");
        assert_eq!(value, None);
    })
    .await
    .expect("client thread");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_get_all_replies_in_order() {
    let node = start(ServerConfig::default()).await;
    let mut raw = Raw::connect(node.memcached_addr()).await;
    let mut request = Vec::new();
    for i in 0..200 {
        request.extend_from_slice(format!("set k{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    for i in 0..200 {
        request.extend_from_slice(format!("mg k{i} v k q\r\n").as_bytes());
    }
    let reply = raw.exchange(&request).await;
    let expected: String = (0..200)
        .map(|_| "STORED\r\n".to_owned())
        .chain((0..200).map(|i| format!("VA {} kk{i}\r\n{i}\r\n", i.to_string().len())))
        .collect();
    assert_eq!(reply, expected);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_told_and_closed() {
    let node = start(ServerConfig::default().with_max_connections(2)).await;
    let mut a = Raw::connect(node.memcached_addr()).await;
    let mut b = Raw::connect(node.memcached_addr()).await;
    assert!(a.exchange(b"version\r\n").await.starts_with("VERSION"));
    assert!(b.exchange(b"version\r\n").await.starts_with("VERSION"));
    let mut c = Raw::connect(node.memcached_addr()).await;
    assert_eq!(
        c.read_to_close().await,
        "SERVER_ERROR Too many open connections\r\n"
    );
    drop(a);
    // The slot comes back once the node has seen the close.
    let addr = node.memcached_addr();
    let freed = eventually(Duration::from_secs(5), async || {
        let mut d = Raw::connect(addr).await;
        d.send(b"mn\r\n").await;
        let got = d.read_until(b"\r\n").await;
        got == b"MN\r\n"
    })
    .await;
    assert!(freed, "a closed connection's slot was not given back");
    assert_eq!(b.exchange(b"mg nothing v\r\n").await, "EN\r\n");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_without_end_is_refused_and_closed() {
    let node = start(ServerConfig::default()).await;
    let mut raw = Raw::connect(node.memcached_addr()).await;
    raw.send(&vec![b'x'; 20_000]).await;
    assert_eq!(raw.read_to_close().await, "CLIENT_ERROR line too long\r\n");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let node = start(ServerConfig::default()).await;
    let mut raw = Raw::connect(node.memcached_addr()).await;
    raw.exchange(b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\nmg c v\r\n")
        .await;
    let http = node.metrics_addr().expect("http listener");
    let (status, body) = http_get(http, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(r#""health":"true""#), "{body}");
    let (status, body) = http_get(http, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("trestle_cache_hits_total 1\n"), "{body}");
    assert!(body.contains("trestle_cache_misses_total 2\n"), "{body}");
    assert!(body.contains("trestle_cache_items 1\n"), "{body}");
    assert!(body.contains("trestle_cache_evictions_total 0\n"), "{body}");
    assert!(
        body.contains(r#"trestle_cache_command_duration_seconds_count{command="set"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"trestle_cache_command_duration_seconds_count{command="mg"} 1"#),
        "{body}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_was_read_then_closes() {
    let node = start(ServerConfig::default()).await;
    let addr = node.memcached_addr();
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.exchange(b"set a 0 0 1\r\nx\r\n").await, "STORED\r\n");
    let stopping = tokio::spawn(node.shutdown());
    // The open connection is closed, and shutdown returns because it did.
    assert_eq!(raw.read_to_close().await, "");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown returns")
        .expect("task");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(start_paused = true)]
async fn ttls_follow_paused_tokio_time() {
    let node = start(ServerConfig::default()).await;
    let mut raw = Raw::connect(node.memcached_addr()).await;
    assert_eq!(raw.exchange(b"ms a 1 T10\r\nx\r\n").await, "HD\r\n");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(raw.exchange(b"mg a v\r\n").await, "EN\r\n");
    node.shutdown().await;
}

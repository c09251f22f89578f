//! The ambassador (`trestle cache proxy`) in front of two zones: a real memcached client crate, the meta
//! commands, zone fallback, refused commands, coalesced reads, and libmemcached's load tools. The tools must be
//! installed (`scripts/bootstrap.sh`): these tests fail, not skip, without them.

mod support;

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::Raw;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trestle_cache::{
    Ack, Client, ClientConfig, NodeConfig, NodeSpec, Proxy, ProxyConfig, RunningNode, StoreConfig,
    serve_proxy, serve_proxy_http,
};

struct Cluster {
    nodes: Vec<RunningNode>,
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn start_proxy(
    specs: Vec<NodeSpec>,
    local: &str,
    ack: Ack,
) -> (
    Arc<Proxy>,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let client = Client::new(
        ClientConfig::new(specs, local)
            .with_write_ack(ack)
            .with_timeout(Duration::from_secs(5)),
    )
    .expect("client");
    let proxy = Proxy::new(client, ProxyConfig::default()).expect("proxy");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let served = tokio::spawn(serve_proxy(
        listener,
        proxy.clone(),
        stop.clone().cancelled_owned(),
    ));
    (proxy, addr, stop, served)
}

async fn cluster() -> Cluster {
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for zone in ["east", "west"] {
        let config = NodeConfig::new("127.0.0.1:0".parse().expect("addr"))
            .with_store(StoreConfig::with_memory(64 << 20));
        let node = RunningNode::start(config).await.expect("node");
        specs.push(NodeSpec::new(format!("{zone}-1"), node.memcached_addr(), zone));
        nodes.push(node);
    }
    let (proxy, addr, stop, served) = start_proxy(specs, "east", Ack::All).await;
    Cluster {
        nodes,
        proxy,
        addr,
        stop,
        served,
    }
}

impl Cluster {
    async fn shutdown(self) {
        self.stop.cancel();
        self.served.await.expect("proxy task");
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memcache_crate_works_through_the_proxy_and_values_land_in_every_zone() {
    let cluster = cluster().await;
    let url = format!(
        "memcache://{}?timeout=5&tcp_nodelay=true&protocol=ascii",
        cluster.addr
    );
    tokio::task::spawn_blocking(move || {
        let client = memcache::Client::connect(url).expect("client");
        client.set("greeting", "hello", 0).expect("set");
        client.set("count", 42u64, 60).expect("set");
        let value: Option<String> = client.get("greeting").expect("get");
        assert_eq!(value.as_deref(), Some("hello"));
        let many: std::collections::HashMap<String, String> =
            client.gets(&["greeting", "missing", "count"]).expect("multi-get");
        assert_eq!(many.len(), 2, "{many:?}");
        assert_eq!(many["count"], "42");
        assert!(client.delete("greeting").expect("delete"));
        let value: Option<String> = client.get("greeting").expect("get");
        assert_eq!(value, None);
        let version = client.version().expect("version");
        assert!(version[0].1.contains("proxy"), "{version:?}");
        // Not supported through the proxy: an error, and the connection still works.
        assert!(client.increment("count", 1).is_err());
        let value: Option<String> = client.get("count").expect("get after an error");
        assert_eq!(value.as_deref(), Some("42"));
    })
    .await
    .expect("client thread");
    // Both zones hold the value written through the proxy.
    for node in &cluster.nodes {
        let hit = node.engine().store().get(b"count", None).expect("in every zone");
        assert_eq!(hit.value, "42");
    }
    assert_eq!(cluster.proxy.metrics().unsupported.load(Ordering::Relaxed), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_commands_and_refusals() {
    let cluster = cluster().await;
    let mut raw = Raw::connect(cluster.addr).await;
    assert_eq!(
        raw.exchange(b"ms k1 2 T60 Oa1 k\r\nhi\r\n").await,
        "HD Oa1 kk1\r\n"
    );
    assert_eq!(
        raw.exchange(b"mg k1 s v k Ox\r\n").await,
        "VA 2 s2 kk1 Ox\r\nhi\r\n"
    );
    assert_eq!(raw.exchange(b"mg missing v\r\n").await, "EN\r\n");
    // Quiet mode: misses and successes say nothing; the trailing mn ends the pipeline.
    assert_eq!(raw.exchange(b"mg missing v q\r\nms k2 1 q\r\nx\r\n").await, "");
    assert_eq!(raw.exchange(b"mg k2 v\r\n").await, "VA 1\r\nx\r\n");
    // Invalidate: a plain read misses.
    assert_eq!(raw.exchange(b"md k2 I\r\n").await, "HD\r\n");
    assert_eq!(raw.exchange(b"mg k2 v\r\n").await, "EN\r\n");
    assert_eq!(raw.exchange(b"md k1\r\n").await, "HD\r\n");
    assert_eq!(raw.exchange(b"mg k1 v\r\n").await, "EN\r\n");
    // Flags that need item metadata the client does not carry are refused by name.
    assert_eq!(
        raw.exchange(b"mg k1 c\r\n").await,
        "CLIENT_ERROR flag c of mg is not supported by the proxy\r\n"
    );
    raw.send(b"incr n 1\r\n").await;
    assert_eq!(
        raw.read_until(b"\r\n").await,
        b"SERVER_ERROR incr/decr is not supported by the proxy\r\n"
    );
    // Malformed input gets the protocol's error, as from a node.
    raw.send(b"bogus\r\n").await;
    assert_eq!(raw.read_until(b"\r\n").await, b"ERROR\r\n");
    raw.send(b"get k1 k2 k3\r\n").await;
    assert_eq!(raw.read_until(b"END\r\n").await, b"END\r\n");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_other_zone_when_the_local_node_is_gone() {
    let mut cluster = cluster().await;
    let mut raw = Raw::connect(cluster.addr).await;
    raw.send(b"set fallback 0 0 5\r\nvalue\r\n").await;
    assert_eq!(raw.read_until(b"\r\n").await, b"STORED\r\n");
    let east = cluster.nodes.remove(0);
    east.shutdown().await;
    raw.send(b"get fallback\r\n").await;
    assert_eq!(
        raw.read_until(b"END\r\n").await,
        b"VALUE fallback 0 5\r\nvalue\r\nEND\r\n"
    );
    // A write needs both zones (Ack::All): with one gone it fails, and says why.
    raw.send(b"set other 0 0 1\r\nx\r\n").await;
    let reply = String::from_utf8(raw.read_until(b"\r\n").await).expect("utf8");
    assert!(
        reply.starts_with("SERVER_ERROR ") && reply.contains("of the 2 acknowledgements needed"),
        "{reply}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_the_nodes() {
    let mut cluster = cluster().await;
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = http.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let served = tokio::spawn(serve_proxy_http(
        http,
        cluster.proxy.clone(),
        stop.clone().cancelled_owned(),
    ));
    let (status, body) = support::http_get(http_addr, "/health").await;
    assert!(status.contains("200"), "{status} {body}");
    let mut raw = Raw::connect(cluster.addr).await;
    raw.send(b"set seen 0 0 1\r\nx\r\nget seen\r\nget unseen\r\n")
        .await;
    assert_eq!(
        raw.read_until(b"END\r\nEND\r\n").await,
        b"STORED\r\nVALUE seen 0 1\r\nx\r\nEND\r\nEND\r\n"
    );
    let (status, metrics) = support::http_get(http_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for line in [
        "trestle_cache_proxy_requests_total 3",
        "trestle_cache_client_reads_total 2",
        "trestle_cache_client_local_hits_total 1",
        "trestle_cache_client_misses_total 1",
        "trestle_cache_client_nodes 2",
        "trestle_cache_client_nodes_down 0",
        "trestle_cache_proxy_connections 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    // Both nodes gone: reads fail until the breakers open and the nodes are down; health says so.
    for node in cluster.nodes.drain(..) {
        node.shutdown().await;
    }
    let down = support::eventually(Duration::from_secs(20), async || {
        raw.send(b"get seen\r\n").await;
        let _ = raw.read_until(b"\r\n").await;
        cluster.proxy.client().stats().nodes_down == 2
    })
    .await;
    assert!(down, "{:?}", cluster.proxy.client().stats());
    let (status, body) = support::http_get(http_addr, "/health").await;
    assert!(
        status.contains("503") && body.contains("every cache node (2) is down"),
        "{status} {body}"
    );
    let (_, metrics) = support::http_get(http_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "trestle_cache_client_nodes_down 2"),
        "{metrics}"
    );
    stop.cancel();
    served.await.expect("http task").expect("http served");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_warm_up_of_a_joining_node() {
    let mut cluster = cluster().await;
    let mut raw = Raw::connect(cluster.addr).await;
    for i in 0..200 {
        raw.send(format!("set k{i} 0 0 1\r\nx\r\n").as_bytes()).await;
        assert_eq!(raw.read_until(b"\r\n").await, b"STORED\r\n");
    }
    let config =
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20));
    let joining = RunningNode::start(config).await.expect("node");
    let mut specs = cluster.proxy.client().nodes();
    specs.push(NodeSpec::new("east-2", joining.memcached_addr(), "east"));
    cluster.proxy.client().update_nodes(specs).expect("join");
    cluster.nodes.push(joining);
    let done = support::eventually(Duration::from_secs(20), async || {
        raw.send(b"stats\r\n").await;
        let stats = String::from_utf8(raw.read_until(b"END\r\n").await).expect("utf8");
        stats.contains("STAT warmup:east:east-2:state done\r\n")
    })
    .await;
    raw.send(b"stats\r\n").await;
    let stats = String::from_utf8(raw.read_until(b"END\r\n").await).expect("utf8");
    assert!(done, "{stats}");
    assert!(
        stats.contains("STAT warmup:east:east-2:fraction_done 1.000\r\n"),
        "{stats}"
    );
    let copied = stats
        .lines()
        .find_map(|l| l.strip_prefix("STAT warmup:east:east-2:keys_copied "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("keys_copied line");
    assert!(copied > 0 && copied < 200, "{stats}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_one_key_go_upstream_once() {
    // A node that answers the first read only once the test says so, and counts the reads it gets.
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = fake.local_addr().expect("addr");
    let release = Arc::new(tokio::sync::Notify::new());
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let node = {
        let (release, reads) = (release.clone(), reads.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = fake.accept().await {
                let (release, reads) = (release.clone(), reads.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // One request: "mg <key> ...\r\nmn\r\n".
                        if buf.ends_with(b"mn\r\n") {
                            buf.clear();
                            reads.fetch_add(1, Ordering::SeqCst);
                            release.notified().await;
                            let _ = stream.write_all(b"VA 2 f0 t-1\r\nhi\r\nMN\r\n").await;
                        }
                    }
                });
            }
        })
    };
    let (proxy, addr, stop, served) =
        start_proxy(vec![NodeSpec::new("only", fake_addr, "east")], "east", Ack::One).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        readers.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            raw.send(b"get hot\r\n").await;
            raw.read_until(b"END\r\n").await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while proxy.metrics().coalesced.load(Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readers did not join within 5 s"
        );
        tokio::task::yield_now().await;
    }
    release.notify_one();
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), b"VALUE hot 0 2\r\nhi\r\nEND\r\n");
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "one upstream read for five readers"
    );
    stop.cancel();
    served.await.expect("proxy task");
    node.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libmemcached_load_tools_run_through_the_proxy() {
    let cluster = cluster().await;
    let server = cluster.addr.to_string();
    let (proxy, east) = (cluster.proxy.clone(), cluster.nodes[0].engine().clone());
    tokio::task::spawn_blocking(move || {
        for test in ["set", "get", "mget"] {
            let output = Process::new("memcslap")
                .args([&format!("--servers={server}"), &format!("--test={test}")])
                .args(["--concurrency=2", "--execute-number=200"])
                .output()
                .expect("memcslap runs (install libmemcached-tools)");
            assert!(output.status.success(), "memcslap --test={test}: {output:?}");
        }
        let config = std::env::temp_dir().join(format!("trestle-proxy-memaslap-{}.cfg", std::process::id()));
        std::fs::write(&config, "key\n16 16 1\nvalue\n100 100 1\ncmd\n0 0.1\n1 0.9\n").expect("config");
        let output = Process::new("memcaslap")
            .args(["-s", &server, "-T", "1", "-c", "4", "-x", "2000", "-X", "100"])
            .arg("-F")
            .arg(&config)
            .output()
            .expect("memcaslap runs (install libmemcached-tools)");
        let _ = std::fs::remove_file(&config);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "memcaslap: {output:?}");
        assert!(stdout.contains("Run time"), "{stdout}");
    })
    .await
    .expect("tools");
    let metrics = proxy.metrics();
    assert_eq!(metrics.upstream_errors.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.unsupported.load(Ordering::Relaxed), 0);
    assert!(metrics.requests.load(Ordering::Relaxed) >= 2600);
    assert!(east.store().items() > 0);
    cluster.shutdown().await;
}

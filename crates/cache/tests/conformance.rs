//! The same command sequences sent to Debian's memcached (1.6.18, `/usr/bin/memcached`) and to a Trestle node,
//! replies compared byte for byte after masking what legitimately differs (CAS numbers, the version string, `me`'s
//! item size and slab class, `stats`).
//!
//! memcached must be installed (`scripts/bootstrap.sh` installs it): without it this test fails rather than
//! skipping, so a machine that cannot check conformance does not pass as one that did.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Raw, eventually, free_port};
use trestle_cache::{NodeConfig, RunningNode, StoreConfig};

const MEMCACHED: &str = "/usr/bin/memcached";

struct Memcached(Child);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_memcached() -> (Memcached, SocketAddr) {
    assert!(
        std::path::Path::new(MEMCACHED).exists(),
        "{MEMCACHED} is missing: install Debian's memcached (scripts/bootstrap.sh does) to run the conformance test"
    );
    let port = free_port();
    let mut command = Command::new(MEMCACHED);
    command.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "64",
        "-t",
        "2",
    ]);
    // memcached refuses to run as root without a user to switch to.
    if nix_is_root() {
        command.args(["-u", "root"]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("memcached starts");
    let guard = Memcached(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let up = eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "memcached did not listen on {addr} within 10 s");
    (guard, addr)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Replaces what may differ between two correct servers.
fn mask(reply: &str) -> String {
    reply
        .split("\r\n")
        .map(|line| {
            let mut words: Vec<String> = line.split(' ').map(str::to_owned).collect();
            match words.first().map(String::as_str) {
                // gets: VALUE key flags bytes cas
                Some("VALUE") if words.len() == 5 => words[4] = "<cas>".into(),
                Some("VERSION") => words.truncate(1),
                Some("ME") => words.retain(|w| !["size=", "cls=", "cas="].iter().any(|p| w.starts_with(p))),
                Some("VA" | "HD" | "EN" | "NF" | "NS" | "EX") => {
                    for w in words.iter_mut().skip(1) {
                        if w.len() > 1 && w.starts_with('c') && w[1..].bytes().all(|b| b.is_ascii_digit()) {
                            *w = "c<cas>".into();
                        }
                    }
                }
                _ => {}
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Each case starts from an empty cache.
const CASES: &[&str] = &[
    // Text storage and retrieval.
    "set a 5 0 3\r\nabc\r\nget a b\r\ngets a\r\nadd a 0 0 1\r\nz\r\nreplace nope 0 0 1\r\nz\r\n",
    "set n 0 0 2\r\n10\r\nappend n 0 0 2\r\nxx\r\nprepend n 0 0 2\r\nyy\r\nget n\r\n",
    "set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nget n\r\nincr n 18446744073709551615\r\nincr n 3\r\n",
    "incr nokey 1\r\nset t 0 0 1\r\nx\r\nincr t 1\r\nincr t abc\r\ndecr t -1\r\n",
    "set n 0 0 1\r\n1\r\ncas n 0 0 1 999\r\nz\r\ncas nope 0 0 1 1\r\nz\r\n",
    "set a 0 0 1\r\nx\r\ndelete a\r\ndelete a\r\ndelete a noreply\r\ndelete a 0\r\n",
    "set k 0 0 2 noreply\r\nab\r\nget k\r\nadd k 0 0 1 noreply\r\nz\r\nget k\r\n",
    "set t 0 100 1\r\nx\r\ntouch t 200\r\ntouch nope 1\r\ngat 0 t nope\r\ngats 0 t\r\nmg t t\r\n",
    "set g 0 -1 1\r\nx\r\nget g\r\nset h 0 0 0\r\n\r\nget h\r\n",
    "verbosity 1\r\nversion\r\nflush_all\r\nflush_all 0\r\nflush_all noreply\r\n",
    "verbosity foo bar my\r\nverbosity 1 2 3\r\nverbosity 1 2\r\nverbosity foo\r\nverbosity 1 noreply\r\n",
    "verbosity noreply\r\nverbosity\r\nversion foo bar\r\nversion noreply\r\n",
    "set f 0 0 1\r\nx\r\nflush_all\r\nget f\r\n",
    // Keys with control characters and DEL, as memaslap sends them: memcached takes them.
    "set \x10\x01k\x7fey 0 0 2\r\nab\r\nget \x10\x01k\x7fey\r\nmg \x10\x01k\x7fey v\r\nms a\tb 2\r\nxy\r\nmg a\tb v\r\n",
    // Errors.
    "bogus\r\n\r\nget\r\nset x 0 0 abc\r\n",
    "set x 0 0 3\r\nabcd\r\nget x\r\n",
    "set x 0 0 -1\r\n",
    "gat\r\ngat 10\r\ntouch a\r\nincr a\r\n",
    // Meta get.
    "set a 5 0 3\r\nabc\r\nmg a v f t c k s\r\nmg a\r\nmg zz v\r\nmg zz v q\r\nmg a v q k\r\n",
    "mg miss O5 k v\r\nmg miss O5 k v q\r\nset a 0 0 1\r\nx\r\nmg a O123 k v\r\nmg a h l\r\nmg a h\r\n",
    "mg zz v N30 c t\r\nmg zz v N30 c t\r\nms zz 2 T60\r\nhi\r\nmg zz v c t N30\r\n",
    "ms r 1 T100\r\nx\r\nmg r v R30 t\r\nmg r v R200 t\r\nmg r v R200 t\r\n",
    "ms m 2\r\nhi\r\nmd m I T30\r\nmg m v c t\r\nmg m v c t\r\nms m 3\r\nnew\r\nmg m v t\r\n",
    "set a 0 0 1\r\nx\r\nmg a v T10 t\r\nmg a t\r\n",
    "mg YQ== b v\r\nset a 0 0 2\r\nzz\r\nmg YQ== v b k\r\nmg a s v b\r\n",
    "mg a zz\r\nmg\r\n",
    "md k z\r\nma k z\r\nmg k E5\r\nmd k E5\r\nma k E5\r\nms k 1 z\r\nx\r\nms k 1 E500 c\r\ny\r\n",
    "md k q q\r\nmg k v v\r\nms k 1 T1 T2\r\nx\r\nma k q q\r\nset k 5 0 1\r\nq\r\nmd k x\r\n",
    "ms k 1 c\r\nx\r\nms k 1 I C1\r\nz\r\nmg k v\r\n",
    // Meta set.
    "ms m 2 T0 F3\r\nhi\r\nms m 2 c O123\r\nhi\r\nmg m f v\r\nms m S2 c\r\nhi\r\n",
    "ms a 2 MA\r\nzz\r\nms a 2 MA N0\r\nzz\r\nmg a v\r\nms a 2 ME\r\nyy\r\nms a 1 MP\r\n<\r\nmg a v\r\n",
    "ms a 2 MR\r\nzz\r\nms a 2\r\nzz\r\nms a 2 MR\r\nyy\r\nmg a v\r\nms a 1 Ms\r\nq\r\nmg a v\r\n",
    "ms a 2 C999\r\nzz\r\nms x 2 C5 O5 k c\r\nzz\r\nms b 1 q\r\nx\r\nms mm 2 MX\r\nzz\r\n",
    "ms a 1 O5 k c b\r\nx\r\nms YQ== 1 b\r\nx\r\nmg a v\r\n",
    // Meta delete.
    "ms m 2\r\nhi\r\nmd m q\r\nmd m q\r\nmd m\r\nmd m O9 k\r\nms m 2\r\nhi\r\nmd m C1\r\n",
    // Meta arithmetic.
    "ma cnt\r\nma cnt N0 J13 v\r\nma cnt v t\r\nma cnt v MD D20\r\nma cnt\r\nma cnt q\r\nma cnt MX\r\n",
    "ma x\r\nms x 1\r\n5\r\nma x MI D3 v t N0\r\nma x M+ v\r\nma x M- D2 v\r\nset y 0 0 1\r\nz\r\nma y\r\n",
    "ma nn N0 J5 q v\r\nma nn q\r\nma nn O7 k v\r\nma zz O7 k\r\n",
    // Meta debug and no-op.
    "set a 0 0 1\r\nx\r\nme a\r\nme nope\r\nmn\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trestle_answers_like_memcached() {
    let (_memcached, memcached_addr) = start_memcached().await;
    let node = RunningNode::start(
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20)),
    )
    .await
    .expect("node");
    let mut theirs = Raw::connect(memcached_addr).await;
    let mut ours = Raw::connect(node.memcached_addr()).await;
    let mut failures = Vec::new();
    for case in CASES {
        let request = format!("flush_all noreply\r\n{case}");
        let expected = theirs.exchange(request.as_bytes()).await;
        let got = ours.exchange(request.as_bytes()).await;
        if mask(&expected) != mask(&got) {
            failures.push(format!(
                "request  {case:?}\nmemcached {expected:?}\ntrestle   {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_like_memcached() {
    let (_memcached, memcached_addr) = start_memcached().await;
    let node = RunningNode::start(
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20)),
    )
    .await
    .expect("node");
    // Both refuse a value over 1 MiB (their default limit) and drop the key's old value.
    let big = format!(
        "set big 0 0 1\r\nx\r\nset big 0 0 2000000\r\n{}\r\nget big\r\n",
        "x".repeat(2_000_000)
    );
    for addr in [memcached_addr, node.memcached_addr()] {
        let mut raw = Raw::connect(addr).await;
        let reply = raw.exchange(big.as_bytes()).await;
        assert_eq!(
            reply, "STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\n",
            "from {addr}"
        );
    }
    node.shutdown().await;
}

/// libmemcached's own protocol checker (`memccapable` from Debian's libmemcached-tools), ASCII tests only: the
/// binary protocol is not implemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcapable_ascii_suite_passes() {
    const MEMCAPABLE: &str = "/usr/bin/memccapable";
    assert!(
        std::path::Path::new(MEMCAPABLE).exists(),
        "{MEMCAPABLE} is missing: install Debian's libmemcached-tools (scripts/bootstrap.sh does)"
    );
    let node = RunningNode::start(
        NodeConfig::new("127.0.0.1:0".parse().expect("addr")).with_store(StoreConfig::with_memory(64 << 20)),
    )
    .await
    .expect("node");
    let port = node.memcached_addr().port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(MEMCAPABLE)
            .args(["-a", "-t", "5", "-h", "127.0.0.1", "-p", &port])
            .output()
    })
    .await
    .expect("thread")
    .expect("memccapable runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.contains("All tests passed"),
        "{report}"
    );
    node.shutdown().await;
}

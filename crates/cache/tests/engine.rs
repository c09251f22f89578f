//! The node's protocol logic, driven through the sans-IO decoder and engine with a manual clock: text and meta
//! commands, expiry, CAS, the win/lose/stale tokens, the byte budget and eviction.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use trestle_breaker::ManualClock;
use trestle_cache::{Decoder, DecoderConfig, Engine, Flow, NodeMetrics, Store, StoreConfig};

struct Node {
    engine: Engine,
    decoder: Decoder,
    clock: Arc<ManualClock>,
}

fn node_with(config: StoreConfig) -> Node {
    let clock = Arc::new(ManualClock::new());
    let decoder = Decoder::new(DecoderConfig::default().with_max_item_size(config.max_item_size));
    let store = Arc::new(Store::new(config, clock.clone()).expect("valid config"));
    Node {
        engine: Engine::new(store, Arc::new(NodeMetrics::new())),
        decoder,
        clock,
    }
}

fn node() -> Node {
    node_with(StoreConfig::with_memory(32 << 20))
}

impl Node {
    /// Sends `input` and returns every reply it produced.
    fn send(&mut self, input: &str) -> String {
        let mut buf = BytesMut::from(input.as_bytes());
        let mut out = BytesMut::new();
        while let Some(frame) = self.decoder.decode(&mut buf) {
            if self.engine.execute(frame, &mut out) == Flow::Close {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

#[test]
fn text_storage_commands() {
    let mut n = node();
    assert_eq!(n.send("set a 5 0 3\r\nabc\r\n"), "STORED\r\n");
    assert_eq!(n.send("get a b\r\n"), "VALUE a 5 3\r\nabc\r\nEND\r\n");
    assert_eq!(n.send("add a 0 0 1\r\nz\r\n"), "NOT_STORED\r\n");
    assert_eq!(n.send("replace nope 0 0 1\r\nz\r\n"), "NOT_STORED\r\n");
    assert_eq!(
        n.send("append a 0 0 2\r\nde\r\nprepend a 0 0 2\r\nxy\r\n"),
        "STORED\r\nSTORED\r\n"
    );
    assert_eq!(n.send("get a\r\n"), "VALUE a 5 7\r\nxyabcde\r\nEND\r\n");
    assert_eq!(n.send("delete a\r\ndelete a\r\n"), "DELETED\r\nNOT_FOUND\r\n");
    assert_eq!(
        n.send("set k 0 0 2 noreply\r\nab\r\nget k\r\n"),
        "VALUE k 0 2\r\nab\r\nEND\r\n"
    );
}

#[test]
fn cas_versions() {
    let mut n = node();
    n.send("set a 0 0 1\r\nx\r\n");
    let reply = n.send("gets a\r\n");
    let cas: u64 = reply
        .split_whitespace()
        .nth(4)
        .expect("cas")
        .parse()
        .expect("number");
    assert_eq!(
        n.send(&format!("cas a 0 0 1 {}\r\ny\r\n", cas + 100)),
        "EXISTS\r\n"
    );
    assert_eq!(n.send(&format!("cas a 0 0 1 {cas}\r\ny\r\n")), "STORED\r\n");
    assert_eq!(n.send(&format!("cas a 0 0 1 {cas}\r\nz\r\n")), "EXISTS\r\n");
    assert_eq!(n.send("cas nope 0 0 1 1\r\nz\r\n"), "NOT_FOUND\r\n");
}

#[test]
fn incr_decr_like_memcached() {
    let mut n = node();
    assert_eq!(n.send("incr nokey 1\r\n"), "NOT_FOUND\r\n");
    n.send("set n 0 0 2\r\n10\r\n");
    assert_eq!(n.send("incr n 5\r\ndecr n 100\r\n"), "15\r\n0\r\n");
    // A shorter result keeps the length, padded with spaces, as memcached does.
    assert_eq!(n.send("get n\r\n"), "VALUE n 0 2\r\n0 \r\nEND\r\n");
    assert_eq!(
        n.send("incr n 18446744073709551615\r\n"),
        "18446744073709551615\r\n"
    );
    assert_eq!(n.send("incr n 2\r\n"), "1\r\n", "incr wraps at 2^64");
    n.send("set t 0 0 1\r\nx\r\n");
    assert_eq!(
        n.send("incr t 1\r\n"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    assert_eq!(
        n.send("incr t abc\r\n"),
        "CLIENT_ERROR invalid numeric delta argument\r\n"
    );
}

#[test]
fn expiry_touch_and_gat() {
    let mut n = node();
    n.send("set a 0 10 1\r\nx\r\nset never 0 0 1\r\ny\r\nset gone 0 -1 1\r\nz\r\n");
    assert_eq!(
        n.send("get gone\r\n"),
        "END\r\n",
        "a negative exptime expires at once"
    );
    n.advance(9);
    assert_eq!(n.send("mg a t v\r\n"), "VA 1 t1\r\nx\r\n");
    assert_eq!(n.send("touch a 100\r\n"), "TOUCHED\r\n");
    n.advance(50);
    assert_eq!(n.send("gat 5 a\r\n"), "VALUE a 0 1\r\nx\r\nEND\r\n");
    n.advance(5);
    assert_eq!(n.send("get a never\r\n"), "VALUE never 0 1\r\ny\r\nEND\r\n");
    assert_eq!(n.send("touch a 1\r\n"), "NOT_FOUND\r\n");
    // An exptime over 30 days is an absolute Unix time.
    let unix = n.engine.store().unix_now();
    n.send(&format!("set abs 0 {} 1\r\nq\r\n", unix + 20));
    assert_eq!(n.send("mg abs t\r\n"), "HD t20\r\n");
}

#[test]
fn flush_all_now_and_later() {
    let mut n = node();
    n.send("set a 0 0 1\r\nx\r\n");
    assert_eq!(n.send("flush_all\r\nget a\r\n"), "OK\r\nEND\r\n");
    n.send("set a 0 0 1\r\nx\r\n");
    assert_eq!(
        n.send("flush_all 10\r\nget a\r\n"),
        "OK\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
    );
    n.advance(10);
    assert_eq!(n.send("get a\r\n"), "END\r\n");
    assert_eq!(
        n.send("set b 0 0 1\r\ny\r\nget b\r\n"),
        "STORED\r\nVALUE b 0 1\r\ny\r\nEND\r\n"
    );
}

#[test]
fn meta_get_flags_and_quiet_mode() {
    let mut n = node();
    n.send("set a 5 0 3\r\nabc\r\n");
    assert_eq!(
        n.send("mg a v f t k s Oxy\r\n"),
        "VA 3 f5 t-1 ka s3 Oxy\r\nabc\r\n"
    );
    assert_eq!(n.send("mg a\r\n"), "HD\r\n");
    assert_eq!(n.send("mg zz v\r\n"), "EN\r\n");
    assert_eq!(
        n.send("mg zz v q\r\nmg a v q k\r\nmn\r\n"),
        "VA 3 ka\r\nabc\r\nMN\r\n"
    );
    assert_eq!(n.send("mg a h l\r\n"), "HD h1 l0\r\n");
    assert_eq!(n.send("mg YQ== b v\r\n"), "VA 3\r\nabc\r\n", "base64 key");
    assert_eq!(n.send("mg a zz\r\n"), "CLIENT_ERROR invalid flag\r\n");
}

#[test]
fn meta_vivify_on_miss_gives_one_winner() {
    let mut n = node();
    assert_eq!(n.send("mg k v N30 t\r\n"), "VA 0 t30 W\r\n\r\n");
    assert_eq!(n.send("mg k v N30 t\r\n"), "VA 0 t30 Z\r\n\r\n");
    // The winner stores the value: the tokens are gone.
    assert_eq!(n.send("ms k 2 T60\r\nhi\r\n"), "HD\r\n");
    assert_eq!(n.send("mg k v N30\r\n"), "VA 2\r\nhi\r\n");
}

#[test]
fn invalidate_serves_stale_to_all_and_win_to_one() {
    let mut n = node();
    n.send("ms m 2\r\nhi\r\n");
    assert_eq!(n.send("md m I T30\r\n"), "HD\r\n");
    assert_eq!(n.send("mg m v t\r\n"), "VA 2 t30 X W\r\nhi\r\n");
    assert_eq!(n.send("mg m v t\r\n"), "VA 2 t30 Z X\r\nhi\r\n");
    assert_eq!(n.send("ms m 3\r\nnew\r\nmg m v\r\n"), "HD\r\nVA 3\r\nnew\r\n");
}

#[test]
fn recache_hands_out_an_early_win() {
    let mut n = node();
    n.send("ms r 1 T100\r\nx\r\n");
    assert_eq!(n.send("mg r v R30\r\n"), "VA 1\r\nx\r\n");
    n.advance(80);
    assert_eq!(n.send("mg r v R30\r\n"), "VA 1 W\r\nx\r\n");
    assert_eq!(n.send("mg r v R30\r\n"), "VA 1 Z\r\nx\r\n");
}

#[test]
fn meta_set_modes_cas_and_opaque() {
    let mut n = node();
    assert_eq!(n.send("ms a 2 MA\r\nzz\r\n"), "NS\r\n");
    // memcached 1.6.18 ignores N on ms: append to a missing key is not stored.
    assert_eq!(n.send("ms a 2 MA N0\r\nzz\r\nmg a v\r\n"), "NS\r\nEN\r\n");
    assert_eq!(n.send("ms a 2 ME\r\nzz\r\nms a 2 ME\r\nyy\r\n"), "HD\r\nNS\r\n");
    assert_eq!(n.send("ms a 1 MP\r\n<\r\nmg a v\r\n"), "HD\r\nVA 3\r\n<zz\r\n");
    assert_eq!(n.send("ms a 2 C999999\r\nzz\r\n"), "EX\r\n");
    assert_eq!(n.send("ms nope 2 C1\r\nzz\r\n"), "NF\r\n");
    assert_eq!(
        n.send("ms a 2 F7 O9 k q\r\nok\r\nmg a f v\r\n"),
        "VA 2 f7\r\nok\r\n"
    );
    let reply = n.send("ms b 1 c\r\nx\r\n");
    let cas: u64 = reply
        .trim()
        .strip_prefix("HD c")
        .expect("cas")
        .parse()
        .expect("number");
    assert_eq!(n.send(&format!("md b C{}\r\n", cas + 1)), "EX\r\n");
    assert_eq!(n.send(&format!("md b C{cas} Ox\r\n")), "HD Ox\r\n");
    assert_eq!(
        n.send("md b q\r\nmd b\r\n"),
        "NF\r\nNF\r\n",
        "quiet hides HD only"
    );
    assert_eq!(n.send("ms b 2 C5 O5 k c\r\nzz\r\n"), "NF O5 kb c0\r\n");
    assert_eq!(n.send("mg miss O5 k v\r\n"), "EN O5 kmiss\r\n");
    assert_eq!(
        n.send("ms mm 2 MX\r\nzz\r\n"),
        "CLIENT_ERROR invalid mode for ms M token\r\n"
    );
}

#[test]
fn meta_arithmetic() {
    let mut n = node();
    assert_eq!(n.send("ma cnt\r\n"), "NF\r\n");
    assert_eq!(n.send("ma cnt N0 J13 v\r\n"), "VA 2\r\n13\r\n");
    assert_eq!(n.send("ma cnt v t\r\n"), "VA 2 t-1\r\n14\r\n");
    assert_eq!(n.send("ma cnt v MD D20\r\n"), "VA 1\r\n0\r\n");
    assert_eq!(n.send("ma cnt\r\n"), "HD\r\n");
}

#[test]
fn oversized_values_are_refused_and_their_data_skipped() {
    let mut n = node_with(StoreConfig::with_memory(32 << 20).with_max_item_size(1000));
    n.send("set big 0 0 1\r\nx\r\n");
    let input = format!("set big 0 0 2000\r\n{}\r\nget big\r\n", "x".repeat(2000));
    assert_eq!(
        n.send(&input),
        "SERVER_ERROR object too large for cache\r\nEND\r\n"
    );
    assert_eq!(
        n.send("set x 0 0 3\r\nabcd\r\n"),
        "CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    );
}

#[test]
fn memory_limit_counts_overhead_and_evicts() {
    // One shard of 100 KiB: 100-byte values weigh 100 + key + overhead each.
    let config = StoreConfig::with_memory(100 * 1024)
        .with_shards(1)
        .with_max_item_size(1024);
    let mut n = node_with(config);
    let value = "v".repeat(100);
    for i in 0..2000 {
        n.send(&format!("set key{i:05} 0 0 100\r\n{value}\r\n"));
    }
    let store = n.engine.store().clone();
    assert!(
        store.bytes() <= 100 * 1024,
        "bytes {} over the limit",
        store.bytes()
    );
    let per_item = 8 + 100 + trestle_cache::ITEM_OVERHEAD;
    assert!(store.items() <= 100 * 1024 / per_item);
    assert!(
        store.evictions() >= 2000 - 100 * 1024 / per_item,
        "evictions {}",
        store.evictions()
    );
}

#[test]
fn a_scan_does_not_flush_the_hot_set() {
    let config = StoreConfig::with_memory(1 << 20)
        .with_shards(1)
        .with_max_item_size(1024);
    let mut n = node_with(config);
    let value = "v".repeat(100);
    // A hot set of 2000 keys (about 40% of the memory), read repeatedly.
    for round in 0..3 {
        for i in 0..2000 {
            if round == 0 {
                n.send(&format!("set hot{i:05} 0 0 100\r\n{value}\r\n"));
            } else {
                n.send(&format!("get hot{i:05}\r\n"));
            }
        }
    }
    // A scan of 50 000 keys written once (about five times the memory).
    for i in 0..50_000 {
        n.send(&format!("set scan{i:06} 0 0 100\r\n{value}\r\n"));
    }
    let hits = (0..2000)
        .filter(|i| n.send(&format!("get hot{i:05}\r\n")).starts_with("VALUE"))
        .count();
    assert!(hits >= 1800, "only {hits} of 2000 hot keys survived the scan");
}

#[test]
fn text_errors() {
    let mut n = node();
    assert_eq!(n.send("bogus\r\n"), "ERROR\r\n");
    assert_eq!(n.send("\r\n"), "ERROR\r\n");
    assert_eq!(n.send("get\r\n"), "ERROR\r\n");
    assert_eq!(
        n.send("set x 0 0 abc\r\n"),
        "CLIENT_ERROR bad command line format\r\n"
    );
    let long = "k".repeat(251);
    assert_eq!(
        n.send(&format!("get {long}\r\n")),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        n.send("verbosity 1\r\nflush_all noreply\r\nmn\r\n"),
        "OK\r\nMN\r\n"
    );
    assert!(n.send("version\r\n").starts_with("VERSION 1.6"));
    assert!(n.send("stats\r\n").ends_with("END\r\n"));
}

#[test]
fn pipelined_input_split_anywhere_gives_the_same_replies() {
    let input = "set a 0 0 3\r\nabc\r\nget a\r\nms b 2 T0\r\nhi\r\nmg b v\r\nincr a 1\r\nmn\r\n";
    let whole = node().send(input);
    for cut in 0..input.len() {
        let mut n = node();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        for part in [&input[..cut], &input[cut..]] {
            buf.extend_from_slice(part.as_bytes());
            while let Some(frame) = n.decoder.decode(&mut buf) {
                n.engine.execute(frame, &mut out);
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), whole, "split at {cut}");
    }
}

#[test]
fn stored_items_do_not_keep_the_read_buffer_alive() {
    let store = Store::new(StoreConfig::with_memory(32 << 20), Arc::new(ManualClock::new())).expect("store");
    // A connection's read buffer, from which the decoder cuts keys and values.
    let mut buffer = BytesMut::with_capacity(4096);
    buffer.extend_from_slice(b"key1value-bytes");
    let read = buffer.split().freeze();
    let outcome = store.store(
        trestle_cache::protocol::StoreMode::Set,
        read.slice(0..4),
        0,
        0,
        read.slice(4..),
    );
    assert!(
        matches!(outcome, trestle_cache::StoreOutcome::Stored(_)),
        "{outcome:?}"
    );
    drop(read);
    // Nothing the store kept points into the buffer: its whole allocation can be reused in place.
    assert!(buffer.try_reclaim(4096), "the store keeps the read buffer alive");
    let hit = store.get(b"key1", None).expect("stored");
    assert_eq!(&hit.value[..], b"value-bytes");
}

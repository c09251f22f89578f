//! The node's gRPC API over a real socket: the operations, CAS, the codes for bad input, the batch rules, the
//! shared keyspace with the memcached listener, and the node's counters.

mod support;

use support::Raw;
use tonic::Code;
use tonic::transport::Channel;
use trestle_cache::grpc::proto::cache_client::CacheClient;
use trestle_cache::grpc::proto::{
    DeleteRequest, GetManyRequest, GetRequest, SetManyRequest, SetRequest, SetStatus, TouchRequest,
};
use trestle_cache::{GrpcConfig, NodeConfig, RunningNode, StoreConfig};

const MAX_ITEM: usize = 4096;

async fn start() -> (RunningNode, CacheClient<Channel>) {
    let config = NodeConfig::new("127.0.0.1:0".parse().expect("addr"))
        .with_grpc_listen(Some("127.0.0.1:0".parse().expect("addr")))
        .with_grpc(GrpcConfig::default().with_max_batch(3))
        .with_store(StoreConfig::with_memory(16 << 20).with_max_item_size(MAX_ITEM));
    let node = RunningNode::start(config).await.expect("node starts");
    let addr = node.grpc_addr().expect("gRPC listener");
    let client = CacheClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    (node, client)
}

fn set(key: &str, value: &str) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_delete_touch_and_cas() {
    let (node, mut client) = start().await;
    let miss = client.get(GetRequest { key: "k".into() }).await.expect("get");
    assert_eq!(miss.into_inner().item, None);

    let mut request = set("k", "v1");
    request.flags = 7;
    let cas = client.set(request).await.expect("set").into_inner().cas;
    let item = client
        .get(GetRequest { key: "k".into() })
        .await
        .expect("get")
        .into_inner()
        .item
        .expect("hit");
    assert_eq!(
        (item.value.as_slice(), item.flags, item.cas),
        (&b"v1"[..], 7, cas)
    );

    // A stale CAS is ABORTED and changes nothing; the current one stores.
    let mut stale = set("k", "v2");
    stale.compare_cas = Some(cas + 1000);
    let status = client.set(stale).await.expect_err("stale cas");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let mut current = set("k", "v2");
    current.compare_cas = Some(cas);
    let new_cas = client.set(current).await.expect("cas set").into_inner().cas;
    assert_ne!(new_cas, cas);
    let mut absent = set("absent", "x");
    absent.compare_cas = Some(1);
    let status = client.set(absent).await.expect_err("cas on absent");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Touch sets the TTL the store keeps; TTL 0 means no expiry.
    let touched = client
        .touch(TouchRequest {
            key: "k".into(),
            ttl_seconds: 300,
        })
        .await
        .expect("touch");
    assert!(touched.into_inner().found);
    let ttl = node.engine().store().debug(b"k").expect("item").ttl;
    assert!((299..=300).contains(&ttl), "ttl {ttl}");
    let touched = client
        .touch(TouchRequest {
            key: "nothing".into(),
            ttl_seconds: 5,
        })
        .await
        .expect("touch");
    assert!(!touched.into_inner().found);

    // Delete with a stale CAS is ABORTED; a plain delete deletes once.
    let status = client
        .delete(DeleteRequest {
            key: "k".into(),
            compare_cas: Some(cas),
        })
        .await
        .expect_err("stale delete");
    assert_eq!(status.code(), Code::Aborted);
    let deleted = client
        .delete(DeleteRequest {
            key: "k".into(),
            compare_cas: None,
        })
        .await
        .expect("delete");
    assert!(deleted.into_inner().deleted);
    let deleted = client
        .delete(DeleteRequest {
            key: "k".into(),
            compare_cas: None,
        })
        .await
        .expect("delete");
    assert!(!deleted.into_inner().deleted);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_with_the_offending_values() {
    let (node, mut client) = start().await;
    client.set(set("kept", "old")).await.expect("set");
    let mut big = set("kept", "");
    big.value = vec![b'x'; MAX_ITEM + 1];
    let status = client.set(big).await.expect_err("too large");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&format!("{} bytes", MAX_ITEM + 1))
            && status.message().contains(&format!("limit of {MAX_ITEM} bytes")),
        "{}",
        status.message()
    );
    // Refused before the store: the old value is still there (memcached's own set would have dropped it).
    let item = client
        .get(GetRequest { key: "kept".into() })
        .await
        .expect("get")
        .into_inner()
        .item;
    assert_eq!(item.expect("kept").value, b"old");

    let status = client
        .get(GetRequest { key: vec![] })
        .await
        .expect_err("empty key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("empty"), "{}", status.message());
    let status = client
        .get(GetRequest { key: vec![b'k'; 251] })
        .await
        .expect_err("long key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("251 bytes"), "{}", status.message());
    let status = client
        .delete(DeleteRequest {
            key: vec![],
            compare_cas: None,
        })
        .await
        .expect_err("empty key");
    assert_eq!(status.code(), Code::InvalidArgument);

    let metrics = node.engine().metrics();
    assert_eq!(metrics.grpc_calls("set", Code::InvalidArgument), 1);
    assert_eq!(metrics.grpc_calls("get", Code::InvalidArgument), 2);
    assert_eq!(metrics.grpc_calls("set", Code::Ok), 1);
    let text = metrics.render(node.engine().store());
    assert!(
        text.contains(r#"trestle_cache_grpc_requests_total{method="get",code="INVALID_ARGUMENT"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"trestle_cache_grpc_duration_seconds_count{method="set"} 2"#),
        "{text}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_per_item_and_refuse_whole_when_an_item_is_invalid() {
    let (node, mut client) = start().await;
    let cas_a = client.set(set("a", "1")).await.expect("set").into_inner().cas;
    let mut conflict = set("a", "2");
    conflict.compare_cas = Some(cas_a + 1000);
    let mut absent = set("c", "3");
    absent.compare_cas = Some(1);
    let results = client
        .set_many(SetManyRequest {
            items: vec![conflict, set("b", "2"), absent],
        })
        .await
        .expect("set many")
        .into_inner()
        .results;
    let statuses: Vec<i32> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            SetStatus::CasMismatch as i32,
            SetStatus::Stored as i32,
            SetStatus::NotFound as i32
        ]
    );
    assert!(results[1].cas > 0);

    // One oversized item refuses the batch, names it, and stores nothing.
    let mut big = set("e", "");
    big.value = vec![0; MAX_ITEM + 1];
    let status = client
        .set_many(SetManyRequest {
            items: vec![set("d", "4"), big],
        })
        .await
        .expect_err("invalid item");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("items[1]: "), "{}", status.message());
    let status = client
        .set_many(SetManyRequest {
            items: vec![set("w", "1"), set("x", "1"), set("y", "1"), set("z", "1")],
        })
        .await
        .expect_err("over the batch limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("4 items") && status.message().contains("limit of 3"));

    let hits = client
        .get_many(GetManyRequest {
            keys: vec!["a".into(), "b".into(), "d".into()],
        })
        .await
        .expect("get many")
        .into_inner()
        .hits;
    let found: Vec<(&[u8], &[u8])> = hits
        .iter()
        .map(|h| (h.key.as_slice(), h.item.as_ref().expect("item").value.as_slice()))
        .collect();
    assert_eq!(found, [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])]);
    let status = client
        .get_many(GetManyRequest {
            keys: vec!["a".into(); 4],
        })
        .await
        .expect_err("over the batch limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_memcached_share_one_keyspace() {
    let (node, mut client) = start().await;
    let mut request = set("shared", "from grpc");
    request.flags = 3;
    client.set(request).await.expect("set");
    let mut raw = Raw::connect(node.memcached_addr()).await;
    raw.send(b"get shared\r\n").await;
    let reply = raw.read_until(b"END\r\n").await;
    assert_eq!(reply, b"VALUE shared 3 9\r\nfrom grpc\r\nEND\r\n");
    raw.send(b"set other 0 0 4\r\nmemc\r\n").await;
    assert_eq!(raw.read_until(b"\r\n").await, b"STORED\r\n");
    let item = client
        .get(GetRequest { key: "other".into() })
        .await
        .expect("get")
        .into_inner()
        .item;
    assert_eq!(item.expect("hit").value, b"memc");
    node.shutdown().await;
}

#[test]
fn a_message_limit_below_the_largest_value_is_refused() {
    let config = NodeConfig::new("127.0.0.1:0".parse().expect("addr"))
        .with_store(StoreConfig::with_memory(64 << 20).with_max_item_size(2 << 20))
        .with_grpc(GrpcConfig::default().with_max_message_bytes(1 << 20));
    let error = config.validate().expect_err("too small");
    let text = error.to_string();
    assert!(text.contains("1048576") && text.contains("2097152"), "{text}");
}

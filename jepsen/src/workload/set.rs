//! The `set` workload: unique elements added one by one, then one final read of the whole set.
//!
//! Adding element `e` puts the key `jepsen/s/<e>`; the final read is a prefix Range over `jepsen/s/` (linearizable)
//! and returns every element present. An add that times out is `info`: it may show up (recovered) or not.

use rand::{Rng, RngCore};

use super::{BoxFuture, Completion, OpRequest, Session, Workload, failure};
use crate::checker::CheckModel;
use crate::history::value::Value;

const PREFIX: &str = "jepsen/s/";

/// Settings of the set workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetWorkload {}

impl Workload for SetWorkload {
    fn name(&self) -> &'static str {
        "set"
    }

    fn model(&self) -> CheckModel {
        CheckModel::Set
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        // Unique per operation; the random low digits only make the keys' order differ from the adds' order.
        let e = i64::try_from(op_number).unwrap_or(i64::MAX / 1000) * 1000 + rng.random_range(0..1000);
        OpRequest::new("add", None, Value::Int(e))
    }

    fn is_read_only(&self, op: &OpRequest) -> bool {
        op.f == "read"
    }

    fn final_ops(&self, _ops_generated: u64) -> Vec<OpRequest> {
        vec![OpRequest::new("read", None, Value::Nil)]
    }

    fn open(&self, client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(SetSession { client })
    }
}

struct SetSession {
    client: etcd_client::Client,
}

impl Session for SetSession {
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            match op.f.as_str() {
                "add" => {
                    let key = format!("{PREFIX}{}", op.value);
                    match self.client.put(key, op.value.to_string(), None).await {
                        Ok(_) => Completion::ok(op.value.clone()),
                        Err(e) => failure(&e, false, op.value.clone()),
                    }
                }
                "read" => match read_all(&mut self.client).await {
                    Ok(mut items) => {
                        items.sort();
                        Completion::ok(Value::List(items))
                    }
                    Err(e) => failure(&e, true, Value::Nil),
                },
                other => Completion::fail(op.value.clone(), format!("set cannot do {other}")),
            }
        })
    }
}

/// Keys per page of the final read: a 10-minute run adds well over 100,000 elements, and one response holding
/// them all passes gRPC's 4 MiB default message limit.
const READ_PAGE: i64 = 5_000;

/// Reads every element in pages, all at the revision of the first (linearizable) page, so the pages together are
/// one consistent snapshot, as etcd's own paginated reads do.
async fn read_all(client: &mut etcd_client::Client) -> Result<Vec<Value>, etcd_client::Error> {
    read_paged(client, READ_PAGE).await
}

async fn read_paged(client: &mut etcd_client::Client, page: i64) -> Result<Vec<Value>, etcd_client::Error> {
    let end = prefix_end(PREFIX.as_bytes());
    let mut from = PREFIX.as_bytes().to_vec();
    let mut revision = 0;
    let mut items = Vec::new();
    loop {
        let mut options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(page);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let resp = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        items.extend(resp.kvs().iter().filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            key.strip_prefix(PREFIX)?.parse::<i64>().ok().map(Value::Int)
        }));
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(items),
        }
    }
}

/// The end of the range of keys starting with `prefix` (etcd's prefix end: the prefix with its last byte + 1).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_final_read_pages_through_every_element_at_one_revision() {
        let cluster = trestle_etcd::testing::LocalCluster::start(1)
            .await
            .expect("cluster");
        cluster.wait_for_leader().await.expect("leader");
        let mut client = etcd_client::Client::connect(cluster.client_urls(), None)
            .await
            .expect("client");
        for i in 0..23 {
            client
                .put(format!("{PREFIX}{i}"), i.to_string(), None)
                .await
                .expect("put");
        }
        // Neighbours that must not be read: the prefix's end is exclusive.
        client.put("jepsen/t/1", "x", None).await.expect("put");
        client.put("jepsen/s", "x", None).await.expect("put");
        let mut items = read_paged(&mut client, 5).await.expect("read");
        items.sort();
        assert_eq!(items, (0..23).map(Value::Int).collect::<Vec<_>>());
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        cluster.shutdown().await;
    }
}

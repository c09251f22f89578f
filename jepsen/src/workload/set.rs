//! The `set` workload: unique elements added one by one, then one final read of the whole set.
//!
//! Adding element `e` puts the key `jepsen/s/<e>`; the final read is a prefix Range over `jepsen/s/` (linearizable)
//! and returns every element present. An add that times out is `info`: it may show up (recovered) or not.

use rand::{Rng, RngCore};

use super::{BoxFuture, Completion, OpRequest, Session, Workload, failure};
use crate::check::CheckModel;
use crate::value::Value;

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
                "read" => {
                    let options = etcd_client::GetOptions::new().with_prefix();
                    match self.client.get(PREFIX, Some(options)).await {
                        Ok(resp) => {
                            let mut items: Vec<Value> = resp
                                .kvs()
                                .iter()
                                .filter_map(|kv| {
                                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                                    key.strip_prefix(PREFIX)?.parse::<i64>().ok().map(Value::Int)
                                })
                                .collect();
                            items.sort();
                            Completion::ok(Value::List(items))
                        }
                        Err(e) => failure(&e, true, Value::Nil),
                    }
                }
                other => Completion::fail(op.value.clone(), format!("set cannot do {other}")),
            }
        })
    }
}

//! The `register` workload: read, write and compare-and-set over many independent keys.
//!
//! Keys are `jepsen/r/<n>`. Every `ops_per_epoch` operations (over all clients) the clients move to `keys` fresh
//! keys, so each key sees a bounded number of operations and the per-key linearizability search stays small.
//! Reads are etcd Range requests with the default (linearizable) consistency; writes are Puts; a CAS is a Txn that
//! compares the value and puts on success (`fail` when the comparison fails). Values are small integers, so
//! different writes often write the same value, which is what makes stale reads visible.

use rand::{Rng, RngCore};

use super::{BoxFuture, Completion, OpRequest, Session, Workload, failure};
use crate::checker::CheckModel;
use crate::history::value::Value;

/// Settings of the register workload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisterWorkload {
    /// Keys in use at once.
    pub keys: u64,
    /// Operations (over all clients) before moving to fresh keys.
    pub ops_per_epoch: u64,
    /// Values are drawn from `0..values`.
    pub values: i64,
}

impl Default for RegisterWorkload {
    fn default() -> Self {
        RegisterWorkload {
            keys: 5,
            ops_per_epoch: 250,
            values: 5,
        }
    }
}

fn key_name(key: &Value) -> String {
    format!("jepsen/r/{key}")
}

impl Workload for RegisterWorkload {
    fn name(&self) -> &'static str {
        "register"
    }

    fn model(&self) -> CheckModel {
        CheckModel::CasRegister
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        let epoch = op_number / self.ops_per_epoch.max(1);
        let key = i64::try_from(epoch * self.keys + rng.random_range(0..self.keys.max(1))).unwrap_or(0);
        let key = Some(Value::Int(key));
        match rng.random_range(0..4) {
            0 | 1 => OpRequest::new("read", key, Value::Nil),
            2 => OpRequest::new("write", key, Value::Int(rng.random_range(0..self.values))),
            _ => OpRequest::new(
                "cas",
                key,
                Value::List(vec![
                    Value::Int(rng.random_range(0..self.values)),
                    Value::Int(rng.random_range(0..self.values)),
                ]),
            ),
        }
    }

    fn is_read_only(&self, op: &OpRequest) -> bool {
        op.f == "read"
    }

    fn final_ops(&self, ops_generated: u64) -> Vec<OpRequest> {
        let epoch = ops_generated.saturating_sub(1) / self.ops_per_epoch.max(1);
        (0..self.keys)
            .map(|k| {
                let key = i64::try_from(epoch * self.keys + k).unwrap_or(0);
                OpRequest::new("read", Some(Value::Int(key)), Value::Nil)
            })
            .collect()
    }

    fn open(&self, client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(RegisterSession { client })
    }
}

struct RegisterSession {
    client: etcd_client::Client,
}

fn parse(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    text.parse::<i64>()
        .map(Value::Int)
        .unwrap_or(Value::Str(text.into_owned()))
}

impl Session for RegisterSession {
    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let key = key_name(op.key.as_ref().unwrap_or(&Value::Nil));
            match (op.f.as_str(), &op.value) {
                ("read", _) => match self.client.get(key, None).await {
                    Ok(resp) => {
                        Completion::ok(resp.kvs().first().map(|kv| parse(kv.value())).unwrap_or_default())
                    }
                    Err(e) => failure(&e, true, Value::Nil),
                },
                ("write", v) => match self.client.put(key, v.to_string(), None).await {
                    Ok(_) => Completion::ok(v.clone()),
                    Err(e) => failure(&e, false, v.clone()),
                },
                ("cas", Value::List(pair)) if pair.len() == 2 => {
                    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                    let txn = Txn::new()
                        .when([Compare::value(key.clone(), CompareOp::Equal, pair[0].to_string())])
                        .and_then([TxnOp::put(key, pair[1].to_string(), None)]);
                    match self.client.txn(txn).await {
                        Ok(resp) if resp.succeeded() => Completion::ok(op.value.clone()),
                        Ok(_) => Completion::fail(op.value.clone(), "compare failed"),
                        Err(e) => failure(&e, false, op.value.clone()),
                    }
                }
                _ => Completion::fail(op.value.clone(), format!("register cannot do {}", op.f)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn keys_move_on_by_epoch_and_final_reads_cover_the_last_one() {
        let w = RegisterWorkload::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let first = w.generate(&mut rng, 0).key.and_then(|k| k.as_int());
        assert!(first.is_some_and(|k| (0..5).contains(&k)));
        let later = w.generate(&mut rng, 600).key.and_then(|k| k.as_int());
        assert!(later.is_some_and(|k| (10..15).contains(&k)));
        let finals: Vec<i64> = w
            .final_ops(600)
            .iter()
            .filter_map(|o| o.key.as_ref()?.as_int())
            .collect();
        assert_eq!(finals, vec![10, 11, 12, 13, 14]);
        assert_eq!(parse(b"3"), Value::Int(3));
    }
}

//! The `election` workload: every client campaigns in one election through trestle-election; a leader writes
//! entries to its term's log with [`Leadership::fenced_txn`] for a while, then resigns.
//!
//! Each client process has its own trestle-lock session (a lease with a short TTL, so a killed, paused or cut-off
//! leader is deposed within seconds), kept alive through its node `w mod N`, while it campaigns and writes through
//! the next node, `(w + 1) mod N`, with the same lease ([`Session::attach`](trestle_lock::Session::attach)): a
//! leader whose keep-alive node stalls is deposed while its write path still works, so its late writes reach the
//! cluster and must be rejected. A leader writes for `lead_for` (3 s), then resigns. Operations:
//!
//! - `campaign`: waits to lead (at most `campaign_wait`, then `fail` and the candidacy is withdrawn); `ok` with
//!   the term, the leader key's create revision ([`Leadership::revision`]);
//! - `write` `[term element]`: a fenced transaction putting `jepsen/election/log/<term>/<element>`; it applies
//!   only while the leader key is still this term's, so a deposed leader's write is rejected (`fail`);
//! - `resign` with the term: `ok` when this candidate still led;
//! - `read` (final): the log's elements in the order they landed (create revision).
//!
//! Checked by the election checker ([`check_election`](crate::checker::election::check_election)).

use std::time::Duration;

use etcd_client::{GetOptions, TxnOp};
use rand::{Rng, RngCore};
use tokio::time::Instant;
use trestle_election::{Election, ElectionError, Leadership};
use trestle_lock::{Session as LockSession, SessionOptions};

use super::{BoxFuture, Completion, OpRequest, Session, Workload, failure};
use crate::checker::CheckModel;
use crate::history::value::Value;

const ELECTION: &str = "jepsen/election/leader";
const LOG: &str = "jepsen/election/log/";
/// Bounds connecting to the peer node.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the election workload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionWorkload {
    /// The lease TTL of each client's session: how soon a stalled leader is deposed.
    pub ttl: Duration,
    /// How long a `campaign` waits to lead before it withdraws (`fail`). Keep it below the operation timeout.
    pub campaign_wait: Duration,
    /// How long a leader keeps writing before it resigns. Longer than the TTL, so that a leader whose node
    /// stalls is deposed while it still means to write.
    pub lead_for: Duration,
}

impl Default for ElectionWorkload {
    fn default() -> Self {
        ElectionWorkload {
            ttl: Duration::from_secs(2),
            campaign_wait: Duration::from_millis(1500),
            lead_for: Duration::from_secs(3),
        }
    }
}

impl Workload for ElectionWorkload {
    fn name(&self) -> &'static str {
        "election"
    }

    fn model(&self) -> CheckModel {
        CheckModel::Election
    }

    fn generate(&self, rng: &mut dyn RngCore, op_number: u64) -> OpRequest {
        // The element a leader writes (the session turns this into campaign / write / resign, see `plan`).
        let e = i64::try_from(op_number).unwrap_or(i64::MAX / 1000) * 1000 + rng.random_range(0..1000);
        OpRequest::new("write", None, Value::Int(e))
    }

    fn is_read_only(&self, op: &OpRequest) -> bool {
        op.f == "read"
    }

    fn final_ops(&self, _ops_generated: u64) -> Vec<OpRequest> {
        vec![OpRequest::new("read", None, Value::Nil)]
    }

    fn open_with_peer(&self, client: etcd_client::Client, peer: &str) -> Box<dyn Session> {
        Box::new(Candidate {
            client,
            peer: Some(peer.to_owned()),
            config: self.clone(),
            session: None,
            attached: None,
            leadership: None,
            leading_since: Instant::now(),
        })
    }

    fn open(&self, client: etcd_client::Client) -> Box<dyn Session> {
        Box::new(Candidate {
            client,
            peer: None,
            config: self.clone(),
            session: None,
            attached: None,
            leadership: None,
            leading_since: Instant::now(),
        })
    }
}

struct Candidate {
    /// The connection that keeps the session's lease alive.
    client: etcd_client::Client,
    /// Another node's endpoint: campaigns and writes go through it when given.
    peer: Option<String>,
    config: ElectionWorkload,
    /// The session whose keep-alives go through `client`.
    session: Option<LockSession>,
    /// The same lease seen through the peer's connection (`Session::attach`), which the election uses.
    attached: Option<LockSession>,
    leadership: Option<Leadership>,
    /// When the leadership was won.
    leading_since: Instant,
}

impl Candidate {
    async fn campaign(&mut self) -> Completion {
        if self.session.as_ref().is_none_or(|s| !s.is_alive()) {
            self.session = None;
            self.attached = None;
            let options = SessionOptions::with_ttl(self.config.ttl);
            match LockSession::with_options(self.client.clone(), options).await {
                Ok(s) => self.session = Some(s),
                Err(e) => return Completion::fail(Value::Nil, format!("no session: {e}")),
            }
        }
        if self.attached.is_none()
            && let (Some(peer), Some(session)) = (self.peer.clone(), self.session.as_ref())
        {
            let options = etcd_client::ConnectOptions::new()
                .with_timeout(PEER_TIMEOUT)
                .with_connect_timeout(PEER_TIMEOUT);
            let connect = etcd_client::Client::connect([peer.as_str()], Some(options));
            match tokio::time::timeout(PEER_TIMEOUT, connect).await {
                Ok(Ok(c)) => self.attached = Some(LockSession::attach(c, session.lease())),
                Ok(Err(e)) => return Completion::fail(Value::Nil, format!("connecting to {peer}: {e}")),
                Err(_) => {
                    return Completion::fail(Value::Nil, format!("connecting to {peer}: timed out"));
                }
            }
        }
        let Some(session) = self.attached.as_ref().or(self.session.as_ref()) else {
            return Completion::fail(Value::Nil, "no session");
        };
        let election = match Election::new(session, ELECTION) {
            Ok(e) => e,
            Err(e) => return Completion::fail(Value::Nil, e.to_string()),
        };
        // No leadership came back unless `Ok`: a `fail` (a dropped campaign withdraws its candidacy).
        match tokio::time::timeout(self.config.campaign_wait, election.campaign("jepsen")).await {
            Ok(Ok(leadership)) => {
                let term = leadership.revision();
                self.leadership = Some(leadership);
                self.leading_since = Instant::now();
                Completion::ok(Value::Int(term))
            }
            // The next campaign gets a fresh session (dropping this one revokes its lease in the background):
            // a withdrawn campaign's key `name/<lease>` is deleted in the background, and a next campaign through
            // the same session could find it still there, win with it, and lose it to that delete moments later.
            Ok(Err(e)) => {
                self.session = None;
                self.attached = None;
                Completion::fail(Value::Nil, e.to_string())
            }
            Err(_) => {
                self.session = None;
                self.attached = None;
                Completion::fail(Value::Nil, "not elected within the campaign wait; withdrew")
            }
        }
    }

    async fn write(&mut self, op: &OpRequest, term: i64, element: &Value) -> Completion {
        let Some(leadership) = self.leadership.as_ref() else {
            return Completion::fail(op.value.clone(), "not leading");
        };
        let put = TxnOp::put(format!("{LOG}{term:020}/{element}"), term.to_string(), None);
        match leadership.fenced_txn(vec![put]).await {
            Ok(_) => Completion::ok(op.value.clone()),
            Err(e @ ElectionError::NotLeader { .. }) => {
                // Deposed: the write was rejected. Campaign again next.
                self.leadership = None;
                Completion::fail(op.value.clone(), e.to_string())
            }
            Err(ElectionError::Etcd(e)) => failure(&e, false, op.value.clone()),
            Err(e) => Completion::info(op.value.clone(), e.to_string()),
        }
    }

    async fn resign(&mut self, op: &OpRequest) -> Completion {
        let Some(leadership) = self.leadership.take() else {
            return Completion::fail(op.value.clone(), "not leading");
        };
        match leadership.resign().await {
            Ok(()) => Completion::ok(op.value.clone()),
            Err(e @ ElectionError::NotLeader { .. }) => Completion::fail(op.value.clone(), e.to_string()),
            Err(ElectionError::Etcd(e)) => failure(&e, false, op.value.clone()),
            Err(e) => Completion::info(op.value.clone(), e.to_string()),
        }
    }

    async fn read(&mut self) -> Completion {
        match self.client.get(LOG, Some(GetOptions::new().with_prefix())).await {
            Ok(resp) => {
                let mut entries: Vec<(i64, i64)> = resp
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let (_term, e) = key.strip_prefix(LOG)?.split_once('/')?;
                        Some((kv.create_revision(), e.parse::<i64>().ok()?))
                    })
                    .collect();
                entries.sort_unstable();
                Completion::ok(Value::List(
                    entries.into_iter().map(|(_, e)| Value::Int(e)).collect(),
                ))
            }
            Err(e) => failure(&e, true, Value::Nil),
        }
    }
}

impl Session for Candidate {
    fn plan(&mut self, generated: OpRequest) -> OpRequest {
        match &self.leadership {
            None => OpRequest::new("campaign", None, Value::Nil),
            Some(l) if self.leading_since.elapsed() < self.config.lead_for => OpRequest::new(
                "write",
                None,
                Value::List(vec![Value::Int(l.revision()), generated.value]),
            ),
            Some(l) => OpRequest::new("resign", None, Value::Int(l.revision())),
        }
    }

    fn invoke<'a>(&'a mut self, op: &'a OpRequest) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            match (op.f.as_str(), op.value.as_seq()) {
                ("campaign", _) => self.campaign().await,
                ("write", Some([term, element])) => {
                    let Some(term) = term.as_int() else {
                        return Completion::fail(op.value.clone(), "the term must be an integer");
                    };
                    self.write(op, term, element).await
                }
                ("resign", _) => self.resign(op).await,
                ("read", _) => self.read().await,
                (other, _) => Completion::fail(op.value.clone(), format!("election cannot do {other}")),
            }
        })
    }
}

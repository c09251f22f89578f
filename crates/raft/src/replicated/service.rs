//! What a service adds to its state machine to run on the replicated-service layer: requests only the leader
//! answers, a leader clock, and the words its clients get for the layer's failures.

use std::fmt::Debug;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::Replicated;
use super::machine::StateMachine;

/// A service on a Raft group: its [`StateMachine`], and what its leader does beyond applying commands.
///
/// The smallest service has no leader requests ([`NoRequest`]) and keeps every default:
///
/// ```
/// use trestle_raft::{NoRequest, Replicated, Service, StateMachine};
/// # struct Counter(i64);
/// # impl StateMachine for Counter {
/// #     type Command = i64;
/// #     type Response = i64;
/// #     fn apply(&mut self, _: u64, delta: i64) -> i64 { self.0 = self.0.saturating_add(delta); self.0 }
/// #     fn undecodable(&mut self, _: u64, _: String) -> i64 { self.0 }
/// #     fn batch(_: Vec<i64>) -> i64 { unimplemented!() }
/// #     fn unbatch(_: i64, _: usize) -> Option<Vec<i64>> { None }
/// #     fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), trestle_raft::SnapshotError> {
/// #         Ok(out.write_all(&self.0.to_be_bytes())?)
/// #     }
/// #     fn restore(&mut self, input: &mut dyn std::io::Read) -> Result<(), trestle_raft::SnapshotError> {
/// #         let mut bytes = [0; 8];
/// #         input.read_exact(&mut bytes)?;
/// #         self.0 = i64::from_be_bytes(bytes);
/// #         Ok(())
/// #     }
/// # }
/// struct CounterService;
///
/// impl Service for CounterService {
///     type Machine = Counter;
///     type LeaderRequest = NoRequest;
///     type LeaderReply = NoRequest;
///
///     async fn on_leader(&self, _: &Replicated<Self>, request: &NoRequest) -> Result<Option<NoRequest>, tonic::Status> {
///         match *request {}
///     }
/// }
/// ```
pub trait Service: Send + Sync + Sized + 'static {
    /// The replicated state.
    type Machine: StateMachine;
    /// A request only the leader answers, forwarded to it from followers (etcd's lease keep-alives, say).
    type LeaderRequest: Serialize + DeserializeOwned + Debug + Send + Sync + 'static;
    /// The leader's answer to a [`Service::LeaderRequest`].
    type LeaderReply: Serialize + DeserializeOwned + Debug + Send + Sync + 'static;

    /// The status a client gets for one of the layer's failures. The default gives the gRPC code of
    /// [`Failure::status`] and a plain message; a service that mirrors another system's API gives that system's
    /// words (clients match on them).
    fn status(failure: Failure) -> Status {
        failure.status()
    }

    /// Whether answering `request` twice is the same as once, so that it may be sent again after the connection
    /// to the leader broke with the request in flight. Default: no.
    fn leader_request_is_idempotent(_request: &Self::LeaderRequest) -> bool {
        false
    }

    /// Answers a leader request on this node; `Ok(None)` when this node does not lead (any more), and the layer
    /// looks for the leader again.
    fn on_leader(
        &self,
        host: &Replicated<Self>,
        request: &Self::LeaderRequest,
    ) -> impl Future<Output = Result<Option<Self::LeaderReply>, Status>> + Send;

    /// Sees the response to each command this node proposed as leader before its proposer does (to start a
    /// lease's clock when its grant commits, say). Default: nothing.
    fn proposed_here(&self, _response: &<Self::Machine as StateMachine>::Response) {}

    /// The leader clock: called on every tick of [`Replicated::spawn_clock`] and on every change of the group's
    /// leadership, with whether this node leads. Time-driven commands (expiring leases, visibility timeouts)
    /// are proposed from here with [`Replicated::propose_local`], so only the leader makes them. Default:
    /// nothing.
    fn on_clock(&self, _host: &Replicated<Self>, _leading: bool) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A request type with no values, for a service without leader requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoRequest {}

/// A failure of the replicated-service layer itself, as opposed to an error its state machine answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// No leader could be found before the request's deadline.
    #[error("no leader")]
    NoLeader,
    /// The request did not finish before its deadline; a write may or may not have been applied.
    #[error("request timed out")]
    TimedOut,
    /// The leader went away holding a write: it may or may not have been applied.
    #[error("request timed out, possibly due to previous leader failure")]
    LeaderLost,
    /// This node is stopping and did not take the request; it can be sent elsewhere.
    #[error("server stopped")]
    Stopped,
    /// The group's Raft stopped on a fatal error.
    #[error("raft stopped: {0}")]
    RaftStopped(String),
    /// A member with that peer URL exists already.
    #[error("peerURL exists")]
    MemberExists,
    /// No such member.
    #[error("member not found")]
    MemberNotFound,
    /// Only a learner can be promoted.
    #[error("can only promote a learner member")]
    NotALearner,
    /// Raft refused the membership change; the message says why.
    #[error("{0}")]
    MembershipRefused(String),
}

impl Failure {
    /// The gRPC code that fits, with the failure's own message.
    pub fn status(&self) -> Status {
        let code = match self {
            Failure::NoLeader
            | Failure::TimedOut
            | Failure::LeaderLost
            | Failure::Stopped
            | Failure::RaftStopped(_) => tonic::Code::Unavailable,
            Failure::MemberExists | Failure::NotALearner | Failure::MembershipRefused(_) => {
                tonic::Code::FailedPrecondition
            }
            Failure::MemberNotFound => tonic::Code::NotFound,
        };
        Status::new(code, self.to_string())
    }
}

//! The peer transport: openraft's RPCs over tonic gRPC, one connection per peer shared by every group.
//!
//! Client side: [`NetworkFactory`] hands openraft a [`PeerClient`] per target; clients of every group reuse one
//! lazily-connected HTTP/2 channel per peer URL ([`PeerChannels`]). Connection failures are reported as
//! `Unreachable`, so openraft backs off ([`PeerClient::backoff`]) instead of hammering a peer that is down.
//! Server side: [`PeerService`] looks the group up in the node's [`GroupRegistry`](crate::GroupRegistry) and hands
//! the request to its Raft. Snapshots travel in chunks (openraft's chunked transfer, one RPC per chunk).

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::group::GroupRegistry;
use crate::log_store::{decode, encode};
use crate::types::{GroupId, NodeId, PeerNode, TypeConfig};

/// Generated from `proto/raft.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("trestle.raft.v1");
}

use pb::raft_peer_client::RaftPeerClient;
use pb::{RaftReply, RaftRequest};

/// Turns a configured endpoint into a channel. The default connects lazily over TCP; a simulation supplies its
/// own connector (e.g. turmoil's simulated network) through [`PeerChannels::with_connect`].
pub type ConnectFn = Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>;

/// One lazily connected channel per peer URL, shared by every group and every clone.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<ClientTlsConfig>,
    connect: Option<ConnectFn>,
}

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannels")
            .field("tls", &self.tls.is_some())
            .field("custom_connect", &self.connect.is_some())
            .finish_non_exhaustive()
    }
}

impl PeerChannels {
    /// Channels that use TLS (mutual, when the config carries an identity) when `tls` is set.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            channels: Arc::default(),
            tls,
            connect: None,
        }
    }

    /// Channels built by `connect` from each peer's endpoint instead of plain TCP: the seam a deterministic
    /// simulation uses to run the real peer protocol over a simulated network. `connect` must not block and
    /// should connect lazily (as [`Endpoint::connect_with_connector_lazy`] does).
    pub fn with_connect(connect: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Self {
        Self {
            channels: Arc::default(),
            tls: None,
            connect: Some(Arc::new(connect)),
        }
    }

    /// The channel to `url`, created on first use. Connecting happens on the first request.
    pub fn get(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        if let Some(channel) = self.channels.lock().get(url) {
            return Ok(channel.clone());
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = match &self.connect {
            Some(connect) => connect(endpoint),
            None => endpoint.connect_lazy(),
        };
        self.channels.lock().insert(url.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Makes openraft's per-target clients for one group.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    group: GroupId,
    channels: PeerChannels,
}

impl NetworkFactory {
    /// The factory of `group`, over the node's shared channels.
    pub fn new(group: GroupId, channels: PeerChannels) -> Self {
        Self { group, channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            url: node.peer_url.clone(),
            channels: self.channels.clone(),
        }
    }
}

/// openraft's client for one (group, target) pair.
#[derive(Debug)]
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    url: String,
    channels: PeerChannels,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .channels
            .get(&self.url)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut request = Request::new(RaftRequest {
            group: self.group,
            payload,
        });
        request.set_timeout(ttl);
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = result
            .map_err(|status| self.status_error(status, ttl))?
            .into_inner();
        if !reply.error.is_empty() {
            let err: E =
                serde_json::from_slice(&reply.error).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, err)));
        }
        decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn status_error<E: Error>(&self, status: Status, ttl: Duration) -> RPCError<NodeId, PeerNode, E> {
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action: openraft::RPCTypes::AppendEntries,
                id: 0,
                target: self.target,
                timeout: ttl,
            }),
            // A refused connection or a node shutting down: back off.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        // openraft 0.9 allows every AppendEntries only the heartbeat interval, however much it carries: a follower
        // catching up on large entries would time out on the same oversized batch forever. Send a prefix within
        // a byte budget and report how far it got; openraft sends the rest next.
        let sent = entries_within(&rpc.entries, APPEND_BYTES_BUDGET);
        let trimmed = sent < rpc.entries.len();
        if trimmed {
            rpc.entries.truncate(sent);
        }
        let last_sent = rpc.entries.last().map(|entry| entry.log_id);
        let response = self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await?;
        Ok(match response {
            AppendEntriesResponse::Success if trimmed => AppendEntriesResponse::PartialSuccess(last_sent),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // openraft asks for a backoff after `Unreachable`: exponential from 50 ms, capped at 1 s, so a restarted
        // peer is found again quickly and a dead one costs little.
        Backoff::new((0..).map(|n: u32| Duration::from_millis((50u64 << n.min(5)).min(1000))))
    }
}

/// The most entry bytes one AppendEntries carries (a single larger entry still goes, alone). Small enough to be
/// sent, decoded and synced by the follower within openraft's per-request timeout (the heartbeat interval).
const APPEND_BYTES_BUDGET: usize = 1024 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes: at least one.
fn entries_within(entries: &[crate::types::Entry], budget: usize) -> usize {
    let mut total = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        let size = match &entry.payload {
            openraft::EntryPayload::Normal(command) => command.0.len(),
            _ => 0,
        } + 64;
        total = total.saturating_add(size);
        if total > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// Whether a forwarded request that failed may have been acted upon by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The peer never acted on it: it was never sent (no connection), or the peer said it did nothing (it does
    /// not lead or does not host the group). Safe to send again.
    Unexecuted,
    /// The peer answered with a definite error.
    Answered,
    /// Unknown: the connection broke or the deadline passed while the peer had the request. A write may have
    /// been proposed and may still commit.
    Unknown,
}

/// A failed forward, and what the failure says about whether the peer acted on it.
#[derive(Debug)]
pub(crate) struct ForwardFailure {
    pub(crate) status: Status,
    pub(crate) delivery: Delivery,
}

impl ForwardFailure {
    fn new(status: Status, delivery: Delivery) -> Self {
        Self { status, delivery }
    }

    /// A definite error answered by the peer (or found in its answer).
    pub(crate) fn answered(status: Status) -> Self {
        Self::new(status, Delivery::Answered)
    }
}

/// True when `status` proves the request never left this node, so sending it again cannot apply it twice:
/// - the connection could not be made (tonic's `ConnectError`), or
/// - hyper handed the request back unsent. hyper's client reports `Canceled` only for a request its connection
///   task never took (the connection closed first, or was not ready); a request lost after it was written
///   fails with an HTTP/2 error instead. A pooled connection to a node that just stopped fails this way.
pub(crate) fn never_sent(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some()
            || err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Sends a forwarded request to the peer at `url` for `group`: used by followers to reach the leader.
pub(crate) async fn forward(
    channels: &PeerChannels,
    url: &str,
    group: GroupId,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ForwardFailure> {
    let channel = channels.get(url).map_err(|e| {
        ForwardFailure::new(
            Status::unavailable(format!("bad peer url {url}: {e}")),
            Delivery::Unexecuted,
        )
    })?;
    let mut client = RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = Request::new(RaftRequest { group, payload });
    request.set_timeout(timeout);
    let reply = match client.forward(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let delivery = if never_sent(&status) {
                Delivery::Unexecuted
            } else {
                Delivery::Unknown
            };
            return Err(ForwardFailure::new(status, delivery));
        }
    };
    if !reply.error.is_empty() {
        let err: crate::group::ForwardError = serde_json::from_slice(&reply.error).map_err(|e| {
            ForwardFailure::new(
                Status::internal(format!("bad forward reply: {e}")),
                Delivery::Answered,
            )
        })?;
        let delivery = if err.unexecuted {
            Delivery::Unexecuted
        } else {
            Delivery::Answered
        };
        return Err(ForwardFailure::new(err.into(), delivery));
    }
    Ok(reply.payload)
}

/// The server side of the peer protocol.
#[derive(Clone, Debug)]
pub struct PeerService {
    groups: GroupRegistry,
}

impl PeerService {
    /// A service dispatching to the groups in `groups`.
    pub fn new(groups: GroupRegistry) -> Self {
        Self { groups }
    }

    /// The tonic server wrapper, with no message size limit (snapshot chunks and entry batches are bounded by
    /// openraft's configuration instead).
    pub fn into_server(self) -> pb::raft_peer_server::RaftPeerServer<Self> {
        pb::raft_peer_server::RaftPeerServer::new(self).max_decoding_message_size(usize::MAX)
    }
}

fn decode_request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    decode(payload).map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let reply = match result {
        Ok(value) => RaftReply {
            payload: encode(&value).map_err(|e| Status::internal(e.to_string()))?,
            error: vec![],
        },
        Err(err) => RaftReply {
            payload: vec![],
            error: serde_json::to_vec(&err).map_err(|e| Status::internal(e.to_string()))?,
        },
    };
    Ok(Response::new(reply))
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest { group, payload } = request.into_inner();
        let raft = self.groups.raft(group)?;
        reply(raft.append_entries(decode_request(&payload)?).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest { group, payload } = request.into_inner();
        let raft = self.groups.raft(group)?;
        reply(raft.vote(decode_request(&payload)?).await)
    }

    async fn install_snapshot(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest { group, payload } = request.into_inner();
        let raft = self.groups.raft(group)?;
        reply(raft.install_snapshot(decode_request(&payload)?).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest { group, payload } = request.into_inner();
        let handler = match self.groups.forward_handler(group) {
            Ok(handler) => handler,
            // Not hosted (or not yet, or no longer): nothing was done, the sender may look elsewhere.
            Err(status) => return reply::<(), _>(Err(crate::group::ForwardError::unexecuted(status))),
        };
        // The handler's reply is already encoded by the group's application.
        match handler.forward(payload).await {
            Ok(payload) => Ok(Response::new(RaftReply {
                payload,
                error: vec![],
            })),
            Err(err) => reply::<(), _>(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{EntryPayload, LeaderId};

    use super::*;
    use crate::types::{CommandBytes, Entry, LogId};

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(CommandBytes(vec![0; bytes])),
        }
    }

    #[test]
    fn append_entries_carry_a_budget_of_bytes_but_always_at_least_one_entry() {
        let small: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        assert_eq!(entries_within(&small, 1 << 20), 10);
        let large: Vec<Entry> = (1..=10).map(|i| entry(i, 400 << 10)).collect();
        assert_eq!(
            entries_within(&large, 1 << 20),
            2,
            "two 400 KiB entries fit in 1 MiB, three do not"
        );
        let huge = vec![entry(1, 3 << 20), entry(2, 10)];
        assert_eq!(
            entries_within(&huge, 1 << 20),
            1,
            "an entry over the budget goes alone"
        );
        assert_eq!(entries_within(&[], 1 << 20), 0);
    }
}

//! The peer transport: openraft's RPCs over tonic gRPC, one connection per peer shared by every group.
//!
//! Client side: [`NetworkFactory`] hands openraft a [`PeerClient`] per target; clients of every group reuse one
//! lazily-connected HTTP/2 channel per peer URL ([`PeerChannels`]). Connection failures are reported as
//! `Unreachable`, so openraft backs off ([`PeerClient::backoff`]) instead of hammering a peer that is down.
//! Server side: [`PeerService`] looks the group up in the node's [`GroupRegistry`](crate::GroupRegistry) and hands
//! the request to its Raft. A snapshot travels as one client-streaming call: read from the leader's snapshot store
//! in chunks, written by the follower into a reception of its own store, then installed whole.

use openraft::async_runtime::WatchReceiver as _;
use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::group::GroupRegistry;
use crate::log_store::{decode, encode};
use crate::storage::{SharedSnapshotStore, SnapshotData};
use crate::types::{GroupId, NodeId, PeerNode, SnapshotMeta, TypeConfig, Vote};

/// Generated from `proto/raft.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("trestle.raft.v1");
}

use pb::raft_peer_client::RaftPeerClient;
use pb::{RaftReply, RaftRequest, SnapshotChunk};

/// A snapshot as the transport carries it.
type SnapshotOf = Snapshot<crate::types::LeaderId, NodeId, PeerNode, SnapshotData>;

/// Turns a configured endpoint into a channel. The default connects lazily over TCP; a simulation supplies its
/// own connector (e.g. turmoil's simulated network) through [`PeerChannels::with_connect`].
pub type ConnectFn = Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>;

/// One lazily connected channel per peer URL, shared by every group and every clone.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Each member's current peer URL, as the memberships applied on this node record it: a member moved to
    /// another URL (MemberUpdate) is reached there, though openraft keeps the replication stream it opened with
    /// the old one.
    addresses: Arc<Mutex<HashMap<NodeId, String>>>,
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
            addresses: Arc::default(),
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
            addresses: Arc::default(),
            tls: None,
            connect: Some(Arc::new(connect)),
        }
    }

    /// Records `node`'s current peer URL (from an applied membership).
    pub fn set_address(&self, node: NodeId, url: &str) {
        let mut addresses = self.addresses.lock();
        if addresses.get(&node).is_none_or(|known| known != url) {
            addresses.insert(node, url.to_owned());
        }
    }

    /// `node`'s current peer URL, if a membership recorded one ([`PeerChannels::set_address`]).
    pub fn address(&self, node: NodeId) -> Option<String> {
        self.addresses.lock().get(&node).cloned()
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
    snapshot_chunk_bytes: usize,
    snapshot_chunk_timeout: Duration,
}

impl NetworkFactory {
    /// The factory of `group`, over the node's shared channels. Snapshots go in chunks of `snapshot_chunk_bytes`,
    /// each allowed `snapshot_chunk_timeout`.
    pub fn new(
        group: GroupId,
        channels: PeerChannels,
        snapshot_chunk_bytes: usize,
        snapshot_chunk_timeout: Duration,
    ) -> Self {
        Self {
            group,
            channels,
            snapshot_chunk_bytes: snapshot_chunk_bytes.max(1),
            snapshot_chunk_timeout,
        }
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
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            snapshot_chunk_timeout: self.snapshot_chunk_timeout,
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
    snapshot_chunk_bytes: usize,
    snapshot_chunk_timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

impl PeerClient {
    fn client(&self) -> Result<RaftPeerClient<Channel>, Unreachable<TypeConfig>> {
        let url = self
            .channels
            .address(self.target)
            .unwrap_or_else(|| self.url.clone());
        let channel = self.channels.get(&url).map_err(|e| Unreachable::new(&e))?;
        Ok(RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    async fn call<Req, Resp>(&self, rpc: Rpc, req: &Req, ttl: Duration) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client()?;
        let mut request = Request::new(RaftRequest {
            group: self.group,
            payload,
            target: self.target,
        });
        request.set_timeout(ttl);
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::PreVote => client.pre_vote(request).await,
            Rpc::TransferLeader => client.transfer_leader(request).await,
        };
        let reply = result
            .map_err(|status| self.status_error(status, ttl))?
            .into_inner();
        decode_reply(reply).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    fn status_error(&self, status: Status, ttl: Duration) -> RPCError<TypeConfig> {
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action: openraft::RPCTypes::AppendEntries,
                id: 0,
                target: self.target,
                timeout: ttl,
            }),
            // A refused connection, a node shutting down, a group not (or no longer) hosted: back off.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    /// Streams `snapshot` to the target in chunks and returns its answer once it installed it.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: SnapshotOf,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let network = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        let mut data = snapshot.snapshot;
        let size = data.seek(SeekFrom::End(0)).await.map_err(|e| network(&e))?;
        data.seek(SeekFrom::Start(0)).await.map_err(|e| network(&e))?;
        // The size lets the follower tell a whole snapshot from a stream that ended early.
        let header = encode(&(vote, &snapshot.meta, size)).map_err(|e| network(&e))?;
        // Each chunk may take the chunk timeout; the whole stream gets that for every chunk it holds.
        let chunks = size.div_ceil(self.snapshot_chunk_bytes as u64).max(1);
        let ttl = self
            .snapshot_chunk_timeout
            .saturating_mul(u32::try_from(chunks).unwrap_or(u32::MAX));
        let (group, target, chunk_bytes) = (self.group, self.target, self.snapshot_chunk_bytes);
        // The chunks are read as the transport asks for them: a snapshot is never held whole in memory.
        let stream = futures::stream::unfold(
            (data, Some(header), false),
            move |(mut data, header, done)| async move {
                if done {
                    return None;
                }
                let mut buf = vec![0u8; chunk_bytes];
                let mut filled = 0;
                while filled < buf.len() {
                    match data.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            // The follower refuses a stream shorter than the header's size.
                            tracing::warn!(group, error = %e, "reading a snapshot to send failed");
                            return None;
                        }
                    }
                }
                buf.truncate(filled);
                let last = filled < chunk_bytes;
                if filled == 0 && header.is_none() {
                    return None;
                }
                let chunk = SnapshotChunk {
                    group,
                    header: header.unwrap_or_default(),
                    data: buf,
                    target,
                };
                Some((chunk, (data, None, last)))
            },
        );
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        let mut request = Request::new(stream);
        request.set_timeout(ttl);
        let reply = client
            .stream_snapshot(request)
            .await
            .map_err(|status| StreamingError::from(self.status_error(status, ttl)))?
            .into_inner();
        decode_reply(reply).map_err(|e| network(&e))
    }
}

/// A reply's payload, or the error the peer put in it.
fn decode_reply<Resp: DeserializeOwned>(reply: RaftReply) -> Result<Resp, String> {
    if !reply.error.is_empty() {
        return Err(format!("peer error: {}", String::from_utf8_lossy(&reply.error)));
    }
    decode(&reply.payload).map_err(|e| format!("undecodable peer reply: {e}"))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Every AppendEntries is allowed one request timeout, however much it carries: a follower catching up on
        // large entries would time out on the same oversized batch forever. Send a prefix within a byte budget
        // and report how far it got; openraft sends the rest next.
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

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            result = self.send_snapshot(vote, snapshot) => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, option.hard_ttl()).await
    }

    fn backoff(&self) -> Option<Backoff> {
        // openraft asks for a backoff after `Unreachable`: exponential from 50 ms, capped at 1 s, so a restarted
        // peer is found again quickly and a dead one costs little.
        Some(Backoff::new((0..).map(|n: u32| {
            Duration::from_millis((50u64 << n.min(5)).min(1000))
        })))
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
            crate::types::EntryPayload::Normal(command) => command.0.len(),
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
    let mut request = Request::new(RaftRequest {
        group,
        payload,
        target: 0,
    });
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

/// Asks the peer at `url` for `group`'s members, as its leader knows them after a linearizable read
/// (`UNAVAILABLE` from a member that does not lead the group).
pub(crate) async fn members_at(
    channels: &PeerChannels,
    url: &str,
    group: GroupId,
    timeout: Duration,
) -> Result<Vec<(NodeId, PeerNode)>, Status> {
    let channel = channels
        .get(url)
        .map_err(|e| Status::unavailable(format!("bad peer url {url}: {e}")))?;
    let mut client = RaftPeerClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = Request::new(RaftRequest {
        group,
        payload: Vec::new(),
        target: 0,
    });
    request.set_timeout(timeout);
    let reply = client.members(request).await?.into_inner();
    decode_reply(reply).map_err(Status::internal)
}

/// The server side of the peer protocol.
#[derive(Clone, Debug)]
pub struct PeerService {
    node_id: NodeId,
    groups: GroupRegistry,
    snapshots: SharedSnapshotStore,
}

impl PeerService {
    /// A service of node `node_id` dispatching to the groups in `groups`; snapshots received for them are written
    /// into `snapshots` (the node's snapshot store). Requests that name another node id are refused.
    pub fn new(node_id: NodeId, groups: GroupRegistry, snapshots: SharedSnapshotStore) -> Self {
        Self {
            node_id,
            groups,
            snapshots,
        }
    }

    /// Refuses a request meant for another node id (0: any) with `UNAVAILABLE`, so the sender backs off as from
    /// a member that is down. A member removed and added back at the same peer URL with an empty data directory
    /// has a new id: the groups that still list the old one must not take this node for it, as it holds none of
    /// the old one's log or votes.
    fn check_target(&self, target: NodeId) -> Result<(), Status> {
        if target == 0 || target == self.node_id {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "a request for node {target} reached node {} (another incarnation at the same peer URL)",
            self.node_id
        )))
    }

    /// The tonic server wrapper, with no message size limit (snapshot chunks and entry batches are bounded by
    /// the sender's configuration instead).
    pub fn into_server(self) -> pb::raft_peer_server::RaftPeerServer<Self> {
        pb::raft_peer_server::RaftPeerServer::new(self).max_decoding_message_size(usize::MAX)
    }

    /// Receives a streamed snapshot into a reception of the snapshot store and installs it.
    async fn receive_snapshot(&self, mut chunks: Streaming<SnapshotChunk>) -> Result<Vec<u8>, Status> {
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        self.check_target(first.target)?;
        let group = first.group;
        let (vote, meta, size): (Vote, SnapshotMeta, u64) = decode_request(&first.header)?;
        let raft = self.groups.raft(group)?;
        check_snapshot(&vote, &meta, &raft.metrics().borrow_watched())?;
        let store = self.snapshots.clone();
        let mut data = if self.snapshots.blocks() {
            tokio::task::spawn_blocking(move || store.receive(group))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        } else {
            store.receive(group)
        }
        .map_err(|e| Status::internal(format!("group {group}: creating a snapshot reception: {e}")))?;
        let mut received = 0u64;
        let mut check = crate::snapshot_format::StreamCheck::new(size);
        let mut chunk = first;
        loop {
            received += chunk.data.len() as u64;
            check.update(&chunk.data);
            if received > size {
                return Err(Status::invalid_argument(format!(
                    "group {group}: the snapshot stream carries more than the {size} bytes it announced"
                )));
            }
            data.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("group {group}: writing a received snapshot: {e}")))?;
            match chunks.message().await? {
                Some(next) => chunk = next,
                None => break,
            }
        }
        if received != size {
            return Err(Status::invalid_argument(format!(
                "group {group}: the snapshot stream ended after {received} of {size} bytes"
            )));
        }
        // Damaged on the sender's disk or on the way: refused here, before openraft installs it (the sender
        // tries again; its own copy is checked when it restores from it).
        check
            .verify()
            .map_err(|e| Status::data_loss(format!("group {group}: received snapshot: {e}")))?;
        data.flush()
            .await
            .map_err(|e| Status::internal(format!("group {group}: writing a received snapshot: {e}")))?;
        let snapshot = Snapshot { meta, snapshot: data };
        let response = raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(format!("group {group}: {e}")))?;
        encode(&response).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Refuses a snapshot that no leader following the protocol could send: openraft would stop the group on it.
/// The snapshot may not end in a term beyond the sender's vote, and may not contradict what this node committed.
fn check_snapshot(
    vote: &Vote,
    meta: &SnapshotMeta,
    metrics: &openraft::RaftMetrics<TypeConfig>,
) -> Result<(), Status> {
    let Some(last) = meta.last_log_id else {
        return Err(Status::invalid_argument("a snapshot without a last log id"));
    };
    if last.leader_id > vote.leader_id {
        return Err(Status::invalid_argument(format!(
            "a snapshot ending at {last} from a leader with vote {vote}"
        )));
    }
    if let Some(committed) = metrics.local_committed
        && last > committed
        && last.index <= committed.index
    {
        return Err(Status::invalid_argument(format!(
            "a snapshot ending at {last} contradicts the committed log at {committed}"
        )));
    }
    Ok(())
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

/// A Raft call's answer: the response, or `UNAVAILABLE` when the group has stopped (the sender backs off).
fn answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    match result {
        Ok(value) => reply::<T, ()>(Ok(value)),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest {
            group,
            payload,
            target,
        } = request.into_inner();
        self.check_target(target)?;
        let raft = self.groups.raft(group)?;
        answer(raft.append_entries(decode_request(&payload)?).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest {
            group,
            payload,
            target,
        } = request.into_inner();
        self.check_target(target)?;
        let raft = self.groups.raft(group)?;
        answer(raft.vote(decode_request(&payload)?).await)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest {
            group,
            payload,
            target,
        } = request.into_inner();
        self.check_target(target)?;
        let raft = self.groups.raft(group)?;
        answer(raft.pre_vote(decode_request(&payload)?).await)
    }

    async fn stream_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let payload = self.receive_snapshot(request.into_inner()).await?;
        Ok(Response::new(RaftReply {
            payload,
            error: vec![],
        }))
    }

    async fn transfer_leader(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest {
            group,
            payload,
            target,
        } = request.into_inner();
        self.check_target(target)?;
        let raft = self.groups.raft(group)?;
        answer(raft.handle_transfer_leader(decode_request(&payload)?).await)
    }

    async fn forward(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let RaftRequest { group, payload, .. } = request.into_inner();
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

    async fn members(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let group = request.into_inner().group;
        let raft = self.groups.raft(group)?;
        // Only the leader answers, once it knows it still leads and has applied everything committed: a
        // lagging member could still list a removed member at the asker's peer URL, under the old id.
        raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| Status::unavailable(format!("group {group}: {e}")))?;
        let metrics = raft.metrics().borrow_watched().clone();
        let members: Vec<(NodeId, PeerNode)> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        reply::<_, ()>(Ok(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CommandBytes, Entry, EntryPayload, log_id};

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
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

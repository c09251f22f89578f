//! etcd's lock (`v3lockpb.Lock`) and election (`v3electionpb.Election`) gRPC services, served next to the KV API
//! so that `etcdctl lock` and `etcdctl elect` work against Trestle. Like etcd's own, they are thin: each call
//! runs trestle-lock's `Mutex` or trestle-election's `Election` against this node's own client API, with the
//! caller's lease.

use std::pin::Pin;

use etcd_client::proto::{PbKeyValue, PbResponseHeader};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::{Stream, StreamExt};
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};
use trestle_election::{Election, ElectionError, LeaderRecord};
use trestle_lock::{LockError, Mutex, Session};

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    pub mod lock {
        tonic::include_proto!("v3lockpb");
    }
    pub mod election {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::election::election_server::{Election as ElectionApi, ElectionServer};
use pb::election::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use pb::lock::lock_server::{Lock as LockApi, LockServer};
use pb::lock::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// etcd's error text when a proclamation comes from a candidate that does not lead.
const NOT_LEADER: &str = "election: not leader";
/// etcd's error text when nobody leads.
const NO_LEADER: &str = "election: no leader";

/// A client of this node's own etcd API, connected on first use (the node must be serving first).
#[derive(Clone)]
pub struct SelfClient {
    endpoint: String,
    tls: Option<trestle_raft::TlsFiles>,
    client: std::sync::Arc<OnceCell<Client>>,
}

impl std::fmt::Debug for SelfClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl SelfClient {
    /// A client for the node whose client URL is `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            client: std::sync::Arc::default(),
        }
    }

    /// Connects over TLS with the node's own client certificate, trusting the node's CA (the node's certificate
    /// must name the loopback address it listens on, e.g. 127.0.0.1).
    pub fn with_tls(mut self, tls: trestle_raft::TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    fn options(&self) -> Result<Option<etcd_client::ConnectOptions>, Status> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Status::internal(format!("cannot read {}: {e}", path.display())))
        };
        let mut options = etcd_client::TlsOptions::new().identity(etcd_client::Identity::from_pem(
            read(&tls.cert_file)?,
            read(&tls.key_file)?,
        ));
        if let Some(ca) = &tls.trusted_ca_file {
            options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        Ok(Some(etcd_client::ConnectOptions::new().with_tls(options)))
    }

    async fn get(&self) -> Result<Client, Status> {
        let options = self.options()?;
        self.client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], options))
            .await
            .cloned()
            .map_err(|e| Status::unavailable(format!("cannot reach this node's client API: {e}")))
    }

    async fn header(&self, client: &Client, key: &[u8]) -> Result<PbResponseHeader, Status> {
        let mut client = client.clone();
        let response = client.get(key, None).await.map_err(etcd_status)?;
        Ok(response.header().map(|h| h.0).unwrap_or_default())
    }
}

/// The lock and election services, to add to a node's client router.
pub fn services(client: SelfClient) -> (LockServer<LockService>, ElectionServer<ElectionService>) {
    (
        LockServer::new(LockService {
            client: client.clone(),
        }),
        ElectionServer::new(ElectionService { client }),
    )
}

/// `v3lockpb.Lock`.
#[derive(Clone, Debug)]
pub struct LockService {
    client: SelfClient,
}

#[tonic::async_trait]
impl LockApi for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        let client = self.client.get().await?;
        let session = Session::attach(client.clone(), request.lease);
        let mutex = Mutex::new(&session, &request.name).map_err(lock_status)?;
        // Cancel-safe: if the caller gives up, dropping this future removes the key it queued.
        let guard = mutex.lock().await.map_err(lock_status)?;
        let key = guard.detach();
        let header = self.client.header(&client, &key).await?;
        Ok(Response::new(LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let request = request.into_inner();
        if request.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let mut client = self.client.get().await?;
        let deleted = client.delete(request.key, None).await.map_err(etcd_status)?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header().map(|h| h.0),
        }))
    }
}

/// `v3electionpb.Election`.
#[derive(Clone, Debug)]
pub struct ElectionService {
    client: SelfClient,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ElectionApi for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let request = request.into_inner();
        let client = self.client.get().await?;
        let session = Session::attach(client.clone(), request.lease);
        let election = Election::new(&session, &request.name).map_err(election_status)?;
        let leadership = election.campaign(request.value).await.map_err(election_status)?;
        let leader = LeaderKey {
            name: request.name,
            key: leadership.key().to_vec(),
            rev: leadership.revision(),
            lease: leadership.lease(),
        };
        leadership.detach();
        let header = self.client.header(&client, &leader.key).await?;
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::invalid_argument("election: leader key is not provided"))?;
        let mut client = self.client.get().await?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.key.clone(),
                CompareOp::Equal,
                leader.rev,
            )])
            .and_then([TxnOp::put(
                leader.key,
                request.value,
                Some(PutOptions::new().with_lease(leader.lease)),
            )]);
        let response = client.txn(txn).await.map_err(etcd_status)?;
        if !response.succeeded() {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse {
            header: response.header().map(|h| h.0),
        }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let request = request.into_inner();
        let client = self.client.get().await?;
        let election = Election::observer(client.clone(), &request.name).map_err(election_status)?;
        let leader = election
            .leader()
            .await
            .map_err(election_status)?
            .ok_or_else(|| Status::unknown(NO_LEADER))?;
        let header = self.client.header(&client, &leader.key).await?;
        Ok(Response::new(LeaderResponse {
            header: Some(header),
            kv: Some(to_kv(leader)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let request = request.into_inner();
        let client = self.client.get().await?;
        let election = Election::observer(client, &request.name).map_err(election_status)?;
        let stream = election.observe().map(|item| match item {
            Ok(leader) => Ok(LeaderResponse {
                header: Some(PbResponseHeader {
                    revision: leader.mod_revision,
                    ..Default::default()
                }),
                kv: Some(to_kv(leader)),
            }),
            Err(e) => Err(election_status(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::invalid_argument("election: leader key is not provided"))?;
        let mut client = self.client.get().await?;
        // As etcd: resigning a leadership that is already gone is not an error.
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.key.clone(),
                CompareOp::Equal,
                leader.rev,
            )])
            .and_then([TxnOp::delete(leader.key, None)]);
        let response = client.txn(txn).await.map_err(etcd_status)?;
        Ok(Response::new(ResignResponse {
            header: response.header().map(|h| h.0),
        }))
    }
}

fn to_kv(leader: LeaderRecord) -> PbKeyValue {
    PbKeyValue {
        key: leader.key,
        create_revision: leader.create_revision,
        mod_revision: leader.mod_revision,
        version: leader.version,
        value: leader.value,
        lease: leader.lease,
    }
}

/// An etcd API error as the caller should see it: the server's own status passes through unchanged.
fn etcd_status(error: etcd_client::Error) -> Status {
    match error {
        etcd_client::Error::GRpcStatus(status) => status,
        other => Status::unavailable(other.to_string()),
    }
}

fn lock_status(error: LockError) -> Status {
    match error {
        LockError::Etcd(e) => etcd_status(e),
        LockError::EmptyName => Status::invalid_argument("lock: name is empty"),
        LockError::SessionLost { .. } => Status::not_found("etcdserver: requested lease not found"),
        other => Status::unknown(other.to_string()),
    }
}

fn election_status(error: ElectionError) -> Status {
    match error {
        ElectionError::Etcd(e) => etcd_status(e),
        ElectionError::Lock(e) => lock_status(e),
        ElectionError::EmptyName => Status::invalid_argument("election: name is empty"),
        ElectionError::NotLeader { .. } => Status::unknown(NOT_LEADER),
        other => Status::unknown(other.to_string()),
    }
}

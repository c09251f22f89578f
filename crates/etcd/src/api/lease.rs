//! etcd `Lease`: Grant, Revoke, KeepAlive (a bidirectional stream), TimeToLive, Leases.

use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseService,
    PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::EtcdServer;
use crate::mvcc::LeaseId;
use crate::store::{StoreCommand, StoreOutcome};

/// A fresh lease id: positive, non-zero, and unlikely to collide (a collision is refused by the store with
/// `lease already exists`, and the client may retry).
fn new_lease_id() -> LeaseId {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let id = (hasher.finish() >> 1) as LeaseId;
    if id == 0 { 1 } else { id }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbLeaseService for EtcdServer {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let req = request.into_inner();
        let id = if req.id == 0 { new_lease_id() } else { req.id };
        // etcd raises short TTLs to the minimum instead of refusing them.
        let ttl = req.ttl.max(self.store.settings().min_lease_ttl);
        let result = self.store.propose(StoreCommand::LeaseGrant { id, ttl }).await?;
        match result.outcome.map_err(Status::from)? {
            StoreOutcome::LeaseGranted(lease) => Ok(Response::new(PbLeaseGrantResponse {
                header: Some(self.header(result.revision)),
                id: lease.id,
                ttl: lease.ttl,
                error: String::new(),
            })),
            other => Err(Status::internal(format!(
                "etcdserver: unexpected outcome {other:?}"
            ))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let result = self.store.propose(StoreCommand::LeaseRevoke { id }).await?;
        result.outcome.map_err(Status::from)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: Some(self.header(result.revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let server = self.clone();
        let requests = request.into_inner();
        let responses = requests.then(move |item| {
            let server = server.clone();
            async move {
                let id = item?.id;
                // etcd answers a keep-alive for a lease that is gone with TTL 0, not an error.
                let ttl = match server.store.keep_alive(id).await {
                    Ok(ttl) => ttl,
                    Err(status) if status.code() == tonic::Code::NotFound => 0,
                    Err(status) => return Err(status),
                };
                let revision = server.store.read(|app| app.store().revision());
                Ok(PbLeaseKeepAliveResponse {
                    header: Some(server.header(revision)),
                    id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        self.store.read_barrier().await?;
        let (lease, keys, revision) = self.store.read(|app| {
            let store = app.store();
            (
                store.lease(req.id),
                if req.keys {
                    store.lease_keys(req.id)
                } else {
                    Vec::new()
                },
                store.revision(),
            )
        });
        let header = Some(self.header(revision));
        let Some(lease) = lease else {
            // etcd reports a missing lease as TTL -1.
            return Ok(Response::new(PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys,
            }));
        };
        let remaining = self.store.time_to_live(req.id).await?.unwrap_or(lease.ttl);
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.store.read_barrier().await?;
        let (leases, revision) = self
            .store
            .read(|app| (app.store().leases(), app.store().revision()));
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(self.header(revision)),
            leases: leases.into_iter().map(|l| PbLeaseStatus { id: l.id }).collect(),
        }))
    }
}

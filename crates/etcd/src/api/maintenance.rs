//! etcd `Maintenance`: Status and Alarm are served; the rest answer `UNIMPLEMENTED` with a reason.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse,
    PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::EtcdServer;

/// The etcd API version Trestle answers as: the v3 API as etcd 3.5 serves it.
pub(crate) const ETCD_API_VERSION: &str = "3.5.0";

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for EtcdServer {
    async fn alarm(&self, _request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        // Trestle raises no alarms: a full disk or a storage error stops the node instead.
        let revision = self.store.read(|app| app.store().revision());
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.header(revision)),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _request: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let metrics = self.store.raft().metrics().borrow().clone();
        let (revision, size) = self
            .store
            .read(|app| (app.store().revision(), app.store().approximate_size() as i64));
        let is_learner = metrics
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == self.store.node_id());
        Ok(Response::new(PbStatusResponse {
            header: Some(self.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size: size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "Defragment is not needed: RocksDB compacts on its own",
        ))
    }

    async fn hash(&self, _request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(Status::unimplemented("Hash is not supported"))
    }

    async fn hash_kv(
        &self,
        _request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        Err(Status::unimplemented("HashKV is not supported"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("Snapshot is not supported"))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "MoveLeader is not supported (openraft 0.9 has no leadership transfer)",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented("Downgrade is not supported"))
    }
}

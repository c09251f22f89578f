//! etcd `Maintenance`: Status, Alarm, Defragment (nothing to do), Hash, HashKV, Snapshot (a backup, see
//! `crate::backup`) and MoveLeader are served; the rest answer `UNIMPLEMENTED` with a reason.

use std::pin::Pin;
use trestle_raft::WatchReceiver as _;

use etcd_client::proto::PbAlarmMember;
use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse,
    PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};
use trestle_raft::TransferError;

use crate::store::{AlarmAction, AlarmKind, AlarmMember, StoreCommand, StoreOutcome};

use super::EtcdServer;

/// The etcd API version Trestle answers as: the v3 API as etcd 3.5 serves it.
pub(crate) const ETCD_API_VERSION: &str = "3.5.0";

/// The size of one message of a `Snapshot` stream (etcd sends 32 KiB; fewer, larger messages cost less here).
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for EtcdServer {
    async fn alarm(&self, request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        let request = request.into_inner();
        let to_pb = |alarms: Vec<AlarmMember>| -> Vec<PbAlarmMember> {
            alarms
                .into_iter()
                .map(|a| PbAlarmMember {
                    member_id: a.member,
                    alarm: a.alarm.to_etcd(),
                })
                .collect()
        };
        // etcd's AlarmAction: GET = 0, ACTIVATE = 1, DEACTIVATE = 2.
        let action = match request.action {
            0 => {
                // Linearizable, as etcd's (its alarm requests go through Raft): an alarm raised anywhere before
                // this request is listed.
                self.store.read_barrier().await?;
                let (alarms, revision) = self.store.read(|app| (app.alarms(), app.store().revision()));
                return Ok(Response::new(PbAlarmResponse {
                    header: Some(self.header(revision)),
                    alarms: to_pb(alarms),
                }));
            }
            1 => AlarmAction::Activate,
            2 => AlarmAction::Deactivate,
            other => return Err(Status::invalid_argument(format!("unknown alarm action {other}"))),
        };
        let Some(alarm) = AlarmKind::from_etcd(request.alarm) else {
            // etcd ignores an alarm of type NONE (or one it does not know): nothing to raise or clear.
            let revision = self.store.read(|app| app.store().revision());
            return Ok(Response::new(PbAlarmResponse {
                header: Some(self.header(revision)),
                alarms: Vec::new(),
            }));
        };
        let result = self
            .store
            .propose(StoreCommand::Alarm {
                action,
                member: request.member_id,
                alarm,
            })
            .await?;
        let alarms = match result.outcome {
            Ok(StoreOutcome::Alarms(alarms)) => alarms,
            Ok(other) => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.header(result.revision)),
            alarms: to_pb(alarms),
        }))
    }

    async fn status(&self, _request: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let metrics = self.store.raft().metrics().borrow_watched().clone();
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
            errors: self.store.read(|app| {
                app.alarms()
                    .iter()
                    .map(|a| format!("memberID:{} alarm:{}", a.member, a.alarm.name()))
                    .collect()
            }),
            db_size_in_use: size,
            is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        // Nothing to give back: compaction already freed the space (the store's size is what it holds), and
        // RocksDB compacts its files on its own. Answered, so etcd's compact-defragment-disarm routine works.
        let revision = self.store.read(|app| app.store().revision());
        Ok(Response::new(PbDefragmentResponse {
            header: Some(self.header(revision)),
        }))
    }

    async fn hash(&self, _request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        let (hash, revision) = self
            .store
            .read(|app| (app.store().hash(), app.store().revision()));
        let hash = hash.map_err(Status::from)?;
        Ok(Response::new(PbHashResponse {
            header: Some(self.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        // This member's own applied state, as etcd does: compare members at one revision they all reached.
        let requested = request.into_inner().revision;
        let (hashed, revision) = self
            .store
            .read(|app| (app.store().hash_kv(requested), app.store().revision()));
        let (hash, compact_revision) = hashed.map_err(Status::from)?;
        Ok(Response::new(PbHashKvResponse {
            header: Some(self.header(revision)),
            hash,
            compact_revision,
            hash_revision: if requested == 0 { revision } else { requested },
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // This member's applied state, at one revision: frozen under the store's read lock, written after it
        // is released, while entries go on applying.
        let (frozen, revision) = self
            .store
            .read(|app| (app.freeze_backup(), app.store().revision()));
        let backup = tokio::task::spawn_blocking(move || crate::backup::encode_backup(frozen))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let backup = backup.map_err(|e| Status::internal(e.to_string()))?;
        let header = self.header(revision);
        let total = backup.len();
        // Each message copies its slice when the transport asks for it: the backup is held once, not twice.
        let chunks = (0..total).step_by(SNAPSHOT_CHUNK_BYTES).map(move |start| {
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(total);
            Ok(PbSnapshotResponse {
                header: Some(header),
                remaining_bytes: (total - end) as u64,
                blob: backup[start..end].to_vec(),
                ..Default::default()
            })
        });
        metrics::counter!("trestle_store_backups_total").increment(1);
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let timeout = self.store.settings().replicated.request_timeout;
        let moved =
            trestle_raft::transfer_leadership(self.store.raft(), crate::STORE_GROUP, Some(target), timeout)
                .await;
        match moved {
            Ok(leader) if leader == target => {}
            Ok(_) | Err(TransferError::TimedOut { .. }) => {
                return Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                ));
            }
            Err(TransferError::NotLeader { .. }) => {
                return Err(Status::failed_precondition("etcdserver: not leader"));
            }
            Err(TransferError::NotAVoter { .. } | TransferError::NoSuccessor { .. }) => {
                return Err(Status::failed_precondition("etcdserver: bad leader transferee"));
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
        let revision = self.store.read(|app| app.store().revision());
        Ok(Response::new(PbMoveLeaderResponse {
            header: Some(self.header(revision)),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented("Downgrade is not supported"))
    }
}

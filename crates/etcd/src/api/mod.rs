//! etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance) served from the coordination store.
//!
//! The service traits and messages are the ones the `etcd-client` crate generates from etcd's own protos, so the
//! package, service, method and field numbers are etcd's and real etcd clients (etcdctl, etcd-client, the Go
//! client) work unchanged. Errors use etcd's gRPC codes and messages.

mod cluster;
mod convert;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader, PbWatchServer,
};
use tonic::Status;

use crate::mvcc::Revision;
use crate::store::Store;

/// etcd's default limit on one request (`--max-request-bytes`): 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// gRPC's own receive limit sits above the request limit (etcd adds 512 KiB), so an oversized request gets
/// etcd's clear `request is too large` instead of a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Settings of the client-facing API.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdSettings {
    /// The cluster id reported in every response header.
    pub cluster_id: u64,
    /// The largest request accepted, in bytes. Default 1.5 MiB (etcd's).
    pub max_request_bytes: usize,
    /// How often a watch with `progress_notify` gets a progress response. Default 10 minutes (etcd's).
    pub watch_progress_interval: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            cluster_id: 0,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            watch_progress_interval: Duration::from_secs(600),
        }
    }
}

/// The etcd v3 API of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EtcdServer {
    store: Store,
    settings: EtcdSettings,
    /// Cancelled when the node stops: long-lived streams end with `UNAVAILABLE` so clients move to another node
    /// instead of waiting on one that no longer applies anything.
    stopping: tokio_util::sync::CancellationToken,
}

/// The tonic services of [`EtcdServer`], ready to add to a router.
#[allow(missing_debug_implementations)]
pub struct EtcdServices {
    /// KV.
    pub kv: PbKvServer<EtcdServer>,
    /// Watch.
    pub watch: PbWatchServer<EtcdServer>,
    /// Lease.
    pub lease: PbLeaseServer<EtcdServer>,
    /// Cluster.
    pub cluster: PbClusterServer<EtcdServer>,
    /// Maintenance.
    pub maintenance: PbMaintenanceServer<EtcdServer>,
}

impl EtcdServer {
    /// The API over `store`.
    pub fn new(store: Store, settings: EtcdSettings) -> Self {
        Self {
            store,
            settings,
            stopping: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ends watch streams with `UNAVAILABLE` when `token` is cancelled (the node stopping).
    pub fn with_shutdown(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.stopping = token;
        self
    }

    /// The store behind the API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tonic services, with etcd's message size limits.
    pub fn into_services(self) -> EtcdServices {
        let limit = self.settings.max_request_bytes + GRPC_OVERHEAD_BYTES;
        EtcdServices {
            kv: PbKvServer::new(self.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            watch: PbWatchServer::new(self.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            lease: PbLeaseServer::new(self.clone()).max_decoding_message_size(limit),
            cluster: PbClusterServer::new(self.clone()).max_decoding_message_size(limit),
            maintenance: PbMaintenanceServer::new(self).max_decoding_message_size(limit),
        }
    }

    fn header(&self, revision: Revision) -> PbResponseHeader {
        PbResponseHeader {
            cluster_id: self.settings.cluster_id,
            member_id: self.store.node_id(),
            revision,
            raft_term: self.store.raft().metrics().borrow_watched().current_term,
        }
    }

    fn check_size(&self, message: &impl prost::Message) -> Result<(), Status> {
        if message.encoded_len() > self.settings.max_request_bytes {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        Ok(())
    }
}

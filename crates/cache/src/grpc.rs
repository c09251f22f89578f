//! The node's gRPC API (`proto/cache.proto`, package `trestle.cache.v1`): get, set, delete and touch, batched get
//! and set, and CAS, over the same [`Store`] the memcached listener serves, so a key written here is the same key
//! for memcached clients.
//!
//! Bad input is refused before the store sees it, with the gRPC code a caller can act on and the offending value in
//! the message: an empty key or one over 250 bytes, a value over the node's largest value, a batch over
//! [`GrpcConfig::max_batch`] are `INVALID_ARGUMENT`; a CAS that does not match is `ABORTED` (read again, retry);
//! a CAS on an absent key is `NOT_FOUND`. Every call is counted, by method and code, with its latency, in the
//! node's [`NodeMetrics`] (`/metrics`).
//!
//! Times to live are relative seconds here (0: until evicted), whatever their size: unlike memcached's exptime, a
//! TTL over 30 days is not read as a Unix time.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Code, Request, Response, Status};

use crate::error::ConfigError;
use crate::metrics::{GrpcMethod, NodeMetrics};
use crate::protocol::{MAX_KEY_LEN, StoreMode};
use crate::store::{DeleteOutcome, Store, StoreOutcome};

/// The generated protobuf types, the gRPC server ([`proto::cache_server::CacheServer`]) and a client
/// ([`proto::cache_client::CacheClient`]).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("trestle.cache.v1");
}

use proto::{
    DeleteRequest, DeleteResponse, GetManyRequest, GetManyResponse, GetRequest, GetResponse, Item, KeyedItem,
    SetManyRequest, SetManyResponse, SetRequest, SetResponse, SetResult, SetStatus, TouchRequest,
    TouchResponse,
};

/// Limits of the gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// Most keys in one `GetMany`, most items in one `SetMany` (default 1024).
    pub max_batch: usize,
    /// Largest request message in bytes (default 4 MiB). Must leave room for one largest value.
    pub max_message_bytes: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl GrpcConfig {
    /// Sets the largest batch.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Sets the largest request message.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.max_message_bytes = max_message_bytes;
        self
    }

    /// Checks the limits against the store's largest value.
    pub fn validate(&self, max_item_size: usize) -> Result<(), ConfigError> {
        if self.max_batch == 0 {
            return Err(ConfigError::ZeroLimit { name: "max_batch" });
        }
        // A key, the framing of a SetRequest and the gRPC message header fit in the slack.
        if self.max_message_bytes < max_item_size.saturating_add(GRPC_SLACK) {
            return Err(ConfigError::GrpcMessageTooSmall {
                max_message_bytes: self.max_message_bytes,
                max_item_size,
            });
        }
        Ok(())
    }
}

const GRPC_SLACK: usize = 1024;

/// Relative TTLs above this are memcached absolute times; the API converts them.
const RELATIVE_LIMIT: u64 = 60 * 60 * 24 * 30;

/// The `trestle.cache.v1.Cache` service over a store.
#[derive(Debug, Clone)]
pub struct CacheService {
    store: Arc<Store>,
    metrics: Arc<NodeMetrics>,
    config: GrpcConfig,
}

impl CacheService {
    /// A service over `store`, counting into `metrics`.
    pub fn new(store: Arc<Store>, metrics: Arc<NodeMetrics>, config: GrpcConfig) -> Self {
        Self {
            store,
            metrics,
            config,
        }
    }

    /// The tonic server for this service, its message limit set.
    pub fn into_server(self) -> proto::cache_server::CacheServer<Self> {
        let limit = self.config.max_message_bytes;
        proto::cache_server::CacheServer::new(self).max_decoding_message_size(limit)
    }

    fn counted<T>(
        &self,
        method: GrpcMethod,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.observe_grpc(method, code, started.elapsed());
        result
    }

    fn exptime(&self, ttl_seconds: u64) -> i64 {
        if ttl_seconds <= RELATIVE_LIMIT {
            ttl_seconds as i64
        } else {
            i64::try_from(self.store.unix_now().saturating_add(ttl_seconds)).unwrap_or(i64::MAX)
        }
    }

    fn check_value(&self, value: &[u8], what: &str) -> Result<(), Status> {
        let limit = self.store.config().max_item_size;
        if value.len() > limit {
            return Err(Status::invalid_argument(format!(
                "{what}value of {} bytes is over the node's limit of {limit} bytes",
                value.len()
            )));
        }
        Ok(())
    }

    fn check_batch(&self, len: usize, what: &str) -> Result<(), Status> {
        if len > self.config.max_batch {
            return Err(Status::invalid_argument(format!(
                "a batch of {len} {what} is over the limit of {}",
                self.config.max_batch
            )));
        }
        Ok(())
    }

    fn set_one(&self, request: SetRequest) -> StoreOutcome {
        let exptime = self.exptime(request.ttl_seconds);
        self.store.meta_set(
            StoreMode::Set,
            Bytes::from(request.key),
            request.flags,
            exptime,
            Bytes::from(request.value),
            request.compare_cas,
            false,
            None,
        )
    }

    fn get_item(&self, key: &[u8]) -> Option<Item> {
        match self.store.get(key, None) {
            Some(hit) => {
                self.metrics.hit();
                Some(Item {
                    value: hit.value.to_vec(),
                    flags: hit.flags,
                    cas: hit.cas,
                })
            }
            None => {
                self.metrics.miss();
                None
            }
        }
    }
}

fn check_key(key: &[u8], what: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!("{what}key is empty")));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Status::invalid_argument(format!(
            "{what}key of {} bytes is over the limit of {MAX_KEY_LEN} bytes",
            key.len()
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl proto::cache_server::Cache for CacheService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = check_key(&request.key, "").map(|()| GetResponse {
            item: self.get_item(&request.key),
        });
        self.counted(GrpcMethod::Get, started, result).map(Response::new)
    }

    async fn get_many(&self, request: Request<GetManyRequest>) -> Result<Response<GetManyResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            self.check_batch(request.keys.len(), "keys")?;
            for (i, key) in request.keys.iter().enumerate() {
                check_key(key, &format!("keys[{i}]: "))?;
            }
            let hits = request
                .keys
                .into_iter()
                .filter_map(|key| {
                    let item = self.get_item(&key)?;
                    Some(KeyedItem {
                        key,
                        item: Some(item),
                    })
                })
                .collect();
            Ok(GetManyResponse { hits })
        })();
        self.counted(GrpcMethod::GetMany, started, result)
            .map(Response::new)
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            check_key(&request.key, "")?;
            self.check_value(&request.value, "")?;
            let compare = request.compare_cas;
            match self.set_one(request) {
                StoreOutcome::Stored(cas) => Ok(SetResponse { cas }),
                StoreOutcome::Exists => Err(Status::aborted(format!(
                    "compare_cas {} does not match the item's version",
                    compare.unwrap_or_default()
                ))),
                StoreOutcome::NotFound => {
                    Err(Status::not_found("compare_cas given and there is no such key"))
                }
                StoreOutcome::TooLarge => Err(Status::invalid_argument(format!(
                    "value is over the node's limit of {} bytes",
                    self.store.config().max_item_size
                ))),
                StoreOutcome::NotStored => Err(Status::internal("a plain set was not stored")),
            }
        })();
        self.counted(GrpcMethod::Set, started, result).map(Response::new)
    }

    async fn set_many(&self, request: Request<SetManyRequest>) -> Result<Response<SetManyResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            self.check_batch(request.items.len(), "items")?;
            for (i, item) in request.items.iter().enumerate() {
                let what = format!("items[{i}]: ");
                check_key(&item.key, &what)?;
                self.check_value(&item.value, &what)?;
            }
            let results = request
                .items
                .into_iter()
                .map(|item| match self.set_one(item) {
                    StoreOutcome::Stored(cas) => SetResult {
                        status: SetStatus::Stored.into(),
                        cas,
                    },
                    StoreOutcome::Exists => SetResult {
                        status: SetStatus::CasMismatch.into(),
                        cas: 0,
                    },
                    _ => SetResult {
                        status: SetStatus::NotFound.into(),
                        cas: 0,
                    },
                })
                .collect();
            Ok(SetManyResponse { results })
        })();
        self.counted(GrpcMethod::SetMany, started, result)
            .map(Response::new)
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = (|| {
            check_key(&request.key, "")?;
            match self
                .store
                .meta_delete(&request.key, request.compare_cas, false, None)
            {
                DeleteOutcome::Deleted => Ok(DeleteResponse { deleted: true }),
                DeleteOutcome::NotFound => Ok(DeleteResponse { deleted: false }),
                DeleteOutcome::Exists => Err(Status::aborted(format!(
                    "compare_cas {} does not match the item's version",
                    request.compare_cas.unwrap_or_default()
                ))),
            }
        })();
        self.counted(GrpcMethod::Delete, started, result)
            .map(Response::new)
    }

    async fn touch(&self, request: Request<TouchRequest>) -> Result<Response<TouchResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = check_key(&request.key, "").map(|()| TouchResponse {
            found: self.store.touch(&request.key, self.exptime(request.ttl_seconds)),
        });
        self.counted(GrpcMethod::Touch, started, result)
            .map(Response::new)
    }
}

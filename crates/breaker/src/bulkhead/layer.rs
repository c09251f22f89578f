use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::{Bulkhead, BulkheadConfig, Shared};
use crate::config::ConfigError;

/// Applies a bulkhead. Every service made by this layer (and by its clones) shares the same slots and queue.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// A bulkhead, if `config` is valid.
    pub fn new(config: BulkheadConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
                queued: AtomicUsize::new(0),
                config,
            }),
        })
    }

    pub(crate) fn wrap<S>(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.wrap(inner)
    }
}

//! The bulkhead: a concurrency cap with a bounded wait queue and a maximum wait.
//!
//! A call takes a slot if one is free. Otherwise it waits in a FIFO queue of at most `max_queued` calls for at most
//! `max_wait`; when the queue is full it fails at once with [`BulkheadFull`], and when the wait runs out with
//! [`BulkheadTimeout`]. Slots are released when the response future completes *or is dropped*, so a cancelled call
//! cannot leak one. Clones of the service share the slots.

mod error;
mod future;
mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use error::{BulkheadFull, BulkheadTimeout};
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::BoxError;
use crate::config::{self, ConfigError};

/// Bulkhead settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// Calls allowed in flight at once. Positive; default `25`.
    pub max_concurrent: usize,
    /// Calls allowed to wait for a slot. `0` rejects at once when full; default `0`.
    pub max_queued: usize,
    /// Longest a queued call waits. Must be positive when `max_queued > 0`; default 0.
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 25,
            max_queued: 0,
            max_wait: Duration::ZERO,
        }
    }
}

impl BulkheadConfig {
    /// `max_concurrent` slots, no queue.
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            max_concurrent,
            ..Self::default()
        }
    }

    /// Lets up to `max_queued` calls wait up to `max_wait` for a slot.
    pub fn with_queue(mut self, max_queued: usize, max_wait: Duration) -> Self {
        self.max_queued = max_queued;
        self.max_wait = max_wait;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::positive("max_concurrent", self.max_concurrent as u64)?;
        config::not_above(
            "max_concurrent",
            self.max_concurrent as u128,
            "tokio::sync::Semaphore::MAX_PERMITS",
            Semaphore::MAX_PERMITS as u128,
        )?;
        if self.max_queued > 0 {
            config::positive_duration("max_wait", self.max_wait)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) queued: AtomicUsize,
    pub(crate) config: BulkheadConfig,
}

/// Wraps a service with a bulkhead. See the [module docs](self).
#[derive(Debug)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> Bulkhead<S> {
    /// Wraps `inner` with a new bulkhead of its own.
    pub fn new(inner: S, config: BulkheadConfig) -> Result<Self, ConfigError> {
        Ok(BulkheadLayer::new(config)?.wrap(inner))
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.shared.config.max_concurrent - self.shared.semaphore.available_permits()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Decrements the queue length when dropped.
#[derive(Debug)]
pub(crate) struct QueueSlot(pub(crate) Arc<Shared>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Ok(permit) = self.shared.semaphore.clone().try_acquire_owned() {
            return ResponseFuture::running(self.inner.call(req), permit);
        }
        let config = &self.shared.config;
        let full = BulkheadFull {
            max_concurrent: config.max_concurrent,
            max_queued: config.max_queued,
        };
        if config.max_queued == 0 {
            return ResponseFuture::rejected(full.into());
        }
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= config.max_queued {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return ResponseFuture::rejected(full.into());
        }
        let slot = QueueSlot(self.shared.clone());
        // The service we polled ready goes with the queued call; this bulkhead keeps a fresh clone.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::queued(ready, req, slot, self.shared.semaphore.clone(), config.max_wait)
    }
}

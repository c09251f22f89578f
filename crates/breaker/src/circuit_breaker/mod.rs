//! The circuit breaker layer.
//!
//! A [`CircuitBreakerHandle`] is one breaker (state machine, clock, events, metrics); [`CircuitBreakerLayer`] wraps
//! services with it, and [`BreakerRegistry`] keeps one breaker per key (per upstream host, say).

mod error;
mod future;
mod handle;
mod layer;
mod registry;

use std::task::{Context, Poll};

pub use error::CircuitOpen;
pub use future::ResponseFuture;
pub use handle::{CircuitBreakerHandle, StateChange};
pub use layer::CircuitBreakerLayer;
pub use registry::{BreakerRegistry, Keyed, RegistryConfig, SelectBreaker};
use tower_service::Service;

use crate::BoxError;
use crate::classify::{AnyErrorIsFailure, Classify};

/// Wraps a service with a circuit breaker. See the [module docs](self).
///
/// A rejected call never reaches the inner service and fails with [`CircuitOpen`]. Every error is boxed
/// ([`BoxError`]); downcast to find `CircuitOpen` or the inner service's error.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C = AnyErrorIsFailure, B = CircuitBreakerHandle> {
    inner: S,
    breakers: B,
    classifier: C,
}

impl<S, C, B> CircuitBreaker<S, C, B> {
    /// Wraps `inner`: `breakers` picks the breaker for each request (a [`CircuitBreakerHandle`] for one breaker, a
    /// [`Keyed`] for one per key), `classifier` decides what is a failure.
    pub fn new(inner: S, breakers: B, classifier: C) -> Self {
        Self {
            inner,
            breakers,
            classifier,
        }
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

impl<S, C, B, Req> Service<Req> for CircuitBreaker<S, C, B>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    B: SelectBreaker<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let breaker = self.breakers.select(&req);
        match breaker.try_acquire() {
            Ok(guard) => ResponseFuture::called(self.inner.call(req), guard, self.classifier.clone()),
            Err(open) => ResponseFuture::rejected(open, self.classifier.clone()),
        }
    }
}

//! Adaptive concurrency: a concurrency cap that a [`LimitAlgorithm`] ([`Aimd`](crate::machine::Aimd),
//! [`Gradient`](crate::machine::Gradient)) moves from observed latencies and failures.
//!
//! A call beyond the current limit fails at once with [`ConcurrencyLimited`]. A completed call is a sample (its
//! latency from the injected [`Clock`](crate::Clock); a [`Failure`](crate::Outcome::Failure) counts as a drop); an
//! [`Ignored`](crate::Outcome::Ignored) result or a cancelled call frees its slot without teaching the algorithm
//! anything. Clones share the limit.

mod error;
mod future;
mod layer;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub use error::ConcurrencyLimited;
pub use future::ResponseFuture;
pub use layer::AdaptiveConcurrencyLayer;
use parking_lot::Mutex;
use tower_service::Service;

use crate::BoxError;
use crate::classify::{AnyErrorIsFailure, Classify, Outcome};
use crate::clock::SharedClock;
use crate::machine::{LimitAlgorithm, Sample};

pub(crate) struct LimiterState<A> {
    algorithm: A,
    in_flight: u32,
}

pub(crate) struct Shared<A> {
    state: Mutex<LimiterState<A>>,
    clock: SharedClock,
}

/// A slot taken by one call. Completing it teaches the algorithm; dropping it only frees the slot.
pub(crate) struct Slot<A: LimitAlgorithm> {
    shared: Arc<Shared<A>>,
    start: Instant,
    in_flight: u32,
    done: bool,
}

impl<A: LimitAlgorithm> Slot<A> {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.done = true;
        let rtt = self.shared.clock.now().saturating_duration_since(self.start);
        let mut state = self.shared.state.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if outcome != Outcome::Ignored {
            let sample = Sample {
                rtt,
                in_flight: self.in_flight,
                dropped: outcome == Outcome::Failure,
            };
            let limit = state.algorithm.on_sample(sample);
            metrics::gauge!("trestle_adaptive_concurrency_limit").set(f64::from(limit));
        }
    }
}

impl<A: LimitAlgorithm> Drop for Slot<A> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.shared.state.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// Wraps a service with an adaptive concurrency limit. See the [module docs](self).
pub struct AdaptiveConcurrency<S, A, C = AnyErrorIsFailure> {
    inner: S,
    shared: Arc<Shared<A>>,
    classifier: C,
}

impl<S: Clone, A, C: Clone> Clone for AdaptiveConcurrency<S, A, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, A: LimitAlgorithm, C> fmt::Debug for AdaptiveConcurrency<S, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrency")
            .field("inner", &self.inner)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<S, A: LimitAlgorithm, C> AdaptiveConcurrency<S, A, C> {
    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.shared.state.lock().algorithm.limit()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> u32 {
        self.shared.state.lock().in_flight
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

impl<S, A, C, Req> Service<Req> for AdaptiveConcurrency<S, A, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    A: LimitAlgorithm,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, A, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let start = self.shared.clock.now();
        let in_flight = {
            let mut state = self.shared.state.lock();
            let limit = state.algorithm.limit();
            if state.in_flight >= limit {
                metrics::counter!("trestle_adaptive_concurrency_rejected_total").increment(1);
                return ResponseFuture::rejected(
                    ConcurrencyLimited {
                        limit,
                        in_flight: state.in_flight,
                    },
                    self.classifier.clone(),
                );
            }
            state.in_flight += 1;
            state.in_flight
        };
        let slot = Slot {
            shared: self.shared.clone(),
            start,
            in_flight,
            done: false,
        };
        ResponseFuture::called(self.inner.call(req), slot, self.classifier.clone())
    }
}

//! Client-side adaptive throttling, as in Google's SRE book: once the backend rejects more than `(K - 1) / K` of
//! recent requests, the client rejects new ones locally with probability
//! `max(0, (requests - K * accepts) / (requests + 1))`, so it stops hammering a backend that is already shedding.
//!
//! A result the classifier calls a [`Failure`](crate::Outcome::Failure) was not accepted; anything else (success
//! or a client error) was. Locally rejected calls fail with [`Throttled`]. Randomness comes from an injected
//! [`Random`](crate::Random); clones share the counts.

mod error;
mod future;
mod layer;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use error::Throttled;
pub use future::ResponseFuture;
pub use layer::AdaptiveThrottleLayer;
use parking_lot::Mutex;
use tower_service::Service;

use crate::BoxError;
use crate::classify::{AnyErrorIsFailure, Classify, Outcome};
use crate::clock::{SharedClock, SharedRandom};
use crate::machine::ThrottleMachine;

pub(crate) struct Shared {
    machine: Mutex<ThrottleMachine>,
    clock: SharedClock,
    random: SharedRandom,
}

impl Shared {
    pub(crate) fn record(&self, outcome: Outcome) {
        if outcome != Outcome::Failure {
            let now = self.clock.now();
            self.machine.lock().record_accepted(now);
        }
    }
}

/// Wraps a service with adaptive throttling. See the [module docs](self).
pub struct AdaptiveThrottle<S, C = AnyErrorIsFailure> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
}

impl<S: Clone, C: Clone> Clone for AdaptiveThrottle<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for AdaptiveThrottle<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C> AdaptiveThrottle<S, C> {
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

impl<S, C, Req> Service<Req> for AdaptiveThrottle<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = self.shared.clock.now();
        let random = self.shared.random.next_f64();
        let admitted = self.shared.machine.lock().admit(now, random);
        match admitted {
            Ok(()) => {
                ResponseFuture::called(self.inner.call(req), self.shared.clone(), self.classifier.clone())
            }
            Err(probability) => {
                metrics::counter!("trestle_throttled_total").increment(1);
                ResponseFuture::rejected(Throttled { probability }, self.classifier.clone())
            }
        }
    }
}

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tower_layer::Layer;

use super::{AdaptiveConcurrency, LimiterState, Shared};
use crate::classify::AnyErrorIsFailure;
use crate::clock::{Clock, TokioClock};
use crate::machine::LimitAlgorithm;

/// Applies an adaptive concurrency limit. Clones and every service made share the limit.
pub struct AdaptiveConcurrencyLayer<A, C = AnyErrorIsFailure> {
    shared: Arc<Shared<A>>,
    classifier: C,
}

impl<A, C: Clone> Clone for AdaptiveConcurrencyLayer<A, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<A: LimitAlgorithm, C> fmt::Debug for AdaptiveConcurrencyLayer<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLayer")
            .field("limit", &self.limit())
            .finish()
    }
}

impl<A: LimitAlgorithm> AdaptiveConcurrencyLayer<A> {
    /// A limit driven by `algorithm` (already validated by its constructor), on tokio's clock.
    pub fn new(algorithm: A) -> Self {
        Self::with_clock(algorithm, TokioClock)
    }

    /// The same on the given clock (used to measure latency).
    pub fn with_clock(algorithm: A, clock: impl Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(LimiterState {
                    algorithm,
                    in_flight: 0,
                }),
                clock: Arc::new(clock),
            }),
            classifier: AnyErrorIsFailure,
        }
    }
}

impl<A: LimitAlgorithm, C> AdaptiveConcurrencyLayer<A, C> {
    /// Uses `classifier` to decide which results are drops.
    pub fn with_classifier<C2>(self, classifier: C2) -> AdaptiveConcurrencyLayer<A, C2> {
        AdaptiveConcurrencyLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.shared.state.lock().algorithm.limit()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> u32 {
        self.shared.state.lock().in_flight
    }
}

impl<S, A, C: Clone> Layer<S> for AdaptiveConcurrencyLayer<A, C> {
    type Service = AdaptiveConcurrency<S, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrency {
            inner,
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

use tower_layer::Layer;

use super::{BreakerRegistry, CircuitBreaker, CircuitBreakerHandle, Keyed};
use crate::classify::AnyErrorIsFailure;

/// Applies a circuit breaker to services. Clones (and every service it makes) share the breaker(s).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = AnyErrorIsFailure, B = CircuitBreakerHandle> {
    breakers: B,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// One breaker for every request; any `Err` is a failure.
    pub fn new(breaker: CircuitBreakerHandle) -> Self {
        Self {
            breakers: breaker,
            classifier: AnyErrorIsFailure,
        }
    }
}

impl<K, F> CircuitBreakerLayer<AnyErrorIsFailure, Keyed<K, F>> {
    /// One breaker per key, from `registry`; `key` extracts the key from a request.
    pub fn keyed(registry: BreakerRegistry<K>, key: F) -> Self {
        Self {
            breakers: Keyed::new(registry, key),
            classifier: AnyErrorIsFailure,
        }
    }
}

impl<C, B> CircuitBreakerLayer<C, B> {
    /// Uses `classifier` to decide which results are failures (for example [`crate::GrpcClassifier`]).
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2, B> {
        CircuitBreakerLayer {
            breakers: self.breakers,
            classifier,
        }
    }
}

impl<S, C: Clone, B: Clone> Layer<S> for CircuitBreakerLayer<C, B> {
    type Service = CircuitBreaker<S, C, B>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breakers.clone(), self.classifier.clone())
    }
}

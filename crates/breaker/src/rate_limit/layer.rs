use std::sync::Arc;

use tower_layer::Layer;

use super::{GlobalKey, RateLimit};

/// Applies a rate limiter. Every service made by this layer (and its clones) shares the limiter.
#[derive(Debug)]
pub struct RateLimitLayer<L, KE = GlobalKey> {
    limiter: Arc<L>,
    key: KE,
}

impl<L, KE: Clone> Clone for RateLimitLayer<L, KE> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<L> RateLimitLayer<L> {
    /// One limit for all requests.
    pub fn new(limiter: L) -> Self {
        Self {
            limiter: Arc::new(limiter),
            key: GlobalKey,
        }
    }
}

impl<L, KE> RateLimitLayer<L, KE> {
    /// One limit per key; `key` extracts it from a request (a closure `Fn(&Req) -> K` or a
    /// [`KeyExtractor`](super::KeyExtractor)).
    pub fn keyed(limiter: L, key: KE) -> Self {
        Self {
            limiter: Arc::new(limiter),
            key,
        }
    }

    /// A layer over an already shared limiter.
    pub fn from_shared(limiter: Arc<L>, key: KE) -> Self {
        Self { limiter, key }
    }
}

impl<S, L, KE: Clone> Layer<S> for RateLimitLayer<L, KE> {
    type Service = RateLimit<S, L, KE>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone(), self.key.clone())
    }
}

//! Rate limiting behind the [`RateLimiter`] trait, with GCRA limiters from `governor`: [`GcraLimiter`] (one bucket)
//! and [`KeyedGcraLimiter`] (one per key: user, IP, route).
//!
//! Over the limit, a call fails at once with [`RateLimited`], which carries the time until it would be admitted;
//! [`crate::reject`] turns it into HTTP 429 with `Retry-After` or gRPC `RESOURCE_EXHAUSTED`. Unlike tower's
//! `RateLimit`, the service is `Clone` and every clone draws on the same limiter, so it works under axum without a
//! `Buffer`.
//!
//! # A cluster-wide limit
//!
//! No cluster-wide limiter ships yet; [`RateLimiter`] is where one plugs in. The intended shape, for whoever builds
//! it over the Trestle store (the etcd-compatible crates are owned elsewhere; this crate stays independent of them):
//! each replica leases batches of tokens from a shared counter in the background (say, a tenth of the cluster's
//! budget per period, renewed at half use) and `check` spends the local batch, so a request never waits on the
//! network. It under-admits when a replica dies holding a batch (until its lease expires) and over-admits by at most
//! one batch per replica if a renewal races an expiry; with the store unreachable it must fall back to a local
//! share (`budget / replicas`) rather than fail open or closed.

mod error;
mod future;
mod layer;
mod limiter;

use std::sync::Arc;
use std::task::{Context, Poll};

pub use error::RateLimited;
pub use future::ResponseFuture;
pub use layer::RateLimitLayer;
pub use limiter::{GcraLimiter, KeyedGcraLimiter, RateLimitConfig, RateLimiter};
use tower_service::Service;

use crate::BoxError;

/// Extracts the rate-limiting key from a request.
pub trait KeyExtractor<Req>: Clone {
    /// The key type.
    type Key;
    /// The key for `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

/// Every request has the same key, `()`: one limit for all.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalKey;

impl<Req> KeyExtractor<Req> for GlobalKey {
    type Key = ();

    fn key(&self, _req: &Req) {}
}

impl<Req, K, F> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K + Clone,
{
    type Key = K;

    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// Wraps a service with a rate limiter. See the [module docs](self).
#[derive(Debug)]
pub struct RateLimit<S, L, KE = GlobalKey> {
    inner: S,
    limiter: Arc<L>,
    key: KE,
}

impl<S: Clone, L, KE: Clone> Clone for RateLimit<S, L, KE> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, L, KE> RateLimit<S, L, KE> {
    /// Wraps `inner`; `key` picks each request's key for `limiter`.
    pub fn new(inner: S, limiter: Arc<L>, key: KE) -> Self {
        Self { inner, limiter, key }
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

impl<S, L, KE, Req> Service<Req> for RateLimit<S, L, KE>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    KE: KeyExtractor<Req>,
    L: RateLimiter<KE::Key>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key.key(&req);
        match self.limiter.check(&key) {
            Ok(()) => ResponseFuture::called(self.inner.call(req)),
            Err(limited) => {
                metrics::counter!("trestle_rate_limited_total").increment(1);
                ResponseFuture::rejected(limited)
            }
        }
    }
}

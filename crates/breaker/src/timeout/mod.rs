//! Timeouts with deadline propagation.
//!
//! Each call gets the shortest of: the configured timeout, the deadline the request carries (with
//! [`GrpcTimeout`], its `grpc-timeout` header), and the deadline of the enclosing call, if this call is made while
//! serving another one through a `Timeout` layer (a task-local, see [`current_deadline`]). The remaining time is
//! written into the outgoing request (`grpc-timeout` for the next hop), and the inner call runs with that deadline
//! as the task-local one, so calls it makes in turn inherit it. A request whose deadline has already passed fails
//! at once with [`Elapsed`] without being sent.
//!
//! Waiting uses `tokio::time`, so paused tokio time drives it in tests.

mod error;
mod future;
mod layer;
mod propagate;

use std::task::{Context, Poll};
use std::time::Duration;

pub use error::Elapsed;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use propagate::{
    DeadlinePropagation, GrpcTimeout, NoPropagation, format_grpc_timeout, parse_grpc_timeout,
};
use tokio::time::Instant;
use tower_service::Service;

use crate::BoxError;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being served by an enclosing [`Timeout`] on this task, if any.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Wraps a service with a timeout. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S, P = NoPropagation> {
    inner: S,
    timeout: Duration,
    propagation: P,
}

impl<S, P> Timeout<S, P> {
    /// Wraps `inner`. Prefer [`TimeoutLayer::new`], which validates `timeout`.
    pub fn new(inner: S, timeout: Duration, propagation: P) -> Self {
        Self {
            inner,
            timeout,
            propagation,
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

impl<S, P, Req> Service<Req> for Timeout<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: DeadlinePropagation<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = Instant::now();
        let mut deadline = crate::config::saturating_add(now, self.timeout);
        if let Some(given) = self.propagation.incoming(&req) {
            deadline = deadline.min(crate::config::saturating_add(now, given));
        }
        if let Some(enclosing) = current_deadline() {
            deadline = deadline.min(enclosing);
        }
        if deadline <= now {
            return ResponseFuture::expired(Elapsed {
                budget: Duration::ZERO,
            });
        }
        let budget = deadline - now;
        self.propagation.outgoing(&mut req, budget);
        let future = DEADLINE.sync_scope(deadline, || self.inner.call(req));
        ResponseFuture::new(DEADLINE.scope(deadline, future), deadline, budget)
    }
}

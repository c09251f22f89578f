//! Turning rejections into protocol responses: HTTP `429 Too Many Requests` / `503 Service Unavailable` with
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED` / `UNAVAILABLE` with `grpc-retry-pushback-ms`.
//!
//! | rejection | HTTP | gRPC |
//! | --- | --- | --- |
//! | [`RateLimited`], [`BulkheadFull`], [`BulkheadTimeout`], [`ConcurrencyLimited`], [`Throttled`] | 429 | `RESOURCE_EXHAUSTED` |
//! | [`CircuitOpen`] | 503 | `UNAVAILABLE` |
//! | [`Elapsed`] (a timeout, not a rejection) | 504 | `DEADLINE_EXCEEDED` |
//!
//! `Retry-After` (whole seconds, rounded up) and `grpc-retry-pushback-ms` are set when the rejection knows when to
//! come back ([`RateLimited`], an `Open` [`CircuitOpen`]).
//!
//! On a server, [`RejectLayer`] (outermost, around the resilience layers) answers rejections with these responses
//! and passes other errors on; with axum, whose routes must not fail, call [`http_response`] from a
//! `HandleErrorLayer` instead.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
#[cfg(feature = "adaptive")]
use crate::adaptive::ConcurrencyLimited;
#[cfg(feature = "bulkhead")]
use crate::bulkhead::{BulkheadFull, BulkheadTimeout};
#[cfg(feature = "circuit-breaker")]
use crate::circuit_breaker::CircuitOpen;
#[cfg(feature = "rate-limit")]
use crate::rate_limit::RateLimited;
#[cfg(feature = "throttle")]
use crate::throttle::Throttled;
#[cfg(feature = "timeout")]
use crate::timeout::Elapsed;

/// What kind of refusal an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// Shed for load: rate limited, bulkhead full or timed out in its queue, concurrency limit, throttled.
    Overloaded,
    /// A circuit breaker refused the call.
    CircuitOpen,
    /// The call ran out of time (not a load-shedding rejection).
    DeadlineExceeded,
}

/// What a protocol needs to know about one of this crate's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// The kind of refusal.
    pub kind: RejectionKind,
    /// When the caller may try again, if known.
    pub retry_after: Option<Duration>,
}

impl Rejection {
    /// The HTTP status to answer with: 429, 503 or 504.
    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            RejectionKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC code to answer with: `RESOURCE_EXHAUSTED`, `UNAVAILABLE` or `DEADLINE_EXCEEDED`.
    #[cfg(feature = "grpc")]
    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            RejectionKind::Overloaded => tonic::Code::ResourceExhausted,
            RejectionKind::CircuitOpen => tonic::Code::Unavailable,
            RejectionKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        }
    }
}

/// Finds one of this crate's rejections (or a timeout) in `error` or its source chain.
pub fn find(error: &(dyn Error + 'static)) -> Option<Rejection> {
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(r) = classify(e) {
            return Some(r);
        }
        current = e.source();
    }
    None
}

#[cfg_attr(
    not(any(
        feature = "adaptive",
        feature = "bulkhead",
        feature = "circuit-breaker",
        feature = "rate-limit",
        feature = "throttle",
        feature = "timeout"
    )),
    allow(unused_variables)
)]
fn classify(e: &(dyn Error + 'static)) -> Option<Rejection> {
    #[cfg(feature = "rate-limit")]
    if let Some(r) = e.downcast_ref::<RateLimited>() {
        return Some(Rejection {
            kind: RejectionKind::Overloaded,
            retry_after: Some(r.retry_after),
        });
    }
    #[cfg(feature = "bulkhead")]
    if e.is::<BulkheadFull>() || e.is::<BulkheadTimeout>() {
        return Some(Rejection {
            kind: RejectionKind::Overloaded,
            retry_after: None,
        });
    }
    #[cfg(feature = "adaptive")]
    if e.is::<ConcurrencyLimited>() {
        return Some(Rejection {
            kind: RejectionKind::Overloaded,
            retry_after: None,
        });
    }
    #[cfg(feature = "throttle")]
    if e.is::<Throttled>() {
        return Some(Rejection {
            kind: RejectionKind::Overloaded,
            retry_after: None,
        });
    }
    #[cfg(feature = "circuit-breaker")]
    if let Some(open) = e.downcast_ref::<CircuitOpen>() {
        return Some(Rejection {
            kind: RejectionKind::CircuitOpen,
            retry_after: open.retry_after,
        });
    }
    #[cfg(feature = "timeout")]
    if e.is::<Elapsed>() {
        return Some(Rejection {
            kind: RejectionKind::DeadlineExceeded,
            retry_after: None,
        });
    }
    None
}

/// Whether `error` is a load-shedding rejection by one of this crate's layers (anything [`find`] knows except a
/// timeout). Such errors are never counted as backend failures, and never retried.
pub fn is_local_rejection(error: &(dyn Error + 'static)) -> bool {
    find(error).is_some_and(|r| r.kind != RejectionKind::DeadlineExceeded)
}

/// An HTTP response for a rejection found in `error` (see [`find`]); `None` for any other error.
pub fn http_response<B: Default>(error: &(dyn Error + 'static)) -> Option<http::Response<B>> {
    let rejection = find(error)?;
    let mut response = http::Response::new(B::default());
    *response.status_mut() = rejection.http_status();
    if let Some(after) = rejection.retry_after {
        let secs = after
            .as_secs()
            .saturating_add(u64::from(after.subsec_nanos() > 0));
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Some(response)
}

/// A gRPC status for a rejection found in `error` (see [`find`]); `None` for any other error.
#[cfg(feature = "grpc")]
pub fn grpc_status(error: &(dyn Error + 'static)) -> Option<tonic::Status> {
    let rejection = find(error)?;
    let mut status = tonic::Status::new(rejection.grpc_code(), error.to_string());
    if let Some(after) = rejection.retry_after {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        if let Ok(value) = millis.to_string().parse() {
            status.metadata_mut().insert("grpc-retry-pushback-ms", value);
        }
    }
    Some(status)
}

/// Which protocol [`RejectLayer`] answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    #[cfg(feature = "grpc")]
    Grpc,
}

/// Answers this crate's rejections with protocol responses instead of errors; other errors pass through.
#[derive(Debug, Clone, Copy)]
pub struct RejectLayer {
    protocol: Protocol,
}

impl RejectLayer {
    /// HTTP: 429/503/504 with `Retry-After`.
    pub fn http() -> Self {
        Self {
            protocol: Protocol::Http,
        }
    }

    /// gRPC: a trailers-only response with `RESOURCE_EXHAUSTED`/`UNAVAILABLE`/`DEADLINE_EXCEEDED` and
    /// `grpc-retry-pushback-ms`.
    #[cfg(feature = "grpc")]
    pub fn grpc() -> Self {
        Self {
            protocol: Protocol::Grpc,
        }
    }
}

impl<S> Layer<S> for RejectLayer {
    type Service = Reject<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Reject {
            inner,
            protocol: self.protocol,
        }
    }
}

/// Service made by [`RejectLayer`].
#[derive(Debug, Clone)]
pub struct Reject<S> {
    inner: S,
    protocol: Protocol,
}

impl<S, Req, B> Service<Req> for Reject<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = RejectFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        RejectFuture {
            future: self.inner.call(req),
            protocol: self.protocol,
        }
    }
}

pin_project! {
    /// Response future of [`Reject`].
    #[derive(Debug)]
    pub struct RejectFuture<F> {
        #[pin]
        future: F,
        protocol: Protocol,
    }
}

impl<F, B, E> Future for RejectFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error: BoxError = match ready!(this.future.poll(cx)) {
            Ok(response) => return Poll::Ready(Ok(response)),
            Err(e) => e.into(),
        };
        let answer = match this.protocol {
            Protocol::Http => http_response(&*error),
            #[cfg(feature = "grpc")]
            Protocol::Grpc => grpc_status(&*error).map(|status| status.into_http()),
        };
        Poll::Ready(answer.ok_or(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_are_not_rejections() {
        let e: BoxError = "something else".into();
        assert!(find(&*e).is_none());
        assert!(!is_local_rejection(&*e));
        assert!(http_response::<()>(&*e).is_none());
    }

    #[test]
    #[cfg(all(
        feature = "grpc",
        feature = "rate-limit",
        feature = "bulkhead",
        feature = "timeout"
    ))]
    fn maps_rejections() {
        let e: BoxError = RateLimited::new(Duration::from_millis(1500)).into();
        let r: http::Response<()> = http_response(&*e).unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "2");
        let s = grpc_status(&*e).unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get("grpc-retry-pushback-ms").unwrap(), "1500");

        let e: BoxError = BulkheadFull {
            max_concurrent: 1,
            max_queued: 0,
        }
        .into();
        assert_eq!(grpc_status(&*e).unwrap().code(), tonic::Code::ResourceExhausted);
        let r: http::Response<()> = http_response(&*e).unwrap();
        assert!(r.headers().get(http::header::RETRY_AFTER).is_none());

        let e: BoxError = Elapsed {
            budget: Duration::from_secs(1),
        }
        .into();
        assert_eq!(
            http_response::<()>(&*e).unwrap().status(),
            StatusCode::GATEWAY_TIMEOUT
        );

        let e: BoxError = "something else".into();
        assert!(find(&*e).is_none());
    }
}

use crate::BoxError;
use crate::classify::{Classify, Outcome};

/// Decides which calls may be retried: only requests that are idempotent *and* results that are retryable.
///
/// Errors arrive boxed. Rejections by this crate's own layers further in (breaker open, bulkhead full, rate
/// limited, ...) are never retried, whatever the policy says: they shed load on purpose.
pub trait RetryPolicy<Req, Res>: Clone + Send + Sync + 'static {
    /// Whether sending `req` twice is safe.
    fn is_idempotent(&self, req: &Req) -> bool;
    /// Whether `result` is worth another attempt.
    fn is_retryable(&self, result: Result<&Res, &BoxError>) -> bool;
    /// A copy of `req` to send again; `None` if it cannot be copied (then it is sent once).
    fn clone_request(&self, req: &Req) -> Option<Req>;
}

/// Copies an `http::Request` whose body can be cloned: method, URI, version, headers, extensions and body.
pub fn clone_http_request<B: Clone>(req: &http::Request<B>) -> http::Request<B> {
    let mut copy = http::Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// Marks an `http::Request` as idempotent (insert it into the request's extensions). gRPC calls are all `POST`, so
/// [`GrpcRetryPolicy`] retries only requests carrying this marker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// Retries whatever the classifier calls a [`Outcome::Failure`], treating every request as idempotent. Use it only
/// in front of services whose requests are all idempotent. Requests must be `Clone`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryFailures<C>(pub C);

impl<Req: Clone, Res, C: Classify<Res>> RetryPolicy<Req, Res> for RetryFailures<C> {
    fn is_idempotent(&self, _req: &Req) -> bool {
        true
    }

    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn is_retryable(&self, result: Result<&Res, &BoxError>) -> bool {
        self.0.classify(result) == Outcome::Failure
    }
}

/// HTTP: idempotent methods (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`) or an [`Idempotent`] marker;
/// retries transport errors and `429`, `502`, `503`, `504`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRetryPolicy;

impl<B: Clone, R> RetryPolicy<http::Request<B>, http::Response<R>> for HttpRetryPolicy {
    fn clone_request(&self, req: &http::Request<B>) -> Option<http::Request<B>> {
        Some(clone_http_request(req))
    }

    fn is_idempotent(&self, req: &http::Request<B>) -> bool {
        use http::Method;
        matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        ) || req.extensions().get::<Idempotent>().is_some()
    }

    fn is_retryable(&self, result: Result<&http::Response<R>, &BoxError>) -> bool {
        use http::StatusCode;
        match result {
            Ok(res) => matches!(
                res.status(),
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            Err(_) => true,
        }
    }
}

/// gRPC over `http`: idempotent only with an [`Idempotent`] marker; retries transport errors and `UNAVAILABLE`
/// (read from the `grpc-status` header of trailers-only responses).
///
/// The request body must be `Clone`. tonic's own `tonic::body::Body` is not: under a tonic-generated client, buffer
/// it with a [`BufferBodyLayer`](super::BufferBodyLayer) outside the retry layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRetryPolicy;

impl<B: Clone, R> RetryPolicy<http::Request<B>, http::Response<R>> for GrpcRetryPolicy {
    fn clone_request(&self, req: &http::Request<B>) -> Option<http::Request<B>> {
        Some(clone_http_request(req))
    }

    fn is_idempotent(&self, req: &http::Request<B>) -> bool {
        req.extensions().get::<Idempotent>().is_some()
    }

    fn is_retryable(&self, result: Result<&http::Response<R>, &BoxError>) -> bool {
        match result {
            // 14 is UNAVAILABLE.
            Ok(res) => res
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"14"),
            Err(_) => true,
        }
    }
}

//! Classifiers: which responses and errors count as failures.
//!
//! Every layer that learns from outcomes (circuit breaker, adaptive concurrency, adaptive throttling) asks a
//! [`Classify`] implementation. Defaults:
//!
//! - [`AnyErrorIsFailure`]: `Ok` is a success, `Err` a failure. Works with any service.
//! - [`HttpClassifier`]: 5xx responses and transport errors are failures; 4xx client errors are ignored (neither
//!   success nor failure) unless configured otherwise.
//! - [`GrpcClassifier`]: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` and
//!   `RESOURCE_EXHAUSTED` are failures; other non-OK codes (the caller's mistakes) are ignored. Works on raw
//!   `http::Response`s (reading `grpc-status` from the headers of trailers-only responses, which is how servers send
//!   errors) and on `tonic::Response`/`tonic::Status`.

use crate::BoxError;

/// What a call's result means for the layers that learn from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The backend did its job.
    Success,
    /// The backend failed or is overloaded; counts against it.
    Failure,
    /// Neither: typically the caller's own mistake (HTTP 4xx, gRPC `INVALID_ARGUMENT`). Not recorded.
    Ignored,
}

/// Decides the [`Outcome`] of a call from its result.
///
/// Errors arrive boxed (every layer boxes its inner service's error), so a classifier downcasts to the error types
/// it knows. Rejections by this crate's own layers further in (breaker open, bulkhead full, rate limited, ...) never
/// reach a classifier: they say nothing about the backend and are always [`Outcome::Ignored`].
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome;
}

/// The outcome a layer records: local rejections are ignored, anything else goes to the classifier.
#[allow(dead_code)] // unused when no classifying layer is enabled
pub(crate) fn outcome<Res, C: Classify<Res>>(classifier: &C, result: Result<&Res, &BoxError>) -> Outcome {
    if let Err(e) = result
        && crate::reject::is_local_rejection(&**e)
    {
        return Outcome::Ignored;
    }
    classifier.classify(result)
}

/// `Ok` is a success, every `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyErrorIsFailure;

impl<Res> Classify<Res> for AnyErrorIsFailure {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies `http::Response`s by status code: 5xx and transport errors are failures, 4xx are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier {
    too_many_requests_is_failure: bool,
}

impl HttpClassifier {
    /// The default classifier (5xx failures, 4xx ignored).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also counts `429 Too Many Requests` as a failure (an overload signal), as adaptive throttling usually wants.
    pub fn with_too_many_requests_as_failure(mut self) -> Self {
        self.too_many_requests_is_failure = true;
        self
    }

    /// Classifies a status code alone.
    pub fn classify_status(&self, status: http::StatusCode) -> Outcome {
        if status.is_server_error()
            || (self.too_many_requests_is_failure && status == http::StatusCode::TOO_MANY_REQUESTS)
        {
            Outcome::Failure
        } else if status.is_client_error() {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl<B> Classify<http::Response<B>> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(response) => self.classify_status(response.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(feature = "grpc")]
/// Classifies gRPC results by status code: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` and
/// `RESOURCE_EXHAUSTED` are failures, `OK` a success, any other code (the caller's mistakes) is ignored. On raw
/// `http::Response`s it reads `grpc-status` from the headers, where servers put it in trailers-only (error) responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

#[cfg(feature = "grpc")]
impl GrpcClassifier {
    /// Classifies a gRPC code alone.
    pub fn classify_code(code: tonic::Code) -> Outcome {
        use tonic::Code;
        match code {
            Code::Ok => Outcome::Success,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::ResourceExhausted => Outcome::Failure,
            _ => Outcome::Ignored,
        }
    }
}

#[cfg(feature = "grpc")]
impl<B> Classify<http::Response<B>> for GrpcClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(response) => {
                if !response.status().is_success() {
                    return Outcome::Failure;
                }
                // Errors come as trailers-only responses, with `grpc-status` in the headers. A normal response keeps
                // its status in the trailers, which a middleware cannot see without wrapping the body; it counts as
                // a success here.
                match response.headers().get("grpc-status") {
                    Some(value) => {
                        let code = value
                            .to_str()
                            .ok()
                            .and_then(|s| s.parse::<i32>().ok())
                            .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
                        Self::classify_code(code)
                    }
                    None => Outcome::Success,
                }
            }
            Err(e) => Self::classify_error(e),
        }
    }
}

#[cfg(feature = "grpc")]
impl GrpcClassifier {
    /// An error is classified by its `tonic::Status` code if it is one (or carries one in its source chain); any
    /// other error (transport, connection refused) is a failure.
    fn classify_error(error: &BoxError) -> Outcome {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
        while let Some(e) = current {
            if let Some(status) = e.downcast_ref::<tonic::Status>() {
                return Self::classify_code(status.code());
            }
            current = e.source();
        }
        Outcome::Failure
    }
}

#[cfg(feature = "grpc")]
impl<T> Classify<tonic::Response<T>> for GrpcClassifier {
    fn classify(&self, result: Result<&tonic::Response<T>, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => Self::classify_error(e),
        }
    }
}

/// A classifier made from a function or closure.
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(pub F);

impl<F> std::fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F, Res> Classify<Res> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &BoxError>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        (self.0)(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(feature = "rate-limit", feature = "timeout"))]
    fn local_rejections_are_ignored() {
        let e: BoxError = crate::RateLimited::new(std::time::Duration::from_secs(1)).into();
        assert_eq!(outcome::<(), _>(&AnyErrorIsFailure, Err(&e)), Outcome::Ignored);
        let e: BoxError = crate::Elapsed {
            budget: std::time::Duration::from_secs(1),
        }
        .into();
        assert_eq!(outcome::<(), _>(&AnyErrorIsFailure, Err(&e)), Outcome::Failure);
    }

    #[test]
    fn http_defaults() {
        let c = HttpClassifier::new();
        assert_eq!(c.classify_status(http::StatusCode::OK), Outcome::Success);
        assert_eq!(c.classify_status(http::StatusCode::NOT_FOUND), Outcome::Ignored);
        assert_eq!(
            c.classify_status(http::StatusCode::TOO_MANY_REQUESTS),
            Outcome::Ignored
        );
        assert_eq!(
            c.classify_status(http::StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Failure
        );
        let c = c.with_too_many_requests_as_failure();
        assert_eq!(
            c.classify_status(http::StatusCode::TOO_MANY_REQUESTS),
            Outcome::Failure
        );
        let e: BoxError = "io".into();
        let err: Result<&http::Response<()>, &BoxError> = Err(&e);
        assert_eq!(c.classify(err), Outcome::Failure);
    }

    #[test]
    #[cfg(feature = "grpc")]
    fn grpc_defaults() {
        let unavailable = http::Response::builder()
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        assert_eq!(GrpcClassifier.classify(Ok(&unavailable)), Outcome::Failure);
        let bad_arg = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .unwrap();
        assert_eq!(GrpcClassifier.classify(Ok(&bad_arg)), Outcome::Ignored);
        let plain = http::Response::new(());
        assert_eq!(GrpcClassifier.classify(Ok(&plain)), Outcome::Success);
        let status: BoxError = tonic::Status::unavailable("down").into();
        assert_eq!(
            Classify::<tonic::Response<()>>::classify(&GrpcClassifier, Err(&status)),
            Outcome::Failure
        );
        let status: BoxError = tonic::Status::not_found("nope").into();
        assert_eq!(
            Classify::<tonic::Response<()>>::classify(&GrpcClassifier, Err(&status)),
            Outcome::Ignored
        );
        let io: BoxError = "connection refused".into();
        assert_eq!(
            Classify::<tonic::Response<()>>::classify(&GrpcClassifier, Err(&io)),
            Outcome::Failure
        );
    }
}

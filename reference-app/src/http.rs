//! What every HTTP service of the app shares: problem details (RFC 9457) for errors, `/health` and `/metrics`,
//! W3C `traceparent` request ids carried from service to service, and the client every service calls the others
//! with (a timeout and a circuit breaker per upstream, from trestle-breaker).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use trestle_breaker::{
    BoxError, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, HttpClassifier, TimeoutLayer,
};

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error as problem details (RFC 9457): what went wrong and what to do, never a bare status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
    /// A short, stable summary of the problem type (e.g. "not a playable video").
    pub title: String,
    /// What happened in this case, with the offending values.
    pub detail: String,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem with `status`, `title` and `detail`.
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
        }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", detail)
    }

    /// 404: `what` does not exist.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", what)
    }

    /// 502/503: an upstream service failed; `detail` names it.
    pub fn upstream(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream failed", detail)
    }

    /// 500: something failed here; the detail is logged as well.
    pub fn internal(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", detail)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.title, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// A W3C trace context (`traceparent: 00-<trace id>-<parent span id>-<flags>`): the request id that every service
/// logs and passes on, so one upload or one playback can be followed across processes.
///
/// It travels in messages as its `traceparent` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TraceContext {
    /// The trace (request) id, shared by every span of one request.
    pub trace_id: u128,
    /// This hop's span id.
    pub span_id: u64,
    /// The sampled flag.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
            sampled: true,
        }
    }

    /// The same trace with a new span id: what a call to the next service carries.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::random::<u64>().max(1),
            ..*self
        }
    }

    /// Parses a `traceparent` header value; `None` when it is malformed (a new trace is started instead, as the
    /// W3C recommendation says).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 hex digits (what logs show).
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl From<TraceContext> for String {
    fn from(c: TraceContext) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for TraceContext {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("{s:?} is not a traceparent"))
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// Middleware: takes the request's `traceparent` (or starts a trace), runs the handler in a span named by the route
/// with the trace id, returns `traceparent` on the response, and records `http_requests_total` and
/// `http_request_duration_seconds` by service, route and status.
pub async fn observe(service: &'static str, mut request: Request, next: Next) -> Response {
    let context = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map(|c| c.child())
        .unwrap_or_else(TraceContext::new_root);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    request.extensions_mut().insert(context);
    let span =
        tracing::info_span!("request", service, %method, route = %route, trace_id = %context.trace_hex());
    let started = Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "service" => service, "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "service" => service, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&context.to_string()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// What a service reports on `/health`.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `/health` (200 `ok`, or 503 with the failed check's reason) and `/metrics` (Prometheus text, when the binary
/// installed a recorder and passed its handle), merged into `router`, with [`observe`] around every route.
pub fn finish(
    service: &'static str,
    router: Router,
    health: Option<HealthCheck>,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let health_route = axum::routing::get(move || {
        let health = health.clone();
        async move {
            match health.as_ref().map_or(Ok(()), |check| check()) {
                Ok(()) => (StatusCode::OK, "ok\n").into_response(),
                Err(reason) => {
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", reason).into_response()
                }
            }
        }
    });
    let metrics_route = axum::routing::get(move || {
        let metrics = metrics.clone();
        async move {
            match metrics {
                Some(handle) => (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response(),
                None => {
                    Problem::not_found("no metrics recorder is installed in this process").into_response()
                }
            }
        }
    });
    router
        .route("/health", health_route)
        .route("/metrics", metrics_route)
        // A route layer: it runs after routing, so the matched route names the metrics.
        .route_layer(axum::middleware::from_fn(move |req, next| {
            observe(service, req, next)
        }))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets running requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`, saying which address failed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Settings of a [`ServiceClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The longest a call waits for the response's head. Default 10 s.
    pub timeout: Duration,
    /// The upstream's circuit breaker. Default: trestle-breaker's.
    pub breaker: CircuitBreakerConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            breaker: CircuitBreakerConfig::default(),
        }
    }
}

type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<hyper::body::Incoming>, BoxError>;

/// The client one service uses to call another, at `base` (e.g. `http://127.0.0.1:7001`): every call goes through
/// a timeout and the upstream's circuit breaker (5xx and transport errors count as failures, 4xx do not), and
/// carries the caller's trace context.
#[derive(Clone)]
pub struct ServiceClient {
    base: String,
    inner: Inner,
    breaker: CircuitBreakerHandle,
}

impl fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A call through a [`ServiceClient`] that did not get an answer, or got an error answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No response: connection refused, timeout, breaker open.
    #[error("{upstream}: {source}")]
    Transport {
        /// The upstream's base URL.
        upstream: String,
        /// Why.
        source: BoxError,
    },
    /// The upstream answered with an error status.
    #[error("{upstream} answered {status}: {body}")]
    Status {
        /// The upstream's base URL.
        upstream: String,
        /// Its status.
        status: StatusCode,
        /// The start of its body (problem details, usually).
        body: String,
    },
}

impl CallError {
    /// The status the upstream answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }
}

impl ServiceClient {
    /// A client of the service at `base` (`http://host:port`), its breaker named `name`.
    pub fn new(name: &str, base: impl Into<String>, config: &ClientConfig) -> anyhow::Result<Self> {
        let base = base.into().trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}: {base:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            anyhow::bail!("{name}: {base:?} must be an http://host:port URL");
        }
        let breaker = CircuitBreakerHandle::new(name.to_owned(), config.breaker.clone())
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client: HyperClient<HttpConnector, Body> =
            HyperClient::builder(TokioExecutor::new()).build(connector);
        let svc = ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(breaker.clone()).with_classifier(HttpClassifier::new()))
            .layer(TimeoutLayer::new(config.timeout).map_err(|e| anyhow::anyhow!("{name}: {e}"))?)
            .service(client.map_err(BoxError::from));
        Ok(Self {
            base,
            inner: BoxCloneSyncService::new(svc),
            breaker,
        })
    }

    /// The upstream's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The upstream's circuit breaker (its state, for the operations view).
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.breaker
    }

    /// Sends `method path` with `body`; returns the response when its status is a success, else the error with the
    /// start of the body.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Body,
        headers: &[(&str, &str)],
        trace: Option<&TraceContext>,
    ) -> Result<http::Response<hyper::body::Incoming>, CallError> {
        let transport = |source: BoxError| CallError::Transport {
            upstream: self.base.clone(),
            source,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(trace) = trace {
            request = request.header("traceparent", trace.child().to_string());
        }
        let request = request.body(body).map_err(|e| transport(e.into()))?;
        let response = self.inner.clone().oneshot(request).await.map_err(transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = read_limited(response.into_body(), 2048).await.unwrap_or_default();
        Err(CallError::Status {
            upstream: self.base.clone(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// GETs `path` and reads the whole body (up to `limit` bytes).
    pub async fn get_bytes(
        &self,
        path: &str,
        limit: usize,
        trace: Option<&TraceContext>,
    ) -> Result<Bytes, CallError> {
        let response = self
            .call(http::Method::GET, path, Body::empty(), &[], trace)
            .await?;
        read_limited(response.into_body(), limit)
            .await
            .map_err(|source| CallError::Transport {
                upstream: self.base.clone(),
                source,
            })
    }
}

/// Reads a body up to `limit` bytes; longer is an error.
pub async fn read_limited(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, BoxError> {
    let limited = http_body_util::Limited::new(body, limit);
    Ok(limited.collect().await?.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_keep_the_trace() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(value).expect("valid");
        assert_eq!(context.to_string(), value);
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
        assert!(TraceContext::parse(&TraceContext::new_root().to_string()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn problems_render_as_problem_json() {
        let problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a playable video",
            "no video stream",
        );
        let json = serde_json::to_value(&problem).expect("serializes");
        assert_eq!(json["status"], 422);
        assert_eq!(json["title"], "not a playable video");
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn clients_refuse_urls_that_are_not_http() {
        for bad in ["", "ftp://x:1", "not a url", "https://x:1"] {
            assert!(
                ServiceClient::new("t", bad, &ClientConfig::default()).is_err(),
                "{bad:?}"
            );
        }
    }
}

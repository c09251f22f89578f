//! End to end: a real tonic server and a real axum server on 127.0.0.1 that fail on demand.
//!
//! The breakers run on a [`ManualClock`], the rate limiters on governor's fake clock, so nothing waits on the wall
//! clock; only the loopback network is real.

// Test helpers outside `#[test]` functions unwrap too: a failure here is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceBuilder};
use trestle_breaker::*;

/// Counts requests and, while `failing` is set, answers them with an error instead of passing them on.
#[derive(Clone)]
struct FailSwitch<S> {
    inner: S,
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    answer: fn() -> http::Response<tonic::body::Body>,
}

impl<S, B> Service<http::Request<B>> for FailSwitch<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            let answer = (self.answer)();
            Box::pin(async move { Ok(answer) })
        } else {
            Box::pin(self.inner.call(req))
        }
    }
}

#[derive(Clone)]
struct FailSwitchLayer {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl<S> Layer<S> for FailSwitchLayer {
    type Service = FailSwitch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailSwitch {
            inner,
            failing: self.failing.clone(),
            hits: self.hits.clone(),
            answer: || tonic::Status::unavailable("switched off").into_http(),
        }
    }
}

/// Answers the next `remaining` requests with `UNAVAILABLE` instead of passing them on; counts every request.
#[derive(Clone)]
struct FailNextLayer {
    remaining: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
}

impl<S> Layer<S> for FailNextLayer {
    type Service = FailNext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailNext {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct FailNext<S> {
    inner: S,
    layer: FailNextLayer,
}

impl<S, B> Service<http::Request<B>> for FailNext<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.layer.hits.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .layer
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            Box::pin(async { Ok(tonic::Status::unavailable("try again").into_http()) })
        } else {
            Box::pin(self.inner.call(req))
        }
    }
}

/// Runs a test body with a real-time bound, so a stuck server fails the test instead of hanging it.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test took over 60 s");
}

fn breaker_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .with_sliding_window(SlidingWindow::Count { size: 4 })
        .with_minimum_calls(4)
        .with_permitted_calls_in_half_open(2)
        .with_wait_in_open(WaitInOpen::Fixed(Duration::from_secs(30)))
}

mod grpc {
    use tonic::transport::{Channel, Server};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    async fn serve(
        layer: impl Layer<
            tonic::service::Routes,
            Service: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Future: Send,
                Error: Into<BoxError> + Send,
            > + Clone
                         + Send
                         + 'static,
        > + Clone
        + Send
        + 'static,
    ) -> String {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn breaker_opens_sheds_half_opens_and_closes() {
        bounded(breaker_opens_sheds_half_opens_and_closes_body()).await;
    }

    async fn breaker_opens_sheds_half_opens_and_closes_body() {
        let failing = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(FailSwitchLayer {
            failing: failing.clone(),
            hits: hits.clone(),
        })
        .await;
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();

        let clock = ManualClock::new();
        let breaker = CircuitBreakerHandle::with_clock("health", breaker_config(), clock.clone()).unwrap();
        let mut events = breaker.subscribe();
        let svc = ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(breaker.clone()).with_classifier(GrpcClassifier))
            .service(channel);
        let mut client = HealthClient::new(svc);
        let check = || HealthCheckRequest {
            service: String::new(),
        };

        for _ in 0..4 {
            let status = client.check(check()).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(events.recv().await.unwrap().to, State::Open);

        // Shed: the server sees nothing, and the rejection is found behind tonic's status.
        let status = client.check(check()).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        let open = reject::find(&status).expect("a rejection in the status' source chain");
        assert_eq!(open.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(open.retry_after, Some(Duration::from_secs(30)));

        failing.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(30));
        client.check(check()).await.unwrap();
        assert_eq!(breaker.state(), State::HalfOpen);
        client.check(check()).await.unwrap();
        assert_eq!(breaker.state(), State::Closed);
        let seen: Vec<_> = [events.recv().await.unwrap(), events.recv().await.unwrap()]
            .into_iter()
            .map(|c| (c.from, c.to))
            .collect();
        assert_eq!(
            seen,
            [(State::Open, State::HalfOpen), (State::HalfOpen, State::Closed)]
        );
        assert_eq!(hits.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn generated_client_retries_idempotent_unavailable_calls_only() {
        bounded(generated_client_retries_idempotent_unavailable_calls_only_body()).await;
    }

    /// The retry layer under a tonic-generated client (`HealthClient`): bodies are buffered outside the retry layer
    /// and turned back into tonic bodies inside it. The backoff is 1 ms of real time; nothing depends on its length.
    async fn generated_client_retries_idempotent_unavailable_calls_only_body() {
        let remaining = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(FailNextLayer {
            remaining: remaining.clone(),
            hits: hits.clone(),
        })
        .await;
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let config = RetryConfig::default()
            .with_max_retries(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(1), 1.0)
            .with_jitter(false);
        let svc = ServiceBuilder::new()
            .layer(BufferBodyLayer::new(64 * 1024))
            .layer(RetryLayer::new(config, GrpcRetryPolicy).unwrap())
            .map_request(|r: http::Request<BufferedBody>| r.map(tonic::body::Body::new))
            .service(channel);
        let mut client = HealthClient::new(svc);
        let check = || HealthCheckRequest {
            service: String::new(),
        };

        // Marked idempotent: two UNAVAILABLE answers are retried, the third attempt is served.
        remaining.store(2, Ordering::SeqCst);
        let mut request = tonic::Request::new(check());
        request.extensions_mut().insert(Idempotent);
        let reply = client.check(request).await.unwrap();
        assert_eq!(reply.into_inner().status, 1); // SERVING
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // Not marked: the UNAVAILABLE answer is final, and the server saw the call once.
        remaining.store(1, Ordering::SeqCst);
        let status = client.check(check()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(hits.load(Ordering::SeqCst), 4);

        // Retries give up after `max_retries` with the last answer.
        remaining.store(10, Ordering::SeqCst);
        let mut request = tonic::Request::new(check());
        request.extensions_mut().insert(Idempotent);
        let status = client.check(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(hits.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn rate_limited_server_answers_resource_exhausted_with_pushback() {
        bounded(rate_limited_server_answers_resource_exhausted_with_pushback_body()).await;
    }

    async fn rate_limited_server_answers_resource_exhausted_with_pushback_body() {
        let clock = FakeRelativeClock::default();
        let limiter =
            GcraLimiter::with_clock(RateLimitConfig::new(2, Duration::from_secs(1)), clock.clone()).unwrap();
        let url = serve(
            ServiceBuilder::new()
                .layer(RejectLayer::grpc())
                .layer(RateLimitLayer::new(limiter)),
        )
        .await;
        let mut client = HealthClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap());
        let check = || HealthCheckRequest {
            service: String::new(),
        };
        client.check(check()).await.unwrap();
        client.check(check()).await.unwrap();
        let status = client.check(check()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "500");
        clock.advance(Duration::from_millis(500));
        client.check(check()).await.unwrap();
    }
}

mod axum_server {
    use axum::Router;
    use axum::error_handling::HandleErrorLayer;
    use axum::routing::get;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceExt;

    use super::*;

    async fn handle_rejection(error: BoxError) -> http::Response<axum::body::Body> {
        reject::http_response(&*error).unwrap_or_else(|| {
            let mut response = http::Response::new(axum::body::Body::from(error.to_string()));
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            response
        })
    }

    async fn serve(failing: Arc<AtomicBool>, hits: Arc<AtomicUsize>, clock: FakeRelativeClock) -> String {
        let limiter =
            GcraLimiter::with_clock(RateLimitConfig::new(1, Duration::from_secs(2)), clock).unwrap();
        let flaky = get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                } else {
                    (http::StatusCode::OK, "up")
                }
            }
        });
        let limited = get(|| async { "ok" }).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_rejection))
                .layer(RateLimitLayer::new(limiter)),
        );
        let app = Router::new().route("/flaky", flaky).route("/limited", limited);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn get_req(url: &str) -> http::Request<Full<Bytes>> {
        http::Request::get(url).body(Full::new(Bytes::new())).unwrap()
    }

    #[tokio::test]
    async fn breaker_around_an_http_client() {
        bounded(breaker_around_an_http_client_body()).await;
    }

    async fn breaker_around_an_http_client_body() {
        let failing = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let base = serve(failing.clone(), hits.clone(), FakeRelativeClock::default()).await;
        let url = format!("{base}/flaky");
        let clock = ManualClock::new();
        let breaker = CircuitBreakerHandle::with_clock("web", breaker_config(), clock.clone()).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let svc = CircuitBreakerLayer::new(breaker.clone())
            .with_classifier(HttpClassifier::new())
            .layer(client);

        for _ in 0..4 {
            let response = svc.clone().oneshot(get_req(&url)).await.unwrap();
            assert_eq!(response.status(), 500);
        }
        assert_eq!(breaker.state(), State::Open);
        let err = svc.clone().oneshot(get_req(&url)).await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 4);

        failing.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(30));
        for _ in 0..2 {
            assert_eq!(svc.clone().oneshot(get_req(&url)).await.unwrap().status(), 200);
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test]
    async fn rate_limited_route_answers_429_with_retry_after() {
        bounded(rate_limited_route_answers_429_with_retry_after_body()).await;
    }

    async fn rate_limited_route_answers_429_with_retry_after_body() {
        let clock = FakeRelativeClock::default();
        let base = serve(Arc::default(), Arc::default(), clock.clone()).await;
        let url = format!("{base}/limited");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        assert_eq!(client.request(get_req(&url)).await.unwrap().status(), 200);
        let response = client.request(get_req(&url)).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
        clock.advance(Duration::from_secs(2));
        assert_eq!(client.request(get_req(&url)).await.unwrap().status(), 200);
    }
}

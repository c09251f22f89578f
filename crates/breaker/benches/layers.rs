//! Per-call overhead of each layer over a service that answers at once, compared with the bare service and with
//! tower's own `ConcurrencyLimit` and `RateLimit`.
//!
//! Each iteration is one `poll_ready` + `call` + one poll of the response future, with a no-op waker (no runtime
//! scheduling in the measurement). "2 threads" runs two clones of the same service on two threads sharing the
//! layer's state; the figure is wall time per call per thread.
//!
//! Run: `cargo bench -p trestle-breaker --bench layers -- --warm-up-time 1 --measurement-time 3`

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_main};
use tower::{Layer, Service};
use trestle_breaker::*;

#[derive(Clone, Copy)]
struct Bare;

impl Service<u64> for Bare {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

fn one_call<S>(svc: &mut S, req: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("service not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        other => panic!("call did not complete: {:?}", other.map(|r| r.map(|_| ()))),
    }
}

fn bench_one<S>(c: &mut Criterion, group: &str, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::new(name, "1 thread"), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(one_call(&mut svc, black_box(i)))
        })
    });
    g.finish();
}

fn bench_two_threads<S>(c: &mut Criterion, group: &str, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::new(name, "2 threads"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let mut svc = svc.clone();
                    scope.spawn(move || {
                        for i in 0..iters {
                            black_box(one_call(&mut svc, i));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

fn breaker(clock: impl Clock) -> CircuitBreakerLayer {
    let handle = CircuitBreakerHandle::with_clock("bench", CircuitBreakerConfig::default(), clock);
    CircuitBreakerLayer::new(handle.expect("valid bench setup"))
}

fn bulkhead() -> BulkheadLayer {
    BulkheadLayer::new(BulkheadConfig::new(1000)).expect("valid bench setup")
}

fn rate_limit() -> RateLimitLayer<GcraLimiter> {
    // High enough never to reject during a run.
    RateLimitLayer::new(
        GcraLimiter::new(RateLimitConfig::new(1_000_000_000, Duration::from_secs(1)))
            .expect("valid bench setup"),
    )
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("valid bench setup");
    let _guard = rt.enter();
    // On stderr: test runners list a bench binary's targets from its stdout.
    eprintln!(
        "conditions: {} logical CPUs, release profile, no-op waker, service answers at once",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    bench_one(c, "bare", "bare", Bare);
    bench_two_threads(c, "bare", "bare", Bare);

    // Benches are built with the dev-dependencies, so tokio's `test-util` is on and `TokioClock` pays for the
    // paused-clock check; `StdClock` is what `TokioClock` costs in a normal build.
    bench_one(
        c,
        "circuit_breaker",
        "trestle closed, StdClock",
        breaker(StdClock).layer(Bare),
    );
    bench_two_threads(
        c,
        "circuit_breaker",
        "trestle closed, StdClock",
        breaker(StdClock).layer(Bare),
    );
    bench_one(
        c,
        "circuit_breaker",
        "trestle closed, TokioClock+test-util",
        breaker(TokioClock).layer(Bare),
    );

    bench_one(c, "bulkhead", "trestle bulkhead", bulkhead().layer(Bare));
    bench_two_threads(c, "bulkhead", "trestle bulkhead", bulkhead().layer(Bare));
    bench_one(
        c,
        "bulkhead",
        "tower ConcurrencyLimit",
        tower::limit::ConcurrencyLimitLayer::new(1000).layer(Bare),
    );
    bench_two_threads(
        c,
        "bulkhead",
        "tower ConcurrencyLimit",
        tower::limit::ConcurrencyLimitLayer::new(1000).layer(Bare),
    );

    bench_one(c, "rate_limit", "trestle GCRA", rate_limit().layer(Bare));
    bench_two_threads(c, "rate_limit", "trestle GCRA", rate_limit().layer(Bare));
    bench_one(
        c,
        "rate_limit",
        "tower RateLimit",
        tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(1)).layer(Bare),
    );

    let aimd = machine::Aimd::new(AimdConfig::default()).expect("valid bench setup");
    bench_one(
        c,
        "adaptive",
        "trestle AIMD",
        AdaptiveConcurrencyLayer::new(aimd).layer(Bare),
    );
    bench_one(
        c,
        "throttle",
        "trestle adaptive throttle, StdClock",
        AdaptiveThrottleLayer::new(ThrottleConfig::default())
            .expect("valid bench setup")
            .layer(Bare),
    );
    bench_one(
        c,
        "timeout",
        "trestle timeout",
        TimeoutLayer::new(Duration::from_secs(10))
            .expect("valid bench setup")
            .layer(Bare),
    );
    bench_one(
        c,
        "timeout",
        "tower Timeout",
        tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(Bare),
    );
}

/// Every benchmark in this file, with Criterion configured from the command line.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    layers(&mut c);
}

criterion_main!(benches);

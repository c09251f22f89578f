//! Per-call overhead of each layer over a service that answers at once, compared with the bare service, with
//! tower's own `ConcurrencyLimit` and `RateLimit`, and with the resilience crates `tower-resilience`, `recloser` and
//! `failsafe`.
//!
//! Each iteration is one `poll_ready` + `call` + polls of the response future until it is ready, with a no-op waker
//! (no runtime scheduling in the measurement; a future that is not ready at once is polled again, which only
//! happens under contention). "2 threads" runs two clones of the same service on two threads sharing the layer's
//! state; the figure is wall time per call per thread. `recloser` and `failsafe` are not tower layers: they are
//! measured through their synchronous `call(|| ...)` API around the same answer, which is cheaper than any layer.
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
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(e)) => panic!("service failed: {e:?}"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut fut = pin!(svc.call(req));
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(v)) => return v,
            Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
            Poll::Pending => std::hint::spin_loop(),
        }
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

/// A plain function call (for the crates that are not tower layers), on one thread.
fn bench_fn_one(c: &mut Criterion, group: &str, name: &str, f: impl Fn(u64) -> u64) {
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::new(name, "1 thread"), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(f(black_box(i)))
        })
    });
    g.finish();
}

/// The same function called from two threads at once.
fn bench_fn_two_threads(c: &mut Criterion, group: &str, name: &str, f: impl Fn(u64) -> u64 + Sync) {
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::new(name, "2 threads"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for i in 0..iters {
                            black_box(f(black_box(i)));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

/// One and two threads.
fn bench_both<S>(c: &mut Criterion, group: &str, name: &str, svc: S)
where
    S: Service<u64, Response = u64> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    bench_one(c, group, name, svc.clone());
    bench_two_threads(c, group, name, svc);
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

fn circuit_breakers(c: &mut Criterion) {
    // Benches are built with the dev-dependencies, so tokio's `test-util` is on and `TokioClock` pays for the
    // paused-clock check; `StdClock` is what `TokioClock` costs in a normal build.
    bench_both(
        c,
        "circuit_breaker",
        "trestle closed, StdClock",
        breaker(StdClock).layer(Bare),
    );
    bench_both(
        c,
        "circuit_breaker",
        "trestle closed, CoarseClock",
        breaker(CoarseClock::new()).layer(Bare),
    );
    bench_one(
        c,
        "circuit_breaker",
        "trestle closed, TokioClock+test-util",
        breaker(TokioClock).layer(Bare),
    );

    let resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid bench setup");
    bench_both(c, "circuit_breaker", "tower-resilience", resilience.layer(Bare));

    let recloser = recloser::Recloser::custom().closed_len(100).build();
    let call = |i: u64| recloser.call(|| Ok::<u64, ()>(i)).expect("closed");
    bench_fn_one(c, "circuit_breaker", "recloser (sync call)", call);
    bench_fn_two_threads(c, "circuit_breaker", "recloser (sync call)", call);

    use failsafe::CircuitBreaker as _;
    let failsafe = failsafe::Config::new().build();
    let call = |i: u64| failsafe.call(|| Ok::<u64, ()>(i)).expect("closed");
    bench_fn_one(c, "circuit_breaker", "failsafe (sync call)", call);
    bench_fn_two_threads(c, "circuit_breaker", "failsafe (sync call)", call);
}

fn bulkheads(c: &mut Criterion) {
    bench_both(c, "bulkhead", "trestle bulkhead", bulkhead().layer(Bare));
    bench_both(
        c,
        "bulkhead",
        "tower ConcurrencyLimit",
        tower::limit::ConcurrencyLimitLayer::new(1000).layer(Bare),
    );
    let resilience = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1000)
        .build()
        .expect("valid bench setup");
    bench_both(c, "bulkhead", "tower-resilience", resilience.layer(Bare));
}

fn rate_limits(c: &mut Criterion) {
    bench_both(c, "rate_limit", "trestle GCRA", rate_limit().layer(Bare));
    bench_one(
        c,
        "rate_limit",
        "tower RateLimit",
        tower::limit::RateLimitLayer::new(u64::MAX / 4, Duration::from_secs(1)).layer(Bare),
    );
    let resilience = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(1_000_000_000)
        .refresh_period(Duration::from_secs(1))
        .build()
        .expect("valid bench setup");
    bench_both(c, "rate_limit", "tower-resilience", resilience.layer(Bare));
}

fn retry_and_hedge(c: &mut Criterion) {
    // Successful calls: the retry layer's cost when nothing is retried (one boxed future and a budget deposit).
    let retry =
        RetryLayer::new(RetryConfig::default(), RetryFailures(AnyErrorIsFailure)).expect("valid bench setup");
    bench_one(c, "retry", "trestle retry, no retries", retry.layer(Bare));
    // Hedging armed (enough latencies for a delay), but the service answers first: a timer is created per call.
    let hedge = HedgeLayer::new(
        HedgeConfig::default().with_min_samples(1),
        RetryFailures(AnyErrorIsFailure),
    )
    .expect("valid bench setup");
    let mut svc = hedge.layer(Bare);
    one_call(&mut svc, 0);
    bench_one(c, "hedge", "trestle hedge, armed, no hedge sent", svc);
}

fn others(c: &mut Criterion) {
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

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("valid bench setup");
    let _guard = rt.enter();
    // On stderr: test runners list a bench binary's targets from its stdout.
    eprintln!(
        "conditions: {} logical CPUs, load average {}, release profile, no-op waker, service answers at once",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    );

    bench_both(c, "bare", "bare", Bare);
    circuit_breakers(c);
    bulkheads(c);
    rate_limits(c);
    retry_and_hedge(c);
    others(c);
}

/// Every benchmark in this file, with Criterion configured from the command line.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    layers(&mut c);
}

criterion_main!(benches);

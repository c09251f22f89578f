//! Compile-time checks that services, layers and response futures are `Send` (and handles `Sync`), so they can be
//! used from multi-threaded runtimes and shared across tasks.

use std::time::Duration;

use tower::Layer;
use tower_test::mock::Mock;
use trestle_breaker::machine::{Aimd, Gradient};
use trestle_breaker::*;

fn send<T: Send>(_: &T) {}
fn send_sync<T: Send + Sync>(_: &T) {}
fn future_is_send<S: tower::Service<u32, Future: Send>>(_: &S) {}

#[test]
fn everything_is_send() {
    let (mock, _handle) = tower_test::mock::pair::<u32, u32>();
    let mock: Mock<u32, u32> = mock;

    let breaker = CircuitBreakerHandle::new("b", CircuitBreakerConfig::default()).unwrap();
    send_sync(&breaker);
    let layer = CircuitBreakerLayer::new(breaker);
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = BulkheadLayer::new(BulkheadConfig::new(1)).unwrap();
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = RateLimitLayer::new(GcraLimiter::new(RateLimitConfig::default()).unwrap());
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = RetryLayer::new(RetryConfig::default(), RetryFailures(AnyErrorIsFailure)).unwrap();
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = HedgeLayer::new(HedgeConfig::default(), RetryFailures(AnyErrorIsFailure)).unwrap();
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);

    let layer = AdaptiveConcurrencyLayer::new(Aimd::new(AimdConfig::default()).unwrap());
    send_sync(&layer);
    let svc = layer.layer(mock.clone());
    send(&svc);
    future_is_send(&svc);
    let layer = AdaptiveConcurrencyLayer::new(Gradient::new(GradientConfig::default()).unwrap());
    send_sync(&layer);

    let layer = AdaptiveThrottleLayer::new(ThrottleConfig::default()).unwrap();
    send_sync(&layer);
    let svc = layer.layer(mock);
    send(&svc);
    future_is_send(&svc);
}

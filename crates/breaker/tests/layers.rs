//! Layer tests: mock or hand-written services, paused tokio time (or a fake governor clock), no wall-clock sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use trestle_breaker::machine::{Aimd, NotPermitted};
use trestle_breaker::*;

/// A service that answers `Ok` when the request is `true`, fails otherwise, and counts the calls it receives.
fn backend(
    calls: Arc<AtomicUsize>,
) -> impl Service<bool, Response = &'static str, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |ok: bool| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { if ok { Ok("ok") } else { Err(BoxError::from("boom")) } }
    })
}

fn small_breaker(wait: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .with_sliding_window(SlidingWindow::Count { size: 4 })
        .with_minimum_calls(4)
        .with_permitted_calls_in_half_open(2)
        .with_wait_in_open(WaitInOpen::Fixed(wait))
}

/// The next request the mock received; fails (instead of hanging) if none comes within 5 s of paused time.
async fn next_request<T, U>(
    handle: &mut tower_test::mock::Handle<T, U>,
) -> (T, tower_test::mock::SendResponse<U>) {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("no request reached the mock")
        .expect("mock closed")
}

/// The seed for a randomized test: `TRESTLE_SEED` if set (to replay), else fresh. Printed either way.
fn seed() -> u64 {
    let seed = std::env::var("TRESTLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed = {seed} (replay with TRESTLE_SEED={seed})");
    seed
}

mod circuit_breaker {
    use super::*;
    use trestle_breaker::circuit_breaker::SelectBreaker;

    #[tokio::test(start_paused = true)]
    async fn opens_sheds_half_opens_and_closes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = CircuitBreakerHandle::new("backend", small_breaker(Duration::from_secs(5))).unwrap();
        let mut events = breaker.subscribe();
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(backend(calls.clone()));

        // Clones share the breaker: four failures through four clones open it.
        for _ in 0..4 {
            svc.clone().oneshot(false).await.unwrap_err();
        }
        assert_eq!(breaker.state(), State::Open);
        let change = events.recv().await.unwrap();
        assert_eq!((change.from, change.to), (State::Closed, State::Open));

        tokio::time::advance(Duration::from_secs(2)).await;
        let err = svc.clone().oneshot(true).await.unwrap_err();
        let open = err.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
        assert_eq!(open.state, State::Open);
        assert_eq!(open.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "a shed call never reaches the backend"
        );

        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(svc.clone().oneshot(true).await.unwrap(), "ok");
        assert_eq!(svc.clone().oneshot(true).await.unwrap(), "ok");
        assert_eq!(breaker.state(), State::Closed);
        let seen: Vec<_> = [events.recv().await.unwrap(), events.recv().await.unwrap()]
            .into_iter()
            .map(|c| (c.from, c.to))
            .collect();
        assert_eq!(
            seen,
            [(State::Open, State::HalfOpen), (State::HalfOpen, State::Closed)]
        );
        assert_eq!(breaker.metrics().not_permitted_calls, 1);
    }

    /// Slow successes open the breaker too, measured on paused tokio time; a time window forgets old calls.
    #[tokio::test(start_paused = true)]
    async fn slow_calls_in_a_time_window_open_the_breaker() {
        let config = CircuitBreakerConfig::default()
            .with_sliding_window(SlidingWindow::Time {
                size: Duration::from_secs(10),
                buckets: 10,
            })
            .with_minimum_calls(4)
            .with_slow_calls(50.0, Duration::from_secs(1));
        let breaker = CircuitBreakerHandle::new("slow", config).unwrap();
        let svc = service_fn(|secs: u64| async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, BoxError>(secs)
        });
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(svc);
        // One slow call, then a pause long enough for it to leave the window.
        svc.clone().oneshot(2).await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        for secs in [0, 0, 2] {
            svc.clone().oneshot(secs).await.unwrap();
        }
        assert_eq!(
            breaker.state(),
            State::Closed,
            "1 slow call in 3: below the minimum, and 33 %"
        );
        svc.clone().oneshot(3).await.unwrap();
        assert_eq!(breaker.state(), State::Open, "2 slow calls in 4: 50 %");
        let metrics = breaker.metrics();
        assert_eq!(
            (metrics.state, metrics.calls),
            (State::Open, 0),
            "entering a state clears the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_trial_reopens_with_growing_wait() {
        let calls = Arc::new(AtomicUsize::new(0));
        let config = small_breaker(Duration::from_secs(1))
            .with_permitted_calls_in_half_open(1)
            .with_wait_in_open(WaitInOpen::Exponential {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max: Duration::from_secs(3),
            });
        let breaker = CircuitBreakerHandle::new("b", config).unwrap();
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(backend(calls));
        breaker.trip();
        for expected in [2u64, 3, 3] {
            tokio::time::advance(Duration::from_secs(3)).await;
            svc.clone().oneshot(false).await.unwrap_err(); // the trial call fails
            let err = svc.clone().oneshot(true).await.unwrap_err();
            let open = err.downcast_ref::<CircuitOpen>().unwrap();
            assert_eq!(open.retry_after, Some(Duration::from_secs(expected)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_trial_call_frees_its_slot() {
        let (mock, mut handle) = tower_test::mock::pair::<bool, &'static str>();
        let config = small_breaker(Duration::from_secs(1)).with_permitted_calls_in_half_open(1);
        let breaker = CircuitBreakerHandle::new("b", config).unwrap();
        let mut svc = CircuitBreakerLayer::new(breaker.clone()).layer(mock);
        breaker.trip();
        tokio::time::advance(Duration::from_secs(1)).await;

        let trial = svc.ready().await.unwrap().call(true);
        let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
        assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().state, State::HalfOpen);
        drop(trial); // cancelled: the slot must come back
        let second = svc.ready().await.unwrap().call(true);
        let (_, respond) = next_request(&mut handle).await; // the cancelled one
        drop(respond);
        let (_, respond) = next_request(&mut handle).await;
        respond.send_response("ok");
        assert_eq!(second.await.unwrap(), "ok");
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test]
    async fn classifier_ignores_client_errors() {
        let breaker = CircuitBreakerHandle::new("http", small_breaker(Duration::from_secs(1))).unwrap();
        let svc = service_fn(|status: u16| async move {
            Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
        });
        let svc = CircuitBreakerLayer::new(breaker.clone())
            .with_classifier(HttpClassifier::new())
            .layer(svc);
        for _ in 0..10 {
            svc.clone().oneshot(404).await.unwrap();
        }
        assert_eq!((breaker.state(), breaker.metrics().calls), (State::Closed, 0));
        for _ in 0..4 {
            svc.clone().oneshot(503).await.unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test]
    async fn operator_states() {
        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = CircuitBreakerHandle::new("b", small_breaker(Duration::from_secs(1))).unwrap();
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(backend(calls.clone()));
        breaker.force_open();
        let err = svc.clone().oneshot(true).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<CircuitOpen>()
                .map(|e| (e.state, e.retry_after)),
            Some((State::ForcedOpen, None))
        );
        breaker.disable();
        for _ in 0..10 {
            svc.clone().oneshot(false).await.unwrap_err();
        }
        assert_eq!(breaker.state(), State::Disabled);
        breaker.metrics_only();
        for _ in 0..10 {
            svc.clone().oneshot(false).await.unwrap_err();
        }
        assert_eq!(breaker.state(), State::MetricsOnly);
        assert_eq!(breaker.metrics().failure_rate, Some(100.0));
        breaker.reset();
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn registry_keeps_one_breaker_per_key() {
        let registry =
            BreakerRegistry::<String>::new("upstream", small_breaker(Duration::from_secs(60))).unwrap();
        let svc = service_fn(|(host, ok): (String, bool)| async move {
            if ok {
                Ok::<_, BoxError>(host)
            } else {
                Err(BoxError::from("down"))
            }
        });
        let layer = CircuitBreakerLayer::keyed(registry.clone(), |req: &(String, bool)| req.0.clone());
        let svc = layer.layer(svc);
        for _ in 0..4 {
            svc.clone().oneshot(("a".into(), false)).await.unwrap_err();
        }
        let err = svc.clone().oneshot(("a".into(), true)).await.unwrap_err();
        assert_eq!(&*err.downcast_ref::<CircuitOpen>().unwrap().name, "upstream/a");
        assert_eq!(svc.clone().oneshot(("b".into(), true)).await.unwrap(), "b");
        assert_eq!(registry.get(&"a".to_string()).state(), State::Open);
        assert_eq!(registry.get(&"b".to_string()).state(), State::Closed);
        assert_eq!(registry.breakers().len(), 2);
        let _: &dyn Fn(&CircuitBreakerHandle) -> CircuitBreakerHandle =
            &|h| SelectBreaker::<()>::select(h, &());
    }

    #[test]
    fn registry_evicts_idle_closed_breakers_but_keeps_open_ones() {
        let clock = ManualClock::new();
        let registry = BreakerRegistry::<String>::with_clock(
            "up",
            small_breaker(Duration::from_secs(600)),
            clock.clone(),
        )
        .unwrap()
        .with_bounds(RegistryConfig::default().with_idle_timeout(Some(Duration::from_secs(60))))
        .unwrap();
        let a = registry.get(&"a".to_string());
        let b = registry.get(&"b".to_string());
        b.trip();
        clock.advance(Duration::from_secs(30));
        let _ = registry.get(&"a".to_string()); // a is used again: not idle
        clock.advance(Duration::from_secs(40));
        // A new key sweeps: `a` was used 40 s ago, `b` is idle but open, and stays.
        let _ = registry.get(&"c".to_string());
        assert_eq!(registry.len(), 3);
        clock.advance(Duration::from_secs(60));
        assert_eq!(registry.evict_idle(), 2); // a and c
        let kept: Vec<String> = registry.breakers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, ["b"]);
        assert_eq!(registry.get(&"b".to_string()).state(), State::Open);
        // The key's next call gets a new, closed breaker; the old handle still works for calls holding it.
        a.trip();
        assert_eq!(registry.get(&"a".to_string()).state(), State::Closed);
        assert!(registry.remove(&"a".to_string()).is_some());
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn registry_is_bounded_and_evicts_the_least_recently_used_closed_breaker() {
        let clock = ManualClock::new();
        let registry =
            BreakerRegistry::<u32>::with_clock("up", small_breaker(Duration::from_secs(600)), clock.clone())
                .unwrap()
                .with_bounds(
                    RegistryConfig::default()
                        .with_max_breakers(3)
                        .with_idle_timeout(None),
                )
                .unwrap();
        registry.get(&0).trip(); // open: kept while closed ones can go
        for key in 1..100 {
            clock.advance(Duration::from_millis(1));
            let _ = registry.get(&key);
            let _ = registry.get(&1); // key 1 stays the most recently used
            assert!(registry.len() <= 3);
        }
        let mut kept: Vec<u32> = registry.breakers().into_iter().map(|(k, _)| k).collect();
        kept.sort();
        assert_eq!(kept, [0, 1, 99]);
        // Full of open breakers: the least recently used goes anyway, so the bound holds.
        registry.get(&1).trip();
        registry.get(&99).trip();
        let _ = registry.get(&100);
        assert_eq!(registry.len(), 3);
        assert!(registry.breakers().iter().all(|(k, _)| *k != 0));
    }

    #[test]
    fn invalid_registry_bounds_are_rejected() {
        let registry = BreakerRegistry::<u32>::new("up", CircuitBreakerConfig::default()).unwrap();
        assert_eq!(
            registry
                .clone()
                .with_bounds(RegistryConfig::default().with_max_breakers(0))
                .unwrap_err(),
            ConfigError::Zero {
                field: "max_breakers"
            }
        );
        assert!(matches!(
            registry.with_bounds(RegistryConfig::default().with_idle_timeout(Some(Duration::ZERO))),
            Err(ConfigError::ZeroDuration {
                field: "idle_timeout",
                ..
            })
        ));
    }

    /// Successes deferred without the lock are handed to the machine before anything else happens: the window
    /// still holds the last N calls in order.
    #[tokio::test(start_paused = true)]
    async fn deferred_successes_count_in_the_window() {
        let config = CircuitBreakerConfig::default()
            .with_sliding_window(SlidingWindow::Count { size: 10 })
            .with_minimum_calls(10);
        let breaker = CircuitBreakerHandle::new("b", config).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(backend(calls.clone()));
        for _ in 0..6 {
            svc.clone().oneshot(true).await.unwrap();
        }
        assert_eq!(breaker.metrics().calls, 6);
        for _ in 0..4 {
            svc.clone().oneshot(false).await.unwrap_err();
        }
        // 4 failures in the last 10 calls: 40 %, below 50 %.
        assert_eq!(breaker.state(), State::Closed);
        svc.clone().oneshot(false).await.unwrap_err();
        // The oldest success left the window: 5 of 10.
        assert_eq!(breaker.state(), State::Open);
    }

    /// Two threads hammer one breaker with successes (deferred without the lock) and the occasional failure; every
    /// call is accounted for.
    #[test]
    fn concurrent_calls_are_all_recorded() {
        let config = CircuitBreakerConfig::default()
            .with_sliding_window(SlidingWindow::Count { size: 100_000 })
            .with_minimum_calls(100_000);
        let breaker = CircuitBreakerHandle::with_clock("b", config, ManualClock::new()).unwrap();
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(|ok: bool| async move {
            if ok { Ok(()) } else { Err(BoxError::from("boom")) }
        }));
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let svc = svc.clone();
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    for i in 0..5_000 {
                        let _ = rt.block_on(svc.clone().oneshot(i % 100 != 0));
                    }
                });
            }
        });
        let metrics = breaker.metrics();
        assert_eq!((metrics.calls, metrics.failed_calls), (10_000, 100));
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn invalid_config_is_rejected_with_the_value() {
        let err = CircuitBreakerHandle::new(
            "b",
            CircuitBreakerConfig::default().with_failure_rate_threshold(120.0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("120"), "{err}");
        let _ = NotPermitted {
            state: State::Open,
            retry_after: None,
        };
    }
}

mod bulkhead {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_queues_times_out_and_rejects() {
        let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
        let layer = BulkheadLayer::new(BulkheadConfig::new(1).with_queue(1, Duration::from_secs(1))).unwrap();
        let mut svc = layer.layer(mock);

        let first = svc.ready().await.unwrap().call(1);
        let queued = tokio::spawn(svc.ready().await.unwrap().call(2));
        tokio::task::yield_now().await;
        // Slot busy, queue full: the third call is rejected at once, with the configured values.
        let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
        let full = err.downcast_ref::<BulkheadFull>().expect("BulkheadFull");
        assert_eq!((full.max_concurrent, full.max_queued), (1, 1));

        // The queued call gives up after max_wait.
        let err = queued.await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<BulkheadTimeout>().unwrap().max_wait,
            Duration::from_secs(1)
        );

        // A queued call gets the slot when the running call completes.
        let queued = tokio::spawn(svc.ready().await.unwrap().call(4));
        let (req, respond) = next_request(&mut handle).await;
        assert_eq!(req, 1);
        respond.send_response(10);
        assert_eq!(first.await.unwrap(), 10);
        let (req, respond) = next_request(&mut handle).await;
        assert_eq!(req, 4);
        respond.send_response(40);
        assert_eq!(queued.await.unwrap().unwrap(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_call_releases_its_slot_and_clones_share() {
        let (mock, _handle) = tower_test::mock::pair::<u32, u32>();
        let mut a = BulkheadLayer::new(BulkheadConfig::new(2)).unwrap().layer(mock);
        let mut b = a.clone();
        let one = a.ready().await.unwrap().call(1);
        let two = b.ready().await.unwrap().call(2);
        assert_eq!(a.in_flight(), 2);
        assert!(
            b.ready()
                .await
                .unwrap()
                .call(3)
                .await
                .unwrap_err()
                .is::<BulkheadFull>()
        );
        drop(one);
        drop(two);
        assert_eq!(a.in_flight(), 0);
        let _three = b.ready().await.unwrap().call(3);
        assert_eq!(a.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_queued_call_leaves_the_queue() {
        let (mock, _handle) = tower_test::mock::pair::<u32, u32>();
        let mut svc = BulkheadLayer::new(BulkheadConfig::new(1).with_queue(1, Duration::from_secs(60)))
            .unwrap()
            .layer(mock);
        let _running = svc.ready().await.unwrap().call(1);
        let queued = svc.ready().await.unwrap().call(2);
        drop(queued);
        // The queue has room again: this one waits (and times out) instead of being rejected as full.
        let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
        assert!(err.is::<BulkheadTimeout>(), "{err}");
    }

    #[test]
    fn invalid_config() {
        assert_eq!(
            BulkheadConfig::new(0).validate(),
            Err(ConfigError::Zero {
                field: "max_concurrent"
            })
        );
        assert!(matches!(
            BulkheadConfig::new(1).with_queue(5, Duration::ZERO).validate(),
            Err(ConfigError::ZeroDuration {
                field: "max_wait",
                ..
            })
        ));
    }
}

mod rate_limit {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[tokio::test]
    async fn direct_limit_with_burst_and_retry_after() {
        let clock = FakeRelativeClock::default();
        let limiter =
            GcraLimiter::with_clock(RateLimitConfig::new(2, Duration::from_secs(1)), clock.clone()).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = RateLimitLayer::new(limiter).layer(backend(calls.clone()));
        svc.clone().oneshot(true).await.unwrap();
        svc.clone().oneshot(true).await.unwrap();
        let err = svc.clone().oneshot(true).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<RateLimited>().unwrap().retry_after,
            Duration::from_millis(500)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        clock.advance(Duration::from_millis(500));
        svc.clone().oneshot(true).await.unwrap();
    }

    #[tokio::test]
    async fn keyed_limits_are_independent() {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig::new(1, Duration::from_secs(1));
        let limiter = KeyedGcraLimiter::<String, _>::with_clock(config, clock.clone()).unwrap();
        let svc = service_fn(|user: String| async move { Ok::<_, BoxError>(user) });
        let svc = RateLimitLayer::keyed(limiter, |user: &String| user.clone()).layer(svc);
        svc.clone().oneshot("alice".into()).await.unwrap();
        svc.clone().oneshot("bob".into()).await.unwrap();
        assert!(
            svc.clone()
                .oneshot("alice".into())
                .await
                .unwrap_err()
                .is::<RateLimited>()
        );
        clock.advance(Duration::from_secs(1));
        svc.clone().oneshot("alice".into()).await.unwrap();
    }

    #[test]
    fn invalid_config() {
        assert_eq!(
            RateLimitConfig::new(0, Duration::from_secs(1)).validate(),
            Err(ConfigError::Zero { field: "requests" })
        );
        assert!(RateLimitConfig::new(1, Duration::ZERO).validate().is_err());
        assert_eq!(
            RateLimitConfig::new(1, Duration::from_secs(1))
                .with_burst(0)
                .validate(),
            Err(ConfigError::Zero { field: "burst" })
        );
    }

    /// A custom limiter (for instance a cluster-wide one) plugs in through the trait.
    #[tokio::test]
    async fn custom_limiter_plugs_in() {
        struct Never;
        impl RateLimiter<()> for Never {
            fn check(&self, _: &()) -> Result<(), RateLimited> {
                Err(RateLimited::new(Duration::from_secs(7)))
            }
        }
        let svc = RateLimitLayer::new(Never).layer(backend(Arc::default()));
        let err = svc.oneshot(true).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<RateLimited>().unwrap().retry_after,
            Duration::from_secs(7)
        );
    }
}

mod retry {
    use super::*;

    fn flaky(
        failures: usize,
        attempts: Arc<AtomicUsize>,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
        service_fn(move |req: u32| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < failures {
                    Err(BoxError::from("transient"))
                } else {
                    Ok(req)
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_success() {
        let seed = seed();
        let attempts = Arc::new(AtomicUsize::new(0));
        let config =
            RetryConfig::default().with_backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0);
        let layer = RetryLayer::new(config, RetryFailures(AnyErrorIsFailure))
            .unwrap()
            .with_random(SeededRandom::new(seed));
        let svc = layer.layer(flaky(2, attempts.clone()));
        let start = tokio::time::Instant::now();
        assert_eq!(svc.oneshot(7).await.unwrap(), 7);
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        // Two backoffs: 100 ms and 200 ms, each plus a jitter below itself.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let config = RetryConfig::default().with_max_retries(2).with_jitter(false);
        let svc = RetryLayer::new(config, RetryFailures(AnyErrorIsFailure))
            .unwrap()
            .layer(flaky(100, attempts.clone()));
        let err = svc.oneshot(1).await.unwrap_err();
        assert_eq!(err.to_string(), "transient");
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn only_idempotent_requests_are_retried() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let svc = service_fn(move |_req: http::Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap()) }
        });
        let svc = RetryLayer::new(RetryConfig::default().with_jitter(false), HttpRetryPolicy)
            .unwrap()
            .layer(svc);
        let post = http::Request::post("/x").body(()).unwrap();
        assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
        assert_eq!(attempts.swap(0, Ordering::SeqCst), 1, "POST is not idempotent");
        let get = http::Request::get("/x").body(()).unwrap();
        assert_eq!(svc.clone().oneshot(get).await.unwrap().status(), 503);
        assert_eq!(
            attempts.swap(0, Ordering::SeqCst),
            4,
            "GET: first attempt + 3 retries"
        );
        let mut marked = http::Request::post("/x").body(()).unwrap();
        marked.extensions_mut().insert(Idempotent);
        svc.clone().oneshot(marked).await.unwrap();
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            4,
            "an Idempotent marker allows retries"
        );
    }

    /// A body that cannot be cloned is buffered outside the retry layer, so the request can be retried; a body over
    /// the limit is refused before anything is sent.
    #[tokio::test(start_paused = true)]
    async fn buffered_bodies_are_retried_and_oversized_ones_refused() {
        use http_body_util::BodyExt;
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        let svc = service_fn(move |req: http::Request<BufferedBody>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"payload");
                let status = if n == 0 { 503 } else { 200 };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
            }
        });
        let svc = ServiceBuilder::new()
            .layer(BufferBodyLayer::new(10))
            .layer(RetryLayer::new(RetryConfig::default().with_jitter(false), HttpRetryPolicy).unwrap())
            .service(svc);
        // A streaming body type (not `Clone`).
        let body = || {
            http_body_util::StreamBody::new(tokio_stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
                bytes::Bytes::from_static(b"payload"),
            ))]))
        };
        let req = http::Request::put("/x").body(body()).unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);

        let big = http::Request::put("/x")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![0u8; 11])))
            .unwrap();
        let err = svc.clone().oneshot(big).await.unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<BodyTooLarge>(),
                Some(BodyTooLarge { limit: 10, .. })
            ),
            "{err}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    /// Ten requests fail at once; with a budget of 50 % of requests and no reserve, at most five retries happen in
    /// total, even though every retry is waiting in backoff when the others ask.
    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries_including_those_in_backoff() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let budget = RetryBudgetConfig::default()
            .with_min_retries_per_sec(0)
            .with_retry_percent(50.0);
        let config = RetryConfig::default()
            .with_budget(Some(budget))
            .with_jitter(false);
        let layer = RetryLayer::new(config, RetryFailures(AnyErrorIsFailure)).unwrap();
        let svc = layer.layer(flaky(usize::MAX, attempts.clone()));
        let calls: Vec<_> = (0..10).map(|i| tokio::spawn(svc.clone().oneshot(i))).collect();
        for call in calls {
            call.await.unwrap().unwrap_err();
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 15);
        assert!(layer.budget_balance().unwrap() < 1.0);
    }

    #[test]
    fn invalid_config() {
        let bad = RetryConfig::default().with_backoff(Duration::from_secs(2), Duration::from_secs(1), 2.0);
        assert!(matches!(bad.validate(), Err(ConfigError::Exceeds { .. })));
        let bad =
            RetryConfig::default().with_budget(Some(RetryBudgetConfig::default().with_retry_percent(-1.0)));
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::PercentOutOfRange {
                field: "retry_percent",
                ..
            })
        ));
    }
}

mod hedge {
    use std::collections::VecDeque;

    use parking_lot::Mutex;

    use super::*;

    /// Counts a call as cancelled if its future is dropped before it answers.
    struct CancelGuard(Option<Arc<AtomicUsize>>);

    impl CancelGuard {
        fn answered(&mut self) {
            self.0 = None;
        }
    }

    impl Drop for CancelGuard {
        fn drop(&mut self) {
            if let Some(cancelled) = self.0.take() {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// A backend whose n-th call takes the n-th scheduled latency and then answers `Ok(n)`, or `Err` if scheduled
    /// to fail. Unscheduled calls take 10 ms.
    #[derive(Clone, Default)]
    struct Backend {
        schedule: Arc<Mutex<VecDeque<(u64, bool)>>>,
        calls: Arc<AtomicUsize>,
        cancelled: Arc<AtomicUsize>,
    }

    impl Backend {
        fn then(&self, millis: u64, ok: bool) -> &Self {
            self.schedule.lock().push_back((millis, ok));
            self
        }

        fn service(
            &self,
        ) -> impl Service<u32, Response = usize, Error = BoxError, Future: Send> + Clone + Send + 'static
        {
            let this = self.clone();
            service_fn(move |_req: u32| {
                let n = this.calls.fetch_add(1, Ordering::SeqCst);
                let (millis, ok) = this.schedule.lock().pop_front().unwrap_or((10, true));
                let mut guard = CancelGuard(Some(this.cancelled.clone()));
                async move {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    guard.answered();
                    if ok { Ok(n) } else { Err(BoxError::from("boom")) }
                }
            })
        }
    }

    /// Only even requests are idempotent.
    #[derive(Clone)]
    struct EvenIdempotent;

    impl RetryPolicy<u32, usize> for EvenIdempotent {
        fn is_idempotent(&self, req: &u32) -> bool {
            req.is_multiple_of(2)
        }
        fn is_retryable(&self, result: Result<&usize, &BoxError>) -> bool {
            result.is_err()
        }
        fn clone_request(&self, req: &u32) -> Option<u32> {
            Some(*req)
        }
    }

    fn config() -> HedgeConfig {
        HedgeConfig::default().with_percentile(90.0).with_min_samples(10)
    }

    /// 10 ms, as the histogram reports it: the upper end of its bucket.
    const P90: Duration = Duration::from_nanos(10_485_759);
    /// When the hedge leaves: tokio's timer rounds the delay up to the millisecond.
    const HEDGE_SENT: Duration = Duration::from_millis(11);

    async fn warm_up<S: Service<u32, Response = usize, Error = BoxError> + Clone>(svc: &S) {
        for _ in 0..10 {
            svc.clone().oneshot(0).await.expect("warm-up call");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_after_the_percentile_and_cancels_the_loser() {
        let backend = Backend::default();
        let layer = HedgeLayer::new(config(), EvenIdempotent).unwrap();
        let svc = layer.layer(backend.service());
        // Not enough latencies yet: a slow call is not hedged.
        backend.then(1000, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(0).await.unwrap(), 0);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(layer.delay(), None);
        warm_up(&svc).await;
        assert_eq!(layer.delay(), Some(P90));

        // The original takes a second; the hedge, sent at the 90th percentile, answers 10 ms later and wins.
        backend.then(1000, true).then(10, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), 12);
        assert_eq!(start.elapsed(), HEDGE_SENT + Duration::from_millis(10));
        assert_eq!(backend.calls.load(Ordering::SeqCst), 13);
        assert_eq!(
            backend.cancelled.load(Ordering::SeqCst),
            1,
            "the original was cancelled"
        );

        // A fast original needs no hedge.
        let start = tokio::time::Instant::now();
        svc.clone().oneshot(4).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert_eq!(backend.calls.load(Ordering::SeqCst), 14);

        // Two windows (30 s each) later the latencies have aged out: no hedging until there are enough again.
        tokio::time::advance(Duration::from_secs(61)).await;
        backend.then(1000, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(6).await.unwrap(), 14);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(layer.delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_requests_are_not_hedged() {
        let backend = Backend::default();
        let svc = HedgeLayer::new(config(), EvenIdempotent)
            .unwrap()
            .layer(backend.service());
        warm_up(&svc).await;
        backend.then(1000, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(3).await.unwrap(), 10);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(backend.calls.load(Ordering::SeqCst), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_waits_for_the_hedge_in_flight() {
        let backend = Backend::default();
        let svc = HedgeLayer::new(config(), EvenIdempotent)
            .unwrap()
            .layer(backend.service());
        warm_up(&svc).await;
        // The original fails at 15 ms, after the hedge left (11 ms) and before it answers (21 ms).
        backend.then(15, false).then(10, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(0).await.unwrap(), 11);
        assert_eq!(start.elapsed(), HEDGE_SENT + Duration::from_millis(10));
        // Both failing: the last answer is returned.
        backend.then(15, false).then(10, false);
        svc.clone().oneshot(0).await.unwrap_err();
        assert_eq!(backend.calls.load(Ordering::SeqCst), 14);
    }

    /// Hedges draw on the retry layer's budget: with 10 % of requests as budget and no reserve, ten requests pay
    /// for one hedge, and the next slow call is not hedged.
    #[tokio::test(start_paused = true)]
    async fn hedges_share_the_retry_budget() {
        let backend = Backend::default();
        let budget = RetryBudgetConfig::default()
            .with_min_retries_per_sec(0)
            .with_retry_percent(10.0);
        let retry = RetryLayer::new(
            RetryConfig::default().with_budget(Some(budget)),
            RetryFailures(AnyErrorIsFailure),
        )
        .unwrap();
        let hedge = HedgeLayer::new(config().with_budget(None), EvenIdempotent)
            .unwrap()
            .with_budget(retry.budget());
        let svc = ServiceBuilder::new()
            .layer(hedge)
            .layer(retry.clone())
            .service(backend.service());
        warm_up(&svc).await; // 10 requests deposited by the retry layer
        backend.then(1000, true).then(10, true);
        assert_eq!(svc.clone().oneshot(0).await.unwrap(), 11); // hedged: 11 requests, 1 hedge
        assert!(retry.budget_balance().unwrap() < 1.0);
        backend.then(1000, true);
        let start = tokio::time::Instant::now();
        assert_eq!(svc.clone().oneshot(0).await.unwrap(), 12); // over budget: not hedged
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(backend.calls.load(Ordering::SeqCst), 13);
    }

    #[test]
    fn invalid_config() {
        assert!(matches!(
            HedgeLayer::new(HedgeConfig::default().with_percentile(0.0), EvenIdempotent),
            Err(ConfigError::PercentOutOfRange {
                field: "percentile",
                ..
            })
        ));
        assert!(matches!(
            HedgeLayer::new(
                HedgeConfig::default().with_delay_bounds(Duration::from_secs(2), Duration::from_secs(1)),
                EvenIdempotent
            ),
            Err(ConfigError::Exceeds {
                field: "min_delay (ns)",
                ..
            })
        ));
        assert!(matches!(
            HedgeLayer::new(HedgeConfig::default().with_window(Duration::ZERO), EvenIdempotent),
            Err(ConfigError::ZeroDuration { field: "window", .. })
        ));
    }
}

mod timeout {
    use super::*;
    use trestle_breaker::timeout::current_deadline;

    #[tokio::test(start_paused = true)]
    async fn times_out_slow_calls() {
        let svc = service_fn(|d: u64| async move {
            tokio::time::sleep(Duration::from_secs(d)).await;
            Ok::<_, BoxError>(d)
        });
        let svc = TimeoutLayer::new(Duration::from_secs(2)).unwrap().layer(svc);
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
        let err = svc.oneshot(10).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Elapsed>().unwrap().budget,
            Duration::from_secs(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn honours_and_forwards_grpc_timeout() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = seen.clone();
        let svc = service_fn(move |req: http::Request<u64>| {
            record.lock().push(req.headers().get("grpc-timeout").cloned());
            async move {
                tokio::time::sleep(Duration::from_millis(*req.body())).await;
                Ok::<_, BoxError>(())
            }
        });
        let svc = TimeoutLayer::new(Duration::from_secs(1))
            .unwrap()
            .with_propagation(GrpcTimeout)
            .layer(svc);
        let req = http::Request::builder()
            .header("grpc-timeout", "100m")
            .body(200)
            .unwrap();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Elapsed>().unwrap().budget,
            Duration::from_millis(100)
        );
        svc.clone().oneshot(http::Request::new(0)).await.unwrap();
        assert_eq!(
            *seen.lock(),
            [
                Some("100000u".parse().unwrap()),
                Some("1000000u".parse().unwrap())
            ]
        );
    }

    /// A server-side timeout's deadline reaches the client calls made while serving: the outgoing `grpc-timeout`
    /// carries what is left, not the client's own (longer) timeout.
    #[tokio::test(start_paused = true)]
    async fn deadline_propagates_to_nested_calls() {
        let forwarded = Arc::new(parking_lot::Mutex::new(None));
        let record = forwarded.clone();
        let downstream = service_fn(move |req: http::Request<()>| {
            *record.lock() = req.headers().get("grpc-timeout").cloned();
            async { Ok::<_, BoxError>(()) }
        });
        let client = TimeoutLayer::new(Duration::from_secs(30))
            .unwrap()
            .with_propagation(GrpcTimeout)
            .layer(downstream);
        let handler = service_fn(move |_req: ()| {
            let client = client.clone();
            async move {
                assert!(current_deadline().is_some());
                tokio::time::sleep(Duration::from_millis(150)).await;
                client.oneshot(http::Request::new(())).await
            }
        });
        let server = TimeoutLayer::new(Duration::from_millis(500))
            .unwrap()
            .layer(handler);
        server.oneshot(()).await.unwrap();
        assert_eq!(forwarded.lock().clone(), Some("350000u".parse().unwrap()));
        assert!(current_deadline().is_none());
    }

    #[tokio::test]
    async fn expired_deadline_is_not_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let svc = service_fn(move |_: http::Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        });
        let svc = TimeoutLayer::new(Duration::from_secs(1))
            .unwrap()
            .with_propagation(GrpcTimeout)
            .layer(svc);
        let req = http::Request::builder()
            .header("grpc-timeout", "0n")
            .body(())
            .unwrap();
        let err = svc.oneshot(req).await.unwrap_err();
        assert_eq!(err.downcast_ref::<Elapsed>().unwrap().budget, Duration::ZERO);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    /// A huge (but valid) timeout or propagated deadline must not overflow the clock.
    #[tokio::test(start_paused = true)]
    async fn huge_timeout_does_not_panic() {
        let svc = service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(()) });
        let svc = TimeoutLayer::new(Duration::MAX)
            .unwrap()
            .with_propagation(GrpcTimeout)
            .layer(svc);
        svc.clone().oneshot(http::Request::new(())).await.unwrap();
        let req = http::Request::builder()
            .header("grpc-timeout", "99999999H")
            .body(())
            .unwrap();
        svc.oneshot(req).await.unwrap();
        let breaker = CircuitBreakerHandle::new("b", small_breaker(Duration::MAX)).unwrap();
        breaker.trip();
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn zero_timeout_is_invalid() {
        assert!(matches!(
            TimeoutLayer::new(Duration::ZERO),
            Err(ConfigError::ZeroDuration { field: "timeout", .. })
        ));
    }
}

mod adaptive {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rejects_above_the_limit_and_backs_off_on_failure() {
        let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
        let aimd = Aimd::new(
            AimdConfig::default()
                .with_limits(2, 1, 10)
                .with_backoff_ratio(0.5),
        )
        .unwrap();
        let layer = AdaptiveConcurrencyLayer::new(aimd);
        let mut svc = layer.layer(mock);
        let a = svc.ready().await.unwrap().call(1);
        let b = svc.ready().await.unwrap().call(2);
        let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
        let limited = err.downcast_ref::<ConcurrencyLimited>().unwrap();
        assert_eq!((limited.limit, limited.in_flight), (2, 2));

        let (_, respond) = next_request(&mut handle).await;
        respond.send_error("overloaded");
        a.await.unwrap_err();
        assert_eq!(layer.limit(), 1, "2 * 0.5 after a drop");
        drop(b); // cancelled: frees its slot, teaches nothing
        assert_eq!((layer.in_flight(), layer.limit()), (0, 1));

        let c = svc.ready().await.unwrap().call(4);
        let _ = next_request(&mut handle).await; // b's request
        let (_, respond) = next_request(&mut handle).await;
        respond.send_response(4);
        assert_eq!(c.await.unwrap(), 4);
        assert_eq!(layer.limit(), 2, "+1 on a success that used the limit");
    }
}

mod throttle {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rejecting_backend_is_throttled_locally() {
        let seed = seed();
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = AdaptiveThrottleLayer::with_clock_and_random(
            ThrottleConfig::default(),
            TokioClock,
            SeededRandom::new(seed),
        )
        .unwrap();
        let svc = layer.layer(backend(calls.clone()));
        let mut throttled = 0;
        for _ in 0..1000 {
            if svc.clone().oneshot(false).await.unwrap_err().is::<Throttled>() {
                throttled += 1;
            }
        }
        // With no accepts, p = requests / (requests + 1): almost everything is rejected locally.
        assert!(throttled > 950, "throttled {throttled}");
        assert_eq!(calls.load(Ordering::SeqCst), 1000 - throttled);
        assert!(layer.reject_probability() > 0.99);
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_backend_is_not_throttled_and_history_expires() {
        let layer = AdaptiveThrottleLayer::with_clock_and_random(
            ThrottleConfig::default().with_window(Duration::from_secs(10)),
            TokioClock,
            SeededRandom::new(1),
        )
        .unwrap();
        let svc = layer.layer(backend(Arc::default()));
        for _ in 0..100 {
            svc.clone().oneshot(false).await.unwrap_err();
        }
        assert!(layer.reject_probability() > 0.9);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(layer.reject_probability(), 0.0);
        for _ in 0..100 {
            svc.clone().oneshot(true).await.unwrap();
        }
        assert_eq!(layer.reject_probability(), 0.0);
    }
}

/// The usual stack, as the README recommends: every layer composes and errors stay downcastable.
#[tokio::test(start_paused = true)]
async fn recommended_stack_composes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = CircuitBreakerHandle::new("backend", small_breaker(Duration::from_secs(10))).unwrap();
    let limiter = GcraLimiter::new(RateLimitConfig::new(1000, Duration::from_secs(1))).unwrap();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .layer(
            RetryLayer::new(
                RetryConfig::default().with_max_retries(1),
                RetryFailures(AnyErrorIsFailure),
            )
            .unwrap(),
        )
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .layer(BulkheadLayer::new(BulkheadConfig::new(10)).unwrap())
        .layer(RateLimitLayer::new(limiter))
        .service(backend(calls.clone()));
    assert_eq!(svc.clone().oneshot(true).await.unwrap(), "ok");
    for _ in 0..2 {
        svc.clone().oneshot(false).await.unwrap_err(); // each: one attempt + one retry, all recorded
    }
    assert_eq!(breaker.state(), State::Open);
    let err = svc.clone().oneshot(true).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(
        reject::find(&*err).unwrap().http_status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Randomized: whatever mix of calls, polls and cancellations, no slot leaks.
mod no_leaks {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use proptest::prelude::*;

    use super::*;

    type Fut = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    /// Even requests complete at once, odd ones never do.
    fn half_pending()
    -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
        service_fn(|i: u32| {
            std::future::poll_fn(move |_| {
                if i.is_multiple_of(2) {
                    Poll::Ready(Ok(i))
                } else {
                    Poll::Pending
                }
            })
        })
    }

    fn poll_once(f: &mut Fut) -> bool {
        f.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Call(u32),
        Poll(usize),
        Drop(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                any::<u32>().prop_map(Op::Call),
                any::<usize>().prop_map(Op::Poll),
                any::<usize>().prop_map(Op::Drop),
            ],
            0..60,
        )
    }

    fn run(futures: &mut Vec<Fut>, op: Op, call: &mut dyn FnMut(u32) -> Fut) {
        match op {
            Op::Call(i) => futures.push(call(i)),
            Op::Poll(i) if !futures.is_empty() => {
                let i = i % futures.len();
                if poll_once(&mut futures[i]) {
                    drop(futures.swap_remove(i));
                }
            }
            Op::Drop(i) if !futures.is_empty() => drop(futures.swap_remove(i % futures.len())),
            _ => {}
        }
    }

    proptest! {
        /// Half-open trial slots: after any history of trial calls that were cancelled, completed with an ignored
        /// result, or are still pending, dropping them all leaves exactly `permitted` slots again.
        #[test]
        fn half_open_slots_never_leak(permitted in 1u32..4, ops in ops()) {
            let clock = ManualClock::new();
            let config = small_breaker(Duration::from_secs(1)).with_permitted_calls_in_half_open(permitted);
            let breaker = CircuitBreakerHandle::with_clock("p", config, clock.clone()).unwrap();
            // Even (completed) results are ignored: they give their slot back without deciding anything.
            let ignore_all = ClassifyFn(|_: Result<&u32, &BoxError>| Outcome::Ignored);
            let mut svc = CircuitBreakerLayer::new(breaker.clone()).with_classifier(ignore_all).layer(half_pending());
            breaker.trip();
            clock.advance(Duration::from_secs(1));
            let mut futures: Vec<Fut> = Vec::new();
            for op in ops {
                run(&mut futures, op, &mut |i| Box::pin(svc.call(i)));
            }
            futures.clear();
            let mut held: Vec<Fut> = (0..permitted).map(|i| Box::pin(svc.call(2 * i + 1)) as Fut).collect();
            for f in &mut held {
                prop_assert!(!poll_once(f), "a trial call was refused: a slot leaked");
            }
            let mut extra: Fut = Box::pin(svc.call(1));
            let refused = extra.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            prop_assert!(matches!(refused, Poll::Ready(Err(ref e)) if e.is::<CircuitOpen>()));
            prop_assert_eq!(breaker.state(), State::HalfOpen);
        }

        /// Bulkhead slots and queue places: after any history, dropping every call frees them all.
        #[test]
        fn bulkhead_slots_and_queue_never_leak(max in 1usize..4, queue in 0usize..3, ops in ops()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let _guard = rt.enter();
            let config = BulkheadConfig::new(max).with_queue(queue, Duration::from_secs(60));
            let mut svc = BulkheadLayer::new(config).unwrap().layer(half_pending());
            let mut futures: Vec<Fut> = Vec::new();
            for op in ops {
                run(&mut futures, op, &mut |i| Box::pin(svc.call(i)));
                prop_assert!(svc.in_flight() <= max);
            }
            futures.clear();
            prop_assert_eq!(svc.in_flight(), 0);
            // Fill every slot and every queue place again; the next call is refused as full.
            let mut held: Vec<Fut> = (0..max + queue).map(|i| Box::pin(svc.call(2 * i as u32 + 1)) as Fut).collect();
            for f in &mut held {
                prop_assert!(!poll_once(f));
            }
            prop_assert_eq!(svc.in_flight(), max);
            let mut extra: Fut = Box::pin(svc.call(1));
            let refused = extra.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            prop_assert!(matches!(refused, Poll::Ready(Err(ref e)) if e.is::<BulkheadFull>()));
        }
    }
}

#![doc = include_str!("../README.md")]
//!
//! # Map of the crate
//!
//! - [`machine`]: the sans-IO state machines (breaker, retry budget, AIMD and gradient limits, adaptive throttle,
//!   the hedging layer's latency histogram).
//! - One module per middleware, each with its service, layer, response future and errors: [`circuit_breaker`],
//!   [`bulkhead`], [`rate_limit`], [`retry`], [`hedge`], [`timeout`], [`adaptive`] (concurrency), [`throttle`].
//! - [`reject`]: rejections as HTTP 429/503 or gRPC `RESOURCE_EXHAUSTED`/`UNAVAILABLE` responses.
//! - Classifiers ([`Classify`]), clocks ([`Clock`]) and randomness ([`Random`]) shared by the layers.
//!
//! The most used types are re-exported here.
//!
//! # Cargo features
//!
//! One per middleware, all on by default: `circuit-breaker`, `bulkhead`, `rate-limit` (pulls in `governor`),
//! `retry` (`backon`), `hedge` (needs `retry`), `timeout`, `adaptive`, `throttle`; and `grpc` (pulls in `tonic`): [`GrpcClassifier`],
//! [`reject::grpc_status`] and `RejectLayer::grpc`. The examples above need the defaults.

#[cfg(feature = "adaptive")]
pub mod adaptive;
#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
mod classify;
mod clock;
mod config;
#[cfg(feature = "hedge")]
pub mod hedge;
pub mod machine;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
pub mod reject;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "throttle")]
pub mod throttle;
#[cfg(feature = "timeout")]
pub mod timeout;

#[cfg(feature = "adaptive")]
pub use adaptive::{AdaptiveConcurrencyLayer, ConcurrencyLimited};
#[cfg(feature = "bulkhead")]
pub use bulkhead::{BulkheadConfig, BulkheadFull, BulkheadLayer, BulkheadTimeout};
#[cfg(feature = "circuit-breaker")]
pub use circuit_breaker::{
    BreakerRegistry, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, RegistryConfig, StateChange,
};
#[cfg(feature = "grpc")]
pub use classify::GrpcClassifier;
pub use classify::{AnyErrorIsFailure, Classify, ClassifyFn, HttpClassifier, Outcome};
pub use clock::{Clock, CoarseClock, ManualClock, Random, SeededRandom, StdClock, ThreadRandom, TokioClock};
pub use config::ConfigError;
#[cfg(feature = "hedge")]
pub use hedge::{HedgeConfig, HedgeLayer};
pub use machine::{
    AimdConfig, CircuitBreakerConfig, GradientConfig, RetryBudgetConfig, SlidingWindow, State,
    ThrottleConfig, WaitInOpen,
};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{
    GcraLimiter, KeyedGcraLimiter, RateLimitConfig, RateLimitLayer, RateLimited, RateLimiter,
};
pub use reject::RejectLayer;
#[cfg(feature = "retry")]
pub use retry::{
    BodyTooLarge, BufferBodyLayer, BufferedBody, GrpcRetryPolicy, HttpRetryPolicy, Idempotent, RetryConfig,
    RetryFailures, RetryLayer, RetryPolicy, SharedRetryBudget,
};
#[cfg(feature = "throttle")]
pub use throttle::{AdaptiveThrottleLayer, Throttled};
#[cfg(feature = "timeout")]
pub use timeout::{Elapsed, GrpcTimeout, TimeoutLayer};

/// The error type of every layer: the inner service's error or one of this crate's rejections, boxed. Downcast to
/// tell them apart (or use [`reject::find`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A response future was polled after it had completed.
#[allow(dead_code)] // unused when no layer is enabled
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("response future polled after completion")]
pub(crate) struct PolledAfterCompletion;

//! # trestle-breaker
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; issue #6 brings it.
//!
//! What it will be: circuit breakers, bulkheads, rate limiting, retries with a budget, timeouts with deadline
//! propagation, adaptive concurrency and client-side throttling, as tower layers.

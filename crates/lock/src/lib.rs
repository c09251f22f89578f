//! # trestle-lock
//!
//! **Status: not started.** This crate has no functionality yet and exports nothing; issue #5 brings it.
//!
//! What it will be: fenced distributed locks and semaphores over etcd's v3 API, so they run against a
//! Trestle cluster or a real etcd. A `Session` holds a lease with a background keep-alive; a `Mutex` follows
//! etcd's design (the lowest create revision under the lock prefix owns, each waiter watches only its
//! predecessor) and hands out a monotonic fencing token; a `Semaphore` gives N permits on the same principles;
//! a small helper lets the protected resource reject stale tokens.

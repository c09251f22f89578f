//! Helpers for tests that run real nodes on loopback (this crate's, and those of crates built on it).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so no outgoing connection
/// of a concurrently running test can take it between this check and the node's bind. Concurrent test
/// processes start from different points of the range.
pub fn free_loopback_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

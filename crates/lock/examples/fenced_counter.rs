//! A fenced lock protecting a write to storage that lives outside the lock service.
//!
//! Start a cluster (`scripts/run.sh`, or any etcd), then:
//!
//! ```text
//! cargo run -p trestle-lock --example fenced_counter -- http://127.0.0.1:2379
//! ```
//!
//! Two workers take the lock in turn. The first one "pauses" past its lease (simulated by revoking the lease
//! under it), the second takes the lock and writes, then the first wakes up and tries to write with its old
//! token: the storage refuses it.

use std::time::Duration;

use trestle_lock::{FenceGate, Mutex, Session, SessionOptions};

/// The protected resource: a value and the gate that admits only the newest lock holder's writes.
struct Storage {
    gate: FenceGate,
    value: std::sync::Mutex<Vec<String>>,
}

impl Storage {
    fn append(&self, token: trestle_lock::FencingToken, entry: &str) -> Result<(), trestle_lock::StaleToken> {
        self.gate.write(token, || {
            if let Ok(mut v) = self.value.lock() {
                v.push(entry.to_owned());
            }
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let client = etcd_client::Client::connect([endpoint], None).await?;
    let storage = Storage {
        gate: FenceGate::new(),
        value: std::sync::Mutex::new(Vec::new()),
    };
    let ttl = SessionOptions::with_ttl(Duration::from_secs(5));

    let slow = Session::with_options(client.clone(), ttl.clone()).await?;
    let slow_guard = Mutex::new(&slow, "examples/fenced-counter")?.lock().await?;
    let slow_token = slow_guard.fencing_token();
    println!("worker 1 holds the lock with token {slow_token}");
    storage.append(slow_token, "worker 1, first write")?;

    // Worker 1 stalls (a long GC pause, a frozen VM): its lease ends while it still believes it holds the lock.
    client.clone().lease_revoke(slow.lease()).await?;
    println!("worker 1 pauses past its lease");

    let fast = Session::with_options(client.clone(), ttl).await?;
    let fast_guard = Mutex::new(&fast, "examples/fenced-counter")?.lock().await?;
    println!(
        "worker 2 holds the lock with token {}",
        fast_guard.fencing_token()
    );
    storage.append(fast_guard.fencing_token(), "worker 2")?;

    match storage.append(slow_token, "worker 1, after its pause") {
        Ok(()) => println!("BUG: the stale write was accepted"),
        Err(refused) => println!("worker 1 wakes up and writes: refused ({refused})"),
    }
    fast_guard.unlock().await?;
    fast.close().await;
    println!(
        "storage holds: {:?}",
        storage.value.lock().map(|v| v.clone()).unwrap_or_default()
    );
    Ok(())
}

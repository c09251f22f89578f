//! A producer and a worker against a running cluster:
//!
//! ```sh
//! cargo run -p trestle-queue --example worker -- http://127.0.0.1:2379,http://127.0.0.1:2382,http://127.0.0.1:2385
//! ```
//!
//! The nodes must run with `--queue-partitions 3` (or more). It creates the queue `example-thumbnails` (sharded over
//! three partitions, dead letters to `example-thumbnails-dead`) unless it exists, sends ten jobs with idempotency
//! keys, and runs a worker until all ten are done. Job 7 fails once, to show a retry.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trestle_queue::client::{ClientConfig, Delivery, QueueClient};
use trestle_queue::worker::{Handler, JobError, Worker, WorkerConfig};
use trestle_queue::{NewMessage, QueueError, QueueSettings};

struct Resize {
    done: Arc<Mutex<HashSet<String>>>,
    all_done: Arc<tokio::sync::Notify>,
}

impl Handler for Resize {
    async fn handle(&self, delivery: &Delivery) -> Result<Vec<u8>, JobError> {
        let job = String::from_utf8_lossy(&delivery.payload).into_owned();
        let attempt = delivery.receipt.as_ref().map_or(1, |r| r.delivery);
        if job == "resize 7.png" && attempt == 1 {
            println!("{job}: failing its first attempt");
            return Err(JobError::Retry("the image store timed out".into()));
        }
        println!("{job}: done (attempt {attempt})");
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.insert(job);
        if done.len() == 10 {
            self.all_done.notify_one();
        }
        Ok(Vec::new())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args()
        .nth(1)
        .ok_or("usage: worker <endpoints, comma-separated>")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let client = QueueClient::new(ClientConfig::new(endpoints))?;

    let mut settings = QueueSettings::default();
    settings.max_deliveries = 3;
    settings.dead_letter_queue = Some("example-thumbnails-dead".into());
    match client.create_queue("example-thumbnails", 3, &settings).await {
        Ok(_) => println!("created example-thumbnails"),
        Err(e) if matches!(e.refusal(), Some(QueueError::QueueExists { .. })) => {}
        Err(e) => return Err(e.into()),
    }

    // An idempotency key makes a retried send exact: a repeat within the dedup window enqueues nothing. Keys are
    // per run here, so running the example again sends new jobs.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let jobs: Vec<NewMessage> = (0..10)
        .map(|i| {
            let mut m = NewMessage::new(format!("resize {i}.png"));
            m.idempotency_key = Some(format!("{run}-{i}.png"));
            m
        })
        .collect();
    client.send("example-thumbnails", jobs).await?;

    let mut config = WorkerConfig::new("example-thumbnails");
    config.concurrency = 4;
    config.wait = Duration::from_secs(1);
    config.base_backoff = Duration::from_millis(200);
    let all_done = Arc::new(tokio::sync::Notify::new());
    let handler = Resize {
        done: Arc::default(),
        all_done: all_done.clone(),
    };
    let report = Worker::new(client, config)?
        .run(handler, async move { all_done.notified().await })
        .await;
    println!("acked {}, retried {}", report.acked, report.retried);
    Ok(())
}

//! `trestle queue`: the work queue's command-line client (any member started with `--queue-partitions`).
//!
//! Output is one JSON object per line, so scripts can read it; errors go to stderr with a non-zero exit.

use std::time::Duration;

use clap::{Args, Subcommand};
use trestle_queue::client::{ClientConfig, ClientError, QueueClient, Receipt};
use trestle_queue::{NewMessage, QueueSettings};

/// Where the cluster is.
#[derive(Debug, Args)]
pub struct QueueTarget {
    /// Members' client URLs, comma-separated.
    #[arg(
        long,
        env = "TRESTLE_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
}

/// The subcommands of `trestle queue`.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum QueueCommand {
    /// Create a queue.
    Create(QueueCreateArgs),
    /// Delete a queue and its messages.
    Delete(QueueNameArgs),
    /// List the queues.
    List(QueueListArgs),
    /// Send one message (the payload is the argument, or stdin with `-`).
    Send(QueueSendArgs),
    /// Receive messages, print them, and acknowledge them unless --no-ack.
    Receive(QueueReceiveArgs),
    /// Acknowledge deliveries by the receipts `receive --no-ack` printed.
    Ack(QueueAckArgs),
    /// Give deliveries back (delivered again after --retry-after-ms, or dead-lettered after the last).
    Nack(QueueNackArgs),
    /// Show a queue's dead letters (in its dead-letter queue, or parked in it when it has none).
    DeadLetters(QueuePeekArgs),
    /// A queue's counters, in total and per partition.
    Stats(QueueNameArgs),
    /// Show messages without changing them.
    Peek(QueuePeekArgs),
    /// Remove every message of a queue.
    Purge(QueueNameArgs),
    /// Move dead letters back to their source queues.
    Redrive(QueueRedriveArgs),
}

/// `trestle queue create`.
#[derive(Debug, Args)]
pub struct QueueCreateArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue's name.
    name: String,
    /// Shards, each in its own partition.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Visibility timeout in milliseconds [default: 30000].
    #[arg(long)]
    visibility_timeout_ms: Option<u64>,
    /// Deliveries before a message is dead-lettered [default: 10].
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// The dead-letter queue (created beside this queue's shards when missing).
    #[arg(long)]
    dead_letter_queue: Option<String>,
    /// Per-key FIFO ordering by the messages' group.
    #[arg(long)]
    fifo: bool,
}

/// A command naming one queue.
#[derive(Debug, Args)]
pub struct QueueNameArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    name: String,
}

/// `trestle queue list`.
#[derive(Debug, Args)]
pub struct QueueListArgs {
    #[command(flatten)]
    target: QueueTarget,
}

/// `trestle queue send`.
#[derive(Debug, Args)]
pub struct QueueSendArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    queue: String,
    /// The payload; `-` reads stdin.
    payload: String,
    /// Idempotency key: a repeat within the dedup window enqueues nothing.
    #[arg(long)]
    key: Option<String>,
    /// FIFO group.
    #[arg(long)]
    group: Option<String>,
    /// Deliver no earlier than this many milliseconds from now.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Priority (0 to 255, higher first).
    #[arg(long, default_value_t = 0)]
    priority: u8,
    /// A header `name=value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

/// `trestle queue receive`.
#[derive(Debug, Args)]
pub struct QueueReceiveArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    queue: String,
    /// At most this many messages.
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Wait up to this many milliseconds for a message.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Leave the messages in flight (they come back after their visibility timeout).
    #[arg(long)]
    no_ack: bool,
}

/// `trestle queue ack`.
#[derive(Debug, Args)]
pub struct QueueAckArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    queue: String,
    /// Receipts as `receive` prints them (`partition:id:delivery:token`).
    #[arg(required = true, value_parser = parse_receipt)]
    receipts: Vec<Receipt>,
}

/// `trestle queue nack`.
#[derive(Debug, Args)]
pub struct QueueNackArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    queue: String,
    /// Receipts as `receive` prints them (`partition:id:delivery:token`).
    #[arg(required = true, value_parser = parse_receipt)]
    receipts: Vec<Receipt>,
    /// Deliver again after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    retry_after_ms: u64,
    /// Why (kept with the message).
    #[arg(long, default_value = "")]
    error: String,
}

/// `trestle queue peek`.
#[derive(Debug, Args)]
pub struct QueuePeekArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The queue.
    queue: String,
    /// At most this many.
    #[arg(long, default_value_t = 10)]
    max: u32,
}

/// `trestle queue redrive`.
#[derive(Debug, Args)]
pub struct QueueRedriveArgs {
    #[command(flatten)]
    target: QueueTarget,
    /// The dead-letter queue.
    queue: String,
    /// Only dead letters from this queue.
    #[arg(long)]
    source: Option<String>,
    /// Only dead letters whose last error contains this.
    #[arg(long)]
    error_contains: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    max: u32,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("header {s:?} is not name=value"))
}

fn parse_receipt(s: &str) -> Result<Receipt, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad =
        || format!("receipt {s:?} is not partition:id:delivery:token (as `trestle queue receive` prints it)");
    let [partition, id, delivery, token] = parts[..] else {
        return Err(bad());
    };
    Ok(Receipt {
        partition: partition.parse().map_err(|_| bad())?,
        id: id.parse().map_err(|_| bad())?,
        delivery: delivery.parse().map_err(|_| bad())?,
        token: token.parse().map_err(|_| bad())?,
    })
}

fn receipt_text(r: &Receipt) -> String {
    format!("{}:{}:{}:{}", r.partition, r.id, r.delivery, r.token)
}

fn client(target: &QueueTarget) -> Result<QueueClient, String> {
    QueueClient::new(ClientConfig::new(target.endpoints.clone())).map_err(|e| e.to_string())
}

fn failed(e: ClientError) -> String {
    e.to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Runs one `trestle queue` command.
pub(crate) async fn run(command: QueueCommand) -> Result<(), String> {
    match command {
        QueueCommand::Create(a) => {
            let mut settings = QueueSettings::default().with_fifo(a.fifo);
            if let Some(v) = a.visibility_timeout_ms {
                settings = settings.with_visibility_timeout_ms(v);
            }
            if let Some(v) = a.max_deliveries {
                settings = settings.with_max_deliveries(v);
            }
            settings = settings.with_dead_letter_queue(a.dead_letter_queue);
            let info = client(&a.target)?
                .create_queue(&a.name, a.partitions, &settings)
                .await
                .map_err(failed)?;
            println!(
                r#"{{"created":{},"partitions":{:?}}}"#,
                quote(&info.name),
                info.partitions
            );
        }
        QueueCommand::Delete(a) => {
            let removed = client(&a.target)?.delete_queue(&a.name).await.map_err(failed)?;
            println!(r#"{{"deleted":{},"removed":{removed}}}"#, quote(&a.name));
        }
        QueueCommand::List(a) => {
            for q in client(&a.target)?.list_queues().await.map_err(failed)? {
                println!(
                    r#"{{"queue":{},"partitions":{:?}}}"#,
                    quote(&q.name),
                    q.partitions
                );
            }
        }
        QueueCommand::Send(a) => {
            let payload = if a.payload == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                buf
            } else {
                a.payload.into_bytes()
            };
            let mut m = NewMessage::new(payload)
                .with_delay_ms(a.delay_ms)
                .with_priority(a.priority);
            if let Some(k) = a.key {
                m = m.with_idempotency_key(k);
            }
            if let Some(g) = a.group {
                m = m.with_group(g);
            }
            for (k, v) in a.headers {
                m = m.with_header(k, v);
            }
            let sent = client(&a.target)?.send(&a.queue, vec![m]).await.map_err(failed)?;
            for s in sent {
                let id = s.id.unwrap_or_default();
                println!(
                    r#"{{"partition":{},"id":{},"duplicate":{}}}"#,
                    id.partition, id.id, s.duplicate
                );
            }
        }
        QueueCommand::Receive(a) => {
            let c = client(&a.target)?;
            let deliveries = c
                .receive(&a.queue, a.max, Duration::from_millis(a.wait_ms), None)
                .await
                .map_err(failed)?;
            let receipts: Vec<Receipt> = deliveries.iter().filter_map(|d| d.receipt).collect();
            for d in &deliveries {
                let r = d.receipt.unwrap_or_default();
                println!(
                    r#"{{"partition":{},"id":{},"delivery":{},"receipt":{},"payload":{}}}"#,
                    r.partition,
                    r.id,
                    r.delivery,
                    quote(&receipt_text(&r)),
                    quote(&text(&d.payload))
                );
            }
            if !a.no_ack && !receipts.is_empty() {
                c.ack(&a.queue, &receipts, &[]).await.map_err(failed)?;
            }
        }
        QueueCommand::Ack(a) => {
            client(&a.target)?
                .ack(&a.queue, &a.receipts, &[])
                .await
                .map_err(failed)?;
            println!(r#"{{"acked":{}}}"#, a.receipts.len());
        }
        QueueCommand::Nack(a) => {
            client(&a.target)?
                .nack(
                    &a.queue,
                    &a.receipts,
                    Duration::from_millis(a.retry_after_ms),
                    &a.error,
                )
                .await
                .map_err(failed)?;
            println!(r#"{{"nacked":{}}}"#, a.receipts.len());
        }
        QueueCommand::DeadLetters(a) => {
            let c = client(&a.target)?;
            let queues = c.list_queues().await.map_err(failed)?;
            let info = queues
                .iter()
                .find(|q| q.name == a.queue)
                .ok_or_else(|| format!("unknown queue {:?}", a.queue))?;
            let dlq = info
                .settings
                .as_ref()
                .and_then(|s| s.dead_letter_queue.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| a.queue.clone());
            for m in c.peek(&dlq, a.max).await.map_err(failed)? {
                let Some(dl) = &m.dead_letter else { continue };
                if dl.source != a.queue {
                    continue;
                }
                let id = m.id.unwrap_or_default();
                println!(
                    r#"{{"queue":{},"partition":{},"id":{},"deliveries":{},"reason":{},"last_error":{},"payload":{}}}"#,
                    quote(&dlq),
                    id.partition,
                    id.id,
                    dl.deliveries,
                    quote(&dl.reason),
                    quote(&dl.last_error),
                    quote(&text(&m.payload))
                );
            }
        }
        QueueCommand::Stats(a) => {
            let stats = client(&a.target)?.stats(&a.name).await.map_err(failed)?;
            let t = stats.total.unwrap_or_default();
            println!(
                r#"{{"queue":{},"depth":{},"ready":{},"in_flight":{},"delayed":{},"parked":{},"dead_letters":{},"oldest_age_ms":{}}}"#,
                quote(&a.name),
                t.depth,
                t.ready,
                t.in_flight,
                t.delayed,
                t.parked,
                t.dead_letters,
                t.oldest_age_ms
            );
        }
        QueueCommand::Peek(a) => {
            for m in client(&a.target)?.peek(&a.queue, a.max).await.map_err(failed)? {
                let id = m.id.unwrap_or_default();
                println!(
                    r#"{{"partition":{},"id":{},"state":{},"deliveries":{},"payload":{}}}"#,
                    id.partition,
                    id.id,
                    quote(&m.state),
                    m.deliveries,
                    quote(&text(&m.payload))
                );
            }
        }
        QueueCommand::Purge(a) => {
            let removed = client(&a.target)?.purge(&a.name).await.map_err(failed)?;
            println!(r#"{{"purged":{},"removed":{removed}}}"#, quote(&a.name));
        }
        QueueCommand::Redrive(a) => {
            let r = client(&a.target)?
                .redrive(&a.queue, a.source.as_deref(), a.error_contains.as_deref(), a.max)
                .await
                .map_err(failed)?;
            println!(
                r#"{{"moved":{},"skipped":{},"more":{}}}"#,
                r.moved.len(),
                r.skipped,
                r.more
            );
        }
    }
    Ok(())
}

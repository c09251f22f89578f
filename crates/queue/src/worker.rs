//! [`Worker`]: a consumer runtime over a [`QueueClient`]. It long-polls for messages, runs a [`Handler`] on each
//! with bounded concurrency, keeps long jobs' deliveries alive with heartbeats, and settles each outcome:
//! success acks (with the task's result, for barrier tasks), a retryable failure nacks with exponential backoff
//! by delivery count, a permanent failure terminates (straight to the dead-letter queue). On shutdown it stops
//! receiving and waits for running jobs, up to a grace period; what is still running then is nacked for prompt
//! redelivery elsewhere.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{ClientError, Delivery, QueueClient};

/// How a job ended badly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Try again later (after a backoff); after the queue's max deliveries, the message is dead-lettered.
    #[error("retryable: {0}")]
    Retry(String),
    /// Never succeeds: dead-letter it now, with this reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// What a worker runs for each delivery. `Ok(result)`: done (a barrier task's result is kept for its join).
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery.
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send;
}

/// How a [`Worker`] runs. Start from [`WorkerConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The queue.
    pub queue: String,
    /// Jobs run at once (and the most messages one receive asks for). Default 4.
    pub concurrency: u32,
    /// The longest one receive waits for messages. Default 10 s.
    pub wait: Duration,
    /// Each delivery's visibility timeout (`None`: the queue's). A job running longer is extended every
    /// `heartbeat`. Default `None`.
    pub visibility_timeout: Option<Duration>,
    /// How often a running job's deadline is extended, by `heartbeat_extend`. Default 10 s.
    pub heartbeat: Duration,
    /// How far each heartbeat moves the deadline from now. Default 30 s.
    pub heartbeat_extend: Duration,
    /// The first retry's delay; doubled per delivery up to `max_backoff`. Default 1 s.
    pub base_backoff: Duration,
    /// The longest retry delay. Default 5 min.
    pub max_backoff: Duration,
    /// Spread retry delays randomly (up to one more delay) so that failures together do not retry together.
    /// Default on.
    pub jitter: bool,
    /// How long shutdown waits for running jobs. Default 30 s.
    pub shutdown_grace: Duration,
    /// Pause after a failed receive (the cluster is unavailable), before trying again. Default 1 s.
    pub error_pause: Duration,
}

impl WorkerConfig {
    /// The defaults, for `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            concurrency: 4,
            wait: Duration::from_secs(10),
            visibility_timeout: None,
            heartbeat: Duration::from_secs(10),
            heartbeat_extend: Duration::from_secs(30),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            jitter: true,
            shutdown_grace: Duration::from_secs(30),
            error_pause: Duration::from_secs(1),
        }
    }

    /// Checks the fields; the error names the offending value.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.concurrency == 0 {
            return Err(ClientError::Config(
                "worker concurrency must be at least 1".into(),
            ));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.heartbeat_extend {
            return Err(ClientError::Config(format!(
                "worker heartbeat {:?} must be above zero and below the extension {:?}, or jobs lose their \
                 deliveries between beats",
                self.heartbeat, self.heartbeat_extend
            )));
        }
        if self.base_backoff > self.max_backoff {
            return Err(ClientError::Config(format!(
                "worker base backoff {:?} is above the max {:?}",
                self.base_backoff, self.max_backoff
            )));
        }
        Ok(())
    }

    /// The retry delay after failed delivery number `delivery` (1 for the first): exponential from
    /// `base_backoff`, doubling per delivery, at most `max_backoff` (plus jitter when on).
    pub fn backoff(&self, delivery: u32) -> Duration {
        use backon::BackoffBuilder as _;
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.base_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let delay = builder
            .build()
            .nth(delivery.saturating_sub(1).min(64) as usize)
            .unwrap_or(self.max_backoff);
        // Whole milliseconds: the builder's float arithmetic leaves nanosecond noise (and the wire carries ms).
        Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What a worker did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Jobs acknowledged.
    pub acked: u64,
    /// Jobs nacked for a retry (handler's retryable failures, and jobs stopped by shutdown).
    pub retried: u64,
    /// Jobs terminated (permanent failures).
    pub terminated: u64,
    /// Settlements the cluster refused or could not take (the delivery comes back after its deadline).
    pub settle_failures: u64,
}

/// A consumer of one queue. See the module docs.
#[derive(Debug)]
pub struct Worker {
    client: QueueClient,
    config: WorkerConfig,
}

#[derive(Clone, Copy, Debug)]
enum Settled {
    Acked,
    Retried,
    Terminated,
    Failed,
}

impl Worker {
    /// A worker of `config.queue` through `client`.
    pub fn new(client: QueueClient, config: WorkerConfig) -> Result<Self, ClientError> {
        config.validate()?;
        Ok(Self { client, config })
    }

    /// Runs `handler` on the queue's messages until `shutdown` resolves, then drains (see the module docs).
    pub async fn run<H: Handler>(self, handler: H, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(self.config.concurrency as usize));
        let mut jobs: JoinSet<Settled> = JoinSet::new();
        let mut report = WorkerReport::default();
        let stop = stop_signal::Stop::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Reap finished jobs.
            while let Some(done) = jobs.try_join_next() {
                count(&mut report, done.unwrap_or(Settled::Failed));
            }
            let free = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = permits.clone().acquire_many_owned(1) => {
                    drop(permit);
                    permits.available_permits()
                }
            };
            let max = u32::try_from(free).unwrap_or(1).max(1);
            let received = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = self.client.receive(&self.config.queue, max, self.config.wait, self.config.visibility_timeout) => r,
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(queue = %self.config.queue, error = %e, "receive failed; pausing");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(self.config.error_pause) => continue,
                    }
                }
            };
            for delivery in deliveries {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let client = self.client.clone();
                let config = self.config.clone();
                let handler = handler.clone();
                let stopped = stop.subscribe();
                jobs.spawn(async move {
                    let settled = run_job(&client, &config, &*handler, delivery, stopped).await;
                    drop(permit);
                    settled
                });
            }
        }
        // Shutdown: no more receives; running jobs get the grace period, then are stopped and nacked.
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while let Some(done) = jobs.join_next().await {
                count(&mut report, done.unwrap_or(Settled::Failed));
            }
        })
        .await;
        if drained.is_err() {
            stop.fire();
            while let Some(done) = jobs.join_next().await {
                count(&mut report, done.unwrap_or(Settled::Failed));
            }
        }
        report
    }
}

fn count(report: &mut WorkerReport, settled: Settled) {
    match settled {
        Settled::Acked => report.acked += 1,
        Settled::Retried => report.retried += 1,
        Settled::Terminated => report.terminated += 1,
        Settled::Failed => report.settle_failures += 1,
    }
}

/// Runs one job with heartbeats and settles it.
async fn run_job<H: Handler>(
    client: &QueueClient,
    config: &WorkerConfig,
    handler: &H,
    delivery: Delivery,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Settled {
    let Some(receipt) = delivery.receipt else {
        return Settled::Failed;
    };
    let queue = &config.queue;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + config.heartbeat, config.heartbeat);
    let mut job = std::pin::pin!(handler.handle(&delivery));
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut job => break Some(outcome),
            () = stop_signal::fired(&mut stopped) => break None,
            _ = beat.tick() => {
                if let Err(e) = client.extend(queue, &[receipt], config.heartbeat_extend).await {
                    tracing::warn!(queue, id = receipt.id, error = %e, "heartbeat failed; the job may run twice");
                }
            }
        }
    };
    let result = match outcome {
        Some(Ok(result)) => client
            .ack(queue, &[receipt], &[result])
            .await
            .map(|()| Settled::Acked),
        Some(Err(JobError::Retry(why))) => client
            .nack(queue, &[receipt], config.backoff(receipt.delivery), &why)
            .await
            .map(|()| Settled::Retried),
        Some(Err(JobError::Permanent(why))) => client
            .terminate(queue, &[receipt], &why)
            .await
            .map(|()| Settled::Terminated),
        None => client
            .nack(queue, &[receipt], Duration::ZERO, "worker shut down")
            .await
            .map(|()| Settled::Retried),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(queue, id = receipt.id, error = %e, "settling failed; the message comes back after its deadline");
        Settled::Failed
    })
}

/// A one-shot stop signal for running jobs.
mod stop_signal {
    pub(super) struct Stop(tokio::sync::watch::Sender<bool>);

    impl Stop {
        pub(super) fn new() -> Self {
            Self(tokio::sync::watch::channel(false).0)
        }
        pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
            self.0.subscribe()
        }
        pub(super) fn fire(&self) {
            self.0.send_replace(true);
        }
    }

    /// Resolves once the stop fired (or its sender is gone).
    pub(super) async fn fired(rx: &mut tokio::sync::watch::Receiver<bool>) {
        let _ = rx.wait_for(|s| *s).await.is_ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_delivery_up_to_the_max() {
        let mut c = WorkerConfig::new("q");
        c.base_backoff = Duration::from_millis(100);
        c.max_backoff = Duration::from_secs(1);
        c.jitter = false;
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(2), Duration::from_millis(200));
        assert_eq!(c.backoff(4), Duration::from_millis(800));
        assert_eq!(c.backoff(5), Duration::from_secs(1));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
        c.jitter = true;
        for delivery in 1..10 {
            let d = c.backoff(delivery);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_heartbeat_not_below_its_extension_is_refused() {
        let mut c = WorkerConfig::new("q");
        c.heartbeat = Duration::from_secs(30);
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("heartbeat"), "{e}");
        assert!(WorkerConfig::new("q").validate().is_ok());
    }
}

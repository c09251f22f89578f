//! [`QueueClient`]: the client of a queue cluster's gRPC API (`proto/queue.proto`), over any of its members.
//!
//! Every member answers every request (writes are forwarded to the partition's leader), so the client sends each
//! request to one member and moves to the next when a member is unreachable or has no leader yet (UNAVAILABLE),
//! with jittered backoff, until [`ClientConfig::retry_for`] has passed. A retried send may enqueue a message
//! twice: give messages an idempotency key to make retries exact. A retried receive may leave the first
//! attempt's deliveries in flight until their visibility deadline (at-least-once either way). An ack retried after
//! an ambiguous failure that finds the message gone counts as done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::api::{self, proto};
use crate::{NewMessage, QueueError, QueueSettings};

pub use crate::api::proto::{
    Delivery, MessageRef, Peeked, QueueInfo, Receipt, RedriveResponse, Stats, StatsResponse,
    SubmitBarrierResponse,
};

/// How a [`QueueClient`] reaches the cluster. Start from [`ClientConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Members' client URLs (`http://host:port`); at least one.
    pub endpoints: Vec<String>,
    /// How long connecting to one member may take. Default 2 s.
    pub connect_timeout: Duration,
    /// How long one request may take, long polls excepted (their wait is added). Default 10 s.
    pub request_timeout: Duration,
    /// How long a request is retried on other members while they are unreachable or without a leader.
    /// Default 15 s.
    pub retry_for: Duration,
}

impl ClientConfig {
    /// The defaults, over `endpoints`.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(15),
        }
    }

    /// Checks the fields; the error names the offending value.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config(
                "no endpoints: give at least one member's client URL".into(),
            ));
        }
        for e in &self.endpoints {
            Endpoint::from_shared(e.clone())
                .map_err(|err| ClientError::Config(format!("endpoint {e:?} is not a URL: {err}")))?;
        }
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config("request timeout must be above zero".into()));
        }
        Ok(())
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration is unusable.
    #[error("queue client: {0}")]
    Config(String),
    /// A partition refused the request; it changed nothing there.
    #[error("{error}")]
    Refused {
        /// The gRPC code.
        code: Code,
        /// Why.
        error: QueueError,
    },
    /// No member could run the request within the retry time: unreachable, or no leader. For a write, it may or
    /// may not have happened.
    #[error("queue cluster unavailable: {0}")]
    Unavailable(Status),
    /// Another failure (the status says which; for a write, its fate may be unknown).
    #[error("queue request failed: {0}")]
    Status(Status),
}

impl ClientError {
    /// The partition's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&QueueError> {
        match self {
            ClientError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    fn from_status(status: Status) -> Self {
        if let Some(error) = api::queue_error(&status) {
            return ClientError::Refused {
                code: status.code(),
                error,
            };
        }
        match status.code() {
            Code::Unavailable => ClientError::Unavailable(status),
            _ => ClientError::Status(status),
        }
    }
}

/// A client of a queue cluster. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct QueueClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    channels: Vec<proto::queue_client::QueueClient<Channel>>,
    next: AtomicUsize,
}

/// A message to send: see [`NewMessage`] (its barrier reference is the server's business and is not sent).
fn wire(messages: Vec<NewMessage>) -> Vec<proto::Message> {
    messages.iter().map(api::message_to_proto).collect()
}

impl QueueClient {
    /// A client over `config.endpoints` (connections are made lazily, so members may be down now).
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let channels = config
            .endpoints
            .iter()
            .map(|e| {
                let endpoint = Endpoint::from_shared(e.clone())
                    .map_err(|err| ClientError::Config(format!("endpoint {e:?}: {err}")))?
                    .connect_timeout(config.connect_timeout)
                    .tcp_nodelay(true);
                Ok(proto::queue_client::QueueClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(crate::MAX_MESSAGE_SIZE_LIMIT as usize * 2)
                    .max_encoding_message_size(crate::MAX_MESSAGE_SIZE_LIMIT as usize * 2))
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                channels,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs `call` on a member, moving to the next one while the answer is UNAVAILABLE, within the retry time.
    /// `extra` lengthens the per-request timeout (a long poll's wait).
    async fn call<T, F, Fut>(&self, extra: Duration, call: F) -> Result<T, Status>
    where
        F: Fn(proto::queue_client::QueueClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            let i = self.inner.next.load(Ordering::Relaxed) % self.inner.channels.len();
            let client = self.inner.channels[i].clone();
            let timeout = self.inner.config.request_timeout + extra;
            let status = match tokio::time::timeout(timeout, call(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if status.code() != Code::Unavailable || tokio::time::Instant::now() >= deadline {
                return Err(status);
            }
            // Another member next time; a little later, so a leader can be elected meanwhile.
            self.inner.next.fetch_add(1, Ordering::Relaxed);
            let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            tokio::time::sleep((backoff + jitter).min(deadline - tokio::time::Instant::now())).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Creates `name` with shards in `partitions` partitions (1 to the cluster's count) and `settings`.
    pub async fn create_queue(
        &self,
        name: &str,
        partitions: u32,
        settings: &QueueSettings,
    ) -> Result<QueueInfo, ClientError> {
        let req = proto::CreateQueueRequest {
            name: name.to_owned(),
            partitions,
            settings: Some(api::settings_to_proto(settings)),
        };
        let reply = self
            .call(Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.create_queue(req).await }
            })
            .await
            .map_err(ClientError::from_status)?;
        reply
            .queue
            .ok_or_else(|| ClientError::Status(Status::internal("no queue in the reply")))
    }

    /// Changes the settings of `name` on every shard (unset fields keep their values).
    pub async fn update_queue(
        &self,
        name: &str,
        settings: proto::Settings,
    ) -> Result<QueueInfo, ClientError> {
        let req = proto::UpdateQueueRequest {
            name: name.to_owned(),
            settings: Some(settings),
        };
        let reply = self
            .call(Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.update_queue(req).await }
            })
            .await
            .map_err(ClientError::from_status)?;
        reply
            .queue
            .ok_or_else(|| ClientError::Status(Status::internal("no queue in the reply")))
    }

    /// Deletes `name` and its messages; returns how many it held.
    pub async fn delete_queue(&self, name: &str) -> Result<u64, ClientError> {
        let req = proto::DeleteQueueRequest {
            name: name.to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.delete_queue(req).await }
        })
        .await
        .map(|r| r.removed)
        .map_err(ClientError::from_status)
    }

    /// Every queue, with its partitions and settings.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        self.call(Duration::ZERO, |mut c| async move {
            c.list_queues(proto::ListQueuesRequest {}).await
        })
        .await
        .map(|r| r.queues)
        .map_err(ClientError::from_status)
    }

    /// Sends `messages` to `queue`; returns each message's id (the first message's for a duplicate key) in order.
    /// Acknowledged once fsync'd on a majority of each shard's members.
    pub async fn send(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<proto::Sent>, ClientError> {
        let req = proto::SendRequest {
            queue: queue.to_owned(),
            messages: wire(messages),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.send(req).await }
        })
        .await
        .map(|r| r.sent)
        .map_err(ClientError::from_status)
    }

    /// Receives up to `max` messages of `queue`, waiting up to `wait` for one (the server caps the wait).
    /// `visibility`: instead of the queue's visibility timeout.
    pub async fn receive(
        &self,
        queue: &str,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Delivery>, ClientError> {
        let req = proto::ReceiveRequest {
            queue: queue.to_owned(),
            max,
            visibility_timeout_ms: visibility
                .map_or(0, |v| u64::try_from(v.as_millis()).unwrap_or(u64::MAX).max(1)),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        self.call(wait, |mut c| {
            let req = req.clone();
            async move { c.receive(req).await }
        })
        .await
        .map(|r| r.deliveries)
        .map_err(ClientError::from_status)
    }

    /// Acknowledges deliveries: their messages are removed. `results` (optional, by position) are barrier tasks'
    /// results.
    pub async fn ack(
        &self,
        queue: &str,
        receipts: &[Receipt],
        results: &[Vec<u8>],
    ) -> Result<(), ClientError> {
        let req = proto::AckRequest {
            queue: queue.to_owned(),
            receipts: receipts.to_vec(),
            results: results.to_vec(),
        };
        let attempts = AtomicUsize::new(0);
        let result = self
            .call(Duration::ZERO, |mut c| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let req = req.clone();
                async move { c.ack(req).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // An earlier attempt whose answer was lost settled it.
            Err(status)
                if attempts.load(Ordering::Relaxed) > 1
                    && matches!(api::queue_error(&status), Some(QueueError::UnknownMessage { .. })) =>
            {
                Ok(())
            }
            Err(status) => Err(ClientError::from_status(status)),
        }
    }

    /// Ends deliveries without success: delivered again after `retry_after`, or dead-lettered after the last.
    pub async fn nack(
        &self,
        queue: &str,
        receipts: &[Receipt],
        retry_after: Duration,
        error: &str,
    ) -> Result<(), ClientError> {
        let req = proto::NackRequest {
            queue: queue.to_owned(),
            receipts: receipts.to_vec(),
            retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            error: error.to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.nack(req).await }
        })
        .await
        .map(|_| ())
        .map_err(ClientError::from_status)
    }

    /// Moves deliveries' visibility deadlines to now + `timeout` (a heartbeat); returns the new deadlines.
    pub async fn extend(
        &self,
        queue: &str,
        receipts: &[Receipt],
        timeout: Duration,
    ) -> Result<Vec<u64>, ClientError> {
        let req = proto::ExtendRequest {
            queue: queue.to_owned(),
            receipts: receipts.to_vec(),
            visibility_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.extend(req).await }
        })
        .await
        .map(|r| r.deadlines_ms)
        .map_err(ClientError::from_status)
    }

    /// Sends deliveries straight to the dead-letter queue (or parks them), with `reason`.
    pub async fn terminate(
        &self,
        queue: &str,
        receipts: &[Receipt],
        reason: &str,
    ) -> Result<(), ClientError> {
        let req = proto::TerminateRequest {
            queue: queue.to_owned(),
            receipts: receipts.to_vec(),
            reason: reason.to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.terminate(req).await }
        })
        .await
        .map(|_| ())
        .map_err(ClientError::from_status)
    }

    /// Moves up to `max` dead letters of `queue` (optionally only from `source`, or whose error contains
    /// `error_contains`) back to their source queues.
    pub async fn redrive(
        &self,
        queue: &str,
        source: Option<&str>,
        error_contains: Option<&str>,
        max: u32,
    ) -> Result<RedriveResponse, ClientError> {
        let req = proto::RedriveRequest {
            queue: queue.to_owned(),
            source: source.unwrap_or_default().to_owned(),
            error_contains: error_contains.unwrap_or_default().to_owned(),
            max,
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.redrive(req).await }
        })
        .await
        .map_err(ClientError::from_status)
    }

    /// Removes every message of `queue`; returns how many.
    pub async fn purge(&self, queue: &str) -> Result<u64, ClientError> {
        let req = proto::PurgeRequest {
            queue: queue.to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.purge(req).await }
        })
        .await
        .map(|r| r.removed)
        .map_err(ClientError::from_status)
    }

    /// Up to `max` messages of `queue`, changing nothing.
    pub async fn peek(&self, queue: &str, max: u32) -> Result<Vec<Peeked>, ClientError> {
        let req = proto::PeekRequest {
            queue: queue.to_owned(),
            max,
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.peek(req).await }
        })
        .await
        .map(|r| r.messages)
        .map_err(ClientError::from_status)
    }

    /// The counters of `queue`: in total and per partition (linearizable).
    pub async fn stats(&self, queue: &str) -> Result<StatsResponse, ClientError> {
        let req = proto::StatsRequest {
            queue: queue.to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.stats(req).await }
        })
        .await
        .map_err(ClientError::from_status)
    }

    /// Sends `tasks` to `queue` and enqueues `completion` (queue, message) once every task is acknowledged, or
    /// `failure` when one is terminated or dead-lettered. The completion message carries every task's result.
    pub async fn submit_barrier(
        &self,
        queue: &str,
        tasks: Vec<NewMessage>,
        completion: (&str, NewMessage),
        failure: (&str, NewMessage),
        idempotency_key: Option<&str>,
    ) -> Result<SubmitBarrierResponse, ClientError> {
        let target = |(queue, m): (&str, NewMessage)| proto::Target {
            queue: queue.to_owned(),
            message: Some(api::message_to_proto(&m)),
        };
        let req = proto::SubmitBarrierRequest {
            queue: queue.to_owned(),
            tasks: wire(tasks),
            completion: Some(target(completion)),
            failure: Some(target(failure)),
            idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
        };
        self.call(Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.submit_barrier(req).await }
        })
        .await
        .map_err(ClientError::from_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_without_endpoints_or_with_bad_urls_are_refused() {
        assert!(ClientConfig::new(Vec::<String>::new()).validate().is_err());
        let e = ClientConfig::new(["not a url"]).validate().unwrap_err();
        assert!(e.to_string().contains("not a url"), "{e}");
        assert!(ClientConfig::new(["http://127.0.0.1:2379"]).validate().is_ok());
    }

    #[test]
    fn a_refusal_comes_back_typed() {
        let status = api::status_of(&QueueError::UnknownQueue { name: "jobs".into() });
        let e = ClientError::from_status(status);
        assert!(matches!(e.refusal(), Some(QueueError::UnknownQueue { name }) if name == "jobs"));
        assert!(matches!(
            ClientError::from_status(Status::unavailable("no leader")),
            ClientError::Unavailable(_)
        ));
    }
}

//! [`QueueClient`]: the client of a queue cluster's gRPC API (`proto/queue.proto`), over any of its members.
//!
//! Every member answers every request (writes are forwarded to the partition's leader), so the client sends each
//! request to one member and moves to the next when a member is unreachable or has no leader yet (UNAVAILABLE),
//! with jittered backoff, until [`ClientConfig::retry_for`] has passed. A retried send may enqueue a message
//! twice: give messages an idempotency key to make retries exact. A retried receive may leave the first
//! attempt's deliveries in flight until their visibility deadline (at-least-once either way). An ack retried after
//! an ambiguous failure that finds a message gone settles each receipt on its own, counting a message that is gone
//! as done (the lost attempt may have settled some partitions' receipts and not others).

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
    /// A partition refused the request; it changed nothing there. One refusal reports changes:
    /// [`QueueError::PartlySettled`], an ack, nack or terminate across partitions that some of them carried out.
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

/// Whether a partition answered that a message is gone (acknowledged, removed, or never sent).
fn is_unknown_message(status: &Status) -> bool {
    matches!(api::queue_error(status), Some(QueueError::UnknownMessage { .. }))
}

/// A settle across partitions that some carried out and another refused (perhaps because an earlier attempt had
/// settled its part already).
fn is_partly_settled(status: &Status) -> bool {
    matches!(api::queue_error(status), Some(QueueError::PartlySettled { .. }))
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
        let (result, retried) = self.ack_request(queue, receipts, results).await;
        match result {
            Ok(()) => Ok(()),
            // An earlier attempt whose answer was lost may have settled some of the receipts and not others (each
            // partition settles its part on its own, and the reply names one message only): settle each receipt on
            // its own, counting one whose message is gone as done.
            Err(status) if retried && (is_unknown_message(&status) || is_partly_settled(&status)) => {
                if receipts.len() == 1 {
                    return Ok(());
                }
                for (i, receipt) in receipts.iter().enumerate() {
                    let result: Vec<Vec<u8>> = results.get(i).cloned().into_iter().collect();
                    match self
                        .ack_request(queue, std::slice::from_ref(receipt), &result)
                        .await
                        .0
                    {
                        Ok(()) => {}
                        Err(status) if is_unknown_message(&status) => {}
                        Err(status) => return Err(ClientError::from_status(status)),
                    }
                }
                Ok(())
            }
            Err(status) => Err(ClientError::from_status(status)),
        }
    }

    /// One Ack request (retried while UNAVAILABLE); whether it was sent more than once.
    async fn ack_request(
        &self,
        queue: &str,
        receipts: &[Receipt],
        results: &[Vec<u8>],
    ) -> (Result<(), Status>, bool) {
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
            .await
            .map(|_| ());
        (result, attempts.load(Ordering::Relaxed) > 1)
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
    use tonic::{Request, Response};

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

    /// A member whose ack runs each partition's part on its own and answers the first error in partition order,
    /// as the server does; partition 2 has no leader during the first two calls.
    #[derive(Default)]
    struct SplitAck {
        /// Messages not acknowledged yet: (partition, id).
        held: std::sync::Mutex<(std::collections::BTreeSet<(u64, u64)>, usize)>,
    }

    #[tonic::async_trait]
    impl proto::queue_server::Queue for Arc<SplitAck> {
        async fn ack(
            &self,
            request: Request<proto::AckRequest>,
        ) -> Result<Response<proto::SettleResponse>, Status> {
            let req = request.into_inner();
            let mut state = self.held.lock().unwrap();
            state.1 += 1;
            let call = state.1;
            let total = req.receipts.len();
            let mut by_partition = std::collections::BTreeMap::<u64, Vec<Receipt>>::new();
            for r in req.receipts {
                by_partition.entry(r.partition).or_default().push(r);
            }
            // As the server answers: an unavailable part first, else a refusal, as PartlySettled when another
            // part was settled.
            let (mut unavailable, mut refused, mut settled) = (None, None, Vec::new());
            for (partition, receipts) in by_partition {
                if partition == 2 && call <= 2 {
                    unavailable = Some(Status::unavailable("partition 2 has no leader"));
                } else if let Some(gone) = receipts.iter().find(|r| !state.0.contains(&(r.partition, r.id))) {
                    refused.get_or_insert((
                        partition,
                        QueueError::UnknownMessage {
                            queue: req.queue.clone(),
                            id: gone.id,
                        },
                    ));
                } else {
                    for r in receipts {
                        state.0.remove(&(r.partition, r.id));
                        settled.push((r.partition, r.id));
                    }
                }
            }
            match (unavailable, refused) {
                (Some(status), _) => Err(status),
                (None, None) => Ok(Response::new(proto::SettleResponse {})),
                (None, Some((_, error))) if settled.is_empty() => Err(api::status_of(&error)),
                (None, Some((partition, error))) => Err(api::status_of(&QueueError::PartlySettled {
                    settled,
                    total,
                    partition,
                    reason: error.to_string(),
                })),
            }
        }

        async fn create_queue(
            &self,
            _: Request<proto::CreateQueueRequest>,
        ) -> Result<Response<proto::CreateQueueResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn update_queue(
            &self,
            _: Request<proto::UpdateQueueRequest>,
        ) -> Result<Response<proto::UpdateQueueResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn delete_queue(
            &self,
            _: Request<proto::DeleteQueueRequest>,
        ) -> Result<Response<proto::DeleteQueueResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn list_queues(
            &self,
            _: Request<proto::ListQueuesRequest>,
        ) -> Result<Response<proto::ListQueuesResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn send(
            &self,
            _: Request<proto::SendRequest>,
        ) -> Result<Response<proto::SendResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn receive(
            &self,
            _: Request<proto::ReceiveRequest>,
        ) -> Result<Response<proto::ReceiveResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn nack(
            &self,
            _: Request<proto::NackRequest>,
        ) -> Result<Response<proto::SettleResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn extend(
            &self,
            _: Request<proto::ExtendRequest>,
        ) -> Result<Response<proto::ExtendResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn terminate(
            &self,
            _: Request<proto::TerminateRequest>,
        ) -> Result<Response<proto::SettleResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn redrive(
            &self,
            _: Request<proto::RedriveRequest>,
        ) -> Result<Response<proto::RedriveResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn purge(
            &self,
            _: Request<proto::PurgeRequest>,
        ) -> Result<Response<proto::PurgeResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn peek(
            &self,
            _: Request<proto::PeekRequest>,
        ) -> Result<Response<proto::PeekResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn stats(
            &self,
            _: Request<proto::StatsRequest>,
        ) -> Result<Response<proto::StatsResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
        async fn submit_barrier(
            &self,
            _: Request<proto::SubmitBarrierRequest>,
        ) -> Result<Response<proto::SubmitBarrierResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }
    }

    #[tokio::test]
    async fn a_retried_ack_that_finds_one_message_gone_still_acknowledges_the_others() {
        let fake = Arc::new(SplitAck::default());
        fake.held.lock().unwrap().0.extend([(1, 10), (2, 20)]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::queue_server::QueueServer::new(Arc::clone(&fake)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let client = QueueClient::new(ClientConfig::new([url])).unwrap();
        let receipt = |partition, id| Receipt {
            partition,
            id,
            delivery: 1,
            token: 7,
        };
        // First attempt: partition 1 acknowledges message 10, partition 2 is unavailable. The first retry finds 10
        // gone while partition 2 is still without a leader; the second settles 20 and answers PartlySettled (10
        // gone). Then each receipt is settled on its own, the one whose message is gone counting as done.
        client
            .ack("jobs", &[receipt(1, 10), receipt(2, 20)], &[])
            .await
            .expect("both messages end up acknowledged");
        assert!(
            fake.held.lock().unwrap().0.is_empty(),
            "an ack reported done left messages unacknowledged: {:?}",
            fake.held.lock().unwrap().0
        );
        server.abort();
    }
}

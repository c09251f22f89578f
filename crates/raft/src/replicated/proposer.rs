//! Group commit: writes that arrive while earlier ones are in flight travel together, as one Raft entry.
//!
//! Every Raft entry costs an append, a replication message, an fsync share on each member and an apply round;
//! a follower forwarding every request alone would pay a peer round trip each. Each node's proposer keeps at most `pipeline` batches in flight; whatever queues behind them leaves as
//! the next batch, proposed as one entry (the state machine's [`StateMachine::batch`], forwarded as one request
//! when this node follows). Under light load a request goes alone and at once; under heavy load batches grow and the fsyncs
//! and round trips per request fall. Durability is unchanged: every entry is synced on a majority before any of
//! its commands is acknowledged.
//!
//! [`ProposalQueue`] is the batching rule, sans IO; [`Proposer`] is the task around it.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::log_store::encode;
#[cfg(doc)]
use crate::replicated::StateMachine;

/// How big an entry may grow and how many may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Entries proposed and not yet applied, at most. At least 1.
    pub(crate) pipeline: usize,
    /// Commands in one entry, at most.
    pub(crate) max_commands: usize,
    /// Encoded bytes in one entry, at most (a single larger command still goes, alone).
    pub(crate) max_bytes: usize,
}

/// The batching rule: FIFO, at most `pipeline` batches out at once, each within the limits.
#[derive(Debug)]
pub(crate) struct ProposalQueue<T> {
    waiting: VecDeque<(T, usize)>,
    in_flight: usize,
    limits: BatchLimits,
}

impl<T> ProposalQueue<T> {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            limits: BatchLimits {
                pipeline: limits.pipeline.max(1),
                max_commands: limits.max_commands.max(1),
                ..limits
            },
        }
    }

    /// Queues a proposal of `size` encoded bytes.
    pub(crate) fn push(&mut self, item: T, size: usize) {
        self.waiting.push_back((item, size));
    }

    /// The next batch to propose, if the pipeline has room and anything waits. The caller must report its end
    /// with [`ProposalQueue::completed`].
    pub(crate) fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.in_flight >= self.limits.pipeline || self.waiting.is_empty() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some((_, size)) = self.waiting.front() {
            let fits = batch.is_empty()
                || (batch.len() < self.limits.max_commands && bytes + size <= self.limits.max_bytes);
            if !fits {
                break;
            }
            bytes += size;
            if let Some((item, _)) = self.waiting.pop_front() {
                batch.push(item);
            }
        }
        self.in_flight += 1;
        Some(batch)
    }

    /// A batch from [`ProposalQueue::next_batch`] finished (applied, refused or failed).
    pub(crate) fn completed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Batches out now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Proposals waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Sends one batch of commands to be applied and returns their results, in order (the same number).
pub(crate) type SubmitBatch<C, R> =
    Arc<dyn Fn(Vec<C>) -> BoxFuture<'static, Result<Vec<R>, Status>> + Send + Sync>;

struct Proposal<C, R> {
    command: C,
    reply: oneshot::Sender<Result<R, Status>>,
}

/// The handle of a node's proposer task. The task ends when every handle is dropped.
pub(crate) struct Proposer<C, R> {
    queue: mpsc::UnboundedSender<Proposal<C, R>>,
    /// The answer once the task is gone (the node is stopping).
    stopped: fn() -> Status,
}

impl<C, R> Clone for Proposer<C, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            stopped: self.stopped,
        }
    }
}

impl<C, R> std::fmt::Debug for Proposer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

impl<C, R> Proposer<C, R>
where
    C: Serialize + Send + 'static,
    R: Send + 'static,
{
    /// Starts a proposer that hands its batches to `submit`; `stopped` is the answer once it has gone. Must be
    /// called within a tokio runtime.
    pub(crate) fn spawn(submit: SubmitBatch<C, R>, limits: BatchLimits, stopped: fn() -> Status) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(submit, receiver, limits));
        Self { queue, stopped }
    }

    /// Proposes `command` (with others queued at the same time) and waits for its result.
    pub(crate) async fn propose(&self, command: C) -> Result<R, Status> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .map_err(|_| (self.stopped)())?;
        result.await.map_err(|_| (self.stopped)())?
    }
}

async fn run<C: Serialize, R>(
    submit: SubmitBatch<C, R>,
    mut receiver: mpsc::UnboundedReceiver<Proposal<C, R>>,
    limits: BatchLimits,
) {
    let mut queue = ProposalQueue::new(limits);
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        // Biased (a fixed order, not tokio's random one): either order is correct, and a fixed one lets a
        // simulation replay the same batches.
        tokio::select! {
            biased;
            received = receiver.recv(), if open => match received {
                Some(proposal) => {
                    enqueue(&mut queue, proposal);
                    while let Ok(proposal) = receiver.try_recv() {
                        enqueue(&mut queue, proposal);
                    }
                }
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => queue.completed(),
            else => return,
        }
        while let Some(mut batch) = queue.next_batch() {
            // A caller that gave up before its turn is not proposed at all.
            batch.retain(|p: &Proposal<C, R>| !p.reply.is_closed());
            if batch.is_empty() {
                queue.completed();
                continue;
            }
            in_flight.push(submit_batch(submit.clone(), batch));
        }
        if !open && queue.in_flight() == 0 && queue.waiting() == 0 {
            return;
        }
    }
}

fn enqueue<C: Serialize, R>(queue: &mut ProposalQueue<Proposal<C, R>>, proposal: Proposal<C, R>) {
    // The size only steers batching; a command that cannot be encoded fails when its batch is encoded.
    let size = encode(&proposal.command).map_or(0, |bytes| bytes.len());
    queue.push(proposal, size);
}

async fn submit_batch<C, R>(submit: SubmitBatch<C, R>, batch: Vec<Proposal<C, R>>) {
    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    match submit(commands).await {
        Ok(results) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let status = Status::internal(format!(
                "a batch of {count} commands returned {} results",
                results.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limits(pipeline: usize, max_commands: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            pipeline,
            max_commands,
            max_bytes,
        }
    }

    #[test]
    fn a_lone_request_goes_at_once_and_the_rest_wait_for_room() {
        let mut queue = ProposalQueue::new(limits(1, 100, 1000));
        queue.push(1, 10);
        assert_eq!(queue.next_batch(), Some(vec![1]));
        queue.push(2, 10);
        queue.push(3, 10);
        assert_eq!(queue.next_batch(), None, "the pipeline is full");
        queue.completed();
        assert_eq!(
            queue.next_batch(),
            Some(vec![2, 3]),
            "what waited leaves together"
        );
    }

    #[test]
    fn batches_respect_the_count_and_byte_limits_but_an_oversized_command_still_goes() {
        let mut queue = ProposalQueue::new(limits(10, 2, 100));
        for (item, size) in [(1, 10), (2, 10), (3, 10), (4, 95), (5, 10), (6, 500)] {
            queue.push(item, size);
        }
        assert_eq!(queue.next_batch(), Some(vec![1, 2]));
        assert_eq!(queue.next_batch(), Some(vec![3]), "3 + 4 exceed 100 bytes");
        assert_eq!(queue.next_batch(), Some(vec![4]));
        assert_eq!(queue.next_batch(), Some(vec![5]));
        assert_eq!(queue.next_batch(), Some(vec![6]), "alone, over the byte limit");
        assert_eq!(queue.next_batch(), None);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Push(usize),
        Take,
        Complete,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..300).prop_map(Step::Push),
            Just(Step::Take),
            Just(Step::Complete),
        ]
    }

    proptest! {
        /// Against a model: every proposal leaves exactly once, in arrival order; batches are never empty and
        /// stay within the limits (a lone oversized command excepted); the pipeline never overfills.
        #[test]
        fn the_queue_keeps_order_limits_and_pipeline(
            pipeline in 1usize..4,
            max_commands in 1usize..6,
            max_bytes in 1usize..600,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let mut queue = ProposalQueue::new(limits(pipeline, max_commands, max_bytes));
            let mut sizes = Vec::new();
            let mut sent = Vec::new();
            let mut out = 0usize;
            for step in steps {
                match step {
                    Step::Push(size) => {
                        queue.push(sizes.len(), size);
                        sizes.push(size);
                    }
                    Step::Take => {
                        let waiting = queue.waiting();
                        match queue.next_batch() {
                            Some(batch) => {
                                out += 1;
                                prop_assert!(out <= pipeline);
                                prop_assert!(!batch.is_empty());
                                prop_assert!(batch.len() <= max_commands);
                                let bytes: usize = batch.iter().map(|&i| sizes[i]).sum();
                                prop_assert!(batch.len() == 1 || bytes <= max_bytes);
                                sent.extend(batch);
                            }
                            None => prop_assert!(out == pipeline || waiting == 0),
                        }
                    }
                    Step::Complete => {
                        if out > 0 {
                            out -= 1;
                            queue.completed();
                        }
                    }
                }
                prop_assert_eq!(queue.in_flight(), out);
            }
            prop_assert_eq!(sent.clone(), (0..sent.len()).collect::<Vec<_>>(), "FIFO, each once");
        }
    }
}

//! Reads that change nothing: stats, peek, the outbox, barriers.

use super::*;

impl<S: Storage> Partition<S> {
    // ---- reading -------------------------------------------------------------------------------------------------

    /// A queue's counters at the partition's clock (a local read; propose [`Op::Stats`] for a linearizable one).
    pub fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let q = self.queue(self.queue_id(queue)?);
        Ok(QueueStats {
            depth: q.messages.len() as u64,
            ready: q.ready_count,
            in_flight: q.in_flight.len() as u64,
            delayed: q.delayed.len() as u64,
            parked: q.parked.len() as u64,
            dead_letters: q.dead.len() as u64,
            oldest_age_ms: q
                .by_age
                .first()
                .map_or(0, |&(sent, _)| self.state.clock_ms.saturating_sub(sent)),
        })
    }

    /// Up to `max` messages of a queue, changing nothing: first what a receive would deliver, in its order,
    /// then the rest that is not in flight (delayed, waiting in a FIFO group, parked) by id.
    pub fn peek(&self, queue: &str, max: u32) -> Result<Vec<PeekedMessage>, QueueError> {
        let q = self.queue(self.queue_id(queue)?);
        Self::check_count("max", max)?;
        let max = max as usize;
        let mut metas = self.metas(q.ready.iter().take(max).map(|&(_, id)| id))?;
        if metas.len() < max {
            // Then the rest, by id: what the ready order does not hold and is not in flight. Reads stop at `max`.
            let listed: BTreeSet<MessageId> = metas.iter().map(|m| m.id).collect();
            for &id in &q.messages {
                if metas.len() == max {
                    break;
                }
                if listed.contains(&id) {
                    continue;
                }
                let meta = self.stored_meta(id)?;
                if !matches!(meta.state, MessageState::InFlight { .. }) {
                    metas.push(meta);
                }
            }
        }
        metas
            .into_iter()
            .map(|meta| {
                let body = self.body(meta.id)?;
                Ok(PeekedMessage {
                    id: meta.id,
                    state: meta.state,
                    deliveries: meta.deliveries,
                    priority: meta.priority,
                    group: meta.group,
                    sent_at_ms: meta.sent_at_ms,
                    payload: body.payload,
                    headers: body.headers,
                    dead_letter: meta.dead_letter,
                })
            })
            .collect()
    }

    /// The outbox: outcomes of tasks of other partitions' barriers, waiting for the host to deliver them as
    /// [`Op::BarrierTaskDone`] to their home partition, then clear them with [`Op::OutboxDone`].
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, QueueError> {
        self.scan(&[record::OUTBOX])?
            .iter()
            .map(|(_, v)| record::decode(v).map_err(|detail| QueueError::Storage { detail }))
            .collect()
    }

    /// How many messages of `queue` a receive could deliver now (0 for an unknown queue). A hint for long polling
    /// on a replica that may lag.
    pub fn deliverable_count(&self, queue: &str) -> usize {
        self.names
            .get(queue)
            .and_then(|id| self.queues.get(id))
            .map_or(0, |q| q.ready.len())
    }

    /// A barrier of this partition.
    pub fn barrier(&self, id: BarrierId) -> Result<Barrier, QueueError> {
        self.load_barrier(id)
    }
}

/// The outbox as `storage` holds it between entries (see [`Partition::outbox`]).
#[cfg(feature = "raft")]
pub(crate) fn read_outbox<S: Storage>(storage: &S) -> Result<Vec<OutboxEntry>, QueueError> {
    storage
        .scan_prefix(&[record::OUTBOX])
        .map_err(|e| QueueError::Storage { detail: e.0 })?
        .iter()
        .map(|(_, v)| record::decode(v).map_err(|detail| QueueError::Storage { detail }))
        .collect()
}

//! The one way messages change (take them out of the indexes, change, put back) and the clock that fires
//! deadlines.

use super::*;

impl<S: Storage> Partition<S> {
    // ---- the one way messages change -----------------------------------------------------------------------------

    /// A message's metadata, as the current operation sees it.
    pub(super) fn meta(&self, id: MessageId) -> Result<Option<MessageMeta>, QueueError> {
        self.read(&key64(record::META, id))?
            .map(|bytes| record::decode(&bytes).map_err(|detail| QueueError::Storage { detail }))
            .transpose()
    }

    /// Metadata of a message the indexes list: an absent one is a storage fault.
    pub(super) fn stored_meta(&self, id: MessageId) -> Result<MessageMeta, QueueError> {
        self.meta(id)?.ok_or_else(|| QueueError::Storage {
            detail: format!("message {id} is indexed but not stored"),
        })
    }

    /// Metadata of messages the indexes list, read before a change.
    pub(super) fn metas(
        &self,
        ids: impl IntoIterator<Item = MessageId>,
    ) -> Result<Vec<MessageMeta>, QueueError> {
        ids.into_iter().map(|id| self.stored_meta(id)).collect()
    }

    /// Takes a message out of the indexes to change it; [`Partition::put`] puts it back. A storage failure
    /// here (in the middle of a change) poisons the partition.
    pub(super) fn take(&mut self, id: MessageId) -> Option<MessageMeta> {
        let meta = match self.meta(id) {
            Ok(meta) => meta?,
            Err(e) => {
                self.poison(e);
                return None;
            }
        };
        self.unindex(&meta);
        Some(meta)
    }

    /// Takes a message whose metadata was read already out of the indexes.
    pub(super) fn unindex(&mut self, meta: &MessageMeta) {
        if let Some(q) = self.queues.get_mut(&meta.queue) {
            q.remove(meta);
        }
    }

    /// Stores a message's metadata and indexes it.
    pub(super) fn put(&mut self, meta: MessageMeta) {
        self.stage_put(key64(record::META, meta.id), record::encode(&meta));
        if let Some(q) = self.queues.get_mut(&meta.queue) {
            q.insert(&meta);
        }
    }

    /// Deletes a taken message's records.
    pub(super) fn delete(&mut self, meta: &MessageMeta) {
        self.stage_delete(key64(record::META, meta.id));
        self.stage_delete(key64(record::BODY, meta.id));
    }

    /// Removes a message for good, failing its barrier task with `reason`. False when the message could not be
    /// read (the partition is poisoned).
    pub(super) fn discard(&mut self, id: MessageId, reason: &str, now: u64) -> bool {
        let Some(meta) = self.take(id) else {
            return false;
        };
        self.delete(&meta);
        if let Some(task) = meta.barrier {
            self.task_outcome(task, TaskOutcome::Failed(reason.to_owned()), now);
        }
        true
    }

    /// Enqueues a validated message into queue `queue`.
    pub(super) fn enqueue(
        &mut self,
        queue: u32,
        message: NewMessage,
        join: Option<JoinInfo>,
        now: u64,
    ) -> MessageId {
        let id = self.state.next_message;
        self.state.next_message += 1;
        let q = self.queue(queue);
        let fifo = q.settings.fifo;
        let state = if message.delay_ms > 0 {
            MessageState::Delayed {
                until_ms: now.saturating_add(message.delay_ms),
            }
        } else {
            MessageState::Ready
        };
        if let Some(key) = &message.idempotency_key {
            self.remember_key(queue, key.clone(), id, now);
        }
        let body = Body {
            payload: message.payload,
            headers: message.headers,
            join,
        };
        self.stage_put(key64(record::BODY, id), record::encode(&body));
        self.put(MessageMeta {
            id,
            queue,
            state,
            priority: message.priority,
            group: if fifo { message.group } else { None },
            sent_at_ms: now,
            deliveries: 0,
            token: 0,
            deadline_ms: 0,
            last_error: None,
            dead_letter: None,
            barrier: message.barrier,
        });
        id
    }

    /// Remembers an idempotency key of queue `queue` for its dedup window (not at all when the window is 0).
    pub(super) fn remember_key(&mut self, queue: u32, key: String, id: u64, now: u64) {
        let window = self.queue(queue).settings.dedup_window_ms;
        if window == 0 {
            return;
        }
        let expires_ms = now.saturating_add(window);
        self.stage_put(
            record::dedup_key(queue, &key),
            record::encode(&DedupRecord {
                queue,
                key: key.clone(),
                id,
                expires_ms,
            }),
        );
        if let Some(q) = self.queues.get_mut(&queue) {
            q.remember(key, id, expires_ms);
        }
    }

    /// A taken message whose deliveries are over: to the dead-letter queue, or parked.
    pub(super) fn exhaust(&mut self, mut meta: MessageMeta, reason: &str, now: u64) {
        let q = self.queue(meta.queue);
        let source = q.name.clone();
        let dlq = q
            .settings
            .dead_letter_queue
            .as_ref()
            .and_then(|name| self.names.get(name).copied());
        let reason = clip(reason);
        meta.dead_letter = Some(DeadLetterInfo {
            source: source.clone(),
            deliveries: meta.deliveries,
            last_error: meta.last_error.clone(),
            reason: reason.clone(),
            at_ms: now,
        });
        let (id, task) = (meta.id, meta.barrier);
        match dlq {
            Some(dlq) => {
                let to = self.queue(dlq).name.clone();
                meta.queue = dlq;
                meta.state = MessageState::Ready;
                meta.deliveries = 0;
                self.put(meta);
                self.events.push(Event::DeadLettered {
                    id,
                    from: source,
                    to,
                    reason: reason.clone(),
                });
            }
            None => {
                meta.state = MessageState::Parked;
                self.put(meta);
                self.events.push(Event::Parked {
                    id,
                    queue: source,
                    reason: reason.clone(),
                });
            }
        }
        if let Some(task) = task {
            self.task_outcome(task, TaskOutcome::Failed(reason), now);
        }
    }

    // ---- time ----------------------------------------------------------------------------------------------------

    /// Fires every deadline at or before `now`.
    pub(super) fn advance(&mut self, now: u64) {
        let ids: Vec<u32> = self.queues.keys().copied().collect();
        for qid in ids {
            while let Some(&(until, id)) = self.queues.get(&qid).and_then(|q| q.delayed.first()) {
                if until > now {
                    break;
                }
                // A message the indexes list but the storage cannot give poisoned the partition: stop here
                // (the entry would stay first in the index forever).
                let Some(mut meta) = self.take(id) else {
                    return;
                };
                meta.state = MessageState::Ready;
                self.put(meta);
            }
            while let Some(&(deadline, id)) = self.queues.get(&qid).and_then(|q| q.in_flight.first()) {
                if deadline > now {
                    break;
                }
                let max = self.queue(qid).settings.max_deliveries;
                let Some(mut meta) = self.take(id) else {
                    return;
                };
                if meta.deliveries >= max {
                    self.exhaust(meta, REASON_MAX_DELIVERIES, now);
                } else {
                    meta.state = MessageState::Ready;
                    self.put(meta);
                }
            }
            if let Some(retention) = self.queues.get(&qid).and_then(|q| q.settings.retention_ms) {
                while let Some(&(sent, id)) = self.queues.get(&qid).and_then(|q| q.by_age.first()) {
                    if sent.saturating_add(retention) > now {
                        break;
                    }
                    if !self.discard(id, "retention expired", now) {
                        return;
                    }
                    let queue = self.queue(qid).name.clone();
                    self.events.push(Event::Expired { id, queue });
                }
            }
            while let Some((expires, key)) = self
                .queues
                .get(&qid)
                .and_then(|q| q.dedup_expiry.first().cloned())
            {
                if expires > now {
                    break;
                }
                self.stage_delete(record::dedup_key(qid, &key));
                if let Some(q) = self.queues.get_mut(&qid) {
                    q.forget(&key);
                }
            }
        }
    }
}

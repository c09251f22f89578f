//! Sending, receiving and settling messages, and redriving dead letters.

use super::*;

impl<S: Storage> Partition<S> {
    // ---- sending -------------------------------------------------------------------------------------------------

    /// Checks messages bound for queue `queue`. `internal` forbids what barrier-created messages may not carry.
    pub(super) fn validate_messages(
        &self,
        queue: u32,
        messages: &[NewMessage],
        internal: bool,
    ) -> Result<(), QueueError> {
        let q = self.queue(queue);
        if messages.is_empty() {
            return Err(invalid("no messages"));
        }
        for (index, m) in messages.iter().enumerate() {
            let size = m.size();
            if size > q.settings.max_message_size as usize {
                return Err(QueueError::OversizedMessage {
                    queue: q.name.clone(),
                    index,
                    size,
                    max: q.settings.max_message_size,
                });
            }
            if m.delay_ms > MAX_DELAY_MS {
                return Err(invalid(format!(
                    "message {index}: delay {} ms is over the maximum of {MAX_DELAY_MS}",
                    m.delay_ms
                )));
            }
            for (what, key) in [("idempotency key", &m.idempotency_key), ("group key", &m.group)] {
                if let Some(key) = key
                    && (key.is_empty() || key.len() > MAX_KEY_LEN)
                {
                    return Err(invalid(format!(
                        "message {index}: {what} of {} bytes (1..={MAX_KEY_LEN})",
                        key.len()
                    )));
                }
            }
            if m.idempotency_key.as_deref().is_some_and(|k| k.starts_with('\0')) {
                return Err(invalid(format!(
                    "message {index}: an idempotency key may not start with a NUL (reserved for barriers)"
                )));
            }
            if m.group.is_some() && !q.settings.fifo {
                return Err(invalid(format!(
                    "message {index}: a group key, but queue {:?} is not FIFO",
                    q.name
                )));
            }
            if internal && (m.idempotency_key.is_some() || m.barrier.is_some()) {
                return Err(invalid(format!(
                    "message {index}: a barrier's tasks and targets carry no idempotency key or barrier reference"
                )));
            }
            if let Some(task) = m.barrier
                && task.partition == self.partition
            {
                let barrier = self.load_barrier(task.barrier)?;
                if task.slot >= barrier.tasks {
                    return Err(invalid(format!(
                        "message {index}: slot {} of barrier {} which has {} tasks",
                        task.slot, task.barrier, barrier.tasks
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn send(
        &mut self,
        queue: &str,
        messages: Vec<NewMessage>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let id = self.queue_id(queue)?;
        self.validate_messages(id, &messages, false)?;
        let mut sent = Vec::with_capacity(messages.len());
        for message in messages {
            let first = message
                .idempotency_key
                .as_ref()
                .and_then(|key| self.queue(id).dedup.get(key))
                .map(|&(first, _)| first);
            sent.push(match first {
                Some(first) => Sent {
                    id: first,
                    duplicate: true,
                },
                None => Sent {
                    id: self.enqueue(id, message, None, now),
                    duplicate: false,
                },
            });
        }
        Ok(Outcome::Sent(sent))
    }

    // ---- delivering ----------------------------------------------------------------------------------------------

    pub(super) fn check_count(what: &str, max: u32) -> Result<(), QueueError> {
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(invalid(format!("{what} {max} is outside 1..={MAX_BATCH}")));
        }
        Ok(())
    }

    pub(super) fn check_timeout(timeout: u64) -> Result<(), QueueError> {
        if !(1..=MAX_VISIBILITY_TIMEOUT_MS).contains(&timeout) {
            return Err(invalid(format!(
                "visibility timeout {timeout} ms is outside 1..={MAX_VISIBILITY_TIMEOUT_MS}"
            )));
        }
        Ok(())
    }

    pub(super) fn receive(
        &mut self,
        queue: &str,
        max: u32,
        visibility_timeout_ms: Option<u64>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        Self::check_count("max", max)?;
        let timeout = visibility_timeout_ms.unwrap_or(self.queue(qid).settings.visibility_timeout_ms);
        Self::check_timeout(timeout)?;
        // Taking a message from the ready order never adds another (a FIFO group's next waits for the ack), so
        // the first `max` entries are exactly what this receive delivers. Bodies are read before anything changes.
        let ids: Vec<MessageId> = self
            .queue(qid)
            .ready
            .iter()
            .take(max as usize)
            .map(|&(_, id)| id)
            .collect();
        let bodies = ids
            .iter()
            .map(|&id| self.body(id))
            .collect::<Result<Vec<_>, _>>()?;
        let metas = self.metas(ids)?;
        let deadline_ms = now.saturating_add(timeout);
        let mut deliveries = Vec::with_capacity(metas.len());
        for (mut meta, body) in metas.into_iter().zip(bodies) {
            let id = meta.id;
            self.unindex(&meta);
            self.state.next_token += 1;
            meta.deliveries += 1;
            meta.token = self.state.next_token;
            meta.deadline_ms = deadline_ms;
            meta.state = MessageState::InFlight { deadline_ms };
            deliveries.push(Delivery {
                receipt: Receipt {
                    id,
                    delivery: meta.deliveries,
                    token: meta.token,
                },
                deadline_ms,
                payload: body.payload,
                headers: body.headers,
                priority: meta.priority,
                group: meta.group.clone(),
                sent_at_ms: meta.sent_at_ms,
                dead_letter: meta.dead_letter.clone(),
                join: body.join,
                barrier: meta.barrier,
            });
            self.put(meta);
        }
        Ok(Outcome::Received(deliveries))
    }

    /// Checks that every receipt settles a delivery in flight in queue `queue`, each message once.
    pub(super) fn check_receipts(&self, queue: &str, receipts: &[Receipt]) -> Result<u32, QueueError> {
        let qid = self.queue_id(queue)?;
        if receipts.is_empty() {
            return Err(invalid("no receipts"));
        }
        let mut seen = BTreeSet::new();
        for r in receipts {
            if !seen.insert(r.id) {
                return Err(invalid(format!("message {} appears twice", r.id)));
            }
            let meta =
                self.meta(r.id)?
                    .filter(|m| m.queue == qid)
                    .ok_or_else(|| QueueError::UnknownMessage {
                        queue: queue.to_owned(),
                        id: r.id,
                    })?;
            if meta.token != r.token {
                return Err(QueueError::StaleReceipt {
                    id: r.id,
                    delivery: r.delivery,
                    current: meta.deliveries,
                });
            }
            if !matches!(meta.state, MessageState::InFlight { .. }) {
                return Err(QueueError::ExpiredReceipt {
                    id: r.id,
                    delivery: r.delivery,
                    deadline_ms: meta.deadline_ms,
                });
            }
        }
        Ok(qid)
    }

    pub(super) fn ack(&mut self, queue: &str, acks: Vec<AckEntry>, now: u64) -> Result<Outcome, QueueError> {
        let receipts: Vec<Receipt> = acks.iter().map(|a| a.receipt).collect();
        self.check_receipts(queue, &receipts)?;
        for a in &acks {
            if let Some(result) = &a.result
                && result.len() > MAX_TASK_RESULT
            {
                return Err(QueueError::ResultTooLarge {
                    id: a.receipt.id,
                    size: result.len(),
                    max: MAX_TASK_RESULT,
                });
            }
        }
        for a in acks {
            if let Some(meta) = self.take(a.receipt.id) {
                self.delete(&meta);
                if let Some(task) = meta.barrier {
                    self.task_outcome(task, TaskOutcome::Done(a.result.unwrap_or_default()), now);
                }
            }
        }
        Ok(Outcome::Acked)
    }

    pub(super) fn nack(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        retry_after_ms: u64,
        error: Option<String>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.check_receipts(queue, receipts)?;
        if retry_after_ms > MAX_DELAY_MS {
            return Err(invalid(format!(
                "retry delay {retry_after_ms} ms is over the maximum of {MAX_DELAY_MS}"
            )));
        }
        let max = self.queue(qid).settings.max_deliveries;
        for r in receipts {
            let Some(mut meta) = self.take(r.id) else {
                continue;
            };
            if let Some(error) = &error {
                meta.last_error = Some(clip(error));
            }
            if meta.deliveries >= max {
                self.exhaust(meta, REASON_MAX_DELIVERIES, now);
            } else {
                meta.state = if retry_after_ms == 0 {
                    MessageState::Ready
                } else {
                    MessageState::Delayed {
                        until_ms: now.saturating_add(retry_after_ms),
                    }
                };
                self.put(meta);
            }
        }
        Ok(Outcome::Nacked)
    }

    pub(super) fn extend(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        timeout: u64,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        self.check_receipts(queue, receipts)?;
        Self::check_timeout(timeout)?;
        let deadline_ms = now.saturating_add(timeout);
        for r in receipts {
            if let Some(mut meta) = self.take(r.id) {
                meta.deadline_ms = deadline_ms;
                meta.state = MessageState::InFlight { deadline_ms };
                self.put(meta);
            }
        }
        Ok(Outcome::Extended(vec![deadline_ms; receipts.len()]))
    }

    pub(super) fn terminate(
        &mut self,
        queue: &str,
        receipts: &[Receipt],
        reason: &str,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        self.check_receipts(queue, receipts)?;
        for r in receipts {
            if let Some(mut meta) = self.take(r.id) {
                meta.last_error = Some(clip(reason));
                self.exhaust(meta, reason, now);
            }
        }
        Ok(Outcome::Terminated)
    }

    // ---- dead letters --------------------------------------------------------------------------------------------

    pub(super) fn redrive(
        &mut self,
        queue: &str,
        filter: &RedriveFilter,
        max: u32,
    ) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        Self::check_count("max", max)?;
        let matches = |meta: &MessageMeta| {
            let Some(info) = &meta.dead_letter else {
                return false;
            };
            if matches!(meta.state, MessageState::InFlight { .. }) {
                return false;
            }
            if let Some(source) = &filter.source
                && *source != info.source
            {
                return false;
            }
            if let Some(text) = &filter.error_contains
                && !info.reason.contains(text.as_str())
                && !info
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(text.as_str()))
            {
                return false;
            }
            true
        };
        // Everything is read before anything changes, up to one match past the count.
        let mut candidates = Vec::new();
        let mut more = false;
        for meta in self.queue(qid).dead.iter().map(|&id| self.stored_meta(id)) {
            let meta = meta?;
            if !matches(&meta) {
                continue;
            }
            if candidates.len() == max as usize {
                more = true;
                break;
            }
            candidates.push(meta);
        }
        let mut out = Redriven {
            more,
            ..Redriven::default()
        };
        for meta in candidates {
            let id = meta.id;
            let target = if meta.state == MessageState::Parked {
                Some(qid)
            } else {
                meta.dead_letter
                    .as_ref()
                    .and_then(|info| self.names.get(&info.source).copied())
            };
            let Some(target) = target else {
                let source = meta
                    .dead_letter
                    .as_ref()
                    .map(|i| i.source.clone())
                    .unwrap_or_default();
                out.skipped
                    .push((id, format!("its source queue {source:?} no longer exists")));
                continue;
            };
            if let Some(mut meta) = self.take(id) {
                meta.queue = target;
                meta.state = MessageState::Ready;
                meta.deliveries = 0;
                meta.dead_letter = None;
                self.put(meta);
                out.moved.push(id);
            }
        }
        Ok(Outcome::Redriven(out))
    }
}

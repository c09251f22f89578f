//! Barriers: creating them, recording their tasks' outcomes, firing once.

use super::*;

/// The name a barrier's idempotency key is remembered under among its queue's keys.
fn barrier_key(key: &str) -> String {
    format!("{BARRIER_KEY_PREFIX}{key}")
}

impl<S: Storage> Partition<S> {
    // ---- barriers ------------------------------------------------------------------------------------------------

    pub(super) fn load_barrier(&self, id: BarrierId) -> Result<Barrier, QueueError> {
        let bytes = self
            .read(&key64(record::BARRIER, id))?
            .ok_or(QueueError::UnknownBarrier { barrier: id })?;
        record::decode(&bytes).map_err(|detail| QueueError::Storage { detail })
    }

    pub(super) fn check_target(&self, target: &Target) -> Result<(), QueueError> {
        let id = self.queue_id(&target.queue)?;
        self.validate_messages(id, std::slice::from_ref(&target.message), true)
    }

    /// Checks a barrier's task count and targets.
    fn check_barrier(&self, tasks: u32, completion: &Target, failure: &Target) -> Result<(), QueueError> {
        if !(1..=MAX_BARRIER_TASKS).contains(&tasks) {
            return Err(invalid(format!(
                "a barrier of {tasks} tasks (1..={MAX_BARRIER_TASKS})"
            )));
        }
        self.check_target(completion)?;
        self.check_target(failure)
    }

    /// The barrier an idempotency key of queue `queue` names, if the key is remembered; refuses a bad key.
    fn barrier_by_key(&self, queue: u32, key: Option<&str>) -> Result<Option<Barrier>, QueueError> {
        let Some(key) = key else {
            return Ok(None);
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(invalid(format!(
                "a barrier's idempotency key of {} bytes (1..={MAX_KEY_LEN})",
                key.len()
            )));
        }
        match self.queue(queue).dedup.get(&barrier_key(key)) {
            Some(&(barrier, _)) => self.load_barrier(barrier).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a new open barrier (validated) and remembers its key; returns its id.
    fn store_barrier(
        &mut self,
        tasks: u32,
        task_ids: Vec<MessageId>,
        completion: Target,
        failure: Target,
        key: Option<(u32, String)>,
        now: u64,
    ) -> BarrierId {
        let id = self.state.next_barrier;
        self.state.next_barrier += 1;
        self.open_barriers
            .insert(id, [completion.queue.clone(), failure.queue.clone()]);
        let barrier = Barrier {
            id,
            tasks,
            task_ids,
            done: BTreeMap::new(),
            state: BarrierState::Open,
            completion,
            failure,
        };
        self.stage_put(key64(record::BARRIER, id), record::encode(&barrier));
        if let Some((queue, key)) = key {
            self.remember_key(queue, barrier_key(&key), id, now);
        }
        id
    }

    pub(super) fn create_barrier_op(
        &mut self,
        tasks: u32,
        completion: Target,
        failure: Target,
        idempotency_key: Option<String>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        self.check_barrier(tasks, &completion, &failure)?;
        let keyed = self.queue_id(&completion.queue)?;
        if let Some(first) = self.barrier_by_key(keyed, idempotency_key.as_deref())? {
            return Ok(Outcome::BarrierCreated {
                barrier: first.id,
                duplicate: true,
            });
        }
        let key = idempotency_key.map(|k| (keyed, k));
        let barrier = self.store_barrier(tasks, Vec::new(), completion, failure, key, now);
        Ok(Outcome::BarrierCreated {
            barrier,
            duplicate: false,
        })
    }

    pub(super) fn submit_barrier(
        &mut self,
        queue: &str,
        tasks: Vec<NewMessage>,
        completion: Target,
        failure: Target,
        idempotency_key: Option<String>,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let qid = self.queue_id(queue)?;
        self.validate_messages(qid, &tasks, true)?;
        let count = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
        self.check_barrier(count, &completion, &failure)?;
        if let Some(first) = self.barrier_by_key(qid, idempotency_key.as_deref())? {
            return Ok(Outcome::BarrierSubmitted {
                barrier: first.id,
                tasks: first.task_ids,
                duplicate: true,
            });
        }
        // The tasks' ids are the next ones: the barrier record is written with them, then they are sent.
        let first_id = self.state.next_message;
        let task_ids: Vec<MessageId> = (first_id..first_id + u64::from(count)).collect();
        let key = idempotency_key.map(|k| (qid, k));
        let barrier = self.store_barrier(count, task_ids.clone(), completion, failure, key, now);
        for (slot, task) in tasks.into_iter().enumerate() {
            let task = task.with_barrier(BarrierRef {
                partition: self.partition,
                barrier,
                slot: slot as u32,
            });
            let id = self.enqueue(qid, task, None, now);
            debug_assert_eq!(id, task_ids[slot]);
        }
        Ok(Outcome::BarrierSubmitted {
            barrier,
            tasks: task_ids,
            duplicate: false,
        })
    }

    pub(super) fn barrier_task_done(
        &mut self,
        barrier: BarrierId,
        slot: u32,
        outcome: &TaskOutcome,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let b = self.load_barrier(barrier)?;
        if let TaskOutcome::Done(result) = outcome
            && result.len() > MAX_TASK_RESULT
        {
            return Err(QueueError::ResultTooLarge {
                id: 0,
                size: result.len(),
                max: MAX_TASK_RESULT,
            });
        }
        let counted = self.record_outcome(b, slot, outcome, now);
        Ok(Outcome::BarrierTaskRecorded { counted })
    }

    /// A settled barrier task: recorded here when its barrier is at home, put in the outbox otherwise.
    pub(super) fn task_outcome(&mut self, task: BarrierRef, outcome: TaskOutcome, now: u64) {
        if task.partition != self.partition {
            let seq = self.state.next_outbox;
            self.state.next_outbox += 1;
            let entry = OutboxEntry { seq, task, outcome };
            self.stage_put(key64(record::OUTBOX, seq), record::encode(&entry));
            self.events.push(Event::Outbox(entry));
            return;
        }
        match self.load_barrier(task.barrier) {
            Ok(b) => {
                self.record_outcome(b, task.slot, &outcome, now);
            }
            // A local barrier is never deleted, so only a storage failure gets here.
            Err(QueueError::UnknownBarrier { .. }) => {}
            Err(e) => {
                self.poison(e);
            }
        }
    }

    pub(super) fn record_outcome(
        &mut self,
        mut b: Barrier,
        slot: u32,
        outcome: &TaskOutcome,
        now: u64,
    ) -> bool {
        let (counted, fire) = b.record(slot, outcome);
        if !counted {
            return false;
        }
        let (target, join, completed) = match fire {
            Fire::Nothing => (None, None, false),
            Fire::Complete(join) => (Some(b.completion.clone()), Some(join), true),
            Fire::Fail(join) => (Some(b.failure.clone()), Some(join), false),
        };
        if let Some(target) = target {
            let message = match self.names.get(&target.queue).copied() {
                Some(qid) => Some(self.enqueue(qid, target.message, join, now)),
                None => {
                    self.events.push(Event::BarrierUndeliverable {
                        barrier: b.id,
                        queue: target.queue,
                    });
                    None
                }
            };
            self.open_barriers.remove(&b.id);
            if completed {
                b.state = BarrierState::Completed { message };
                if let Some(message) = message {
                    self.events.push(Event::BarrierCompleted {
                        barrier: b.id,
                        message,
                    });
                }
            } else {
                b.state = BarrierState::Failed { message };
                if let Some(message) = message {
                    self.events.push(Event::BarrierFailed {
                        barrier: b.id,
                        message,
                    });
                }
            }
        }
        self.stage_put(key64(record::BARRIER, b.id), record::encode(&b));
        true
    }

    pub(super) fn outbox_done(&mut self, seq: u64) -> Result<Outcome, QueueError> {
        let pairs = self.scan(&[record::OUTBOX])?;
        let upto = key64(record::OUTBOX, seq);
        for (key, _) in pairs {
            if key <= upto {
                self.stage_delete(key);
            }
        }
        Ok(Outcome::OutboxCleared)
    }
}

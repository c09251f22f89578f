//! Creating, changing, deleting and purging queues.

use super::*;

impl<S: Storage> Partition<S> {
    // ---- queues --------------------------------------------------------------------------------------------------

    pub(super) fn check_dead_letter_queue(&self, settings: &QueueSettings) -> Result<(), QueueError> {
        if let Some(dlq) = &settings.dead_letter_queue
            && !self.names.contains_key(dlq)
        {
            return Err(QueueError::InvalidSettings {
                field: "dead_letter_queue".to_owned(),
                reason: format!("no queue named {dlq:?} in this partition"),
            });
        }
        Ok(())
    }

    pub(super) fn create_queue(
        &mut self,
        name: String,
        settings: QueueSettings,
    ) -> Result<Outcome, QueueError> {
        validate_name(&name)?;
        if self.names.contains_key(&name) {
            return Err(QueueError::QueueExists { name });
        }
        settings.validate(&name)?;
        self.check_dead_letter_queue(&settings)?;
        let id = self.state.next_queue;
        self.state.next_queue += 1;
        self.stage_put(
            record::queue_key(id),
            record::encode(&QueueRecord {
                id,
                name: name.clone(),
                settings: settings.clone(),
            }),
        );
        self.names.insert(name.clone(), id);
        self.queues.insert(id, QueueIndex::new(id, name, settings));
        Ok(Outcome::QueueCreated)
    }

    pub(super) fn update_settings(
        &mut self,
        name: &str,
        settings: QueueSettings,
    ) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        settings.validate(name)?;
        self.queue(id).settings.check_update(&settings)?;
        self.check_dead_letter_queue(&settings)?;
        self.stage_put(
            record::queue_key(id),
            record::encode(&QueueRecord {
                id,
                name: name.to_owned(),
                settings: settings.clone(),
            }),
        );
        if let Some(q) = self.queues.get_mut(&id) {
            q.settings = settings;
        }
        Ok(Outcome::SettingsUpdated)
    }

    pub(super) fn delete_queue(&mut self, name: &str, now: u64) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        if let Some(other) = self
            .queues
            .values()
            .find(|q| q.settings.dead_letter_queue.as_deref() == Some(name))
        {
            return Err(QueueError::QueueInUse {
                name: name.to_owned(),
                by: format!("the dead-letter queue of {:?}", other.name),
            });
        }
        if let Some((barrier, _)) = self
            .open_barriers
            .iter()
            .find(|(_, targets)| targets.iter().any(|t| t == name))
        {
            return Err(QueueError::QueueInUse {
                name: name.to_owned(),
                by: format!("a target of open barrier {barrier}"),
            });
        }
        let removed = self.remove_all(id, "queue deleted", now);
        let keys: Vec<String> = self.queue(id).dedup.keys().cloned().collect();
        for key in keys {
            self.stage_delete(record::dedup_key(id, &key));
        }
        self.stage_delete(record::queue_key(id));
        self.queues.remove(&id);
        self.names.remove(name);
        Ok(Outcome::QueueDeleted { removed })
    }

    pub(super) fn remove_all(&mut self, queue: u32, reason: &str, now: u64) -> u64 {
        let ids: Vec<MessageId> = self.queue(queue).messages.iter().copied().collect();
        for &id in &ids {
            self.discard(id, reason, now);
        }
        ids.len() as u64
    }

    pub(super) fn purge(&mut self, name: &str, now: u64) -> Result<Outcome, QueueError> {
        let id = self.queue_id(name)?;
        let removed = self.remove_all(id, "purged", now);
        Ok(Outcome::Purged { removed })
    }
}

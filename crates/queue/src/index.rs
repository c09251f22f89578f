//! A queue's in-memory indexes: ready order, delays, in-flight deadlines, ages, FIFO groups and remembered
//! idempotency keys. Everything here is derived from the stored records and rebuilt by a scan on open or restore.
//!
//! [`QueueIndex::insert`] and [`QueueIndex::remove`] are the only ways a message enters or leaves the indexes,
//! and both read nothing but the message's metadata: a change of a message is "remove the old metadata, insert
//! the new", so the indexes cannot drift from the records.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::message::{MessageId, MessageMeta, MessageState};
use crate::settings::QueueSettings;

/// A FIFO group: its undelivered and in-flight messages in order (with their priority and whether they are
/// visible), and which of them (its head, when nothing is in flight and the head is visible) sits in the ready
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Group {
    pending: BTreeMap<MessageId, (u8, bool)>,
    in_flight: u32,
    head: Option<(u8, MessageId)>,
}

/// One queue's settings and indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueIndex {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) settings: QueueSettings,
    /// Every message of the queue.
    pub(crate) messages: BTreeSet<MessageId>,
    /// Deliverable now, by priority (highest first) then id (oldest first).
    pub(crate) ready: BTreeSet<(Reverse<u8>, MessageId)>,
    /// How many messages are in state Ready (the ready order plus FIFO messages behind their head).
    pub(crate) ready_count: u64,
    pub(crate) delayed: BTreeSet<(u64, MessageId)>,
    pub(crate) in_flight: BTreeSet<(u64, MessageId)>,
    pub(crate) parked: BTreeSet<MessageId>,
    /// Messages carrying dead-letter history (dead letters here, or parked here).
    pub(crate) dead: BTreeSet<MessageId>,
    /// By send time.
    pub(crate) by_age: BTreeSet<(u64, MessageId)>,
    pub(crate) groups: BTreeMap<String, Group>,
    /// Idempotency key → (first message, expiry).
    pub(crate) dedup: BTreeMap<String, (MessageId, u64)>,
    pub(crate) dedup_expiry: BTreeSet<(u64, String)>,
}

impl QueueIndex {
    pub(crate) fn new(id: u32, name: String, settings: QueueSettings) -> Self {
        Self {
            id,
            name,
            settings,
            messages: BTreeSet::new(),
            ready: BTreeSet::new(),
            ready_count: 0,
            delayed: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            parked: BTreeSet::new(),
            dead: BTreeSet::new(),
            by_age: BTreeSet::new(),
            groups: BTreeMap::new(),
            dedup: BTreeMap::new(),
            dedup_expiry: BTreeSet::new(),
        }
    }

    /// The FIFO group `meta` belongs to in this queue, if it is ordered by one.
    fn group_of<'m>(&self, meta: &'m MessageMeta) -> Option<&'m str> {
        if self.settings.fifo && meta.state != MessageState::Parked {
            meta.group.as_deref()
        } else {
            None
        }
    }

    /// Adds `meta`, with its new state, to the indexes.
    pub(crate) fn insert(&mut self, meta: &MessageMeta) {
        let id = meta.id;
        self.messages.insert(id);
        self.by_age.insert((meta.sent_at_ms, id));
        if meta.dead_letter.is_some() {
            self.dead.insert(id);
        }
        let group = self.group_of(meta);
        match meta.state {
            MessageState::Ready => {
                self.ready_count += 1;
                if group.is_none() {
                    self.ready.insert((Reverse(meta.priority), id));
                }
            }
            MessageState::Delayed { until_ms } => {
                self.delayed.insert((until_ms, id));
            }
            MessageState::InFlight { deadline_ms } => {
                self.in_flight.insert((deadline_ms, id));
            }
            MessageState::Parked => {
                self.parked.insert(id);
            }
        }
        if let Some(name) = group {
            let g = self.groups.entry(name.to_owned()).or_default();
            g.pending
                .insert(id, (meta.priority, meta.state == MessageState::Ready));
            if matches!(meta.state, MessageState::InFlight { .. }) {
                g.in_flight += 1;
            }
            self.refresh_group(name);
        }
    }

    /// Removes `meta`, with the state it was indexed with, from the indexes.
    pub(crate) fn remove(&mut self, meta: &MessageMeta) {
        let id = meta.id;
        self.messages.remove(&id);
        self.by_age.remove(&(meta.sent_at_ms, id));
        self.dead.remove(&id);
        let group = self.group_of(meta);
        match meta.state {
            MessageState::Ready => {
                self.ready_count = self.ready_count.saturating_sub(1);
                self.ready.remove(&(Reverse(meta.priority), id));
            }
            MessageState::Delayed { until_ms } => {
                self.delayed.remove(&(until_ms, id));
            }
            MessageState::InFlight { deadline_ms } => {
                self.in_flight.remove(&(deadline_ms, id));
            }
            MessageState::Parked => {
                self.parked.remove(&id);
            }
        }
        if let Some(name) = group {
            if let Some(g) = self.groups.get_mut(name) {
                g.pending.remove(&id);
                if matches!(meta.state, MessageState::InFlight { .. }) {
                    g.in_flight = g.in_flight.saturating_sub(1);
                }
                if g.head.is_some_and(|(_, head)| head == id) {
                    g.head = None;
                }
            }
            self.refresh_group(name);
            if self.groups.get(name).is_some_and(|g| g.pending.is_empty()) {
                self.groups.remove(name);
            }
        }
    }

    /// Puts the group's head in the ready order when nothing of the group is in flight and the head is visible,
    /// and takes out whatever no longer qualifies.
    fn refresh_group(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let desired = if g.in_flight == 0 {
            g.pending
                .first_key_value()
                .filter(|(_, (_, visible))| *visible)
                .map(|(&id, &(priority, _))| (priority, id))
        } else {
            None
        };
        if desired != g.head {
            if let Some((priority, id)) = g.head {
                self.ready.remove(&(Reverse(priority), id));
            }
            if let Some((priority, id)) = desired {
                self.ready.insert((Reverse(priority), id));
            }
            g.head = desired;
        }
    }

    /// Remembers an idempotency key.
    pub(crate) fn remember(&mut self, key: String, id: MessageId, expires_ms: u64) {
        self.dedup_expiry.insert((expires_ms, key.clone()));
        self.dedup.insert(key, (id, expires_ms));
    }

    /// Forgets an idempotency key.
    pub(crate) fn forget(&mut self, key: &str) {
        if let Some((_, expires)) = self.dedup.remove(key) {
            self.dedup_expiry.remove(&(expires, key.to_owned()));
        }
    }
}

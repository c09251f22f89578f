//! Key spaces in memory, for tests and simulations: answers at once, survives a node restart on the same
//! [`MemoryStorage`](crate::MemoryStorage) handle.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{FrozenKeySpace, KeyRead, KeySpace, Record, Visitor, Writes};

#[derive(Clone, Debug, Default)]
struct Space {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: Option<u64>,
}

impl Space {
    fn apply(&mut self, writes: &Writes) {
        for (key, value) in writes.iter() {
            match value {
                Some(value) => self.records.insert(key.to_vec(), value.to_vec()),
                None => self.records.remove(key),
            };
        }
    }
}

/// One group's key space in memory. Cheap to clone: clones share the data.
#[derive(Clone, Debug, Default)]
pub struct MemoryKeySpace {
    space: Arc<Mutex<Space>>,
}

impl MemoryKeySpace {
    /// An empty key space (one not kept by a [`MemoryStorage`](crate::MemoryStorage): gone with its last handle).
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyRead for MemoryKeySpace {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.space.lock().records.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> io::Result<Vec<Record>> {
        let space = self.space.lock();
        let upper = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(space
            .records
            .range((Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KeySpace for MemoryKeySpace {
    fn applied(&self) -> io::Result<Option<u64>> {
        Ok(self.space.lock().applied)
    }

    fn commit(&self, writes: &Writes, applied: u64) -> io::Result<()> {
        let mut space = self.space.lock();
        space.apply(writes);
        space.applied = Some(applied);
        Ok(())
    }

    fn write(&self, writes: &Writes) -> io::Result<()> {
        self.space.lock().apply(writes);
        Ok(())
    }

    fn clear(&self) -> io::Result<()> {
        *self.space.lock() = Space::default();
        Ok(())
    }

    fn freeze(&self) -> io::Result<Box<dyn FrozenKeySpace>> {
        Ok(Box::new(MemoryFrozen(self.space.lock().clone())))
    }
}

struct MemoryFrozen(Space);

impl FrozenKeySpace for MemoryFrozen {
    fn applied(&self) -> Option<u64> {
        self.0.applied
    }

    fn for_each(&self, visit: &mut Visitor<'_>) -> io::Result<()> {
        for (key, value) in &self.0.records {
            visit(key, value)?;
        }
        Ok(())
    }
}

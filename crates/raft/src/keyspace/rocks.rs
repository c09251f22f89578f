//! A group's key space in the node's RocksDB: column family `group_state`, keys `group id (8 bytes, big-endian)`
//! then `0` for the applied mark or `1` and the application's key for a record.

use std::io;
use std::sync::{Arc, Weak};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use super::{FrozenKeySpace, KeyRead, KeySpace, Record, Visitor, Writes};
use crate::log_store::CF_STATE;
use crate::types::GroupId;

const MARK: u8 = 0;
const RECORD: u8 = 1;
/// The first key after a group's range.
const END: u8 = 2;

/// One group's key space in a RocksDB database opened by [`open_db`](crate::open_db). Cheap to clone.
///
/// Holds the database weakly, as the node's other long-lived handles do: a state machine outliving its node
/// (a handle an application kept) does not keep the database open, so the node can close it and a restart
/// in the same process can open it again. Calls after that fail with "the database is closed".
#[derive(Clone)]
pub struct RocksKeySpace {
    db: Weak<DB>,
    group: GroupId,
}

impl std::fmt::Debug for RocksKeySpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKeySpace")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn prefixed(group: GroupId, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.push(tag);
    out.extend_from_slice(key);
    out
}

fn cf(db: &DB) -> io::Result<&rocksdb::ColumnFamily> {
    db.cf_handle(CF_STATE)
        .ok_or_else(|| io::Error::other(format!("column family {CF_STATE} missing")))
}

fn rocks_err(context: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("group state: {context}: {err}"))
}

fn decode_mark(raw: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an applied mark of {} bytes", raw.len()),
        )
    })?;
    Ok(u64::from_le_bytes(bytes))
}

impl RocksKeySpace {
    /// The key space of `group` in `db`.
    pub fn new(db: Arc<DB>, group: GroupId) -> Self {
        Self {
            db: Arc::downgrade(&db),
            group,
        }
    }

    fn db(&self) -> io::Result<Arc<DB>> {
        self.db
            .upgrade()
            .ok_or_else(|| io::Error::other(format!("group {} state: the database is closed", self.group)))
    }

    fn batch(&self, db: &DB, writes: &Writes) -> io::Result<WriteBatch> {
        let cf = cf(db)?;
        let mut batch = WriteBatch::default();
        for (key, value) in writes.iter() {
            let key = prefixed(self.group, RECORD, key);
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        Ok(batch)
    }

    fn bounded(&self, end: Option<&[u8]>) -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(match end {
            Some(end) => prefixed(self.group, RECORD, end),
            None => prefixed(self.group, END, &[]),
        });
        opts
    }
}

impl KeyRead for RocksKeySpace {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let db = self.db()?;
        db.get_cf(cf(&db)?, prefixed(self.group, RECORD, key))
            .map_err(|e| rocks_err("reading", e))
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> io::Result<Vec<Record>> {
        let from = prefixed(self.group, RECORD, start);
        let db = self.db()?;
        let iter = db.iterator_cf_opt(
            cf(&db)?,
            self.bounded(end),
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item.map_err(|e| rocks_err("scanning", e))?;
            out.push((key[9..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }
}

impl KeySpace for RocksKeySpace {
    fn applied(&self) -> io::Result<Option<u64>> {
        let db = self.db()?;
        db.get_cf(cf(&db)?, prefixed(self.group, MARK, &[]))
            .map_err(|e| rocks_err("reading the applied mark", e))?
            .map(|raw| decode_mark(&raw))
            .transpose()
    }

    fn commit(&self, writes: &Writes, applied: u64) -> io::Result<()> {
        let db = self.db()?;
        let mut batch = self.batch(&db, writes)?;
        batch.put_cf(cf(&db)?, prefixed(self.group, MARK, &[]), applied.to_le_bytes());
        // Not synced: the Raft log, synced before the entry committed, is the write-ahead log.
        db.write_opt(batch, &WriteOptions::default())
            .map_err(|e| rocks_err("writing", e))
    }

    fn write(&self, writes: &Writes) -> io::Result<()> {
        let db = self.db()?;
        let batch = self.batch(&db, writes)?;
        db.write_opt(batch, &WriteOptions::default())
            .map_err(|e| rocks_err("writing", e))
    }

    fn clear(&self) -> io::Result<()> {
        let db = self.db()?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&db)?,
            prefixed(self.group, MARK, &[]),
            prefixed(self.group, END, &[]),
        );
        db.write_opt(batch, &WriteOptions::default())
            .map_err(|e| rocks_err("clearing", e))
    }

    fn freeze(&self) -> io::Result<Box<dyn FrozenKeySpace>> {
        let db = self.db()?;
        // Check the column family now, so that a missing one fails here and not halfway through a snapshot.
        cf(&db)?;
        Ok(Box::new(RocksFrozen {
            // Strong while the snapshot is written: a frozen view is short-lived.
            view: View::new(db, |db| db.snapshot()),
            group: self.group,
        }))
    }
}

type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot with the database handle it borrows.
    struct View {
        owner: Arc<DB>,
        #[covariant]
        dependent: Snapshot,
    }
);

struct RocksFrozen {
    view: View,
    group: GroupId,
}

impl FrozenKeySpace for RocksFrozen {
    fn applied(&self) -> Option<u64> {
        let cf = self.view.borrow_owner().cf_handle(CF_STATE)?;
        let raw = self
            .view
            .borrow_dependent()
            .get_cf(cf, prefixed(self.group, MARK, &[]))
            .ok()??;
        decode_mark(&raw).ok()
    }

    fn for_each(&self, visit: &mut Visitor<'_>) -> io::Result<()> {
        let cf = self
            .view
            .borrow_owner()
            .cf_handle(CF_STATE)
            .ok_or_else(|| io::Error::other(format!("column family {CF_STATE} missing")))?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefixed(self.group, END, &[]));
        let from = prefixed(self.group, RECORD, &[]);
        let iter = self.view.borrow_dependent().iterator_cf_opt(
            cf,
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(|e| rocks_err("reading a snapshot", e))?;
            visit(&key[9..], &value)?;
        }
        Ok(())
    }
}

//! The check a node runs on its storage before it takes part in any group, and the WAL witness that lets it see
//! a write-ahead log cut short.
//!
//! A member whose disk lost or damaged what it acknowledged must not vote or lead as if it had not: with one
//! more member lagging, it could elect a leader without entries a majority once held (Jepsen's 2025 analysis of
//! NATS lost acknowledged writes exactly so). So the node checks its database when it opens it and, on any
//! damage, refuses to start with [`Damage`], naming what is wrong; the member is then replaced (removed, and
//! added back on an empty directory), and the newcomer receives everything from the others.
//!
//! What is checked:
//! - **Every stored block.** RocksDB keeps a checksum on every block of its table files and every record of its
//!   WAL, and checks it on every read; opening replays the WAL (a damaged record fails the open unless it is the
//!   last one and incomplete). Once the node runs, a [`scrub`] reads every block of every column family in the
//!   background, so a flipped bit anywhere is found then, not when a read happens to reach it; damage it finds
//!   stops the node and is recorded, so the directory is refused from then on. The scrub also reads every
//!   snapshot file whole against its own checksum (checked besides whenever a snapshot is restored or received).
//! - **Each group's log**, at open: every entry decodes and sits under its own index, indexes are contiguous from the
//!   first one kept to the last, terms never decrease, the vote's term is at least the last entry's (a member
//!   saves its vote before it accepts entries of a term), and the committed index recorded is not past the log.
//! - **The WAL witness**: a small file beside the database recording a sequence number the WAL had synced, written
//!   at most every [`WITNESS_INTERVAL`] (and when the node stops). A WAL truncated at a record boundary replays
//!   as a shorter but consistent database; if it ends before the witness, synced writes are gone.
//!
//! What is not detected: a WAL cut within the last [`WITNESS_INTERVAL`] before a crash exactly at a record
//! boundary (or inside its last record) looks like a crash before those writes; a data directory replaced by
//! an empty one (the cluster still lists the member: remove and add it back).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rocksdb::{DB, IteratorMode, ReadOptions};

use crate::log_store::{CF_LOG, CF_META, CF_SNAPSHOT, CF_STATE, decode, meta_key};
use crate::types::{Entry, GroupId, LogId, Vote};

/// The longest a synced write waits to be covered by the WAL witness.
pub const WITNESS_INTERVAL: Duration = Duration::from_millis(100);

/// The witness file's name, inside the database directory (RocksDB leaves files it does not know alone).
const WITNESS_FILE: &str = "TRESTLE-WAL-WITNESS";
const WITNESS_MAGIC: &[u8; 4] = b"TWW1";
const WITNESS_LEN: usize = 16;

/// Damage found in a node's storage: the node must not take part with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// RocksDB found a damaged block, record or file (its checksums, its manifest).
    #[error("the database is damaged: {detail}")]
    Database {
        /// RocksDB's report.
        detail: String,
    },
    /// A group's log is not what a member writes.
    #[error("group {group}'s log is damaged: {detail}")]
    Log {
        /// The group.
        group: GroupId,
        /// What is wrong.
        detail: String,
    },
    /// The WAL ends before writes it had synced.
    #[error(
        "the write-ahead log lost synced writes: the database ends at sequence {recovered}, but writes up to \
         {witnessed} had been synced (the WAL was truncated or a file removed)"
    )]
    WalTruncated {
        /// The last sequence number the database holds.
        recovered: u64,
        /// The sequence number the witness recorded as synced.
        witnessed: u64,
    },
    /// A snapshot file is damaged (its checksum does not match).
    #[error("the snapshot file {path} is damaged: {detail}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A scrub of the running node found damage earlier (recorded in the directory).
    #[error("a scrub found damage earlier: {detail}")]
    Found {
        /// What the scrub found.
        detail: String,
    },
    /// The witness file itself is damaged.
    #[error("the WAL witness {path} is damaged: {detail}")]
    Witness {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// What [`verify`] or [`scrub`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// Groups whose log or vote the database holds ([`verify`]).
    pub groups: usize,
    /// Log entries checked ([`verify`]).
    pub entries: u64,
    /// Keys read in every column family ([`scrub`]).
    pub keys: u64,
    /// Bytes of keys, values and snapshot files read ([`scrub`]).
    pub bytes: u64,
}

/// Checks the database of a node (opened with [`open_db`](crate::log_store::open_db)) before the node uses it:
/// no damage recorded by an earlier [`scrub`], the WAL witness, and every group's log and vote (which reads every
/// block of the logs).
pub fn verify(db: &DB) -> Result<Verified, Damage> {
    check_marker(db.path())?;
    check_witness(db)?;
    let mut verified = Verified::default();
    let groups = groups_in(db)?;
    verified.groups = groups.len();
    for group in groups {
        verified.entries += check_log(db, group)?;
    }
    Ok(verified)
}

/// Reads every key and value of every column family, so that RocksDB checks every block's checksum: damage is
/// found now, not when a read happens to reach it. A node runs it in the background once it has started (the
/// whole database can take a while); it stops early, with what it read so far, once `stop` returns true.
pub fn scrub(db: &DB, stop: &dyn Fn() -> bool) -> Result<Verified, Damage> {
    let mut verified = Verified::default();
    for name in [CF_META, CF_LOG, CF_SNAPSHOT, CF_STATE] {
        scan_blocks(db, name, &mut verified, stop)?;
    }
    check_snapshot_files(&db.path().join("snapshots"), &mut verified, stop)?;
    Ok(verified)
}

/// Reads every current snapshot file (`group-<id>.snap`) in `dir` whole and checks its checksum.
fn check_snapshot_files(dir: &Path, verified: &mut Verified, stop: &dyn Fn() -> bool) -> Result<(), Damage> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(database("listing the snapshot files", e)),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| database("listing the snapshot files", e))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.starts_with("group-") && name.ends_with(".snap")) {
            continue;
        }
        let damaged = |detail: String| Damage::Snapshot {
            path: path.clone(),
            detail,
        };
        let mut file = std::fs::File::open(&path).map_err(|e| damaged(e.to_string()))?;
        let size = file.metadata().map_err(|e| damaged(e.to_string()))?.len();
        let mut check = crate::snapshot_format::StreamCheck::new(size);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| damaged(e.to_string()))?;
            if n == 0 {
                break;
            }
            check.update(&buf[..n]);
            verified.bytes += n as u64;
            if stop() {
                return Ok(());
            }
        }
        check.verify().map_err(damaged)?;
    }
    Ok(())
}

/// The file that records damage a [`scrub`] found, so the node refuses to start on the directory again.
const MARKER_FILE: &str = "TRESTLE-DAMAGED";

/// Records `damage` in `db_dir`, synced: [`verify`] refuses the directory from now on.
pub(crate) fn mark_damaged(db_dir: &Path, damage: &Damage) -> io::Result<()> {
    let path = db_dir.join(MARKER_FILE);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(damage.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::File::open(db_dir)?.sync_all()
}

fn check_marker(db_dir: &Path) -> Result<(), Damage> {
    match std::fs::read(db_dir.join(MARKER_FILE)) {
        Ok(raw) => Err(Damage::Found {
            detail: String::from_utf8_lossy(&raw).into_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(database("reading the damage marker", e)),
    }
}

fn database(context: &str, err: impl std::fmt::Display) -> Damage {
    Damage::Database {
        detail: format!("{context}: {err}"),
    }
}

/// Reads every key and value of `name`, which makes RocksDB check every block's checksum.
fn scan_blocks(db: &DB, name: &str, verified: &mut Verified, stop: &dyn Fn() -> bool) -> Result<(), Damage> {
    let cf = db
        .cf_handle(name)
        .ok_or_else(|| database("opening", format!("column family {name} missing")))?;
    let mut opts = ReadOptions::default();
    opts.set_verify_checksums(true);
    opts.fill_cache(false);
    opts.set_readahead_size(2 << 20);
    for item in db.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| database(&format!("reading column family {name}"), e))?;
        verified.keys += 1;
        verified.bytes += (key.len() + value.len()) as u64;
        if verified.keys.is_multiple_of(4096) && stop() {
            break;
        }
    }
    Ok(())
}

/// The groups whose log or metadata the database holds.
fn groups_in(db: &DB) -> Result<Vec<GroupId>, Damage> {
    let mut groups = std::collections::BTreeSet::new();
    for name in [CF_META, CF_LOG] {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| database("opening", format!("column family {name} missing")))?;
        for item in db.iterator_cf(&cf, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| database(&format!("reading column family {name}"), e))?;
            // `node/id` is the node's own record, not a group's.
            if name == CF_META && key.as_ref() == crate::log_store::NODE_ID_KEY {
                continue;
            }
            if let Some(prefix) = key.get(..8) {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(prefix);
                groups.insert(u64::from_be_bytes(bytes));
            }
        }
    }
    Ok(groups.into_iter().collect())
}

fn get_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    group: GroupId,
    tag: &[u8],
) -> Result<Option<T>, Damage> {
    let damaged = |detail: String| Damage::Log { group, detail };
    let cf = db
        .cf_handle(CF_META)
        .ok_or_else(|| database("opening", format!("column family {CF_META} missing")))?;
    let Some(raw) = db
        .get_cf(&cf, meta_key(group, tag))
        .map_err(|e| database("reading raft metadata", e))?
    else {
        return Ok(None);
    };
    decode(&raw).map(Some).map_err(|e| {
        damaged(format!(
            "its {} record does not decode: {e}",
            String::from_utf8_lossy(tag)
        ))
    })
}

/// Checks `group`'s log against its metadata; returns how many entries it holds.
fn check_log(db: &DB, group: GroupId) -> Result<u64, Damage> {
    let damaged = |detail: String| Damage::Log { group, detail };
    let vote: Option<Vote> = get_meta(db, group, crate::log_store::TAG_VOTE)?;
    let purged: Option<LogId> = get_meta(db, group, crate::log_store::TAG_PURGED)?;
    let committed: Option<Option<LogId>> = get_meta(db, group, crate::log_store::TAG_COMMITTED)?;
    let committed = committed.flatten();

    let cf = db
        .cf_handle(CF_LOG)
        .ok_or_else(|| database("opening", format!("column family {CF_LOG} missing")))?;
    let prefix = group.to_be_bytes();
    let mut last: Option<LogId> = None;
    let mut count = 0u64;
    let iter = db.iterator_cf(
        &cf,
        IteratorMode::From(&crate::log_store::log_key(group, 0), rocksdb::Direction::Forward),
    );
    for item in iter {
        let (key, value) = item.map_err(|e| database("reading the raft log", e))?;
        if !key.starts_with(&prefix) {
            break;
        }
        let index = key
            .get(8..16)
            .filter(|_| key.len() == 16)
            .map(|raw| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(raw);
                u64::from_be_bytes(bytes)
            })
            .ok_or_else(|| damaged(format!("a log key of {} bytes", key.len())))?;
        let entry: Entry =
            decode(&value).map_err(|e| damaged(format!("entry {index} does not decode: {e}")))?;
        if entry.log_id.index != index {
            return Err(damaged(format!(
                "the entry stored under index {index} is entry {}",
                entry.log_id.index
            )));
        }
        if let Some(previous) = last {
            // Entries at or below the purge point may remain (a crash between recording the purge and deleting
            // them), so only entries past it must follow each other without a gap.
            let past_purge = purged.is_none_or(|p| index > p.index + 1);
            if past_purge && index != previous.index + 1 {
                return Err(damaged(format!(
                    "entries {} to {} are missing",
                    previous.index + 1,
                    index - 1
                )));
            }
            if entry.log_id.leader_id.term < previous.leader_id.term {
                return Err(damaged(format!(
                    "entry {index} has term {} after entry {} of term {}",
                    entry.log_id.leader_id.term, previous.index, previous.leader_id.term
                )));
            }
        } else if let Some(p) = purged
            && index > p.index + 1
        {
            return Err(damaged(format!(
                "the log was purged up to {} but starts at {index}",
                p.index
            )));
        }
        last = Some(entry.log_id);
        count += 1;
    }
    let last_known = match (last, purged) {
        (Some(last), Some(p)) if p.index > last.index => Some(p),
        (Some(last), _) => Some(last),
        (None, p) => p,
    };
    if let Some(last) = last_known {
        match vote {
            None if last.leader_id.term > 0 => {
                return Err(damaged(format!(
                    "entries up to {} (term {}) but no vote",
                    last.index, last.leader_id.term
                )));
            }
            Some(vote) if vote.leader_id.term < last.leader_id.term => {
                return Err(damaged(format!(
                    "its vote is of term {}, older than its last entry's term {}",
                    vote.leader_id.term, last.leader_id.term
                )));
            }
            _ => {}
        }
    }
    if let Some(committed) = committed
        && last_known.is_none_or(|last| last.index < committed.index)
    {
        return Err(damaged(format!(
            "entry {} was committed but the log ends at {}",
            committed.index,
            last_known.map_or_else(|| "nothing".to_string(), |l| l.index.to_string())
        )));
    }
    Ok(count)
}

/// Where `db`'s witness file is.
pub(crate) fn witness_path(db_dir: &Path) -> PathBuf {
    db_dir.join(WITNESS_FILE)
}

fn encode_witness(sequence: u64) -> [u8; WITNESS_LEN] {
    let mut raw = [0u8; WITNESS_LEN];
    raw[..4].copy_from_slice(WITNESS_MAGIC);
    raw[4..12].copy_from_slice(&sequence.to_le_bytes());
    let crc = crc32fast::hash(&raw[..12]);
    raw[12..].copy_from_slice(&crc.to_le_bytes());
    raw
}

fn decode_witness(raw: &[u8]) -> Result<u64, String> {
    if raw.len() != WITNESS_LEN {
        return Err(format!("{} bytes, not {WITNESS_LEN}", raw.len()));
    }
    if &raw[..4] != WITNESS_MAGIC {
        return Err("not a WAL witness".into());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&raw[12..]);
    if crc32fast::hash(&raw[..12]) != u32::from_le_bytes(crc) {
        return Err("its checksum does not match".into());
    }
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&raw[4..12]);
    Ok(u64::from_le_bytes(sequence))
}

/// The sequence number `db_dir`'s witness records; `None` when there is no witness (a new directory, or one
/// written by a version without it).
pub fn read_witness(db_dir: &Path) -> Result<Option<u64>, Damage> {
    let path = witness_path(db_dir);
    let mut raw = Vec::new();
    match std::fs::File::open(&path) {
        Ok(mut file) => file.read_to_end(&mut raw).map_err(|e| Damage::Witness {
            path: path.clone(),
            detail: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Damage::Witness {
                path,
                detail: e.to_string(),
            });
        }
    };
    decode_witness(&raw)
        .map(Some)
        .map_err(|detail| Damage::Witness { path, detail })
}

fn check_witness(db: &DB) -> Result<(), Damage> {
    let Some(witnessed) = read_witness(db.path())? else {
        return Ok(());
    };
    let recovered = db.latest_sequence_number();
    if recovered < witnessed {
        return Err(Damage::WalTruncated { recovered, witnessed });
    }
    Ok(())
}

/// Keeps the witness file of one database: the WAL sync thread reports each sequence number it synced, and the
/// file is rewritten (and synced) with the latest at most every [`WITNESS_INTERVAL`], and when the thread ends.
#[derive(Debug)]
pub(crate) struct WitnessWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
    synced: u64,
    last_write: Option<Instant>,
}

impl WitnessWriter {
    /// The writer of `db_dir`'s witness, which holds `written` now (0 if none).
    pub(crate) fn new(db_dir: &Path, written: u64) -> Self {
        Self {
            path: witness_path(db_dir),
            file: None,
            written,
            synced: written,
            last_write: None,
        }
    }

    /// Notes that everything up to `sequence` is synced in the WAL.
    pub(crate) fn synced(&mut self, sequence: u64) {
        self.synced = self.synced.max(sequence);
    }

    /// How long until a write is due; `None` when the file is current.
    pub(crate) fn due_in(&self, now: Instant) -> Option<Duration> {
        if self.synced <= self.written {
            return None;
        }
        Some(
            self.last_write
                .map_or(Duration::ZERO, |at| WITNESS_INTERVAL.saturating_sub(now - at)),
        )
    }

    /// Writes the file if a write is due at `now` (or whenever it is behind, with `force`).
    pub(crate) fn maybe_write(&mut self, now: Instant, force: bool) {
        match self.due_in(now) {
            Some(wait) if force || wait.is_zero() => {}
            _ => return,
        }
        match self.write() {
            Ok(()) => {
                self.written = self.synced;
                self.last_write = Some(now);
            }
            Err(e) => {
                // The witness only helps detect damage later; a node keeps running without it.
                tracing::warn!(path = %self.path.display(), error = %e, "writing the WAL witness failed");
                self.file = None;
                self.last_write = Some(now);
            }
        }
    }

    fn write(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&self.path)?;
            if file.metadata()?.len() == 0 {
                // A new file: its directory entry must be durable too.
                file.write_all_at(&encode_witness(self.written), 0)?;
                file.sync_all()?;
                if let Some(dir) = self.path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            self.file = Some(file);
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no witness file"))?;
        // 16 bytes at offset 0, within one sector: a crash leaves the old record or the new one.
        file.write_all_at(&encode_witness(self.synced), 0)?;
        file.sync_data()
    }
}

impl Drop for WitnessWriter {
    fn drop(&mut self) {
        self.maybe_write(Instant::now(), true);
    }
}

/// Writes `sequence` as `db_dir`'s witness (tests stage damage with it).
#[doc(hidden)]
pub fn write_witness(db_dir: &Path, sequence: u64) -> io::Result<()> {
    let mut file = std::fs::File::create(witness_path(db_dir))?;
    file.write_all(&encode_witness(sequence))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::log_store::open_db;
    use crate::types::{EntryPayload, log_id};
    use rocksdb::WriteOptions;

    fn put_entry(db: &DB, group: GroupId, term: u64, index: u64) {
        let cf = db.cf_handle(CF_LOG).unwrap();
        let entry = Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Blank,
        };
        db.put_cf(
            &cf,
            crate::log_store::log_key(group, index),
            crate::log_store::encode(&entry).unwrap(),
        )
        .unwrap();
    }

    fn put_meta<T: serde::Serialize>(db: &DB, group: GroupId, tag: &[u8], value: &T) {
        let cf = db.cf_handle(CF_META).unwrap();
        db.put_cf_opt(
            &cf,
            meta_key(group, tag),
            crate::log_store::encode(value).unwrap(),
            &WriteOptions::default(),
        )
        .unwrap();
    }

    fn vote(term: u64) -> Vote {
        let mut vote = Vote::new(term, 1);
        vote.committed = true;
        vote
    }

    /// A database holding group 7's log 1..=5 of term 2, vote of term 2, committed 4, purged 0.
    fn healthy() -> (tempfile::TempDir, std::sync::Arc<DB>) {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("db")).unwrap();
        for index in 1..=5 {
            put_entry(&db, 7, 2, index);
        }
        put_meta(&db, 7, crate::log_store::TAG_VOTE, &vote(2));
        put_meta(&db, 7, crate::log_store::TAG_COMMITTED, &Some(log_id(2, 1, 4)));
        put_meta(&db, 7, crate::log_store::TAG_PURGED, &log_id(1, 1, 0));
        (dir, db)
    }

    #[test]
    fn a_healthy_log_passes() {
        let (_dir, db) = healthy();
        let verified = verify(&db).expect("healthy");
        assert_eq!((verified.groups, verified.entries), (1, 5));
        let scrubbed = scrub(&db, &|| false).expect("healthy");
        assert!(scrubbed.keys >= 8, "{scrubbed:?}");
    }

    #[test]
    fn entries_left_below_the_purge_point_are_not_a_gap() {
        let (_dir, db) = healthy();
        put_meta(&db, 7, crate::log_store::TAG_PURGED, &log_id(2, 1, 3));
        // Entry 0 was never written here, 1..=3 remain though purged, 4 and 5 follow.
        verify(&db).expect("a purge cut short is not damage");
    }

    fn damage_of(db: &DB) -> String {
        verify(db).expect_err("damage must be found").to_string()
    }

    #[test]
    fn a_missing_entry_is_damage() {
        let (_dir, db) = healthy();
        db.delete_cf(&db.cf_handle(CF_LOG).unwrap(), crate::log_store::log_key(7, 3))
            .unwrap();
        assert!(damage_of(&db).contains("entries 3 to 3 are missing"));
    }

    #[test]
    fn a_log_ending_before_its_committed_entry_is_damage() {
        let (_dir, db) = healthy();
        put_meta(&db, 7, crate::log_store::TAG_COMMITTED, &Some(log_id(2, 1, 9)));
        assert!(damage_of(&db).contains("entry 9 was committed but the log ends at 5"));
    }

    #[test]
    fn a_vote_older_than_the_log_is_damage() {
        let (_dir, db) = healthy();
        put_entry(&db, 7, 3, 6);
        assert!(damage_of(&db).contains("vote is of term 2, older than its last entry's term 3"));
        db.delete_cf(
            &db.cf_handle(CF_META).unwrap(),
            meta_key(7, crate::log_store::TAG_VOTE),
        )
        .unwrap();
        assert!(damage_of(&db).contains("but no vote"));
    }

    #[test]
    fn decreasing_terms_and_misplaced_entries_are_damage() {
        let (_dir, db) = healthy();
        put_entry(&db, 7, 1, 6);
        assert!(damage_of(&db).contains("entry 6 has term 1 after entry 5 of term 2"));
        let (_dir, db) = healthy();
        let cf = db.cf_handle(CF_LOG).unwrap();
        let entry = Entry {
            log_id: log_id(2, 1, 2),
            payload: EntryPayload::Blank,
        };
        db.put_cf(
            &cf,
            crate::log_store::log_key(7, 4),
            crate::log_store::encode(&entry).unwrap(),
        )
        .unwrap();
        assert!(damage_of(&db).contains("stored under index 4 is entry 2"));
        db.put_cf(&cf, crate::log_store::log_key(7, 4), [0xff; 3])
            .unwrap();
        assert!(damage_of(&db).contains("entry 4 does not decode"));
    }

    #[test]
    fn a_flipped_bit_in_a_table_no_log_check_reads_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = open_db(&path).unwrap();
            let cf = db.cf_handle(CF_STATE).unwrap();
            for i in 0..100u32 {
                db.put_cf(&cf, i.to_be_bytes(), [7u8; 100]).unwrap();
            }
            db.flush_cf(&cf).unwrap();
        }
        let tables: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .collect();
        assert_eq!(tables.len(), 1, "{tables:?}");
        let mut bytes = std::fs::read(&tables[0]).unwrap();
        bytes[64] ^= 0x40;
        std::fs::write(&tables[0], bytes).unwrap();
        let db = open_db(&path).expect("the damaged block is not read when the database opens");
        verify(&db).expect("no log reads it at open");
        let damage = scrub(&db, &|| false).expect_err("the scrub reads it");
        assert!(matches!(damage, Damage::Database { .. }), "{damage}");
        mark_damaged(&path, &damage).unwrap();
        let again = verify(&db).expect_err("a directory a scrub found damaged is refused");
        assert!(
            matches!(&again, Damage::Found { detail } if detail.contains("Corruption")),
            "{again}"
        );
    }

    #[test]
    fn the_scrub_checks_every_snapshot_file_whole() {
        let (dir, db) = healthy();
        let snapshots = dir.path().join("db").join("snapshots");
        std::fs::create_dir_all(&snapshots).unwrap();
        let meta = crate::types::SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 5)),
            last_membership: Default::default(),
        };
        let mut bytes = Vec::new();
        crate::snapshot_format::write_snapshot(&mut bytes, &meta, |out| Ok(out.write_all(&[5u8; 3000])?))
            .unwrap();
        std::fs::write(snapshots.join("group-7.snap"), &bytes).unwrap();
        // A temporary is not a snapshot yet: not checked.
        std::fs::write(snapshots.join("group-7.snap.partial-0"), b"half").unwrap();
        scrub(&db, &|| false).expect("a whole snapshot");
        bytes[2000] ^= 1;
        std::fs::write(snapshots.join("group-7.snap"), &bytes).unwrap();
        let damage = scrub(&db, &|| false).expect_err("a flipped bit");
        assert!(matches!(damage, Damage::Snapshot { .. }), "{damage}");
        let len = bytes.len();
        bytes[2000] ^= 1;
        std::fs::write(snapshots.join("group-7.snap"), &bytes[..len - 10]).unwrap();
        assert!(
            matches!(scrub(&db, &|| false), Err(Damage::Snapshot { .. })),
            "a truncated file"
        );
    }

    #[test]
    fn a_database_behind_its_witness_lost_synced_writes() {
        let (dir, db) = healthy();
        let db_dir = dir.path().join("db");
        let now = db.latest_sequence_number();
        write_witness(&db_dir, now).unwrap();
        verify(&db).expect("at the witness");
        write_witness(&db_dir, now + 1).unwrap();
        assert!(matches!(
            verify(&db),
            Err(Damage::WalTruncated { recovered, witnessed }) if recovered == now && witnessed == now + 1
        ));
        let mut raw = std::fs::read(witness_path(&db_dir)).unwrap();
        raw[5] ^= 1;
        std::fs::write(witness_path(&db_dir), raw).unwrap();
        assert!(matches!(verify(&db), Err(Damage::Witness { .. })));
    }

    #[test]
    fn the_witness_is_written_at_most_every_interval_and_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut writer = WitnessWriter::new(dir.path(), 0);
        assert_eq!(writer.due_in(start), None, "nothing synced, nothing to write");
        writer.synced(10);
        assert_eq!(
            writer.due_in(start),
            Some(Duration::ZERO),
            "the first write is due at once"
        );
        writer.maybe_write(start, false);
        assert_eq!(read_witness(dir.path()).unwrap(), Some(10));
        writer.synced(20);
        let soon = start + WITNESS_INTERVAL / 2;
        assert_eq!(writer.due_in(soon), Some(WITNESS_INTERVAL / 2));
        writer.maybe_write(soon, false);
        assert_eq!(read_witness(dir.path()).unwrap(), Some(10), "not yet due");
        writer.maybe_write(start + WITNESS_INTERVAL, false);
        assert_eq!(read_witness(dir.path()).unwrap(), Some(20));
        writer.synced(30);
        drop(writer);
        assert_eq!(
            read_witness(dir.path()).unwrap(),
            Some(30),
            "written when the thread ends"
        );
    }
}

//! Writing the whole state to a stream and replacing it from one.

use super::*;

impl<S: Storage> Partition<S> {
    // ---- snapshots -----------------------------------------------------------------------------------------------

    /// Writes the whole state to `out`: the magic `TRQUEUE1`, the number of records (u64 little-endian), then each
    /// record as key length (u32 LE), key, value length (u32 LE), value.
    pub fn snapshot(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        let pairs = self.storage.scan_prefix(b"")?;
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&(pairs.len() as u64).to_le_bytes())?;
        for (key, value) in &pairs {
            for part in [key, value] {
                let len = u32::try_from(part.len())
                    .map_err(|_| SnapshotError::Invalid(format!("a record of {} bytes", part.len())))?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(part)?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Replaces the whole state with the one `input` holds (what [`Partition::snapshot`] wrote). The snapshot is
    /// read and checked completely before anything changes: on an error the partition is as it was.
    pub fn restore(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Invalid(format!(
                "starts with {magic:?}, not a queue partition's snapshot"
            )));
        }
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut pairs = Vec::new();
        for _ in 0..count {
            let mut part = || -> Result<Vec<u8>, SnapshotError> {
                let mut len = [0u8; 4];
                input.read_exact(&mut len)?;
                let mut bytes = Vec::new();
                input
                    .take(u64::from(u32::from_le_bytes(len)))
                    .read_to_end(&mut bytes)?;
                if bytes.len() != u32::from_le_bytes(len) as usize {
                    return Err(SnapshotError::Invalid("truncated".to_owned()));
                }
                Ok(bytes)
            };
            let key = part()?;
            let value = part()?;
            pairs.push((key, value));
        }
        let loaded = Loaded::from_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(SnapshotError::Invalid)?;
        let mut batch = WriteBatch::default();
        for (key, _) in self.storage.scan_prefix(b"")? {
            batch.delete(key);
        }
        for (key, value) in pairs {
            batch.put(key, value);
        }
        self.storage.write(batch)?;
        self.install(loaded);
        Ok(())
    }
}

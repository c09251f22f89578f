//! The snapshot file, as every snapshot store keeps it and the transport carries it:
//!
//! `TRSNAP3\n`, the metadata's length (`u64`, little-endian), the metadata (postcard), the application's bytes,
//! then a CRC-32 (IEEE, little-endian) of everything before it. A damaged snapshot — on a disk, or from a peer —
//! is refused as damaged instead of restoring a state that decodes but is wrong. Snapshots of the previous
//! format (`TRSNAP2\n`, no checksum) still read; they are replaced by the next snapshot taken.

use std::io::{Read, Write};

use crate::log_store::{decode, encode};
use crate::state_machine::SnapshotError;
use crate::types::SnapshotMeta;

/// The first bytes of a snapshot of the current format.
pub(crate) const MAGIC: &[u8; 8] = b"TRSNAP3\n";
/// The first bytes of a snapshot of the previous format (no checksum).
pub(crate) const MAGIC_V2: &[u8; 8] = b"TRSNAP2\n";
const TRAILER: usize = 4;

/// Writes a whole snapshot: the header for `meta`, what `write_state` writes, the checksum. Returns how many
/// bytes `write_state` wrote.
pub(crate) fn write_snapshot(
    out: &mut dyn Write,
    meta: &SnapshotMeta,
    write_state: impl FnOnce(&mut dyn Write) -> Result<(), SnapshotError>,
) -> Result<u64, SnapshotError> {
    let mut hashing = Hashing {
        inner: out,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let encoded = encode(meta).map_err(SnapshotError::invalid)?;
    hashing.write_all(MAGIC)?;
    hashing.write_all(&(encoded.len() as u64).to_le_bytes())?;
    hashing.write_all(&encoded)?;
    let header = hashing.bytes;
    write_state(&mut hashing)?;
    let state = hashing.bytes - header;
    let crc = hashing.hasher.finalize();
    hashing.inner.write_all(&crc.to_le_bytes())?;
    Ok(state)
}

/// Reads a snapshot's header (either format): its metadata. The reader is then at the application's bytes.
pub(crate) fn read_meta(input: &mut dyn Read) -> Result<SnapshotMeta, String> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| format!("reading the snapshot header: {e}"))?;
    if &magic != MAGIC && &magic != MAGIC_V2 {
        return Err("not a snapshot of a known format".into());
    }
    read_meta_after_magic(input)
}

fn read_meta_after_magic(input: &mut dyn Read) -> Result<SnapshotMeta, String> {
    let mut length = [0u8; 8];
    input.read_exact(&mut length).map_err(|e| e.to_string())?;
    let length = u64::from_le_bytes(length);
    // Metadata is a few hundred bytes per member; anything near this is a corrupt length, not a big cluster.
    if length > 64 << 20 {
        return Err(format!("snapshot metadata of {length} bytes"));
    }
    let mut meta = vec![0u8; length as usize];
    input.read_exact(&mut meta).map_err(|e| e.to_string())?;
    decode(&meta).map_err(|e| e.to_string())
}

/// Opens a snapshot for restoring: its metadata, and a reader of the application's bytes that fails at their end
/// if the checksum does not match (a snapshot of the previous format has none to check).
pub(crate) fn open_snapshot<'a>(
    input: &'a mut dyn Read,
) -> Result<(SnapshotMeta, Box<dyn Read + 'a>), String> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| format!("reading the snapshot header: {e}"))?;
    if &magic == MAGIC_V2 {
        let meta = read_meta_after_magic(input)?;
        return Ok((meta, Box::new(input)));
    }
    if &magic != MAGIC {
        return Err("not a snapshot of a known format".into());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&magic);
    let mut checked = Checked {
        inner: input,
        hasher,
        tail: Vec::with_capacity(TRAILER),
        buffer: Vec::new(),
        done: false,
    };
    let meta = read_meta_after_magic(&mut checked)?;
    Ok((meta, Box::new(checked)))
}

/// Reads `input` to its end, so that a checking reader verifies what the application left unread.
pub(crate) fn drain(input: &mut dyn Read) -> std::io::Result<()> {
    std::io::copy(input, &mut std::io::sink()).map(|_| ())
}

/// A writer that checksums and counts what passes through.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hands out all but the last four bytes of `inner`, checksums them, and at the end compares the
/// checksum with those four bytes: a mismatch is an `InvalidData` error instead of the end.
struct Checked<'a> {
    inner: &'a mut dyn Read,
    hasher: crc32fast::Hasher,
    /// The last bytes read, held back until more follow (at most [`TRAILER`]).
    tail: Vec<u8>,
    buffer: Vec<u8>,
    done: bool,
}

impl Read for Checked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        loop {
            self.buffer.clear();
            self.buffer.extend_from_slice(&self.tail);
            let held = self.buffer.len();
            self.buffer.resize(held + out.len(), 0);
            let n = self.inner.read(&mut self.buffer[held..])?;
            let total = held + n;
            if n == 0 {
                self.done = true;
                let expected = self.hasher.clone().finalize().to_le_bytes();
                if self.tail.len() != TRAILER || self.tail != expected {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the snapshot is damaged: its checksum does not match its contents",
                    ));
                }
                return Ok(0);
            }
            if total <= TRAILER {
                self.tail = self.buffer[..total].to_vec();
                continue;
            }
            let release = total - TRAILER;
            out[..release].copy_from_slice(&self.buffer[..release]);
            self.hasher.update(&self.buffer[..release]);
            self.tail = self.buffer[release..total].to_vec();
            return Ok(release);
        }
    }
}

/// Checks a snapshot's checksum as its bytes stream past, in order (the transport's receiving side), knowing its
/// size up front.
#[derive(Debug)]
pub(crate) struct StreamCheck {
    size: u64,
    seen: u64,
    hasher: crc32fast::Hasher,
    trailer: Vec<u8>,
    first: Vec<u8>,
}

impl StreamCheck {
    /// A check of a snapshot of `size` bytes.
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size,
            seen: 0,
            hasher: crc32fast::Hasher::new(),
            trailer: Vec::with_capacity(TRAILER),
            first: Vec::with_capacity(MAGIC.len()),
        }
    }

    /// The next bytes of the snapshot.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let body_end = self.size.saturating_sub(TRAILER as u64);
        let start = self.seen;
        let body = usize::try_from(body_end.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.hasher.update(&bytes[..body]);
        self.trailer.extend_from_slice(&bytes[body..]);
        let want = MAGIC.len().saturating_sub(self.first.len()).min(bytes.len());
        self.first.extend_from_slice(&bytes[..want]);
        self.seen += bytes.len() as u64;
    }

    /// Whether what streamed past is whole: a snapshot of the current format whose checksum matches, or one of
    /// the previous format (which has none).
    pub(crate) fn verify(self) -> Result<(), String> {
        if self.first.as_slice() == MAGIC_V2 {
            return Ok(());
        }
        if self.first.as_slice() != MAGIC {
            return Err("not a snapshot of a known format".into());
        }
        if self.trailer.as_slice() != self.hasher.finalize().to_le_bytes() {
            return Err("the snapshot is damaged: its checksum does not match its contents".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(crate::types::log_id(2, 1, 40)),
            last_membership: Default::default(),
        }
    }

    fn snapshot(state: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let written = write_snapshot(&mut out, &meta(), |w| Ok(w.write_all(state)?)).unwrap();
        assert_eq!(written, state.len() as u64);
        out
    }

    fn restore(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
        let mut input: &[u8] = bytes;
        let (meta, mut reader) = open_snapshot(&mut input)?;
        let mut state = Vec::new();
        reader.read_to_end(&mut state).map_err(|e| e.to_string())?;
        Ok((meta, state))
    }

    #[test]
    fn a_snapshot_reads_back_whole_through_any_read_sizes() {
        for len in [0usize, 1, 3, 4, 5, 1000, 70_000] {
            let state: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let bytes = snapshot(&state);
            assert_eq!(restore(&bytes).unwrap(), (meta(), state.clone()), "{len} bytes");
            // One byte at a time, as a slow reader would ask.
            let mut input: &[u8] = &bytes;
            let (_, mut reader) = open_snapshot(&mut input).unwrap();
            let mut read = Vec::new();
            let mut one = [0u8; 1];
            while reader.read(&mut one).unwrap() == 1 {
                read.push(one[0]);
            }
            assert_eq!(read, state, "{len} bytes, one at a time");
            let mut check = StreamCheck::new(bytes.len() as u64);
            for chunk in bytes.chunks(3) {
                check.update(chunk);
            }
            check.verify().unwrap();
        }
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_caught() {
        let bytes = snapshot(&[42u8; 300]);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(restore(&damaged).is_err(), "a flip at {i} went unnoticed");
            let mut check = StreamCheck::new(damaged.len() as u64);
            check.update(&damaged);
            assert!(check.verify().is_err(), "the stream check missed a flip at {i}");
        }
        for cut in [bytes.len() - 1, bytes.len() - 4, bytes.len() - 5, 40] {
            assert!(restore(&bytes[..cut]).is_err(), "a cut at {cut} went unnoticed");
        }
    }

    #[test]
    fn a_snapshot_of_the_previous_format_still_reads() {
        let encoded = encode(&meta()).unwrap();
        let mut old = MAGIC_V2.to_vec();
        old.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
        old.extend_from_slice(&encoded);
        old.extend_from_slice(b"state");
        assert_eq!(restore(&old).unwrap(), (meta(), b"state".to_vec()));
        let mut input: &[u8] = &old;
        assert_eq!(read_meta(&mut input).unwrap(), meta());
    }
}

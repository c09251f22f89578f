//! The conformance suite every [`GroupApp`] runs: the promises Raft replication relies on, checked on a seeded
//! stream of commands.
//!
//! A Raft group is only as correct as its application. Replicas apply the same log and must end in the same
//! state; a follower that falls behind is brought back by a snapshot and must then behave exactly like the
//! replicas that applied the log; and a command or snapshot is data from the network or the disk, so no bytes
//! may panic the process. [`check_group_app`] checks each of these:
//!
//! 1. **Determinism.** Two replicas applying the same commands return the same results, command by command.
//! 2. **Snapshots replace the state.** A snapshot taken at the start, at a random point or at the end, restored
//!    twice over into replicas that held other state, answers every later command exactly as the replica it
//!    came from. The second time, it is written and read a few bytes per call, as files and sockets may.
//! 3. **An empty state round-trips** through a snapshot.
//! 4. **No panics** on random commands (mixed into the stream) or random snapshot bytes (which must be refused
//!    or accepted, never panic on).
//!
//! Use it from the implementation's own tests, with a generator of the commands it expects:
//!
//! ```ignore
//! #[test]
//! fn my_app_conforms() {
//!     trestle_raft::testing::check_group_app("my-app", MyApp::default, |rng| my_random_command(rng));
//! }
//! ```
//!
//! The seed is printed and a failure names it; `TRESTLE_CONFORMANCE_SEED=S` replays it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::state_machine::{GroupApp, SnapshotError};

/// Commands in each checked stream.
const COMMANDS: usize = 400;
/// One command in this many is random bytes instead of a generated command.
const GARBAGE_ONE_IN: u32 = 10;
/// Random snapshots fed to `restore`.
const GARBAGE_SNAPSHOTS: usize = 64;

/// Runs the suite on the application `new` builds, with commands from `command`; panics on the first broken
/// promise, naming the seed. `name` labels the output.
pub fn check_group_app<A, N, C>(name: &str, new: N, mut command: C)
where
    A: GroupApp,
    N: Fn() -> A,
    C: FnMut(&mut ChaCha8Rng) -> Vec<u8>,
{
    let seed = match std::env::var("TRESTLE_CONFORMANCE_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("TRESTLE_CONFORMANCE_SEED={s:?} is not a number")),
        Err(_) => rand::rng().next_u64(),
    };
    eprintln!("conformance {name}: seed {seed} (replay with TRESTLE_CONFORMANCE_SEED={seed})");
    let fail = |what: String| -> ! { panic!("conformance {name} (seed {seed}): {what}") };

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let commands: Vec<Vec<u8>> = (0..COMMANDS)
        .map(|_| {
            if rng.random_ratio(1, GARBAGE_ONE_IN) {
                random_bytes(&mut rng, 64)
            } else {
                command(&mut rng)
            }
        })
        .collect();

    // 1. Determinism.
    let mut reference = new();
    let mut twin = new();
    for (i, c) in commands.iter().enumerate() {
        let index = i as u64 + 1;
        let a = guarded(|| ok(reference.apply(index, c)))
            .unwrap_or_else(|p| fail(format!("apply panicked on command {i} {c:?}: {p}")));
        let b = guarded(|| ok(twin.apply(index, c)))
            .unwrap_or_else(|p| fail(format!("apply panicked on command {i} {c:?}: {p}")));
        if a != b {
            fail(format!(
                "two replicas answered command {i} {c:?} differently: {a:?} vs {b:?}"
            ));
        }
    }

    // 2. Snapshots taken at the start, at a random point and at the end, each restored into a replica that held
    //    other state (restore must replace it, not merge into it), snapshotted and restored again into another
    //    such replica; then it must answer exactly as the replica the snapshot came from, command by command.
    let other_state = |replica: &mut A| {
        for (i, c) in commands.iter().rev().take(50).enumerate() {
            ok(replica.apply(i as u64 + 1, c));
        }
    };
    for cut in [0, rng.random_range(0..=commands.len()), commands.len()] {
        let mut source = new();
        for (i, c) in commands[..cut].iter().enumerate() {
            ok(source.apply(i as u64 + 1, c));
        }
        let snapshot = snapshot_of(&source)
            .unwrap_or_else(|e| fail(format!("snapshot after {cut} commands failed: {e}")));
        let mut first = new();
        other_state(&mut first);
        restore(&mut first, &snapshot).unwrap_or_else(|e| {
            fail(format!(
                "restoring the snapshot taken after {cut} commands failed: {e}"
            ))
        });
        // Written and read a few bytes at a time this time: files and sockets do not promise whole reads.
        let again = trickled_snapshot_of(&first, &mut rng)
            .unwrap_or_else(|e| fail(format!("snapshot of a restored state failed: {e}")));
        let mut restored = new();
        other_state(&mut restored);
        let seed = rng.random();
        restored
            .restore(&mut Trickle::new(&again[..], seed))
            .unwrap_or_else(|e| fail(format!("restoring a restored state's snapshot failed: {e}")));
        // The rest of the log, then the first commands once more (after the last cut there is no rest).
        let tail = commands[cut..].iter().chain(commands.iter().take(50));
        for (n, c) in tail.enumerate() {
            let index = (cut + n) as u64 + 1;
            let (want, got) = (ok(source.apply(index, c)), ok(restored.apply(index, c)));
            if got != want {
                fail(format!(
                    "after a snapshot taken at command {cut}, restored into a replica holding other state, \
                     command {} {c:?} answered {got:?}; the replica the snapshot came from answered {want:?}",
                    cut + n
                ));
            }
        }
    }

    // 3. The empty state round-trips.
    let empty =
        snapshot_of(&new()).unwrap_or_else(|e| fail(format!("snapshot of the empty state failed: {e}")));
    let mut from_empty = new();
    restore(&mut from_empty, &empty)
        .unwrap_or_else(|e| fail(format!("restoring the empty state's snapshot failed: {e}")));
    if let Some(c) = commands.first() {
        let (got, want) = (ok(from_empty.apply(1, c)), ok(new().apply(1, c)));
        if got != want {
            fail(format!(
                "after restoring the empty snapshot, the first command answered {got:?}, a new replica {want:?}"
            ));
        }
    }

    // 4. Random snapshot bytes: refused or accepted, never a panic.
    let snapshot =
        snapshot_of(&reference).unwrap_or_else(|e| fail(format!("snapshot after every command failed: {e}")));
    for n in 0..GARBAGE_SNAPSHOTS {
        let bytes = if n % 2 == 0 {
            random_bytes(&mut rng, 256)
        } else {
            // A valid snapshot with one byte flipped or cut short: closer to what a torn file looks like.
            let mut s = snapshot.clone();
            if s.is_empty() || rng.random_bool(0.5) {
                s.truncate(rng.random_range(0..=s.len()));
            } else {
                let at = rng.random_range(0..s.len());
                s[at] ^= 1 << rng.random_range(0..8);
            }
            s
        };
        let mut target = new();
        if let Err(p) = guarded(|| restore(&mut target, &bytes)) {
            fail(format!(
                "restore panicked on {} snapshot bytes {bytes:?}: {p}",
                bytes.len()
            ));
        }
    }
}

/// The snapshot `app` writes, in memory.
fn snapshot_of<A: GroupApp>(app: &A) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::new();
    app.snapshot(&mut out)?;
    Ok(out)
}

/// The snapshot `app` writes into a writer that takes a few bytes per call.
fn trickled_snapshot_of<A: GroupApp>(app: &A, rng: &mut ChaCha8Rng) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Trickle::new(Vec::new(), rng.random());
    app.snapshot(&mut out)?;
    Ok(out.inner)
}

/// Restores `app` from `bytes`.
fn restore<A: GroupApp>(app: &mut A, bytes: &[u8]) -> Result<(), SnapshotError> {
    app.restore(&mut &bytes[..])
}

/// A reader or writer that moves 1 to 7 bytes per call.
struct Trickle<T> {
    inner: T,
    rng: ChaCha8Rng,
}

impl<T> Trickle<T> {
    fn new(inner: T, seed: u64) -> Self {
        Self {
            inner,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn limit(&mut self, len: usize) -> usize {
        len.min(self.rng.random_range(1..8))
    }
}

impl<R: std::io::Read> std::io::Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.limit(buf.len());
        self.inner.read(&mut buf[..n])
    }
}

impl<W: std::io::Write> std::io::Write for Trickle<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.limit(buf.len());
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let mut bytes = vec![0; rng.random_range(0..=max)];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".into())
    })
}

/// An apply's answer; a storage error fails the check (an in-memory application has no storage to fail).
fn ok(result: std::io::Result<Vec<u8>>) -> Vec<u8> {
    result.unwrap_or_else(|e| panic!("apply failed with a storage error: {e}"))
}

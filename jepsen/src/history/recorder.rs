//! The history recorder: events from every client and the nemesis, stamped with monotonic nanoseconds since the
//! start of the run, in the order they happened.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::HarnessError;
use crate::history::{Event, EventType};

/// Collects a run's events. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    ok: AtomicU64,
    fail: AtomicU64,
    info: AtomicU64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            ok: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the recorder was made (monotonic).
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Stamps `event` with the current time and appends it.
    pub(crate) fn record(&self, event: Event) {
        let counter = match event.kind {
            EventType::Ok => Some(&self.ok),
            EventType::Fail => Some(&self.fail),
            EventType::Info if matches!(event.process, crate::history::Process::Client(_)) => {
                Some(&self.info)
            }
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut events) = self.events.lock() {
            // Stamped under the lock, so file order and time order agree.
            let stamped = event.with_time(self.now());
            events.push(stamped);
        }
    }

    /// Completed client operations so far: (ok, fail, info).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
            self.info.load(Ordering::Relaxed),
        )
    }

    /// A copy of the events so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Writes the events as JSON lines.
    pub(crate) fn write_jsonl(&self, path: &Path) -> Result<(), HarnessError> {
        let file = std::fs::File::create(path).map_err(|e| HarnessError::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        for e in self.events() {
            writeln!(out, "{}", e.to_json_line()).map_err(|e| HarnessError::io(path, e))?;
        }
        out.flush().map_err(|e| HarnessError::io(path, e))
    }
}

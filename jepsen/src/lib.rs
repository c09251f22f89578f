#![doc = include_str!("../README.md")]

mod check;
mod edn;
mod history;
mod linear;
mod lock;
mod set;
mod stats;
mod value;
mod verdict;

pub use check::{CheckModel, Details, Report, UnknownModel, check};
pub use history::{Event, EventType, Format, History, HistoryError, Op, Outcome, Process, ReadOptions};
pub use linear::{Limits, LinearReport, ModelError, RegisterModel, Violation, check_linearizable};
pub use lock::{LockKeyReport, LockReport, LockViolation, check_lock};
pub use set::{SetKeyReport, SetReport, check_set};
pub use stats::{Counts, Stats};
pub use value::Value;
pub use verdict::Verdict;

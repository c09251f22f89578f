#![doc = include_str!("../README.md")]

mod binary;
mod check;
mod cleanup;
mod cluster;
mod edn;
mod election;
mod error;
mod history;
mod linear;
mod lock;
mod nemesis;
mod netns;
mod plot;
mod proxy;
mod recorder;
mod results;
mod runner;
mod schedule;
mod set;
pub mod sim;
mod stats;
mod timeline;
mod value;
mod verdict;
mod workload;

pub use binary::find_trestle;
pub use check::{CheckModel, Details, Report, UnknownModel, check};
pub use cleanup::clean_leftovers;
pub use cluster::NetMode;
pub use election::{ElectionKeyReport, ElectionReport, ElectionViolation, check_election};
pub use error::HarnessError;
pub use history::{Event, EventType, Format, History, HistoryError, Op, Outcome, Process, ReadOptions};
pub use linear::{Limits, LinearReport, ModelError, RegisterModel, Violation, check_linearizable};
pub use lock::{LockKeyReport, LockReport, LockViolation, check_lock};
pub use nemesis::{GroupFired, NEMESIS, NemesisReport, check_nemesis};
pub use proxy::LinkFault;
pub use runner::{TestConfig, TestOutcome, run_test};
pub use schedule::{
    Fault, NemesisError, NemesisGroup, NemesisKind, ScheduleConfig, ScheduleError, Window, draw_fault,
    parse_nemeses, schedule,
};
pub use set::{SetKeyReport, SetReport, check_set};
pub use stats::{Counts, Stats};
pub use value::Value;
pub use verdict::Verdict;
pub use workload::{
    BoxFuture, Completion, ElectionWorkload, LockWorkload, OpRequest, RegisterWorkload, Session, SetWorkload,
    WORKLOADS, Workload, workload_by_name,
};

#![doc = include_str!("../README.md")]

// The map. Each folder is one part of a Jepsen-style test:
// - `history`: what a run records (events, operations, values) and reads back (JSON lines, Jepsen's EDN);
// - `workload`: the clients that generate operations (register, set, lock, election, queue, barrier, cache);
// - `nemesis`: fault injection (the seeded schedule, kernel partitions, the TCP fault proxy, kills, pauses,
//   membership changes) and the evidence it records;
// - `checker`: judging a history (linearizability, set, lock fencing, election terms, queues, barriers, the
//   cache's deletes and convergence, nemesis evidence);
// - `harness`: real clusters (processes, network namespaces, leftovers), the runner that ties the parts
//   together, and the results it writes (stats, timeline, plots);
// - `sim`: the deterministic-network simulation of the Raft layer.

mod checker;
mod error;
mod harness;
mod history;
mod nemesis;
pub mod sim;
mod workload;

pub use checker::barrier::{BarrierReport, check_barrier};
pub use checker::cache::{CONVERGENCE_BOUND as CACHE_CONVERGENCE_BOUND, CacheReport, check_cache};
pub use checker::election::{ElectionKeyReport, ElectionReport, ElectionViolation, check_election};
pub use checker::linear::{Limits, LinearReport, ModelError, RegisterModel, Violation, check_linearizable};
pub use checker::lock::{LockKeyReport, LockReport, LockViolation, check_lock};
pub use checker::nemesis::{GroupFired, NemesisReport, check_nemesis};
pub use checker::queue::{QueueReport, check_queue};
pub use checker::set::{SetKeyReport, SetReport, check_set};
pub use checker::verdict::Verdict;
pub use checker::{CheckModel, Details, Report, UnknownModel, check};
pub use error::HarnessError;
pub use harness::binary::find_trestle;
pub use harness::cleanup::clean_leftovers;
pub use harness::cluster::NetMode;
pub use harness::hashkv::HashKvCheck;
pub use harness::runner::{TestConfig, TestOutcome, run_test};
pub use harness::stats::{Counts, Stats};
pub use history::value::Value;
pub use history::{Event, EventType, Format, History, HistoryError, Op, Outcome, Process, ReadOptions};
pub use nemesis::NEMESIS;
pub use nemesis::proxy::LinkFault;
pub use nemesis::schedule::{
    Fault, NemesisError, NemesisGroup, NemesisKind, ScheduleConfig, ScheduleError, StorageDamage, Window,
    draw_fault, parse_nemeses, schedule,
};
pub use workload::{
    BarrierWorkload, BoxFuture, CacheWorkload, Completion, ElectionWorkload, LockWorkload, OpRequest,
    QueueWorkload, RegisterWorkload, Session, SetWorkload, WORKLOADS, Workload, workload_by_name,
};

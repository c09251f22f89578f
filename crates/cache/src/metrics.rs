//! The node's counters and per-command latency histograms, rendered in Prometheus' text format for `/metrics`.
//!
//! Kept in the node's own atomics rather than the `metrics` facade, so a library user gets them without a
//! process-wide recorder, and two nodes in one process (the tests) do not mix their numbers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::{Command, Frame};
use crate::store::Store;

/// The command names latency is kept for (`error` for malformed input).
const COMMANDS: [&str; 26] = [
    "get",
    "gets",
    "gat",
    "gats",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "delete",
    "incr",
    "decr",
    "touch",
    "flush_all",
    "stats",
    "version",
    "verbosity",
    "quit",
    "mg",
    "ms",
    "md",
    "ma",
    "mn",
    "me",
    "error",
];

/// Histogram bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000];

/// The gRPC API's methods, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcMethod {
    Get,
    GetMany,
    Set,
    SetMany,
    Delete,
    Touch,
}

const GRPC_METHODS: [&str; 6] = ["get", "get_many", "set", "set_many", "delete", "touch"];

/// gRPC codes 0 to 16.
const GRPC_CODES: usize = 17;

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = BUCKETS_US.iter().position(|&bound| us <= bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {count}");
    }
}

/// Counters of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    hits: AtomicU64,
    misses: AtomicU64,
    latency: Vec<Histogram>,
    grpc_latency: Vec<Histogram>,
    /// Calls by method and code (`GRPC_CODES` per method).
    grpc_codes: Vec<AtomicU64>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            latency: COMMANDS.iter().map(|_| Histogram::default()).collect(),
            grpc_latency: GRPC_METHODS.iter().map(|_| Histogram::default()).collect(),
            grpc_codes: (0..GRPC_METHODS.len() * GRPC_CODES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

fn code_name(code: usize) -> &'static str {
    const NAMES: [&str; GRPC_CODES] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code).copied().unwrap_or("UNKNOWN")
}

/// The command index of a frame, for [`NodeMetrics::observe`].
pub fn command_index(frame: &Frame) -> usize {
    let name = match frame {
        Frame::Command(command) => match command {
            Command::Get { cas: false, .. } => "get",
            Command::Get { cas: true, .. } => "gets",
            Command::GetAndTouch { cas: false, .. } => "gat",
            Command::GetAndTouch { cas: true, .. } => "gats",
            Command::Store { mode, .. } => match mode {
                crate::protocol::StoreMode::Set => "set",
                crate::protocol::StoreMode::Add => "add",
                crate::protocol::StoreMode::Replace => "replace",
                crate::protocol::StoreMode::Append => "append",
                crate::protocol::StoreMode::Prepend => "prepend",
                _ => "cas",
            },
            Command::Delete { .. } => "delete",
            Command::Arith {
                mode: crate::protocol::ArithMode::Incr,
                ..
            } => "incr",
            Command::Arith { .. } => "decr",
            Command::Touch { .. } => "touch",
            Command::FlushAll { .. } => "flush_all",
            Command::Stats => "stats",
            Command::Version => "version",
            Command::Verbosity { .. } => "verbosity",
            Command::Quit => "quit",
            Command::MetaGet { .. } => "mg",
            Command::MetaSet { .. } => "ms",
            Command::MetaDelete { .. } => "md",
            Command::MetaArith { .. } => "ma",
            Command::MetaNoop => "mn",
            Command::MetaDebug { .. } => "me",
            // An administrative listing, counted with `stats`.
            Command::Metadump => "stats",
        },
        Frame::Error(_) => "error",
    };
    COMMANDS
        .iter()
        .position(|c| *c == name)
        .unwrap_or(COMMANDS.len() - 1)
}

impl NodeMetrics {
    /// New zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups that found a value and lookups that did not.
    pub fn hits_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// gRPC calls of `method` (`get`, `get_many`, `set`, `set_many`, `delete`, `touch`) answered with `code`.
    pub fn grpc_calls(&self, method: &str, code: tonic::Code) -> u64 {
        GRPC_METHODS
            .iter()
            .position(|m| *m == method)
            .and_then(|m| self.grpc_codes.get(m * GRPC_CODES + code as usize))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub(crate) fn observe_grpc(&self, method: GrpcMethod, code: tonic::Code, elapsed: Duration) {
        let m = method as usize;
        if let Some(counter) = self.grpc_codes.get(m * GRPC_CODES + code as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.grpc_latency.get(m) {
            histogram.observe(elapsed);
        }
    }

    /// Records that the command at `index` (see [`command_index`]) took `elapsed`.
    pub fn observe(&self, index: usize, elapsed: Duration) {
        if let Some(histogram) = self.latency.get(index) {
            histogram.observe(elapsed);
        }
    }

    /// The Prometheus text exposition of these counters and the store's gauges.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        let (hits, misses) = self.hits_misses();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "trestle_cache_hits_total",
            "counter",
            "Lookups that found a value.",
            hits,
        );
        metric(
            "trestle_cache_misses_total",
            "counter",
            "Lookups that found nothing.",
            misses,
        );
        metric(
            "trestle_cache_evictions_total",
            "counter",
            "Items evicted to make room.",
            store.evictions(),
        );
        metric("trestle_cache_items", "gauge", "Items stored.", store.items());
        metric(
            "trestle_cache_bytes",
            "gauge",
            "Bytes used, items' keys, values and overhead.",
            store.bytes(),
        );
        metric(
            "trestle_cache_limit_bytes",
            "gauge",
            "The memory limit.",
            store.config().memory_bytes,
        );
        let name = "trestle_cache_command_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to execute one command.\n# TYPE {name} histogram"
        );
        for (command, histogram) in COMMANDS.iter().zip(&self.latency) {
            histogram.render(&mut out, name, "command", command);
        }
        let name = "trestle_cache_grpc_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} gRPC calls by method and status code.\n# TYPE {name} counter"
        );
        for (m, method) in GRPC_METHODS.iter().enumerate() {
            for code in 0..GRPC_CODES {
                let count = self.grpc_codes[m * GRPC_CODES + code].load(Ordering::Relaxed);
                if count > 0 {
                    let code = code_name(code);
                    let _ = writeln!(out, "{name}{{method=\"{method}\",code=\"{code}\"}} {count}");
                }
            }
        }
        let name = "trestle_cache_grpc_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer one gRPC call.\n# TYPE {name} histogram"
        );
        for (method, histogram) in GRPC_METHODS.iter().zip(&self.grpc_latency) {
            histogram.render(&mut out, name, "method", method);
        }
        out
    }
}

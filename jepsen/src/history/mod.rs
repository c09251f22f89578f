//! Histories: the events clients record, read from JSON lines or Jepsen's EDN, and paired into operations.

pub(crate) mod edn;
pub(crate) mod recorder;
pub(crate) mod value;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::history::value::Value;

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The client is about to perform the operation.
    Invoke,
    /// The operation took effect, once.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// Nobody knows: the operation may take effect at any time from its invocation on, or never.
    Info,
}

impl EventType {
    /// The name used in both formats (`invoke`, `ok`, `fail`, `info`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }

    fn parse(name: &str) -> Option<EventType> {
        match name {
            "invoke" => Some(EventType::Invoke),
            "ok" => Some(EventType::Ok),
            "fail" => Some(EventType::Fail),
            "info" => Some(EventType::Info),
            _ => None,
        }
    }
}

/// Who recorded an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client process. It runs one operation at a time; after an `info` completion its id is retired.
    Client(i64),
    /// Anything else, such as Jepsen's `:nemesis`. Such events are kept aside and counted, never checked.
    Other(String),
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(p) => write!(f, "{p}"),
            Process::Other(name) => f.write_str(name),
        }
    }
}

/// One line of a history: an invocation or a completion.
///
/// Build one with [`Event::new`] and write it with [`Event::to_json_line`]; that is the format
/// [`History::parse_jsonl`] reads.
///
/// ```
/// use trestle_jepsen::{Event, EventType, Process, Value};
///
/// let e = Event::new(EventType::Ok, Process::Client(3), "read", Value::Int(7)).with_key("k1").with_time(1500);
/// assert_eq!(e.to_json_line(), r#"{"f":"read","key":"k1","process":3,"time":1500,"type":"ok","value":7}"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// Invocation or which kind of completion.
    pub kind: EventType,
    /// The process that recorded it.
    pub process: Process,
    /// The operation's function (`read`, `write`, `cas`, `add`, `acquire`, ...).
    pub f: String,
    /// The key the operation is about, for histories split per key (Jepsen's `independent`).
    pub key: Option<Value>,
    /// The argument (on an invocation) or the result (on a completion).
    pub value: Value,
    /// Monotonic time in nanoseconds, if recorded.
    pub time: Option<u64>,
    /// Why an operation failed or is unknown, if the client said (written as `error`; checkers ignore it).
    pub error: Option<String>,
    /// Where it was read from: the 1-based line in its file (0 for events built in code).
    pub line: usize,
}

impl Event {
    /// A new event without key or time.
    pub fn new(kind: EventType, process: Process, f: impl Into<String>, value: Value) -> Self {
        Event {
            kind,
            process,
            f: f.into(),
            key: None,
            value,
            time: None,
            error: None,
            line: 0,
        }
    }

    /// Sets the error message.
    #[must_use]
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Value>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the monotonic time in nanoseconds.
    #[must_use]
    pub fn with_time(mut self, nanos: u64) -> Self {
        self.time = Some(nanos);
        self
    }

    /// The event as one line of the JSON-lines history format (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), self.kind.as_str().into());
        obj.insert(
            "process".into(),
            match &self.process {
                Process::Client(p) => serde_json::Value::from(*p),
                Process::Other(name) => serde_json::Value::from(name.as_str()),
            },
        );
        obj.insert("f".into(), self.f.as_str().into());
        if let Some(key) = &self.key {
            obj.insert("key".into(), key.to_json());
        }
        obj.insert("value".into(), self.value.to_json());
        if let Some(t) = self.time {
            obj.insert("time".into(), t.into());
        }
        if let Some(e) = &self.error {
            obj.insert("error".into(), e.as_str().into());
        }
        serde_json::Value::Object(obj).to_string()
    }

    /// Reads an event from a map with `type`, `process`, `f` and optional `value`, `key`, `time` (keyword keys in
    /// EDN, string keys in JSON). Other keys (`index`, `error`, `node`, ...) are ignored.
    fn from_map(line: usize, map: &Value, independent: bool) -> Result<Event, HistoryError> {
        let bad = |message: String| HistoryError::Malformed { line, message };
        if !matches!(map, Value::Map(_)) {
            return Err(bad(format!(
                "expected a map (an operation), found {}",
                short(map)
            )));
        }
        let kind = match map.get("type") {
            Some(t) => t.as_name().and_then(EventType::parse).ok_or_else(|| {
                bad(format!(
                    "`type` must be invoke, ok, fail or info, not {}",
                    short(t)
                ))
            })?,
            None => return Err(bad("the operation has no `type`".into())),
        };
        let process = match map.get("process") {
            Some(Value::Int(p)) => Process::Client(*p),
            Some(other) => match other.as_name() {
                Some(name) => Process::Other(name.to_owned()),
                None => {
                    return Err(bad(format!(
                        "`process` must be an integer or a name, not {}",
                        short(other)
                    )));
                }
            },
            None => return Err(bad("the operation has no `process`".into())),
        };
        let f = match map.get("f") {
            Some(f) => f
                .as_name()
                .ok_or_else(|| bad(format!("`f` must be a name, not {}", short(f))))?
                .to_owned(),
            None => return Err(bad("the operation has no `f`".into())),
        };
        let time = match map.get("time") {
            None | Some(Value::Nil) => None,
            Some(Value::Int(t)) if *t >= 0 => Some(u64::try_from(*t).unwrap_or_default()),
            Some(other) => {
                return Err(bad(format!(
                    "`time` must be a non-negative integer, not {}",
                    short(other)
                )));
            }
        };
        let mut value = map.get("value").cloned().unwrap_or_default();
        let mut key = map.get("key").filter(|k| !k.is_nil()).cloned();
        if independent && key.is_none() && matches!(process, Process::Client(_)) {
            match value {
                Value::List(mut pair) if pair.len() == 2 => {
                    let v = pair.pop().unwrap_or_default();
                    key = pair.pop();
                    value = v;
                }
                // A completion may drop the tuple (a crash has no result); it takes its invocation's key.
                Value::Nil if kind != EventType::Invoke => {}
                other => {
                    return Err(bad(format!(
                        "with --independent every value must be a [key value] tuple, found {}",
                        short(&other)
                    )));
                }
            }
        }
        let error = map.get("error").and_then(Value::as_name).map(str::to_owned);
        Ok(Event {
            kind,
            process,
            f,
            key,
            value,
            time,
            error,
            line,
        })
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It took effect.
    Ok,
    /// It did not take effect.
    Fail,
    /// Unknown: it may take effect at any time after its invocation, or never. An invocation that never completes
    /// is `Info` as well.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Op {
    /// Position of this operation in [`History::ops`].
    pub index: usize,
    /// The client process.
    pub process: i64,
    /// The function (`read`, `write`, ...).
    pub f: String,
    /// The key, in histories split per key.
    pub key: Option<Value>,
    /// The invocation's value (the argument).
    pub value: Value,
    /// The completion's value (the result); `Nil` when the operation never completed.
    pub result: Value,
    /// How it ended.
    pub outcome: Outcome,
    /// Where the invocation falls in the history's real-time order (smaller is earlier; all positions differ).
    pub call: u64,
    /// Where the completion falls in real-time order; `None` for `Info`, which stays open forever.
    pub ret: Option<u64>,
    /// The invocation's line in the file.
    pub invoke_line: usize,
    /// The completion's line in the file, if it completed at all.
    pub complete_line: Option<usize>,
    /// The invocation's recorded time in nanoseconds, if any.
    pub invoke_time: Option<u64>,
    /// The completion's recorded time in nanoseconds, if any.
    pub complete_time: Option<u64>,
}

/// One-line description: `p3 read -> 1 (ok, lines 55-58)`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{} {}", self.process, self.f)?;
        if !self.value.is_nil() {
            write!(f, " {}", self.value)?;
        }
        if self.outcome == Outcome::Ok && !self.result.is_nil() && self.result != self.value {
            write!(f, " -> {}", self.result)?;
        }
        match (self.outcome, self.complete_line) {
            (Outcome::Ok, Some(end)) => write!(f, " (ok, lines {}-{})", self.invoke_line, end),
            (Outcome::Fail, Some(end)) => write!(f, " (fail, lines {}-{})", self.invoke_line, end),
            (_, Some(end)) => write!(f, " (info, lines {}-{}: outcome unknown)", self.invoke_line, end),
            (_, None) => write!(f, " (line {}, never completed)", self.invoke_line),
        }
    }
}

/// The two history formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Ours: one JSON object per line (`.jsonl`).
    JsonLines,
    /// Jepsen's EDN: one map per line or all maps in one vector (`.edn`).
    Edn,
}

impl Format {
    /// The format a file name's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Some(Format::JsonLines),
            Some("edn") => Some(Format::Edn),
            _ => None,
        }
    }
}

/// Options for reading a history.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Values are `[key value]` tuples (Jepsen's `independent` workloads): split them into key and value.
    pub independent: bool,
}

impl ReadOptions {
    /// Sets [`ReadOptions::independent`].
    #[must_use]
    pub fn independent(mut self, yes: bool) -> Self {
        self.independent = yes;
        self
    }
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file's extension names no known format.
    #[error("cannot tell the format of {path}: use a .jsonl (Trestle) or .edn (Jepsen) file")]
    UnknownFormat {
        /// The file.
        path: String,
    },
    /// The text is not valid JSON or EDN.
    #[error("line {line}: {message}")]
    Syntax {
        /// The 1-based line.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The text parses but is not a history (a missing `type`, a completion nobody invoked, ...).
    #[error("line {line}: {message}")]
    Malformed {
        /// The 1-based line.
        line: usize,
        /// What was wrong.
        message: String,
    },
}

/// A history: client operations, each an invocation paired with its completion, plus the other processes' events.
///
/// Reading it checks that it is well formed: every completion follows an invocation by the same process with the
/// same `f`, and no process has two operations open at once. An invocation that never completes is `info`.
/// Real-time order is the order of the recorded times when every client event has one (ties keep file order),
/// else the order of the file.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Op>,
    others: Vec<Event>,
    events: usize,
}

impl History {
    /// Builds a history from events in the order they were recorded.
    pub fn from_events(events: Vec<Event>) -> Result<History, HistoryError> {
        let total = events.len();
        let (client, others): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| matches!(e.process, Process::Client(_)));

        // Real-time positions: by time when all client events have one, else by file order.
        let mut pos: Vec<u64> = (0..client.len() as u64).collect();
        if !client.is_empty() && client.iter().all(|e| e.time.is_some()) {
            let mut order: Vec<usize> = (0..client.len()).collect();
            order.sort_by_key(|&i| (client[i].time, i));
            for (rank, &i) in order.iter().enumerate() {
                pos[i] = rank as u64;
            }
        }

        let mut open: HashMap<i64, usize> = HashMap::new();
        let mut ops: Vec<Op> = Vec::with_capacity(client.len() / 2 + 1);
        let mut op_of_event: HashMap<usize, usize> = HashMap::new();
        for (i, e) in client.iter().enumerate() {
            let Process::Client(p) = e.process else { continue };
            let bad = |message: String| HistoryError::Malformed {
                line: e.line,
                message,
            };
            if e.kind == EventType::Invoke {
                if let Some(&prev) = open.get(&p) {
                    return Err(bad(format!(
                        "process {p} invokes {} while its {} from line {} is still open",
                        e.f, client[prev].f, client[prev].line
                    )));
                }
                open.insert(p, i);
                op_of_event.insert(i, ops.len());
                ops.push(Op {
                    index: 0,
                    process: p,
                    f: e.f.clone(),
                    key: e.key.clone(),
                    value: e.value.clone(),
                    result: Value::Nil,
                    outcome: Outcome::Info,
                    call: pos[i],
                    ret: None,
                    invoke_line: e.line,
                    complete_line: None,
                    invoke_time: e.time,
                    complete_time: None,
                });
                continue;
            }
            let Some(inv) = open.remove(&p) else {
                return Err(bad(format!(
                    "process {p} completes {} ({}) that it never invoked",
                    e.f,
                    e.kind.as_str()
                )));
            };
            let invoke = &client[inv];
            if invoke.f != e.f {
                return Err(bad(format!(
                    "process {p} completes {} but invoked {} at line {}",
                    e.f, invoke.f, invoke.line
                )));
            }
            if e.key.is_some() && e.key != invoke.key {
                return Err(bad(format!(
                    "process {p} completes with a key other than the one it invoked"
                )));
            }
            if let (Some(t0), Some(t1)) = (invoke.time, e.time)
                && t1 < t0
            {
                return Err(bad(format!(
                    "process {p} completes at {t1} ns, before its invocation at {t0} ns (line {})",
                    invoke.line
                )));
            }
            let Some(op) = op_of_event.get(&inv).and_then(|&k| ops.get_mut(k)) else {
                continue;
            };
            op.result = e.value.clone();
            op.complete_line = Some(e.line);
            op.complete_time = e.time;
            match e.kind {
                EventType::Ok => {
                    op.outcome = Outcome::Ok;
                    op.ret = Some(pos[i]);
                }
                EventType::Fail => {
                    op.outcome = Outcome::Fail;
                    op.ret = Some(pos[i]);
                }
                // Info stays open forever; the process id is retired (a later invocation by it is allowed, as
                // Jepsen reuses nothing, but it is a new operation).
                EventType::Info | EventType::Invoke => op.outcome = Outcome::Info,
            }
        }
        ops.sort_by_key(|op| op.call);
        for (i, op) in ops.iter_mut().enumerate() {
            op.index = i;
        }
        Ok(History {
            ops,
            others,
            events: total,
        })
    }

    /// Reads our JSON-lines format: one object per line with `type`, `process`, `f`, and optional `value`,
    /// `key` and `time` (monotonic nanoseconds). Blank lines are skipped.
    pub fn parse_jsonl(text: &str, opts: &ReadOptions) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            if line.trim().is_empty() {
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(line).map_err(|e| HistoryError::Syntax {
                line: line_no,
                message: format!("not JSON: {e}"),
            })?;
            events.push(Event::from_map(
                line_no,
                &Value::from_json(&json),
                opts.independent,
            )?);
        }
        History::from_events(events)
    }

    /// Reads Jepsen's EDN history format: maps with `:type`, `:f`, `:value`, `:process` and optional `:time`,
    /// `:index` and other keys, one map per line or all in one vector.
    pub fn parse_edn(text: &str, opts: &ReadOptions) -> Result<History, HistoryError> {
        let forms = edn::read_history_forms(text).map_err(|e| HistoryError::Syntax {
            line: e.line,
            message: e.message,
        })?;
        let events = forms
            .iter()
            .map(|(line, form)| Event::from_map(*line, form, opts.independent))
            .collect::<Result<Vec<_>, _>>()?;
        History::from_events(events)
    }

    /// Reads a history file, choosing the format by extension (`.jsonl` or `.edn`).
    pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<History, HistoryError> {
        let shown = path.display().to_string();
        let format =
            Format::from_path(path).ok_or_else(|| HistoryError::UnknownFormat { path: shown.clone() })?;
        let text =
            std::fs::read_to_string(path).map_err(|source| HistoryError::Io { path: shown, source })?;
        match format {
            Format::JsonLines => History::parse_jsonl(&text, opts),
            Format::Edn => History::parse_edn(&text, opts),
        }
    }

    /// The client operations, in order of invocation.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Events of processes other than clients (the nemesis), in file order.
    pub fn others(&self) -> &[Event] {
        &self.others
    }

    /// How many events were read.
    pub fn event_count(&self) -> usize {
        self.events
    }

    /// The operations grouped by key, keys in order (`None`, the unkeyed operations, first).
    pub fn by_key(&self) -> BTreeMap<Option<&Value>, Vec<&Op>> {
        let mut groups: BTreeMap<Option<&Value>, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            groups.entry(op.key.as_ref()).or_default().push(op);
        }
        groups
    }
}

/// `key K: ` for a keyed group, nothing for an unkeyed history.
pub(crate) fn key_label(key: Option<&Value>) -> String {
    key.map_or_else(String::new, |k| format!("key {}: ", short(k)))
}

/// A value shortened for error messages.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edn(text: &str) -> Result<History, HistoryError> {
        History::parse_edn(text, &ReadOptions::default())
    }

    #[test]
    fn pairs_invocations_with_completions() {
        let h = edn("{:process 0 :type :invoke :f :write :value 1}\n\
             {:process 1 :type :invoke :f :read :value nil}\n\
             {:process 0 :type :ok :f :write :value 1}\n\
             {:process :nemesis :type :info :f :start :value nil}\n\
             {:process 1 :type :info :f :read :value nil}\n\
             {:process 2 :type :invoke :f :read :value nil}")
        .unwrap();
        assert_eq!(h.ops().len(), 3);
        assert_eq!(h.others().len(), 1);
        assert_eq!(h.event_count(), 6);
        let [w, r, open] = h.ops() else {
            panic!("three ops")
        };
        assert_eq!((w.outcome, w.call, w.ret), (Outcome::Ok, 0, Some(2)));
        assert_eq!(
            (r.outcome, r.ret, r.complete_line),
            (Outcome::Info, None, Some(5))
        );
        assert_eq!(
            (open.outcome, open.ret, open.complete_line),
            (Outcome::Info, None, None)
        );
        assert_eq!(w.to_string(), "p0 write 1 (ok, lines 1-3)");
    }

    #[test]
    fn times_order_events_when_all_have_one() {
        let text = r#"{"type":"invoke","process":0,"f":"write","value":1,"time":100}
{"type":"invoke","process":1,"f":"read","value":null,"time":50}
{"type":"ok","process":1,"f":"read","value":null,"time":60}
{"type":"ok","process":0,"f":"write","value":1,"time":200}"#;
        let h = History::parse_jsonl(text, &ReadOptions::default()).unwrap();
        let read = h.ops().iter().find(|o| o.f == "read").unwrap();
        let write = h.ops().iter().find(|o| o.f == "write").unwrap();
        assert!(
            read.ret.unwrap() < write.call,
            "the read completed before the write began"
        );
        assert_eq!(h.ops()[0].f, "read", "ops are ordered by invocation");
    }

    #[test]
    fn independent_splits_tuples() {
        let h = History::parse_edn(
            "[{:process 0 :type :invoke :f :read :value [:x nil]} {:process 0 :type :ok :f :read :value [:x 3]}\n\
              {:process 1 :type :invoke :f :write :value [:y 4]} {:process 1 :type :info :f :write :value nil}]",
            &ReadOptions::default().independent(true),
        )
        .unwrap();
        let groups = h.by_key();
        assert_eq!(groups.len(), 2);
        let (kx, ky) = (Value::Keyword("x".into()), Value::Keyword("y".into()));
        let x = &groups[&Some(&kx)];
        assert_eq!(x[0].result, Value::Int(3));
        let y = &groups[&Some(&ky)];
        assert_eq!((y[0].value.clone(), y[0].outcome), (Value::Int(4), Outcome::Info));
    }

    #[test]
    fn malformed_histories_are_errors_with_lines() {
        let cases = [
            ("{:process 0 :type :ok :f :read :value 1}", 1, "never invoked"),
            (
                "{:process 0 :type :invoke :f :read}\n{:process 0 :type :invoke :f :read}",
                2,
                "still open",
            ),
            (
                "{:process 0 :type :invoke :f :read}\n{:process 0 :type :ok :f :write}",
                2,
                "invoked read",
            ),
            ("{:process 0 :type :begin :f :read}", 1, "type"),
            ("{:type :invoke :f :read}", 1, "process"),
            ("{:process 0 :type :invoke}", 1, "`f`"),
            ("[1 2]", 1, "expected a map"),
            ("{:process 0 :type :invoke :f :read :time -4}", 1, "time"),
        ];
        for (text, line, needle) in cases {
            match edn(text) {
                Err(HistoryError::Malformed { line: l, message }) => {
                    assert_eq!(l, line, "{text}");
                    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                }
                other => panic!("{text}: expected a malformed-history error, got {other:?}"),
            }
        }
        assert!(matches!(
            History::parse_jsonl("{\"type\":", &ReadOptions::default()),
            Err(HistoryError::Syntax { line: 1, .. })
        ));
        assert!(matches!(edn("{:a"), Err(HistoryError::Syntax { .. })));
    }

    #[test]
    fn written_events_read_back() {
        let events = [
            Event::new(
                EventType::Invoke,
                Process::Client(0),
                "cas",
                Value::List(vec![Value::Nil, Value::Int(1)]),
            )
            .with_key("k")
            .with_time(5),
            Event::new(
                EventType::Ok,
                Process::Client(0),
                "cas",
                Value::List(vec![Value::Nil, Value::Int(1)]),
            )
            .with_key("k")
            .with_time(9),
        ];
        let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
        let h = History::parse_jsonl(&text, &ReadOptions::default()).unwrap();
        assert_eq!(h.ops()[0].key, Some(Value::from("k")));
        assert_eq!(
            (h.ops()[0].invoke_time, h.ops()[0].complete_time),
            (Some(5), Some(9))
        );
    }
}

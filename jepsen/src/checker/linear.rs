//! Linearizability of registers and CAS registers, in the Wing–Gong / Lowe / Porcupine family.
//!
//! The history is split per key (a register per key is P-compositional: the whole is linearizable exactly when
//! each key is). For each key, a depth-first search walks the invocations and completions in real-time order and
//! tries to place ("linearize") each pending operation at the current point; reaching a completion of an operation
//! not yet placed means backtracking. A cache of (set of placed operations, model state) pairs already explored
//! prunes repeated work (Lowe's improvement). The cache knows a placed set by a 128-bit hash updated in constant
//! time, so a step costs the same in a 100-op key and a 100,000-op key; since a hash collision could only hide a
//! state, a "not linearizable" answer is confirmed by a second search whose cache holds the exact bitsets, as
//! Porcupine's does.
//!
//! Failed operations are dropped (they had no effect) and so are reads whose outcome is unknown (a read has no
//! effect). A write or CAS whose outcome is unknown (`info`) may take effect at any point after its invocation, or
//! never, so the search succeeds once every acknowledged operation is placed; one whose value nothing could observe
//! is dropped up front. A time limit and a bound on explored states turn a search that would take too long into
//! [`Verdict::Unknown`] instead of a hang.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::checker::verdict::Verdict;
use crate::history::value::Value;
use crate::history::{History, Op, Outcome, key_label, short};

/// Which register model to check against. Both start out holding `nil`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterModel {
    /// Reads and writes.
    Register,
    /// Reads, writes and compare-and-set (`cas` with value `[old new]`).
    CasRegister,
}

impl RegisterModel {
    fn name(self) -> &'static str {
        match self {
            RegisterModel::Register => "register",
            RegisterModel::CasRegister => "cas-register",
        }
    }
}

/// Bounds on a linearizability search.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Wall-clock time for the whole history; past it, unchecked keys are unknown.
    pub time_limit: Duration,
    /// Most (placed-set, state) pairs remembered for one key; past it, that key is unknown. The search's memo
    /// costs about 17 bytes a pair, the exact re-check before a "not linearizable" answer about `ops / 8 + 40`;
    /// either is also capped at 1 GiB per key.
    pub max_states: usize,
}

impl Default for Limits {
    /// 60 s and 10 million states.
    fn default() -> Self {
        Limits {
            time_limit: Duration::from_secs(60),
            max_states: 10_000_000,
        }
    }
}

impl Limits {
    /// Sets [`Limits::time_limit`].
    #[must_use]
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Sets [`Limits::max_states`].
    #[must_use]
    pub fn max_states(mut self, max: usize) -> Self {
        self.max_states = max;
        self
    }
}

/// An operation the model does not know, or with a value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ModelError {
    /// The invocation's line.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// Where the search for one key failed, and why.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Violation {
    /// The key (`None` for an unkeyed history).
    pub key: Option<Value>,
    /// How many of the key's operations were in the longest linearizable prefix the search found.
    pub linearized: usize,
    /// How many operations the key has that the search considers (failed ops and unknown reads are left out).
    pub total: usize,
    /// The register's value after that prefix.
    pub state: Value,
    /// The last operations of that prefix, in linearization order (up to five).
    pub last: Vec<Op>,
    /// The acknowledged operation whose completion the search could not get past.
    pub stuck: Option<Op>,
    /// The operations that could have gone next at that point, each with what the model said about it.
    pub candidates: Vec<(Op, String)>,
    /// How many more candidates there were than are listed.
    pub more_candidates: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => writeln!(f, "key {}: not linearizable", short(k))?,
            None => writeln!(f, "not linearizable")?,
        }
        writeln!(
            f,
            "  longest linearizable prefix: {} of {} ops, after which the register holds {}",
            self.linearized,
            self.total,
            short(&self.state)
        )?;
        if !self.last.is_empty() {
            writeln!(f, "  its last ops, in linearization order:")?;
            for op in &self.last {
                writeln!(f, "    {op}")?;
            }
        }
        if let Some(stuck) = &self.stuck {
            writeln!(f, "  cannot get past the completion of: {stuck}")?;
        }
        writeln!(f, "  ops that could go next from there, and what the model says:")?;
        for (op, why) in &self.candidates {
            writeln!(f, "    {op}: {why}")?;
        }
        if self.more_candidates > 0 {
            writeln!(f, "    ... and {} more", self.more_candidates)?;
        }
        Ok(())
    }
}

/// The result of a linearizability check.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinearReport {
    /// Valid when every key is linearizable, invalid when one is not, unknown when a bound was reached first.
    pub verdict: Verdict,
    /// The model checked against.
    pub model: RegisterModel,
    /// How many keys the history has.
    pub keys: usize,
    /// How many keys were decided (valid or invalid).
    pub keys_decided: usize,
    /// Keys that are not linearizable, with an explanation each.
    pub violations: Vec<Violation>,
    /// Keys left undecided, with the reason.
    pub unknown: Vec<(Option<Value>, String)>,
    /// Search steps taken in all.
    pub steps: u64,
    /// Time spent.
    pub elapsed: Duration,
}

impl fmt::Display for LinearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "linearizability ({}): {} - {} keys, {} decided, {} not linearizable, {} unknown ({:.2} s, {} steps)",
            self.model.name(),
            self.verdict,
            self.keys,
            self.keys_decided,
            self.violations.len(),
            self.unknown.len(),
            self.elapsed.as_secs_f64(),
            self.steps
        )?;
        for v in self.violations.iter().take(3) {
            write!(f, "{v}")?;
        }
        if self.violations.len() > 3 {
            writeln!(
                f,
                "  ... and {} more keys not linearizable",
                self.violations.len() - 3
            )?;
        }
        for (k, why) in self.unknown.iter().take(3) {
            writeln!(f, "  {}unknown - {why}", key_label(k.as_ref()))?;
        }
        if self.unknown.len() > 3 {
            writeln!(f, "  ... and {} more unknown keys", self.unknown.len() - 3)?;
        }
        Ok(())
    }
}

/// Checks that every key's operations are linearizable with respect to `model`.
///
/// Operations must be `read` (the result is the value read), `write` (the value written) or, for
/// [`RegisterModel::CasRegister`], `cas` with value `[old new]`; anything else is a [`ModelError`].
///
/// ```
/// use trestle_jepsen::{History, Limits, ReadOptions, RegisterModel, Verdict, check_linearizable};
///
/// let h = History::parse_edn(
///     "{:process 0 :type :invoke :f :write :value 1}
///      {:process 1 :type :invoke :f :read :value nil}
///      {:process 0 :type :ok :f :write :value 1}
///      {:process 1 :type :ok :f :read :value 1}
///      {:process 1 :type :invoke :f :read :value nil}
///      {:process 1 :type :ok :f :read :value nil}",
///     &ReadOptions::default(),
/// )?;
/// // The second read saw the initial nil after the write of 1 had completed: a stale read.
/// let report = check_linearizable(&h, RegisterModel::Register, &Limits::default())?;
/// assert_eq!(report.verdict, Verdict::Invalid);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_linearizable(
    history: &History,
    model: RegisterModel,
    limits: &Limits,
) -> Result<LinearReport, ModelError> {
    let start = Instant::now();
    // A huge limit means "no limit"; adding it must not overflow.
    let deadline = start
        .checked_add(limits.time_limit)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(start);
    let groups = history.by_key();
    // Convert every key first, so a history the model cannot read fails before any search.
    let mut prepared = Vec::with_capacity(groups.len());
    for (key, ops) in &groups {
        prepared.push((key.cloned(), prepare(ops, model)?));
    }
    let mut report = LinearReport {
        verdict: Verdict::Valid,
        model,
        keys: groups.len(),
        keys_decided: 0,
        violations: Vec::new(),
        unknown: Vec::new(),
        steps: 0,
        elapsed: Duration::ZERO,
    };
    for (key, p) in prepared {
        if Instant::now() >= deadline {
            report.unknown.push((
                key,
                format!("time limit of {:?} reached before this key", limits.time_limit),
            ));
            continue;
        }
        match search(&p.ops, deadline, limits.max_states, &mut report.steps) {
            SearchResult::Linearizable => report.keys_decided += 1,
            SearchResult::Unknown(why) => report.unknown.push((key, why)),
            SearchResult::NotLinearizable { best, state } => {
                report.keys_decided += 1;
                report
                    .violations
                    .push(explain(key, &p, &best, state, history.ops()));
            }
        }
    }
    report.verdict = if !report.violations.is_empty() {
        Verdict::Invalid
    } else if !report.unknown.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    report.elapsed = start.elapsed();
    Ok(report)
}

/// A register operation over interned values.
#[derive(Clone, Copy, Debug)]
enum RegOp {
    Read(u32),
    Write(u32),
    /// An acknowledged CAS: it must find `old`.
    Cas(u32, u32),
    /// A CAS of unknown outcome: it sets `new` if it finds `old`, and otherwise fails without effect.
    CasMaybe(u32, u32),
}

fn step(state: u32, op: RegOp) -> Option<u32> {
    match op {
        RegOp::Read(v) => (v == state).then_some(state),
        RegOp::Write(v) => Some(v),
        RegOp::Cas(old, new) => (old == state).then_some(new),
        RegOp::CasMaybe(old, new) => Some(if old == state { new } else { state }),
    }
}

struct SearchOp {
    op: RegOp,
    /// Acknowledged (ok): must be linearized. Otherwise (info) it may be.
    definite: bool,
    call: u64,
    /// `u64::MAX` for an operation that never completed or completed with info.
    ret: u64,
    /// Index into the history's ops.
    hist: usize,
}

struct Prepared {
    ops: Vec<SearchOp>,
    values: Vec<Value>,
}

/// Interned id of `nil`, the initial value.
const NIL: u32 = 0;

fn prepare(ops: &[&Op], model: RegisterModel) -> Result<Prepared, ModelError> {
    let mut values = vec![Value::Nil];
    let mut ids: HashMap<Value, u32> = HashMap::from([(Value::Nil, NIL)]);
    let mut intern = |v: &Value| -> u32 {
        if let Some(&id) = ids.get(v) {
            return id;
        }
        let id = u32::try_from(values.len()).unwrap_or(u32::MAX);
        values.push(v.clone());
        ids.insert(v.clone(), id);
        id
    };
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let bad = |message: String| ModelError {
            line: op.invoke_line,
            message,
        };
        let reg = match op.f.as_str() {
            "read" => match op.outcome {
                Outcome::Ok => RegOp::Read(intern(&op.result)),
                // A read has no effect: when it failed or its result is unknown it constrains nothing.
                Outcome::Fail | Outcome::Info => continue,
            },
            "write" => RegOp::Write(intern(&op.value)),
            "cas" if model == RegisterModel::CasRegister => {
                let (old, new) = match op.value.as_seq() {
                    Some([old, new]) => (intern(old), intern(new)),
                    _ => {
                        return Err(bad(format!(
                            "cas needs a value [old new], not {}",
                            short(&op.value)
                        )));
                    }
                };
                if op.outcome == Outcome::Ok {
                    RegOp::Cas(old, new)
                } else {
                    RegOp::CasMaybe(old, new)
                }
            }
            "cas" => {
                return Err(bad(
                    "the register model has no cas; use --model cas-register".into()
                ));
            }
            other => {
                return Err(bad(format!(
                    "the {} model knows read, write{}, not {other}",
                    model.name(),
                    if model == RegisterModel::CasRegister {
                        " and cas"
                    } else {
                        ""
                    }
                )));
            }
        };
        if op.outcome == Outcome::Fail {
            continue; // no effect
        }
        out.push(SearchOp {
            op: reg,
            definite: op.outcome == Outcome::Ok,
            call: op.call,
            ret: op.ret.unwrap_or(u64::MAX),
            hist: op.index,
        });
    }
    // A write or CAS of unknown outcome whose value no operation could observe (no read returns it, no CAS
    // expects it) can be left out: in any linearization that places it, removing it changes the state only over a
    // stretch where no read or CAS could succeed on it, and writes there do not care. Dropping such ops keeps them
    // from being retried at every step of the search.
    let mut observed = vec![false; values.len()];
    for op in &out {
        match op.op {
            RegOp::Read(v) | RegOp::Cas(v, _) | RegOp::CasMaybe(v, _) => {
                if let Some(o) = observed.get_mut(v as usize) {
                    *o = true;
                }
            }
            RegOp::Write(_) => {}
        }
    }
    let seen = |v: u32| observed.get(v as usize).copied().unwrap_or(true);
    out.retain(|op| match op.op {
        RegOp::Write(v) | RegOp::CasMaybe(_, v) if !op.definite => seen(v),
        _ => true,
    });
    Ok(Prepared { ops: out, values })
}

enum SearchResult {
    Linearizable,
    NotLinearizable { best: Vec<usize>, state: u32 },
    Unknown(String),
}

/// FxHash-style hasher: cache keys are already well mixed, so a fast multiplicative mix is plenty.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

/// The search's memory of (placed set, model state) pairs already explored.
trait Memo {
    fn new(n: usize) -> Self;
    /// Flips op `j` in the placed set.
    fn toggle(&mut self, j: usize);
    /// Records the current placed set with `state`; false if it was already there.
    fn insert(&mut self, state: u32) -> bool;
    fn len(&self) -> usize;
    /// Bytes one entry costs, roughly.
    fn entry_bytes(n: usize) -> usize;
}

/// SplitMix64's finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix128(x: u64, salt: u64) -> u128 {
    let a = mix64(x.wrapping_add(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d);
    let b = mix64(
        x.wrapping_add(salt ^ 0x5851_f42d_4c95_7f2d)
            .wrapping_mul(0xd6e8_feb8_6659_fd93)
            ^ 0x1b87_3593,
    );
    (u128::from(a) << 64) | u128::from(b)
}

/// Fast memo: the placed set is known by a 128-bit Zobrist hash updated in O(1) per step, so an entry is 16 bytes
/// whatever the history's length. Two different pairs share a hash with probability about 2^-128 per pair; a
/// collision could only hide a state, never invent a linearization, so a "linearizable" answer from this memo is
/// exact and a "not linearizable" one is re-checked with [`ExactMemo`].
struct HashMemo {
    zobrist: Vec<u128>,
    hash: u128,
    seen: FxSet<u128>,
}

impl Memo for HashMemo {
    fn new(n: usize) -> Self {
        HashMemo {
            zobrist: (0..n as u64).map(|j| mix128(j, 0x6a09_e667)).collect(),
            hash: 0,
            seen: FxSet::default(),
        }
    }

    fn toggle(&mut self, j: usize) {
        self.hash ^= self.zobrist.get(j).copied().unwrap_or_default();
    }

    fn insert(&mut self, state: u32) -> bool {
        self.seen
            .insert(self.hash ^ mix128(u64::from(state), 0xbb67_ae85))
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    fn entry_bytes(_n: usize) -> usize {
        17
    }
}

/// Exact memo, as in Porcupine: the whole placed set as a bitset, with the state in one extra word.
struct ExactMemo {
    words: usize,
    key: Vec<u64>,
    seen: FxSet<Box<[u64]>>,
}

impl Memo for ExactMemo {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        ExactMemo {
            words,
            key: vec![0; words + 1],
            seen: FxSet::default(),
        }
    }

    fn toggle(&mut self, j: usize) {
        if let Some(w) = self.key.get_mut(j / 64) {
            *w ^= 1u64 << (j % 64);
        }
    }

    fn insert(&mut self, state: u32) -> bool {
        if let Some(last) = self.key.get_mut(self.words) {
            *last = u64::from(state);
        }
        if self.seen.contains(self.key.as_slice()) {
            return false;
        }
        self.seen.insert(self.key.clone().into_boxed_slice())
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    fn entry_bytes(n: usize) -> usize {
        (n.div_ceil(64) + 1) * 8 + 33
    }
}

/// Memory one key's memo may use before the search gives up with "unknown".
const MEMO_BYTES: usize = 1 << 30;

/// The search over one key: the fast memo first, and an exact re-check before answering "not linearizable".
fn search(ops: &[SearchOp], deadline: Instant, max_states: usize, steps: &mut u64) -> SearchResult {
    match search_with::<HashMemo>(ops, deadline, max_states, steps) {
        SearchResult::NotLinearizable { .. } => search_with::<ExactMemo>(ops, deadline, max_states, steps),
        other => other,
    }
}

/// Entries `2j` and `2j + 1` are op `j`'s call and return; entry `2n` is the head of a circular doubly linked
/// list of the entries not yet lifted out, in real-time order.
///
/// (Trying the ops of unknown outcome only after the acknowledged ones, from a second list, looks attractive: it
/// avoids retrying every open crashed op at every step. It was measured and is much worse when a crashed op did
/// take effect early, because the acknowledged ops placed before it must all be backtracked over. [`prepare`]
/// drops the crashed writes nobody could have observed instead.)
fn search_with<M: Memo>(
    ops: &[SearchOp],
    deadline: Instant,
    max_states: usize,
    steps: &mut u64,
) -> SearchResult {
    let n = ops.len();
    let head = 2 * n;
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (j, op) in ops.iter().enumerate() {
        order.push((op.call, false, 2 * j));
        order.push((op.ret, true, 2 * j + 1));
    }
    order.sort_unstable();
    let mut next = vec![head; 2 * n + 1];
    let mut prev = vec![head; 2 * n + 1];
    let mut last = head;
    for &(_, _, e) in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    next[last] = head;
    prev[head] = last;

    let max_states = max_states.min(MEMO_BYTES / M::entry_bytes(n).max(1));
    let mut memo = M::new(n);
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = NIL;
    let mut remaining = ops.iter().filter(|o| o.definite).count();
    let mut entry = next[head];
    let mut best_depth = 0;
    let mut best: Option<(Vec<usize>, u32)> = None;
    let mut best_saved = false;

    loop {
        if remaining == 0 {
            return SearchResult::Linearizable;
        }
        *steps += 1;
        if (*steps).is_multiple_of(4096) && Instant::now() >= deadline {
            return SearchResult::Unknown(format!("time limit reached after {} placed ops", stack.len()));
        }
        if entry == head || entry % 2 == 1 {
            // The completion of an operation not yet placed: nothing placed so far can be extended. Backtrack.
            if !best_saved && stack.len() == best_depth {
                best = Some((stack.iter().map(|&(j, _)| j).collect(), state));
                best_saved = true;
            }
            let Some((j, prev_state)) = stack.pop() else {
                let (best, state) = best.unwrap_or_default();
                return SearchResult::NotLinearizable { best, state };
            };
            state = prev_state;
            memo.toggle(j);
            // Put the return back, then the call (the reverse of lifting).
            for e in [2 * j + 1, 2 * j] {
                next[prev[e]] = e;
                prev[next[e]] = e;
            }
            if ops[j].definite {
                remaining += 1;
            }
            entry = next[2 * j];
            continue;
        }
        let j = entry / 2;
        if let Some(new_state) = step(state, ops[j].op) {
            memo.toggle(j);
            if memo.len() >= max_states {
                return SearchResult::Unknown(format!(
                    "explored {max_states} states without an answer (raise the state bound or time limit)"
                ));
            }
            if memo.insert(new_state) {
                stack.push((j, state));
                state = new_state;
                for e in [2 * j, 2 * j + 1] {
                    next[prev[e]] = next[e];
                    prev[next[e]] = prev[e];
                }
                if ops[j].definite {
                    remaining -= 1;
                }
                if stack.len() > best_depth {
                    best_depth = stack.len();
                    best_saved = false;
                }
                entry = next[head];
                continue;
            }
            memo.toggle(j);
        }
        entry = next[entry];
    }
}

/// Turns the deepest point the search reached into an explanation.
fn explain(key: Option<Value>, p: &Prepared, best: &[usize], state: u32, all: &[Op]) -> Violation {
    let value = |id: u32| p.values.get(id as usize).cloned().unwrap_or_default();
    let hist_op = |j: usize| -> Option<Op> { all.get(p.ops.get(j)?.hist).cloned() };
    let mut placed = vec![false; p.ops.len()];
    for &j in best {
        placed[j] = true;
    }
    let stuck = (0..p.ops.len())
        .filter(|&j| !placed[j] && p.ops[j].definite)
        .min_by_key(|&j| p.ops[j].ret);
    let horizon = stuck.map_or(u64::MAX, |j| p.ops[j].ret);
    let mut candidates: Vec<usize> = (0..p.ops.len())
        .filter(|&j| !placed[j] && p.ops[j].call < horizon)
        .collect();
    candidates.sort_by_key(|&j| p.ops[j].call);
    const SHOWN: usize = 8;
    let more_candidates = candidates.len().saturating_sub(SHOWN);
    let held = short(&value(state));
    let candidates = candidates
        .into_iter()
        .take(SHOWN)
        .filter_map(|j| {
            let why = match (p.ops[j].op, step(state, p.ops[j].op)) {
                (_, Some(_)) => "possible here, but every order that places it here fails later".to_owned(),
                (RegOp::Read(v), None) => {
                    format!("reads {}, but the register holds {held}", short(&value(v)))
                }
                (RegOp::Cas(old, _), None) => {
                    format!("expects {}, but the register holds {held}", short(&value(old)))
                }
                (_, None) => "not possible here".to_owned(),
            };
            hist_op(j).map(|op| (op, why))
        })
        .collect();
    Violation {
        key,
        linearized: best.len(),
        total: p.ops.len(),
        state: value(state),
        last: best
            .iter()
            .rev()
            .take(5)
            .rev()
            .filter_map(|&j| hist_op(j))
            .collect(),
        stuck: stuck.and_then(hist_op),
        candidates,
        more_candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadOptions;

    fn check(model: RegisterModel, edn: &str) -> LinearReport {
        let h = History::parse_edn(edn, &ReadOptions::default()).unwrap();
        check_linearizable(&h, model, &Limits::default()).unwrap()
    }

    #[test]
    fn empty_history_is_valid() {
        let r = check(RegisterModel::Register, "[]");
        assert_eq!((r.verdict, r.keys), (Verdict::Valid, 0));
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        let text = "{:process 0 :type :invoke :f :write :value 1}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value nil}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value 1}
                    {:process 0 :type :ok :f :write :value 1}";
        assert_eq!(check(RegisterModel::Register, text).verdict, Verdict::Valid);
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        let text = "{:process 0 :type :invoke :f :write :value 1}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value 1}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value nil}
                    {:process 0 :type :ok :f :write :value 1}";
        let r = check(RegisterModel::Register, text);
        assert_eq!(r.verdict, Verdict::Invalid);
        let v = &r.violations[0];
        assert_eq!(v.stuck.as_ref().map(|o| o.invoke_line), Some(4));
        let text = v.to_string();
        assert!(text.contains("reads nil, but the register holds 1"), "{text}");
    }

    #[test]
    fn info_write_may_land_late_or_never() {
        let late = "{:process 0 :type :invoke :f :write :value 1}
                    {:process 0 :type :info :f :write :value 1}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value nil}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value 1}";
        assert_eq!(check(RegisterModel::Register, late).verdict, Verdict::Valid);
        // But once seen, it cannot be unseen.
        let flicker = format!(
            "{late}\n{{:process 1 :type :invoke :f :read :value nil}}\n{{:process 1 :type :ok :f :read :value nil}}"
        );
        assert_eq!(check(RegisterModel::Register, &flicker).verdict, Verdict::Invalid);
    }

    #[test]
    fn failed_ops_have_no_effect() {
        let text = "{:process 0 :type :invoke :f :write :value 1}
                    {:process 0 :type :fail :f :write :value 1}
                    {:process 1 :type :invoke :f :read :value nil}
                    {:process 1 :type :ok :f :read :value 1}";
        assert_eq!(check(RegisterModel::Register, text).verdict, Verdict::Invalid);
    }

    #[test]
    fn cas_register_semantics() {
        let ok = "{:process 0 :type :invoke :f :cas :value [nil 2]}
                  {:process 0 :type :ok :f :cas :value [nil 2]}
                  {:process 1 :type :invoke :f :cas :value [1 3]}
                  {:process 1 :type :fail :f :cas :value [1 3]}
                  {:process 1 :type :invoke :f :cas :value [2 3]}
                  {:process 1 :type :info :f :cas :value [2 3]}
                  {:process 2 :type :invoke :f :read :value nil}
                  {:process 2 :type :ok :f :read :value 2}
                  {:process 2 :type :invoke :f :read :value nil}
                  {:process 2 :type :ok :f :read :value 3}";
        assert_eq!(check(RegisterModel::CasRegister, ok).verdict, Verdict::Valid);
        let bad = "{:process 0 :type :invoke :f :cas :value [1 2]}
                   {:process 0 :type :ok :f :cas :value [1 2]}";
        let r = check(RegisterModel::CasRegister, bad);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(
            r.to_string().contains("expects 1, but the register holds nil"),
            "{r}"
        );
    }

    #[test]
    fn model_errors_name_the_line() {
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :cas :value [1 2]}",
            &ReadOptions::default(),
        )
        .unwrap();
        let e = check_linearizable(&h, RegisterModel::Register, &Limits::default()).unwrap_err();
        assert_eq!(e.line, 1);
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :cas :value 3}",
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_linearizable(&h, RegisterModel::CasRegister, &Limits::default()).is_err());
        let h = History::parse_edn(
            "{:process 0 :type :invoke :f :incr :value 3}",
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(check_linearizable(&h, RegisterModel::CasRegister, &Limits::default()).is_err());
    }

    #[test]
    fn unobservable_crashed_writes_are_dropped() {
        // 200 crashed writes whose values nobody reads: without dropping them the search would retry each at
        // every step; with them dropped this is immediate.
        let mut text = String::new();
        for p in 0..200 {
            text.push_str(&format!(
                "{{:process {p} :type :invoke :f :write :value {}}}\n",
                p + 1000
            ));
        }
        for v in 0..200 {
            text.push_str(&format!(
                "{{:process 999 :type :invoke :f :write :value {v}}}\n{{:process 999 :type :ok :f :write :value {v}}}\n\
                 {{:process 999 :type :invoke :f :read :value nil}}\n{{:process 999 :type :ok :f :read :value {v}}}\n"
            ));
        }
        let h = History::parse_edn(&text, &ReadOptions::default()).unwrap();
        let r = check_linearizable(&h, RegisterModel::Register, &Limits::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
        assert!(r.steps < 2_000, "{} steps", r.steps);
        // One of them read: now it is kept, and the read is explained by it.
        let text = text.replace(":ok :f :read :value 150}", ":ok :f :read :value 1150}");
        let h = History::parse_edn(&text, &ReadOptions::default()).unwrap();
        let r = check_linearizable(&h, RegisterModel::Register, &Limits::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Valid, "{r}");
    }

    #[test]
    fn bounds_give_unknown() {
        // Many concurrent crashed writes of values that reads do see, then a read of a value nobody wrote: the
        // search must try every subset of the writes before it can say no.
        let mut text = String::new();
        for p in 0..40 {
            text.push_str(&format!(
                "{{:process {p} :type :invoke :f :write :value {}}}\n",
                p % 2
            ));
        }
        for v in [0, 1, 999] {
            text.push_str(&format!(
                "{{:process 100 :type :invoke :f :read :value nil}}\n{{:process 100 :type :ok :f :read :value {v}}}\n"
            ));
        }
        let h = History::parse_edn(&text, &ReadOptions::default()).unwrap();
        let r = check_linearizable(&h, RegisterModel::Register, &Limits::default().max_states(1000)).unwrap();
        assert_eq!(r.verdict, Verdict::Unknown, "{r}");
        let r = check_linearizable(
            &h,
            RegisterModel::Register,
            &Limits::default().time_limit(Duration::ZERO),
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Unknown, "{r}");
    }
}

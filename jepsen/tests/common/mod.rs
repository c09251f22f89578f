//! Seeded history generators shared by the integration tests.
//!
//! Every generated history comes from a sequential model driven by random concurrency, so it is linearizable by
//! construction: each operation takes effect atomically at one random moment between its invocation and its
//! completion. The seed is printed; `TRESTLE_JEPSEN_SEED=<n>` replays one.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use trestle_jepsen::{Event, EventType, History, Outcome, Process, ReadOptions, Value};

/// SplitMix64: small, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) < p * ((1u64 << 53) as f64)
    }
}

/// The seeds a randomized test runs: the one in `TRESTLE_JEPSEN_SEED` alone, else a few fixed ones and one fresh.
pub fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("TRESTLE_JEPSEN_SEED") {
        let seed = s.trim().parse().expect("TRESTLE_JEPSEN_SEED must be an integer");
        return vec![seed];
    }
    let fresh = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42);
    vec![1, 2, 3, fresh]
}

/// Prints the seed so a failure can be replayed.
pub fn announce(test: &str, seed: u64) {
    eprintln!("{test}: seed {seed} (replay with TRESTLE_JEPSEN_SEED={seed})");
}

/// Shape of a generated register history.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Operations to invoke in all.
    pub ops: usize,
    /// Keys (one register each).
    pub keys: u64,
    /// Concurrent client processes.
    pub processes: u64,
    /// Whether to issue cas operations.
    pub cas: bool,
    /// Chance that an operation crashes (`info`); the process is then retired.
    pub info: f64,
    /// Chance that a write fails outright without effect.
    pub fail: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            ops: 2_000,
            keys: 10,
            processes: 8,
            cas: true,
            info: 0.02,
            fail: 0.02,
        }
    }
}

enum Slot {
    Idle,
    /// Invoked, not yet taken effect.
    Invoked {
        key: u64,
        f: &'static str,
        value: Value,
    },
    /// Took effect; waiting to report its result.
    Applied {
        key: u64,
        f: &'static str,
        value: Value,
        result: Value,
        ok: bool,
    },
}

/// Generates a linearizable register (or cas-register) history as JSON lines, with times and keys.
pub fn register_history(seed: u64, shape: &Shape) -> String {
    let mut rng = Rng::new(seed);
    let mut regs: HashMap<u64, Value> = HashMap::new();
    let mut slots: Vec<(i64, Slot)> = (0..shape.processes as i64).map(|p| (p, Slot::Idle)).collect();
    let mut next_process = shape.processes as i64;
    let mut next_value = 1i64;
    let mut invoked = 0;
    let mut time = 0u64;
    let mut out = String::new();
    let emit = |e: Event, out: &mut String| {
        out.push_str(&e.to_json_line());
        out.push('\n');
    };
    loop {
        let all_idle = slots.iter().all(|(_, s)| matches!(s, Slot::Idle));
        if invoked >= shape.ops && all_idle {
            break;
        }
        time += 1 + rng.below(1000);
        let i = rng.below(slots.len() as u64) as usize;
        let (p, slot) = &mut slots[i];
        let proc_ = Process::Client(*p);
        match std::mem::replace(slot, Slot::Idle) {
            Slot::Idle if invoked < shape.ops => {
                invoked += 1;
                let key = rng.below(shape.keys);
                let pick = rng.below(if shape.cas { 10 } else { 7 });
                let (f, value) = match pick {
                    0..=3 => ("read", Value::Nil),
                    4..=6 => {
                        next_value += 1;
                        ("write", Value::Int(next_value))
                    }
                    _ => {
                        // Expect the current value half the time so that some cas succeed; new values are unique.
                        let cur = regs.get(&key).cloned().unwrap_or(Value::Nil);
                        let old = if rng.chance(0.5) {
                            cur
                        } else {
                            Value::Int(rng.below(next_value as u64 + 1) as i64)
                        };
                        next_value += 1;
                        ("cas", Value::List(vec![old, Value::Int(next_value)]))
                    }
                };
                emit(
                    Event::new(EventType::Invoke, proc_, f, value.clone())
                        .with_key(key as i64)
                        .with_time(time),
                    &mut out,
                );
                *slot = Slot::Invoked { key, f, value };
            }
            Slot::Idle => {}
            Slot::Invoked { key, f, value } => {
                if rng.chance(shape.info) {
                    // Crashed before taking effect: info, and the process is retired.
                    emit(
                        Event::new(EventType::Info, proc_, f, value)
                            .with_key(key as i64)
                            .with_time(time),
                        &mut out,
                    );
                    *p = next_process;
                    next_process += 1;
                } else if f != "read" && rng.chance(shape.fail) {
                    emit(
                        Event::new(EventType::Fail, proc_, f, value)
                            .with_key(key as i64)
                            .with_time(time),
                        &mut out,
                    );
                } else {
                    // The linearization point.
                    let reg = regs.entry(key).or_insert(Value::Nil);
                    let (result, ok) = match f {
                        "read" => (reg.clone(), true),
                        "write" => {
                            *reg = value.clone();
                            (value.clone(), true)
                        }
                        _ => {
                            let (old, new) = match value.as_seq() {
                                Some([o, n]) => (o.clone(), n.clone()),
                                _ => unreachable!("cas values are pairs"),
                            };
                            if *reg == old {
                                *reg = new;
                                (value.clone(), true)
                            } else {
                                (value.clone(), false)
                            }
                        }
                    };
                    *slot = Slot::Applied {
                        key,
                        f,
                        value,
                        result,
                        ok,
                    };
                }
            }
            Slot::Applied {
                key,
                f,
                value,
                result,
                ok,
            } => {
                if rng.chance(shape.info) {
                    // Took effect, but the client never learned it.
                    emit(
                        Event::new(EventType::Info, proc_, f, value)
                            .with_key(key as i64)
                            .with_time(time),
                        &mut out,
                    );
                    *p = next_process;
                    next_process += 1;
                } else {
                    let kind = if ok { EventType::Ok } else { EventType::Fail };
                    emit(
                        Event::new(kind, proc_, f, result)
                            .with_key(key as i64)
                            .with_time(time),
                        &mut out,
                    );
                }
            }
        }
    }
    out
}

/// Injects a stale read: an ok read now returns a value that had been overwritten before the read began. Values
/// written are unique per history, so the result is certainly not linearizable. `None` when the history has no
/// such read.
pub fn inject_stale_read(jsonl: &str, rng: &mut Rng) -> Option<(String, usize)> {
    let h = History::parse_jsonl(jsonl, &ReadOptions::default()).expect("generated history parses");
    // Ops that certainly set a value: ok writes and ok cas.
    let setters: Vec<_> = h
        .ops()
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && (o.f == "write" || o.f == "cas"))
        .collect();
    let set_value = |o: &trestle_jepsen::Op| match o.f.as_str() {
        "write" => o.value.clone(),
        _ => o
            .value
            .as_seq()
            .and_then(|s| s.get(1))
            .cloned()
            .unwrap_or_default(),
    };
    let mut reads: Vec<_> = h
        .ops()
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.f == "read")
        .collect();
    // Start at a random read so different seeds mutate different places.
    let start = rng.below(reads.len().max(1) as u64) as usize;
    reads.rotate_left(start);
    for r in reads {
        let same_key: Vec<_> = setters
            .iter()
            .filter(|s| s.key == r.key && s.ret.is_some_and(|t| t < r.call))
            .collect();
        // w2: a setter completed before r began; w1: a setter completed before w2 began.
        for w2 in same_key.iter().rev() {
            let Some(w1) = same_key.iter().find(|w1| w1.ret.is_some_and(|t| t < w2.call)) else {
                continue;
            };
            let stale = set_value(w1);
            if stale == r.result || stale == set_value(w2) {
                continue;
            }
            let line = r.complete_line?;
            let event = Event::new(EventType::Ok, Process::Client(r.process), "read", stale)
                .with_key(r.key.clone().unwrap_or_default())
                .with_time(r.complete_time.unwrap_or_default());
            let mutated: Vec<String> = jsonl
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    if i + 1 == line {
                        event.to_json_line()
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            return Some((mutated.join("\n"), line));
        }
    }
    None
}

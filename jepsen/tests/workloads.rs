//! The set and lock checkers on simulated workloads: a seeded simulation records a history and knows the truth;
//! the checker must agree with it. Seeds are printed; `TRESTLE_JEPSEN_SEED=<n>` replays one.

mod common;

use common::{Rng, announce, seeds};
use trestle_jepsen::{
    Event, EventType, History, LockViolation, Process, ReadOptions, Value, Verdict, check_lock, check_set,
};

fn line(out: &mut String, e: Event) {
    out.push_str(&e.to_json_line());
    out.push('\n');
}

fn parse(text: &str) -> History {
    History::parse_jsonl(text, &ReadOptions::default()).expect("simulated histories parse")
}

/// Adds of unique elements by a few processes: ok (applied), fail (not applied) or info (applied or not), then a
/// final read of what was applied. Returns the history without its final read, the applied elements in a random
/// order, and the elements whose add was acknowledged.
fn set_run(rng: &mut Rng) -> (String, Vec<i64>, Vec<i64>) {
    let mut out = String::new();
    let (mut applied, mut acked) = (Vec::new(), Vec::new());
    for element in 0..300 {
        let p = Process::Client(element % 5);
        line(
            &mut out,
            Event::new(EventType::Invoke, p.clone(), "add", Value::Int(element)),
        );
        let (kind, took) = match rng.below(10) {
            0 => (EventType::Fail, false),
            1 => (EventType::Info, rng.chance(0.5)),
            _ => (EventType::Ok, true),
        };
        if took {
            applied.push(element);
        }
        if kind == EventType::Ok {
            acked.push(element);
        }
        line(&mut out, Event::new(kind, p, "add", Value::Int(element)));
    }
    // A random order: a set read has none.
    for i in (1..applied.len()).rev() {
        applied.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (out, applied, acked)
}

fn with_final_read(history: &str, read: &[i64]) -> String {
    let mut out = history.to_owned();
    let p = Process::Client(99);
    line(
        &mut out,
        Event::new(EventType::Invoke, p.clone(), "read", Value::Nil),
    );
    line(
        &mut out,
        Event::new(
            EventType::Ok,
            p,
            "read",
            Value::List(read.iter().map(|&e| Value::Int(e)).collect()),
        ),
    );
    out
}

#[test]
fn simulated_sets_are_valid_and_mutations_are_caught() {
    for seed in seeds() {
        announce("simulated_sets_are_valid_and_mutations_are_caught", seed);
        let mut rng = Rng::new(seed);
        let (history, applied, acked) = set_run(&mut rng);

        let r = check_set(&parse(&with_final_read(&history, &applied))).expect("the model fits");
        assert_eq!(r.verdict, Verdict::Valid, "seed {seed}: {r}");

        // Drop an acknowledged element: lost.
        let victim = acked[rng.below(acked.len() as u64) as usize];
        let read: Vec<i64> = applied.iter().copied().filter(|&e| e != victim).collect();
        let r = check_set(&parse(&with_final_read(&history, &read))).expect("the model fits");
        assert_eq!(r.verdict, Verdict::Invalid, "seed {seed}");
        assert_eq!(r.keys[0].lost, vec![Value::Int(victim)], "seed {seed}");

        // An element nobody added: unexpected.
        let mut read = applied.clone();
        read.push(10_000);
        let r = check_set(&parse(&with_final_read(&history, &read))).expect("the model fits");
        assert_eq!(r.keys[0].unexpected, vec![Value::Int(10_000)], "seed {seed}");
    }
}

/// The truth a lock simulation knows: whether the protected list ended up out of token order.
struct LockRun {
    history: String,
    stale_accepted: bool,
    acquired: usize,
    /// Appends the fenced resource refused.
    refused: usize,
}

/// Processes take a leased lock, append one element under its fencing token, and release it. Scheduling is random,
/// so a holder is sometimes delayed past its lease (a pause) and another process takes the lock. With `fenced`,
/// the protected list refuses a token older than one it has seen; without, it accepts anything.
fn lock_run(rng: &mut Rng, fenced: bool) -> LockRun {
    #[derive(Clone, Copy)]
    enum Step {
        Idle,
        Acquiring,
        Holding(i64),
        Appending(i64),
        Releasing(i64),
    }
    const LEASE: u64 = 400;
    let mut out = String::new();
    let mut steps = [Step::Idle; 5];
    let (mut time, mut next_token, mut max_seen) = (0u64, 1i64, 0i64);
    let mut holder: Option<(usize, i64, u64)> = None; // (process, token, lease expiry)
    let mut list: Vec<(i64, String)> = Vec::new();
    let mut acquired = 0;
    let mut refused = 0;
    while acquired < 200 || steps.iter().any(|s| !matches!(s, Step::Idle)) {
        time += 1 + rng.below(100);
        let p = rng.below(steps.len() as u64) as usize;
        let proc_ = Process::Client(p as i64);
        let free = holder.is_none_or(|(_, _, expiry)| expiry < time);
        match steps[p] {
            Step::Idle if acquired < 200 => {
                line(
                    &mut out,
                    Event::new(EventType::Invoke, proc_, "acquire", Value::Nil).with_time(time),
                );
                steps[p] = Step::Acquiring;
            }
            Step::Idle => {}
            Step::Acquiring if free => {
                let token = next_token;
                next_token += 1;
                acquired += 1;
                holder = Some((p, token, time + LEASE));
                line(
                    &mut out,
                    Event::new(EventType::Ok, proc_, "acquire", Value::Int(token)).with_time(time),
                );
                steps[p] = Step::Holding(token);
            }
            Step::Acquiring => {} // still waiting
            Step::Holding(token) => {
                let v = Value::List(vec![Value::Int(token), Value::Str(format!("p{p}-{token}"))]);
                line(
                    &mut out,
                    Event::new(EventType::Invoke, proc_, "append", v).with_time(time),
                );
                steps[p] = Step::Appending(token);
            }
            Step::Appending(token) => {
                let v = Value::List(vec![Value::Int(token), Value::Str(format!("p{p}-{token}"))]);
                let accept = !fenced || token >= max_seen;
                if accept {
                    max_seen = max_seen.max(token);
                    list.push((token, format!("p{p}-{token}")));
                }
                refused += usize::from(!accept);
                let kind = if accept { EventType::Ok } else { EventType::Fail };
                line(
                    &mut out,
                    Event::new(kind, proc_.clone(), "append", v).with_time(time),
                );
                line(
                    &mut out,
                    Event::new(EventType::Invoke, proc_, "release", Value::Int(token)).with_time(time + 1),
                );
                time += 1;
                steps[p] = Step::Releasing(token);
            }
            Step::Releasing(token) => {
                let still_held = holder.is_some_and(|(h, t, expiry)| h == p && t == token && expiry >= time);
                if still_held {
                    holder = None;
                }
                let kind = if still_held {
                    EventType::Ok
                } else {
                    EventType::Fail
                };
                line(
                    &mut out,
                    Event::new(kind, proc_, "release", Value::Int(token)).with_time(time),
                );
                steps[p] = Step::Idle;
            }
        }
    }
    time += 1;
    let p = Process::Client(99);
    line(
        &mut out,
        Event::new(EventType::Invoke, p.clone(), "read", Value::Nil).with_time(time),
    );
    let read = Value::List(list.iter().map(|(_, e)| Value::Str(e.clone())).collect());
    line(
        &mut out,
        Event::new(EventType::Ok, p, "read", read).with_time(time + 1),
    );
    let stale_accepted = list.windows(2).any(|w| w[1].0 < w[0].0);
    LockRun {
        history: out,
        stale_accepted,
        acquired,
        refused,
    }
}

#[test]
fn simulated_fenced_locks_are_valid() {
    let mut refused = 0;
    for seed in seeds() {
        announce("simulated_fenced_locks_are_valid", seed);
        let run = lock_run(&mut Rng::new(seed), true);
        assert!(!run.stale_accepted);
        let r = check_lock(&parse(&run.history)).expect("the model fits");
        assert_eq!(r.verdict, Verdict::Valid, "seed {seed}: {r}");
        assert_eq!(r.keys[0].acquires, run.acquired);
        assert!(run.acquired >= 200);
        refused += run.refused;
    }
    assert!(
        refused > 0,
        "pauses should make the fenced resource refuse a stale token for some seed"
    );
}

#[test]
fn simulated_unfenced_locks_are_flagged_exactly_when_a_stale_write_got_through() {
    let mut flagged = 0;
    for seed in seeds() {
        announce(
            "simulated_unfenced_locks_are_flagged_exactly_when_a_stale_write_got_through",
            seed,
        );
        let run = lock_run(&mut Rng::new(seed), false);
        let r = check_lock(&parse(&run.history)).expect("the model fits");
        let stale = r.keys[0]
            .violations
            .iter()
            .any(|v| matches!(v, LockViolation::StaleTokenAccepted { .. }));
        assert_eq!(stale, run.stale_accepted, "seed {seed}: {r}");
        assert_eq!(
            r.verdict == Verdict::Invalid,
            run.stale_accepted,
            "seed {seed}: {r}"
        );
        flagged += usize::from(stale);
    }
    assert!(
        flagged > 0,
        "pauses should let a stale write through for some seed"
    );
}

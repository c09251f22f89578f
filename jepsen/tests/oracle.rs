//! The linearizability checker against a brute-force oracle on thousands of tiny random histories, valid and
//! invalid alike: the two must agree on every one. Seeds are printed; `TRESTLE_JEPSEN_SEED=<n>` replays one.

mod common;

use common::{Rng, announce, seeds};
use trestle_jepsen::{
    Event, EventType, History, Limits, Op, Outcome, Process, ReadOptions, RegisterModel, Value, Verdict,
    check_linearizable,
};

const VALUES: [Value; 3] = [Value::Nil, Value::Int(1), Value::Int(2)];

fn pick(rng: &mut Rng) -> Value {
    VALUES[rng.below(3) as usize].clone()
}

/// A random history: a few processes, each running a few operations with random results and outcomes, their
/// invocations and completions interleaved at random. Most such histories are not linearizable.
fn random_history(rng: &mut Rng, cas: bool) -> String {
    let processes = 1 + rng.below(3) as i64;
    let mut pending: Vec<Vec<Event>> = Vec::new();
    for p in 0..processes {
        let mut events = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let (f, value) = match rng.below(if cas { 3 } else { 2 }) {
                0 => ("read", Value::Nil),
                1 => ("write", pick(rng)),
                _ => ("cas", Value::List(vec![pick(rng), pick(rng)])),
            };
            events.push(Event::new(
                EventType::Invoke,
                Process::Client(p),
                f,
                value.clone(),
            ));
            let kind = match rng.below(10) {
                0 => EventType::Info,
                1 => EventType::Fail,
                _ => EventType::Ok,
            };
            let result = if f == "read" && kind == EventType::Ok {
                pick(rng)
            } else {
                value
            };
            events.push(Event::new(kind, Process::Client(p), f, result));
            if kind == EventType::Info {
                break; // the process is retired
            }
        }
        events.reverse();
        pending.push(events);
    }
    let mut out = String::new();
    while pending.iter().any(|e| !e.is_empty()) {
        let live: Vec<usize> = (0..pending.len()).filter(|&i| !pending[i].is_empty()).collect();
        let i = live[rng.below(live.len() as u64) as usize];
        let e = pending[i].pop().expect("live");
        out.push_str(&e.to_json_line());
        out.push('\n');
    }
    out
}

/// Tries every subset of the info operations and every order of the chosen ones that respects real time.
fn oracle(ops: &[Op]) -> bool {
    let relevant: Vec<&Op> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Fail && !(o.f == "read" && o.outcome == Outcome::Info))
        .collect();
    let infos: Vec<usize> = (0..relevant.len())
        .filter(|&i| relevant[i].outcome == Outcome::Info)
        .collect();
    for mask in 0..1u32 << infos.len() {
        let chosen: Vec<&Op> = relevant
            .iter()
            .enumerate()
            .filter(|(i, o)| {
                o.outcome == Outcome::Ok
                    || infos
                        .iter()
                        .position(|j| j == i)
                        .is_some_and(|b| mask & (1 << b) != 0)
            })
            .map(|(_, o)| *o)
            .collect();
        if orders(&chosen, &mut vec![false; chosen.len()], Value::Nil) {
            return true;
        }
    }
    false
}

fn orders(ops: &[&Op], used: &mut Vec<bool>, state: Value) -> bool {
    if used.iter().all(|&u| u) {
        return true;
    }
    for i in 0..ops.len() {
        if used[i] {
            continue;
        }
        // Real time: nothing still unplaced may have completed before this one was invoked.
        let blocked =
            (0..ops.len()).any(|j| !used[j] && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
        if blocked {
            continue;
        }
        let op = ops[i];
        let next = match op.f.as_str() {
            "read" => (op.result == state).then(|| state.clone()),
            "write" => Some(op.value.clone()),
            _ => match op.value.as_seq() {
                Some([old, new]) if *old == state => Some(new.clone()),
                _ => None,
            },
        };
        if let Some(next) = next {
            used[i] = true;
            if orders(ops, used, next) {
                return true;
            }
            used[i] = false;
        }
    }
    false
}

#[test]
fn checker_agrees_with_brute_force() {
    for seed in seeds() {
        announce("checker_agrees_with_brute_force", seed);
        let mut rng = Rng::new(seed);
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..3_000 {
            let cas = round % 2 == 1;
            let text = random_history(&mut rng, cas);
            let h = History::parse_jsonl(&text, &ReadOptions::default())
                .expect("random histories are well formed");
            let model = if cas {
                RegisterModel::CasRegister
            } else {
                RegisterModel::Register
            };
            let r = check_linearizable(&h, model, &Limits::default()).expect("the model fits");
            let expected = oracle(h.ops());
            assert_eq!(
                r.verdict,
                if expected {
                    Verdict::Valid
                } else {
                    Verdict::Invalid
                },
                "seed {seed}, round {round}: the checker and the oracle disagree on\n{text}\n{r}"
            );
            if expected { valid += 1 } else { invalid += 1 }
        }
        eprintln!("seed {seed}: {valid} valid, {invalid} invalid histories agreed");
        assert!(valid > 300 && invalid > 300, "both kinds are exercised");
    }
}

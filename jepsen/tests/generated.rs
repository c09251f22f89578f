//! Checkers on generated histories: linearizable by construction, then mutated with a stale read.
//!
//! Each test prints its seeds; `TRESTLE_JEPSEN_SEED=<n> cargo nextest run -p trestle-jepsen` replays one.

mod common;

use std::time::{Duration, Instant};

use common::{Rng, Shape, announce, inject_stale_read, register_history, seeds};
use trestle_jepsen::{History, Limits, Outcome, ReadOptions, RegisterModel, Verdict, check_linearizable};

fn parse(text: &str) -> History {
    History::parse_jsonl(text, &ReadOptions::default()).expect("generated histories parse")
}

#[test]
fn generated_histories_are_linearizable() {
    for seed in seeds() {
        announce("generated_histories_are_linearizable", seed);
        for (cas, model) in [
            (false, RegisterModel::Register),
            (true, RegisterModel::CasRegister),
        ] {
            let shape = Shape {
                cas,
                ..Shape::default()
            };
            let h = parse(&register_history(seed, &shape));
            let infos = h.ops().iter().filter(|o| o.outcome == Outcome::Info).count();
            let fails = h.ops().iter().filter(|o| o.outcome == Outcome::Fail).count();
            assert!(
                infos > 0 && fails > 0,
                "seed {seed}: the generator should produce info and fail ops"
            );
            let r = check_linearizable(&h, model, &Limits::default()).expect("the model fits");
            assert_eq!(r.verdict, Verdict::Valid, "seed {seed}, {model:?}:\n{r}");
            assert_eq!(r.keys, 10);
        }
    }
}

#[test]
fn highly_concurrent_single_key_is_linearizable() {
    for seed in seeds() {
        announce("highly_concurrent_single_key_is_linearizable", seed);
        let shape = Shape {
            ops: 1_500,
            keys: 1,
            processes: 12,
            ..Shape::default()
        };
        let h = parse(&register_history(seed, &shape));
        let r =
            check_linearizable(&h, RegisterModel::CasRegister, &Limits::default()).expect("the model fits");
        assert_eq!(r.verdict, Verdict::Valid, "seed {seed}:\n{r}");
    }
}

#[test]
fn injected_stale_reads_are_caught() {
    for seed in seeds() {
        announce("injected_stale_reads_are_caught", seed);
        let mut rng = Rng::new(seed ^ 0x5eed);
        for cas in [false, true] {
            let shape = Shape {
                ops: 1_000,
                cas,
                ..Shape::default()
            };
            let text = register_history(seed, &shape);
            let (mutated, line) = inject_stale_read(&text, &mut rng).expect("a read to mutate");
            let h = parse(&mutated);
            let mutated_key = h
                .ops()
                .iter()
                .find(|o| o.complete_line == Some(line))
                .and_then(|o| o.key.clone());
            let model = if cas {
                RegisterModel::CasRegister
            } else {
                RegisterModel::Register
            };
            let r = check_linearizable(&h, model, &Limits::default()).expect("the model fits");
            assert_eq!(
                r.verdict,
                Verdict::Invalid,
                "seed {seed}: stale read at line {line} missed\n{r}"
            );
            assert_eq!(
                r.violations.len(),
                1,
                "seed {seed}: only the mutated key is wrong\n{r}"
            );
            assert_eq!(r.violations[0].key, mutated_key, "seed {seed}");
        }
    }
}

/// 20,000 operations over 200 keys: well within a few seconds even in a debug build.
#[test]
fn twenty_thousand_ops_over_many_keys_in_seconds() {
    let seed = seeds()[0];
    announce("twenty_thousand_ops_over_many_keys_in_seconds", seed);
    let shape = Shape {
        ops: 20_000,
        keys: 200,
        processes: 20,
        ..Shape::default()
    };
    let h = parse(&register_history(seed, &shape));
    let start = Instant::now();
    let r = check_linearizable(&h, RegisterModel::CasRegister, &Limits::default()).expect("the model fits");
    let took = start.elapsed();
    eprintln!(
        "checked {} ops over {} keys in {took:?} ({} steps)",
        h.ops().len(),
        r.keys,
        r.steps
    );
    assert_eq!(r.verdict, Verdict::Valid, "{r}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// The 100k-operation measurement: `cargo nextest run -p trestle-jepsen --release --run-ignored only
/// hundred_thousand --no-capture`. Set `TRESTLE_JEPSEN_DUMP=/path/h.jsonl` to keep the history for the CLI, and
/// `TRESTLE_JEPSEN_SHAPE=ops,keys,processes[,info]` to change the shape (default 100000,1000,50,0.02).
#[test]
#[ignore = "a measurement, run by hand with --release"]
fn hundred_thousand_ops() {
    let seed = seeds()[0];
    announce("hundred_thousand_ops", seed);
    let mut shape = Shape {
        ops: 100_000,
        keys: 1_000,
        processes: 50,
        ..Shape::default()
    };
    if let Ok(spec) = std::env::var("TRESTLE_JEPSEN_SHAPE") {
        let n: Vec<f64> = spec
            .split(',')
            .map(|s| s.trim().parse().expect("ops,keys,processes[,info]"))
            .collect();
        if let [ops, keys, processes, ref rest @ ..] = n[..] {
            let info = rest.first().copied().unwrap_or(shape.info);
            shape = Shape {
                ops: ops as usize,
                keys: keys as u64,
                processes: processes as u64,
                info,
                ..shape
            };
        }
    }
    eprintln!("shape: {shape:?}");
    let t0 = Instant::now();
    let text = register_history(seed, &shape);
    if let Ok(path) = std::env::var("TRESTLE_JEPSEN_DUMP") {
        std::fs::write(&path, &text).expect("dump the history");
    }
    let t1 = Instant::now();
    let h = parse(&text);
    let t2 = Instant::now();
    let r = check_linearizable(&h, RegisterModel::CasRegister, &Limits::default()).expect("the model fits");
    let t3 = Instant::now();
    eprintln!(
        "generated {} events in {:?}, parsed in {:?}, checked {} ops over {} keys in {:?} ({} steps): {}",
        h.event_count(),
        t1 - t0,
        t2 - t1,
        h.ops().len(),
        r.keys,
        t3 - t2,
        r.steps,
        r.verdict
    );
    assert_eq!(r.verdict, Verdict::Valid, "{r}");
}

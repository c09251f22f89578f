//! The `trestle-jepsen` binary on hand-written fixtures: exit codes and what the summary says.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trestle-jepsen"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn check(model: &str, name: &str, extra: &[&str]) -> (i32, String, String) {
    let path = fixture(name);
    let path = path.to_str().expect("a UTF-8 path");
    let mut args = vec!["check", "--model", model];
    args.extend_from_slice(extra);
    args.push(path);
    let out = run(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_edn_cas_register_with_info_ops_exits_0() {
    let (code, out, err) = check("cas-register", "cas-register-good.edn", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: VALID"), "{out}");
    assert!(
        out.contains("start-partition x1"),
        "the nemesis is counted: {out}"
    );
    assert!(
        out.contains("history: 20 events, 9 ops over 1 keys (ok 6, fail 1, info 2)"),
        "{out}"
    );
}

#[test]
fn stale_read_in_edn_exits_1_and_explains() {
    let (code, out, err) = check("cas-register", "cas-register-bad.edn", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("verdict: INVALID"), "{out}");
    assert!(
        out.contains("cannot get past the completion of: p0 read -> 1 (ok, lines 7-8)"),
        "{out}"
    );
    assert!(out.contains("reads 1, but the register holds 2"), "{out}");
}

#[test]
fn independent_keys_are_checked_apart() {
    let (code, out, err) = check("register", "independent-register.edn", &["--independent"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("2 keys, 2 decided, 1 not linearizable"), "{out}");
    assert!(out.contains("key 1: not linearizable"), "{out}");
    // Without --independent the tuples are plain values, which the register model cannot read as keys.
    let (code, out, _) = check("register", "independent-register.edn", &[]);
    assert_eq!(code, 1, "tuples as whole values still make a stale read: {out}");
}

#[test]
fn jsonl_register_with_keys_and_times_exits_0() {
    let (code, out, err) = check("register", "register-good.jsonl", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 keys, 2 decided"), "{out}");
}

#[test]
fn huge_time_limit_is_no_limit() {
    let (code, out, err) = check(
        "register",
        "register-good.jsonl",
        &["--time-limit", "18446744073709551615"],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn time_limit_zero_is_unknown_exit_2() {
    let (code, out, err) = check("register", "register-good.jsonl", &["--time-limit", "0"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("verdict: UNKNOWN"), "{out}");
}

#[test]
fn set_reports_lost_and_recovered() {
    let (code, out, err) = check("set", "set-lost.jsonl", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("3 adds acknowledged, 1 lost, 0 unexpected, 1 recovered"),
        "{out}"
    );
    assert!(out.contains("lost 5"), "{out}");
}

#[test]
fn fenced_lock_is_valid_and_unfenced_is_flagged() {
    let (code, out, err) = check("lock", "lock-fenced.jsonl", &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = check("lock", "lock-unfenced.jsonl", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("a stale token was accepted"), "{out}");
    assert!(out.contains("expected for lock-unfenced under pauses"), "{out}");
}

#[test]
fn a_deposed_leaders_rejected_write_is_valid_and_a_landed_one_is_flagged() {
    let (code, out, err) = check("election", "election-deposed.jsonl", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("election: VALID - 1 keys; 2 terms led, 2 writes acknowledged"),
        "{out}"
    );
    let (code, out, err) = check("election", "election-unfenced.jsonl", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "a deposed leader's write landed after its successor's: 2 (term 5) comes after 3 (term 9)"
        ),
        "{out}"
    );
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let (code, out, err) = check("cas-register", "garbled.edn", &[]);
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("garbled.edn: line 2: `}` is never closed"), "{err}");
    assert!(out.is_empty(), "no summary for an unreadable history: {out}");
    let (code, _, err) = check("cas-register", "missing.edn", &[]);
    assert_eq!(code, 255);
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = check("cas-register", "../cli.rs", &[]);
    assert_eq!(code, 255);
    assert!(err.contains("cannot tell the format"), "{err}");
    // A history the model cannot read: cas in the plain register model.
    let (code, _, err) = check("register", "cas-register-bad.edn", &[]);
    assert_eq!(code, 255);
    assert!(err.contains("use --model cas-register"), "{err}");
}

#[test]
fn bad_command_lines_exit_254() {
    assert_eq!(
        run(&["check", "--model", "no-such-model", "x.edn"]).status.code(),
        Some(254)
    );
    assert_eq!(run(&[]).status.code(), Some(254));
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

#[test]
fn test_rejects_what_it_cannot_do_before_starting_anything() {
    for (args, code, says) in [
        (&["test", "--nemesis", "fire"][..], 254, "unknown nemesis"),
        (
            &["test", "--nemesis", "partition-ring", "--nodes", "3"][..],
            254,
            "at least 5 nodes",
        ),
        (
            &["test", "--workload", "no-such-workload"][..],
            254,
            "expected one of register, set",
        ),
        (&["test", "--nodes", "0"][..], 254, "nodes = 0"),
        (
            &[
                "test",
                "--trestle-bin",
                "/nonexistent/trestle",
                "--time-limit",
                "1",
            ][..],
            255,
            "/nonexistent/trestle",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("seed: "), "the seed comes first: {stdout}");
    }
}

#[test]
fn a_deleted_cache_key_read_back_after_the_zones_agreed_exits_1() {
    let (code, out, err) = check("cache", "cache-came-back.jsonl", &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("zones agreed on every key 0.91 s after the heal"),
        "{out}"
    );
    assert!(out.contains("2 came back after a delete"), "{out}");
    assert!(
        out.contains("came back: \"cache/0\" read 1 through zone a"),
        "{out}"
    );
}

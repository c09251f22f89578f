//! `trestle queue` as a person or a script uses it against a one-member `trestle serve --queue-partitions 2`:
//! JSON lines out, clear errors and non-zero exits for what cannot be done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::ProcessCluster;

struct Cli {
    endpoints: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_trestle"))
            .arg("queue")
            .args(args)
            .args(["--endpoints", &self.endpoints])
            .output()
            .expect("trestle runs")
    }

    /// Runs a command that must succeed; its output lines as JSON.
    fn ok(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "trestle queue {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
            .collect()
    }

    /// Runs a command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "trestle queue {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_cli_sends_receives_settles_and_says_what_is_wrong() {
    let cluster = ProcessCluster::start_with_args(1, &["--queue-partitions", "2"]);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let cli = Cli {
        endpoints: cluster.endpoint(0),
    };
    let created = cli.ok(&[
        "create",
        "jobs",
        "--partitions",
        "2",
        "--max-deliveries",
        "2",
        "--dead-letter-queue",
        "jobs-dead",
    ]);
    assert_eq!(created[0]["partitions"].as_array().unwrap().len(), 2);
    assert!(
        cli.fails(&["create", "jobs"])
            .contains("queue \"jobs\" already exists")
    );
    assert!(
        cli.fails(&["send", "missing", "x"])
            .contains("unknown queue \"missing\"")
    );
    assert!(
        cli.fails(&["create", "jobs2", "--partitions", "9"])
            .contains("this cluster has 2")
    );
    assert!(
        cli.fails(&["ack", "jobs", "not-a-receipt"])
            .contains("is not partition:id:delivery:token")
    );

    let sent = cli.ok(&[
        "send",
        "jobs",
        "hello",
        "--key",
        "k1",
        "--header",
        "kind=greeting",
    ]);
    assert_eq!(sent[0]["duplicate"], false);
    let again = cli.ok(&["send", "jobs", "hello", "--key", "k1"]);
    assert_eq!(again[0]["duplicate"], true, "the same key enqueues nothing");

    // Received without an ack, acked by its receipt.
    let got = cli.ok(&["receive", "jobs", "--wait-ms", "2000", "--no-ack"]);
    assert_eq!(got[0]["payload"], "hello");
    let receipt = got[0]["receipt"].as_str().unwrap().to_owned();
    assert_eq!(cli.ok(&["stats", "jobs"])[0]["in_flight"], 1);
    cli.ok(&["ack", "jobs", &receipt]);
    assert_eq!(cli.ok(&["stats", "jobs"])[0]["depth"], 0);
    // Its receipt is spent.
    assert!(cli.fails(&["ack", "jobs", &receipt]).contains("no message"));

    // Nacked twice, it reaches the dead-letter queue with its history; redrive brings it back.
    cli.ok(&["send", "jobs", "poison"]);
    for delivery in 1..=2 {
        let got = cli.ok(&["receive", "jobs", "--wait-ms", "5000", "--no-ack"]);
        assert_eq!(got[0]["delivery"], delivery);
        cli.ok(&[
            "nack",
            "jobs",
            got[0]["receipt"].as_str().unwrap(),
            "--error",
            "cannot parse",
        ]);
    }
    let dead = cli.ok(&["dead-letters", "jobs"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["queue"], "jobs-dead");
    assert_eq!(dead[0]["last_error"], "cannot parse");
    assert_eq!(dead[0]["deliveries"], 2);
    let redriven = cli.ok(&["redrive", "jobs-dead"]);
    assert_eq!(redriven[0]["moved"], 1);
    let listed = cli.ok(&["list"]);
    let names: Vec<&str> = listed.iter().map(|q| q["queue"].as_str().unwrap()).collect();
    assert_eq!(names, ["jobs", "jobs-dead"]);
    assert_eq!(cli.ok(&["purge", "jobs"])[0]["removed"], 1);
    assert_eq!(cli.ok(&["delete", "jobs"])[0]["deleted"], "jobs");
}

//! `trestle-jepsen`: run a chaos test against a real cluster (`test`), or re-check a stored history (`check`).
//!
//! Exit codes follow Jepsen: 0 valid, 1 invalid, 2 unknown; 254 for a bad command line and 255 for a history that
//! cannot be read or does not fit the model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trestle_jepsen::{
    CheckModel, HarnessError, History, HistoryError, Limits, NetMode, ReadOptions, TestConfig, Verdict,
    check, run_test,
};

/// Exit code for a bad command line (Jepsen's).
const EXIT_USAGE: u8 = 254;
/// Exit code for an unreadable or malformed history (Jepsen's "crashed").
const EXIT_ERROR: u8 = 255;

#[derive(Parser)]
#[command(
    name = "trestle-jepsen",
    version,
    about = "Trestle's Jepsen-style chaos suite"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Re-check a stored history: exit 0 valid, 1 invalid, 2 unknown.
    Check {
        /// register, cas-register, set, lock, election, queue, barrier or cache.
        #[arg(long, value_parser = parse_model)]
        model: CheckModel,
        /// Values are [key value] tuples (Jepsen's `independent` workloads); check each key on its own.
        #[arg(long)]
        independent: bool,
        /// Give up with "unknown" after this many seconds of linearizability search.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// The history: .jsonl (Trestle's JSON lines) or .edn (Jepsen's EDN).
        file: PathBuf,
    },
    /// Run a chaos test against a real cluster: exit 0 valid, 1 invalid, 2 unknown, 255 harness error.
    Test(TestArgs),
    /// Run deterministic simulations of the Raft layer (real Trestle nodes on turmoil's simulated network):
    /// exit 0 when every seed is valid, 1 when one is invalid, 2 when one is unknown, 255 when one could not run.
    Sim(SimArgs),
    /// Remove what killed runs left behind: their node processes and network namespaces (from their ledgers).
    Clean,
}

#[derive(clap::Args)]
struct TestArgs {
    /// register, set, lock, lock-unfenced, election, queue, barrier or cache.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Comma-separated: partition (all partitions), partition-halves, partition-one, partition-leader,
    /// partition-ring, partition-bridge, kill, pause, delay, loss; or all, or none.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload (final reads come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Client processes.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Seed for every random choice [default: random, printed first].
    #[arg(long)]
    seed: Option<u64>,
    /// Results go to STORE/<workload>/<timestamp>/ (STORE/<workload>/latest links the newest).
    #[arg(long, default_value = "store")]
    store: PathBuf,
    /// The trestle binary [default: $TRESTLE_BIN, else next to this executable or in its parent directory].
    #[arg(long)]
    trestle_bin: Option<PathBuf>,
    /// auto (namespaces as root, else loopback), netns or loopback.
    #[arg(long, default_value = "auto")]
    net: NetMode,
    /// Milliseconds before a client gives up on an operation.
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first seed; the others follow it [default: random, printed first]. Replay one with
    /// `--seeds 1 --first-seed S` (and the same other options).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of simulated time with workload and faults (healing and checks come after).
    #[arg(long, default_value_t = 10)]
    time: u64,
    /// Comma-separated faults: partition, hold, crash, bounce, loss; or all, or none.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Client tasks per node.
    #[arg(long, default_value_t = 2)]
    clients_per_node: usize,
    /// Take a snapshot every this many applied entries (small values make lagging nodes catch up through
    /// snapshots more often).
    #[arg(long, default_value_t = 500)]
    snapshot_every: u64,
    /// Print every fault fired and the checkers' reports, not just one line per seed.
    #[arg(long)]
    verbose: bool,
}

fn sim(args: SimArgs) -> ExitCode {
    use trestle_jepsen::sim::{SimConfig, SimFault, run_sim};
    let first = args.first_seed.unwrap_or_else(random_seed);
    println!(
        "first seed: {first} (seeds {first}..{})",
        first.saturating_add(args.seeds)
    );
    let faults = match SimFault::parse_list(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("trestle-jepsen sim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut worst = Verdict::Valid;
    let mut errors = 0;
    for seed in first..first.saturating_add(args.seeds) {
        let mut config = SimConfig::with_seed(seed);
        config.nodes = args.nodes;
        config.duration = Duration::from_secs(args.time);
        config.faults = faults.clone();
        config.clients_per_node = args.clients_per_node;
        config.snapshot_every = args.snapshot_every;
        if let Err(e) = config.validate() {
            eprintln!("trestle-jepsen sim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        // Printed before the run, so a hang or a crash still names its seed.
        eprintln!("seed {seed}: running");
        match run_sim(&config) {
            Ok(report) => {
                if args.verbose || report.verdict != Verdict::Valid {
                    print!("{report}");
                } else {
                    println!("{}", report.line());
                }
                worst = worst.and(report.verdict);
            }
            Err(e) => {
                println!("seed {seed} ERROR {e}");
                errors += 1;
            }
        }
    }
    if errors > 0 && worst == Verdict::Valid {
        return ExitCode::from(EXIT_ERROR);
    }
    ExitCode::from(u8::try_from(worst.exit_code()).unwrap_or(EXIT_ERROR))
}

fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

fn test(args: TestArgs) -> ExitCode {
    let seed = args.seed.unwrap_or_else(random_seed);
    println!("seed: {seed}");
    let config = {
        let mut c = TestConfig::default();
        c.workload = args.workload;
        c.nemesis = args.nemesis;
        c.nodes = args.nodes;
        c.time_limit = Duration::from_secs(args.time_limit);
        c.concurrency = args.concurrency;
        c.seed = seed;
        c.store = args.store;
        c.trestle_bin = args.trestle_bin;
        c.net = args.net;
        c.op_timeout = Duration::from_millis(args.op_timeout_ms);
        c
    };
    if let Err(e) = config.validate() {
        eprintln!("trestle-jepsen test: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trestle-jepsen test: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run_test(&config)) {
        Ok(outcome) => {
            print!("{}", outcome.summary);
            ExitCode::from(u8::try_from(outcome.verdict.exit_code()).unwrap_or(EXIT_ERROR))
        }
        Err(e @ HarnessError::Interrupted { .. }) => {
            eprintln!("trestle-jepsen test: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("trestle-jepsen test: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn parse_model(s: &str) -> Result<CheckModel, String> {
    s.parse().map_err(|e: trestle_jepsen::UnknownModel| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check {
            model,
            independent,
            time_limit,
            file,
        } => {
            let opts = ReadOptions::default().independent(independent);
            let history = match History::read_file(&file, &opts) {
                Ok(h) => h,
                Err(e @ (HistoryError::Io { .. } | HistoryError::UnknownFormat { .. })) => {
                    eprintln!("trestle-jepsen: {e}");
                    return ExitCode::from(EXIT_ERROR);
                }
                Err(e) => {
                    eprintln!("trestle-jepsen: {}: {e}", file.display());
                    return ExitCode::from(EXIT_ERROR);
                }
            };
            let limits = Limits::default().time_limit(Duration::from_secs(time_limit));
            match check(&history, model, &limits) {
                Ok(report) => {
                    println!("trestle-jepsen check: {}", file.display());
                    print!("{report}");
                    ExitCode::from(u8::try_from(report.verdict.exit_code()).unwrap_or(EXIT_ERROR))
                }
                Err(e) => {
                    eprintln!("trestle-jepsen: {}: {e}", file.display());
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
        Command::Test(args) => test(args),
        Command::Sim(args) => sim(args),
        Command::Clean => {
            let done = trestle_jepsen::clean_leftovers();
            if done.is_empty() {
                println!("nothing left behind by dead runs");
            }
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
    }
}

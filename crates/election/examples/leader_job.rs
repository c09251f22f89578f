//! A background job that runs on exactly one replica: start this example several times against the same cluster
//! and stop the leader (Ctrl-C resigns at once; `kill -9` hands over after the TTL).
//!
//! ```text
//! cargo run -p trestle-election --example leader_job -- http://127.0.0.1:2379 replica-a
//! ```

use std::sync::Arc;
use std::time::Duration;

use etcd_client::TxnOp;
use tokio_util::sync::CancellationToken;
use trestle_election::{ElectorConfig, LeaderCallbacks, LeaderElector, Leading};

struct Reindexer {
    identity: String,
}

impl LeaderCallbacks for Reindexer {
    async fn on_started_leading(&self, leading: Leading) {
        println!(
            "{}: leading (term {})",
            self.identity,
            leading.leadership().revision()
        );
        let mut runs = 0u64;
        loop {
            tokio::select! {
                () = leading.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            runs += 1;
            // The job's record is written only while this replica still leads.
            let record = TxnOp::put(
                "examples/reindexer/last-run",
                format!("{} run {runs}", self.identity),
                None,
            );
            if let Err(e) = leading.leadership().fenced_txn(vec![record]).await {
                println!("{}: write refused, stopping: {e}", self.identity);
                return;
            }
            println!("{}: run {runs} done", self.identity);
        }
    }

    fn on_stopped_leading(&self) {
        println!("{}: stopped leading", self.identity);
    }

    fn on_new_leader(&self, identity: &[u8]) {
        println!(
            "{}: the leader is now {}",
            self.identity,
            String::from_utf8_lossy(identity)
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let identity = args
        .next()
        .unwrap_or_else(|| format!("replica-{}", std::process::id()));
    let client = etcd_client::Client::connect([endpoint], None).await?;
    let mut config = ElectorConfig::new("examples/reindexer", identity.clone());
    config.lease_ttl = Duration::from_secs(5);
    let elector = LeaderElector::new(client, config)?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    elector.run(Arc::new(Reindexer { identity }), shutdown).await?;
    Ok(())
}

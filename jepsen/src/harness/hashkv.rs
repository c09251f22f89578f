//! The last check of a run on a real cluster: once healed, every member's key space must hash the same at one
//! revision they all reached (etcd's `HashKV`). A member that applied a different history — a lost or doubled
//! write, a divergent log — shows here even when no client happened to read the key.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::checker::verdict::Verdict;

/// What the comparison found.
#[derive(Clone, Debug)]
pub struct HashKvCheck {
    /// Valid when every member answered with one hash; invalid when two differ; unknown when a member did not
    /// answer in time.
    pub verdict: Verdict,
    /// The revision compared at (the lowest every member had reached), if any.
    pub revision: Option<i64>,
    /// Each member's endpoint and hash, or why it has none.
    pub members: Vec<(String, Result<u32, String>)>,
}

impl fmt::Display for HashKvCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hashkv: {}", self.verdict)?;
        if let Some(revision) = self.revision {
            write!(f, " at revision {revision}")?;
        }
        write!(f, " -")?;
        for (endpoint, hash) in &self.members {
            match hash {
                Ok(hash) => write!(f, " {endpoint}={hash:08x}")?,
                Err(why) => write!(f, " {endpoint}: {why}")?,
            }
        }
        writeln!(f)
    }
}

/// Compares the members at `endpoints`, trying for up to `patience` (members may still be catching up).
pub(crate) async fn compare(endpoints: &[String], patience: Duration) -> HashKvCheck {
    let deadline = Instant::now() + patience;
    loop {
        let check = attempt(endpoints).await;
        if check.verdict != Verdict::Unknown || Instant::now() >= deadline {
            return check;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn attempt(endpoints: &[String]) -> HashKvCheck {
    let mut clients = Vec::new();
    let mut members: Vec<(String, Result<u32, String>)> = Vec::new();
    let mut revision: Option<i64> = None;
    for endpoint in endpoints {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_secs(2));
        match etcd_client::Client::connect([endpoint.as_str()], Some(options)).await {
            Ok(mut client) => match client.status().await {
                Ok(status) => {
                    let reached = status.header().map_or(0, |h| h.revision());
                    revision = Some(revision.map_or(reached, |r| r.min(reached)));
                    clients.push((endpoint.clone(), client));
                }
                Err(e) => members.push((endpoint.clone(), Err(format!("status: {e}")))),
            },
            Err(e) => members.push((endpoint.clone(), Err(format!("connect: {e}")))),
        }
    }
    let Some(at) = revision else {
        return HashKvCheck {
            verdict: Verdict::Unknown,
            revision,
            members,
        };
    };
    for (endpoint, mut client) in clients {
        let hash = client
            .hash_kv(at)
            .await
            .map(|r| r.hash())
            .map_err(|e| format!("hashkv: {e}"));
        members.push((endpoint, hash));
    }
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let hashes: Vec<u32> = members
        .iter()
        .filter_map(|(_, h)| h.as_ref().ok().copied())
        .collect();
    let verdict = if hashes.windows(2).any(|w| w[0] != w[1]) {
        Verdict::Invalid
    } else if hashes.len() < endpoints.len() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    HashKvCheck {
        verdict,
        revision: Some(at),
        members,
    }
}

//! The two servers every test runs against: a 3-node Trestle cluster (in process) and Debian's etcd 3.4.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use etcd_client::Client;
use trestle_etcd::testing::{EtcdProcess, LocalCluster};

pub enum Backend {
    Trestle(LocalCluster),
    Etcd(EtcdProcess),
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Backend {
    pub async fn trestle() -> Self {
        init_tracing();
        Self::Trestle(LocalCluster::start(3).await.expect("trestle cluster starts"))
    }

    pub async fn etcd() -> Self {
        init_tracing();
        assert!(
            EtcdProcess::available(),
            "etcd is not installed: run scripts/bootstrap.sh (installs Debian's etcd-server)"
        );
        Self::Etcd(EtcdProcess::start().await.expect("etcd starts"))
    }

    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Self::Trestle(cluster) => cluster.client_urls(),
            Self::Etcd(etcd) => vec![etcd.client_url().to_owned()],
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.endpoints()).await
    }

    pub fn is_etcd(&self) -> bool {
        matches!(self, Self::Etcd(_))
    }

    /// The smallest TTL both servers honour as asked (etcd raises anything below 2 s to 2 s).
    pub fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}

pub async fn connect(endpoints: &[String]) -> Client {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options))
        .await
        .expect("client connects")
}

/// Generates one test per backend from `async fn $name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn trestle() {
                super::$name(support::Backend::trestle().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                super::$name(support::Backend::etcd().await).await;
            }
        }
    };
}

/// Keys under `prefix` right now.
pub async fn keys_under(client: &Client, prefix: &str) -> Vec<String> {
    let mut client = client.clone();
    let response = client
        .get(
            prefix,
            Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("range");
    response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Waits until no key is left under `prefix` (background cleanups are asynchronous).
pub async fn wait_until_empty(client: &Client, prefix: &str) {
    trestle_etcd::testing::wait_for(
        "no keys left under the prefix",
        Duration::from_secs(10),
        || async { keys_under(client, prefix).await.is_empty().then_some(()) },
    )
    .await
    .expect("keys cleaned up");
}

/// Waits until exactly `n` keys are under `prefix`.
pub async fn wait_until_keys(client: &Client, prefix: &str, n: usize) {
    trestle_etcd::testing::wait_for("the expected number of keys", Duration::from_secs(10), || async {
        (keys_under(client, prefix).await.len() == n).then_some(())
    })
    .await
    .expect("keys appear");
}

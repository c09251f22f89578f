//! Elections against a 3-node Trestle cluster and against etcd 3.4.

#[path = "../../lock/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, TxnOp};
use futures::StreamExt;
use support::Backend;
use tokio_util::sync::CancellationToken;
use trestle_election::{Election, ElectionError, ElectorConfig, LeaderCallbacks, LeaderElector, Leading};
use trestle_lock::{Session, SessionOptions};

/// The next leader value an observer reports (10 s deadline).
async fn next_value(
    seen: &mut (impl futures::Stream<Item = Result<trestle_election::LeaderRecord, ElectionError>> + Unpin),
) -> String {
    let leader = tokio::time::timeout(Duration::from_secs(10), seen.next())
        .await
        .expect("observed in time")
        .expect("stream open")
        .expect("observe");
    String::from_utf8_lossy(&leader.value).into_owned()
}

async fn session(client: &Client) -> Session {
    Session::with_options(client.clone(), SessionOptions::with_ttl(Duration::from_secs(5)))
        .await
        .expect("session")
}

/// Campaign, proclaim, resign and observe: observers see every leader and proclamation in order.
async fn campaign_proclaim_resign_observe(backend: Backend) {
    let client = backend.client().await;
    let (a, b) = (session(&client).await, session(&client).await);
    let (ea, eb) = (
        Election::new(&a, "svc").expect("election"),
        Election::new(&b, "svc").expect("election"),
    );
    assert_eq!(ea.leader().await.expect("leader"), None);
    let mut seen = Election::observer(client.clone(), "svc")
        .expect("observer")
        .observe();

    // The observer reports the current leader first, then every change: each step waits for its report, so
    // the order is checked without racing the observer's first read.
    let la = ea.campaign("a1").await.expect("a leads");
    assert_eq!(next_value(&mut seen).await, "a1");
    let leader = ea.leader().await.expect("leader").expect("someone leads");
    assert_eq!(leader.value, b"a1");
    let b_campaign = tokio::spawn(async move { eb.campaign("b1").await });
    la.proclaim("a2").await.expect("proclaim");
    assert_eq!(next_value(&mut seen).await, "a2");
    support::wait_until_keys(&client, "svc/", 2).await;
    assert!(!b_campaign.is_finished(), "b must wait while a leads");
    la.resign().await.expect("resign");
    let lb = tokio::time::timeout(Duration::from_secs(10), b_campaign)
        .await
        .expect("b elected after a resigned")
        .expect("task")
        .expect("campaign");
    assert!(lb.revision() > la.revision());
    assert_eq!(next_value(&mut seen).await, "b1");

    // A resigned leader can neither proclaim nor resign again.
    assert!(matches!(
        la.proclaim("late").await,
        Err(ElectionError::NotLeader { .. })
    ));
    assert!(matches!(la.resign().await, Err(ElectionError::NotLeader { .. })));
    lb.resign().await.expect("resign");
    a.close().await;
    b.close().await;
    support::wait_until_empty(&client, "svc/").await;
}
on_both_backends!(campaign_proclaim_resign_observe);

/// A leader whose lease is revoked is told at once, and its fenced writes are rejected; the next candidate leads.
async fn deposed_leader_writes_are_rejected(backend: Backend) {
    let client = backend.client().await;
    let (a, b) = (session(&client).await, session(&client).await);
    let la = Election::new(&a, "fenced")
        .expect("e")
        .campaign("a")
        .await
        .expect("a leads");
    la.fenced_txn(vec![TxnOp::put("fenced-data", "from a", None)])
        .await
        .expect("a's write as leader");
    let eb = Election::new(&b, "fenced").expect("e");
    let b_campaign = tokio::spawn(async move { eb.campaign("b").await });
    let mut admin = client.clone();
    admin.lease_revoke(a.lease()).await.expect("revoke");
    tokio::time::timeout(Duration::from_secs(5), la.loss().lost())
        .await
        .expect("a is told it lost the leadership");
    let lb = tokio::time::timeout(Duration::from_secs(10), b_campaign)
        .await
        .expect("b elected")
        .expect("task")
        .expect("campaign");
    let stale = la
        .fenced_txn(vec![TxnOp::put("fenced-data", "stale", None)])
        .await;
    assert!(matches!(stale, Err(ElectionError::NotLeader { .. })), "{stale:?}");
    lb.fenced_txn(vec![TxnOp::put("fenced-data", "from b", None)])
        .await
        .expect("b's write");
    let data = admin.get("fenced-data", None).await.expect("get");
    assert_eq!(data.kvs()[0].value(), b"from b");
    lb.resign().await.expect("resign");
    b.close().await;
}
on_both_backends!(deposed_leader_writes_are_rejected);

/// A campaign dropped while waiting withdraws its candidacy; bad names are refused.
async fn cancelled_campaign_and_bad_input(backend: Backend) {
    let client = backend.client().await;
    let (a, b) = (session(&client).await, session(&client).await);
    assert!(matches!(Election::new(&a, ""), Err(ElectionError::EmptyName)));
    assert!(matches!(
        LeaderElector::new(client.clone(), ElectorConfig::new("", "x")),
        Err(ElectionError::EmptyName)
    ));
    let mut zero_ttl = ElectorConfig::new("x", "x");
    zero_ttl.lease_ttl = Duration::ZERO;
    assert!(LeaderElector::new(client.clone(), zero_ttl).is_err());

    let la = Election::new(&a, "withdraw")
        .expect("e")
        .campaign("a")
        .await
        .expect("a leads");
    let eb = Election::new(&b, "withdraw").expect("e");
    let pending = tokio::spawn(async move { eb.campaign("b").await.map(|_| ()) });
    support::wait_until_keys(&client, "withdraw/", 2).await;
    pending.abort();
    support::wait_until_keys(&client, "withdraw/", 1).await;
    la.resign().await.expect("resign");
    a.close().await;
    b.close().await;
}
on_both_backends!(cancelled_campaign_and_bad_input);

struct CountingWork {
    started: AtomicUsize,
    stopped: AtomicUsize,
    running: AtomicUsize,
    most_running: Arc<AtomicUsize>,
    leaders: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl LeaderCallbacks for CountingWork {
    async fn on_started_leading(&self, leading: Leading) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        leading.cancelled().await;
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
    fn on_stopped_leading(&self) {
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }
    fn on_new_leader(&self, identity: &[u8]) {
        if let Ok(mut l) = self.leaders.lock() {
            l.push(identity.to_vec());
        }
    }
}

/// Two electors: exactly one runs the work; shutting the leader down hands over at once (it resigns).
async fn elector_hands_over_on_shutdown(backend: Backend) {
    let client = backend.client().await;
    let most = Arc::new(AtomicUsize::new(0));
    let work = |most: &Arc<AtomicUsize>| {
        Arc::new(CountingWork {
            started: AtomicUsize::new(0),
            stopped: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: most.clone(),
            leaders: std::sync::Mutex::new(Vec::new()),
        })
    };
    let (wa, wb) = (work(&most), work(&most));
    let mut config_a = ElectorConfig::new("elector", "a");
    config_a.lease_ttl = Duration::from_secs(5);
    let mut config_b = ElectorConfig::new("elector", "b");
    config_b.lease_ttl = Duration::from_secs(5);
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let ea = LeaderElector::new(client.clone(), config_a).expect("elector");
    let run_a = tokio::spawn({
        let (w, s) = (wa.clone(), stop_a.clone());
        async move { ea.run(w, s).await }
    });
    trestle_etcd::testing::wait_for("a leads", Duration::from_secs(10), || async {
        (wa.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .expect("a starts leading");
    let eb = LeaderElector::new(client.clone(), config_b).expect("elector");
    let run_b = tokio::spawn({
        let (w, s) = (wb.clone(), stop_b.clone());
        async move { eb.run(w, s).await }
    });
    support::wait_until_keys(&client, "elector/", 2).await;
    assert_eq!(wb.started.load(Ordering::SeqCst), 0);
    trestle_etcd::testing::wait_for("b observed a as leader", Duration::from_secs(10), || async {
        let leaders = wb.leaders.lock().ok()?.clone();
        (leaders == [b"a".to_vec()]).then_some(())
    })
    .await
    .expect("b's observer reports the current leader");

    let handed_over = std::time::Instant::now();
    stop_a.cancel();
    run_a.await.expect("task").expect("a stops");
    assert_eq!(wa.stopped.load(Ordering::SeqCst), 1);
    trestle_etcd::testing::wait_for("b leads", Duration::from_secs(10), || async {
        (wb.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .expect("b starts leading");
    assert!(
        handed_over.elapsed() < Duration::from_secs(5),
        "resigning hands over before the TTL"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "never two leaders running work at once"
    );
    trestle_etcd::testing::wait_for("b saw both leaders", Duration::from_secs(10), || async {
        let leaders = wb.leaders.lock().ok()?.clone();
        (leaders == [b"a".to_vec(), b"b".to_vec()]).then_some(())
    })
    .await
    .expect("leaders observed in order");
    stop_b.cancel();
    run_b.await.expect("task").expect("b stops");
    support::wait_until_empty(&client, "elector/").await;
}
on_both_backends!(elector_hands_over_on_shutdown);

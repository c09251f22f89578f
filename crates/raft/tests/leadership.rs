//! Leadership moves on purpose: a node that stops hands each group it leads to a voter first (so no group
//! waits out an election timeout), `transfer_leadership` moves it to a named voter, and the pre-vote RPC asks
//! peers without raising anyone's term.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/counters.rs"]
mod counters;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestCluster, wait_for};
use counters::{COUNTERS, Command, CounterService, Reply};
use openraft::raft::VoteRequest;
use openraft::{RaftNetworkFactory, RaftNetworkV2, ServerState};
use trestle_raft::WatchReceiver as _;
use trestle_raft::{NetworkFactory, PeerChannels, Replicated, TransferError, transfer_leadership};

async fn counters_on(cluster: &TestCluster) -> BTreeMap<usize, Replicated<CounterService>> {
    let mut services = BTreeMap::new();
    for i in 0..3 {
        services.insert(i, counters::start_counters(cluster.node(i)).await);
    }
    services
}

/// The index of the node all of `services` agree leads, once they do.
async fn leader(services: &BTreeMap<usize, Replicated<CounterService>>) -> usize {
    wait_for("an agreed leader", Duration::from_secs(10), || async {
        let first = services.values().next()?.current_leader()?;
        services
            .values()
            .all(|s| s.current_leader() == Some(first))
            .then(|| {
                services
                    .iter()
                    .find(|(_, s)| s.node_id() == first)
                    .map(|(i, _)| *i)
            })
            .flatten()
    })
    .await
}

fn term(service: &Replicated<CounterService>) -> u64 {
    service.raft().metrics().borrow_watched().current_term
}

async fn add(service: &Replicated<CounterService>, delta: i64) -> Reply {
    service
        .propose(Command::Add {
            name: "c".into(),
            delta,
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_groups_over_before_it_goes() {
    let mut cluster = TestCluster::start(3).await;
    let mut services = counters_on(&cluster).await;
    let old = leader(&services).await;
    add(&services[&old], 1).await;
    let old_term = term(&services[&old]);

    services.remove(&old);
    cluster.stop(old).await;
    // No waiting: when the stop returns, a survivor already leads, elected once in the next term.
    let leaders: Vec<_> = services
        .values()
        .filter(|s| s.raft().metrics().borrow_watched().state == ServerState::Leader)
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "no survivor led when the old leader's stop returned"
    );
    assert_eq!(
        term(leaders[0]),
        old_term + 1,
        "the handover took more than one election"
    );
    // And it serves.
    assert_eq!(add(leaders[0], 2).await, Reply::Value(3));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_voter_named_and_only_from_the_leader() {
    let cluster = TestCluster::start(3).await;
    let services = counters_on(&cluster).await;
    let from = leader(&services).await;
    let to = (from + 1) % 3;
    let (to_id, from_id) = (services[&to].node_id(), services[&from].node_id());

    let follower = services[&to].raft();
    assert!(matches!(
        transfer_leadership(follower, COUNTERS, Some(from_id), Duration::from_secs(2)).await,
        Err(TransferError::NotLeader { .. })
    ));
    let raft = services[&from].raft();
    for bad in [from_id, 12345] {
        assert!(matches!(
            transfer_leadership(raft, COUNTERS, Some(bad), Duration::from_secs(2)).await,
            Err(TransferError::NotAVoter { .. })
        ));
    }

    let moved = transfer_leadership(raft, COUNTERS, Some(to_id), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(moved, to_id);
    assert_eq!(leader(&services).await, to);
    assert_eq!(
        add(&services[&from], 5).await,
        Reply::Value(5),
        "writes via the old leader still work"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_vote_is_answered_without_raising_the_voters_term() {
    let cluster = TestCluster::start(3).await;
    let services = counters_on(&cluster).await;
    let lead = leader(&services).await;
    let follower = (lead + 1) % 3;
    let before = term(&services[&follower]);
    let target = services[&follower].node_id();
    let node = services[&follower]
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .get_node(&target)
        .cloned()
        .unwrap();

    // A would-be candidate far ahead in term but with no log: a voter that follows a live leader refuses.
    let mut client = NetworkFactory::new(COUNTERS, PeerChannels::new(None), 1 << 20, Duration::from_secs(5))
        .new_client(target, &node)
        .await;
    let request = VoteRequest::new(openraft::Vote::new(before + 5, 999), None);
    let answer = client
        .pre_vote(request, openraft::network::RPCOption::new(Duration::from_secs(2)))
        .await
        .expect("the pre-vote RPC is answered");
    assert!(
        !answer.vote_granted,
        "a voter following a live leader granted a pre-vote: {answer:?}"
    );
    assert_eq!(
        term(&services[&follower]),
        before,
        "a pre-vote raised the voter's term"
    );
    assert_eq!(leader(&services).await, lead, "a pre-vote moved the leadership");
    cluster.shutdown().await;
}

/// Writes sent through a follower while leaders stop gracefully, round after round: each round's slowest write
/// and the failures seen.
async fn writes_through_a_follower_across_graceful_stops(rounds: usize) -> Vec<(Duration, Vec<String>)> {
    let mut cluster = TestCluster::start(3).await;
    let mut services = counters_on(&cluster).await;
    let mut seen = Vec::new();
    for round in 0..rounds {
        let old = leader(&services).await;
        let via = (old + 1) % 3;
        let writer = services[&via].clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acknowledged = done.clone();
        let writes = tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut failures = Vec::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let result = writer
                    .propose(Command::Add {
                        name: "r".into(),
                        delta: 1,
                    })
                    .await;
                slowest = slowest.max(started.elapsed());
                match result {
                    Ok(_) => {
                        acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(status) => failures.push(status.message().to_string()),
                }
            }
            (slowest, failures)
        });
        let acknowledged = || done.load(std::sync::atomic::Ordering::Relaxed);
        wait_for("writes through the follower", Duration::from_secs(10), || async {
            (acknowledged() >= 10).then_some(())
        })
        .await;
        services.remove(&old);
        cluster.stop(old).await;
        // Writes go on through the next leader; a stall shows in `slowest` (waited out here, up to its deadline).
        let before = acknowledged();
        wait_for("writes after the stop", Duration::from_secs(15), || async {
            (acknowledged() >= before + 10).then_some(())
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (slowest, failures) = writes.await.unwrap();
        println!("round {round}: slowest write {slowest:?}, failures {failures:?}");
        seen.push((slowest, failures));
        cluster.restart(old).await;
        services.insert(old, counters::start_counters(cluster.node(old)).await);
    }
    cluster.shutdown().await;
    seen
}

/// A stopping leader refuses what it has not proposed as "not done", so the follower sends it to the next leader
/// rather than failing it with "server stopped" (it did, in 3 of 4 rounds, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_unproposed_forwards_back_to_be_sent_again() {
    for (round, (_, failures)) in writes_through_a_follower_across_graceful_stops(4)
        .await
        .iter()
        .enumerate()
    {
        assert!(
            !failures.iter().any(|f| f.contains("stopped")),
            "round {round}: a write failed because the old leader stopped: {failures:?}"
        );
    }
}

/// While a leader stops gracefully, writes sent through another member keep going: the handover costs them
/// milliseconds. (A write forwarded to the stopping leader used to be forwarded on by it to the new leader — the
/// very follower whose one-batch pipeline it occupied — and both waited for the request timeout, 5 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_ride_through_a_graceful_leader_stop() {
    for (round, (slowest, failures)) in writes_through_a_follower_across_graceful_stops(4)
        .await
        .iter()
        .enumerate()
    {
        assert!(
            *slowest < Duration::from_secs(1),
            "round {round}: a write through a follower took {slowest:?} across a graceful leader stop ({failures:?})"
        );
    }
}

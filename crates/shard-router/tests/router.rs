//! The routing service and scatter/gather, against mock node services on paused tokio time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt, service_fn};
use trestle_shard_router::{
    BoundedLoadConfig, Fanout, GatherPolicy, Membership, MinSuccess, Node, NodeId, Router, RouterConfig,
    RouterError, ShardMap, StaticMembership, key_position,
};

#[derive(Clone, Debug)]
struct Get(String);

fn key(req: &Get) -> u64 {
    key_position(&req.0)
}

/// A node service answering `"<node>:<key>"`; nodes named `slow-*` take 10 s, `bad-*` fail.
fn node_service(node: &Node) -> BoxCloneService<Get, String, BoxError> {
    let id = node.id().clone();
    BoxCloneService::new(service_fn(move |req: Get| {
        let id = id.clone();
        async move {
            if id.as_str().starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            if id.as_str().starts_with("bad") {
                return Err(BoxError::from(format!("{id} is broken")));
            }
            Ok(format!("{id}:{}", req.0))
        }
    }))
}

fn map(ids: &[&str]) -> Arc<ShardMap> {
    Arc::new(ShardMap::new(ids.iter().map(|id| Node::new(*id))).expect("valid"))
}

#[tokio::test(start_paused = true)]
async fn sends_each_request_to_the_owner() {
    let map = map(&["a", "b", "c", "d"]);
    let mut router =
        Router::from_map(map.clone(), node_service, key, RouterConfig::default()).expect("valid");
    for i in 0..100 {
        let k = format!("key-{i}");
        let reply = router
            .ready()
            .await
            .expect("ready")
            .call(Get(k.clone()))
            .await
            .expect("routed");
        assert_eq!(reply, format!("{}:{k}", map.route(&k).id()));
    }
}

#[tokio::test(start_paused = true)]
async fn skips_nodes_marked_down_in_preference_order() {
    let map = map(&["a", "b", "c", "d"]);
    let router = Router::from_map(map.clone(), node_service, key, RouterConfig::default()).expect("valid");
    let replicas: Vec<NodeId> = map.replicas("user:1", 3).iter().map(|n| n.id().clone()).collect();
    router.health().mark_down(replicas[0].clone());
    let reply = router
        .clone()
        .oneshot(Get("user:1".into()))
        .await
        .expect("second replica");
    assert_eq!(reply, format!("{}:user:1", replicas[1]));

    router.health().mark_down(replicas[1].clone());
    router.health().mark_down(replicas[2].clone());
    match router.clone().oneshot(Get("user:1".into())).await {
        Err(RouterError::AllReplicasDown { tried }) => assert_eq!(tried, replicas),
        other => panic!("expected AllReplicasDown, got {other:?}"),
    }

    router.health().mark_up(replicas[0].as_str());
    let reply = router
        .clone()
        .oneshot(Get("user:1".into()))
        .await
        .expect("owner is back");
    assert_eq!(reply, format!("{}:user:1", replicas[0]));
}

#[tokio::test(start_paused = true)]
async fn failover_on_error_is_opt_in() {
    // Find a key owned by the broken node.
    let map = map(&["bad-1", "ok-1", "ok-2"]);
    let k = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| map.route(k).id() == "bad-1")
        .expect("some key");

    let strict = Router::from_map(map.clone(), node_service, key, RouterConfig::default()).expect("valid");
    match strict.clone().oneshot(Get(k.clone())).await {
        Err(RouterError::Node { node, .. }) => assert_eq!(node, "bad-1"),
        other => panic!("expected the node's error, got {other:?}"),
    }

    let config = RouterConfig::default().with_failover_on_error(true);
    let lenient = Router::from_map(map.clone(), node_service, key, config).expect("valid");
    let reply = lenient
        .clone()
        .oneshot(Get(k.clone()))
        .await
        .expect("next replica answers");
    assert_eq!(reply, format!("{}:{k}", map.replicas(&k, 2)[1].id()));
}

#[tokio::test(start_paused = true)]
async fn follows_membership_changes_atomically() {
    let members = StaticMembership::new([], Default::default()).expect("valid");
    let made = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&made);
    let make = move |node: &Node| {
        counter.fetch_add(1, Ordering::SeqCst);
        node_service(node)
    };
    let router = Router::new(members.watch(), make, key, RouterConfig::default()).expect("valid");
    assert!(matches!(
        router.clone().oneshot(Get("x".into())).await,
        Err(RouterError::NoNodes)
    ));

    members
        .set_nodes([Node::new("a"), Node::new("b")])
        .expect("valid");
    let before = router.current_map().expect("two nodes");
    for i in 0..20 {
        let k = format!("k{i}");
        let reply = router.clone().oneshot(Get(k.clone())).await.expect("routed");
        assert_eq!(reply, format!("{}:{k}", before.route(&k).id()));
    }
    members.add(Node::new("c")).expect("valid");
    let after = router.current_map().expect("three nodes");
    assert_eq!(after.len(), 3);
    for i in 0..20 {
        let k = format!("k{i}");
        let reply = router.clone().oneshot(Get(k.clone())).await.expect("routed");
        assert_eq!(reply, format!("{}:{k}", after.route(&k).id()));
    }
    // One service per node, made once and reused.
    assert_eq!(made.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn scatter_gathers_until_the_deadline() {
    let map = map(&["a", "b", "c", "slow-1"]);
    let router = Router::from_map(map, node_service, key, RouterConfig::default()).expect("valid");
    let deadline = Duration::from_secs(1);

    let start = Instant::now();
    let gathered = router
        .scatter(
            Get("q".into()),
            Fanout::AllNodes,
            GatherPolicy::new(deadline, MinSuccess::Majority),
        )
        .await
        .expect("3 of 4 is a majority");
    // Virtual time: the slow node never answered, so the gather ended exactly at the deadline.
    assert_eq!(start.elapsed(), deadline);
    let mut answered: Vec<&str> = gathered.replies.iter().map(|(id, _)| id.as_str()).collect();
    answered.sort_unstable();
    assert_eq!(answered, ["a", "b", "c"]);
    assert_eq!(gathered.timed_out, [NodeId::from("slow-1")]);

    match router
        .scatter(
            Get("q".into()),
            Fanout::AllNodes,
            GatherPolicy::new(deadline, MinSuccess::All),
        )
        .await
    {
        Err(RouterError::NotEnoughReplies {
            required: 4,
            succeeded: 3,
            timed_out: 1,
            ..
        }) => {}
        other => panic!("expected NotEnoughReplies, got {other:?}"),
    }

    // Without slow nodes the gather ends as soon as the last reply arrives.
    router.health().mark_down("slow-1");
    let start = Instant::now();
    let gathered = router
        .scatter(
            Get("q".into()),
            Fanout::AllNodes,
            GatherPolicy::new(deadline, MinSuccess::AtLeast(3)),
        )
        .await
        .expect("three answer");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        gathered.failures.len(),
        1,
        "the node marked down counts as failed"
    );
}

#[tokio::test(start_paused = true)]
async fn scatter_to_replicas_of_a_key() {
    let map = map(&["a", "b", "c", "d", "e"]);
    let router = Router::from_map(map.clone(), node_service, key, RouterConfig::default()).expect("valid");
    let gathered = router
        .scatter(
            Get("user:7".into()),
            Fanout::Replicas(3),
            GatherPolicy::new(Duration::from_secs(1), MinSuccess::AtLeast(2)),
        )
        .await
        .expect("all three answer");
    let mut got: Vec<NodeId> = gathered.replies.into_iter().map(|(id, _)| id).collect();
    let mut want: Vec<NodeId> = map.replicas("user:7", 3).iter().map(|n| n.id().clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// A node service that holds each request for 1 s (virtual time) and answers with its node id.
fn busy_service(node: &Node) -> BoxCloneService<Get, String, BoxError> {
    let id = node.id().clone();
    BoxCloneService::new(service_fn(move |_req: Get| {
        let id = id.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if id.as_str().starts_with("bad") {
                return Err(BoxError::from(format!("{id} is broken")));
            }
            Ok(id.to_string())
        }
    }))
}

async fn fan_in(router: &TestRouter, n: usize) -> Vec<String> {
    let calls = (0..n).map(|_| router.clone().oneshot(Get("celebrity".into())));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("served"))
        .collect()
}

type NodeService = BoxCloneService<Get, String, BoxError>;
type TestRouter = Router<NodeService, fn(&Node) -> NodeService, fn(&Get) -> u64>;

fn count(replies: &[String]) -> std::collections::HashMap<&str, usize> {
    let mut per_node = std::collections::HashMap::new();
    for r in replies {
        *per_node.entry(r.as_str()).or_default() += 1;
    }
    per_node
}

#[tokio::test(start_paused = true)]
async fn bounded_load_mode_spreads_a_hot_key_within_the_bound() {
    let map = map(&["a", "b", "c"]);
    let make: fn(&Node) -> NodeService = busy_service;
    let extract: fn(&Get) -> u64 = key;

    // Plain routing: 30 concurrent requests for one key all land on its owner.
    let plain = Router::from_map(map.clone(), make, extract, RouterConfig::default()).expect("valid");
    assert!(plain.bounded_load().is_none());
    let replies = fan_in(&plain, 30).await;
    assert_eq!(count(&replies).len(), 1);

    // Bounded: nobody carries more than ⌈1.25 × 30 / 3⌉ = 13 at once, the owner first.
    let config = RouterConfig::default().with_bounded_load(BoundedLoadConfig::default());
    let bounded = Router::from_map(map.clone(), make, extract, config).expect("valid");
    let replies = fan_in(&bounded, 30).await;
    let per_node = count(&replies);
    assert!(per_node.values().all(|&n| n <= 13), "{per_node:?}");
    assert_eq!(per_node.get(map.route("celebrity").id().as_str()), Some(&13));
    let loads = bounded.bounded_load().expect("bounded mode");
    assert_eq!(loads.total(), 0, "every guard released when its response arrived");

    // Nodes marked down take nothing.
    bounded.health().mark_down("a");
    let replies = fan_in(&bounded, 30).await;
    assert!(!count(&replies).contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn bounded_load_mode_fails_over_to_another_node() {
    let map = map(&["bad-1", "ok-1", "ok-2"]);
    let make: fn(&Node) -> NodeService = busy_service;
    let extract: fn(&Get) -> u64 = key;
    let k = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| map.route(k).id() == "bad-1")
        .expect("some key");
    let config = RouterConfig::default()
        .with_bounded_load(BoundedLoadConfig::default())
        .with_failover_on_error(true);
    let router = Router::from_map(map.clone(), make, extract, config).expect("valid");
    let reply = router.clone().oneshot(Get(k)).await.expect("failed over");
    assert!(reply.starts_with("ok-"));
    assert_eq!(router.bounded_load().map(|l| l.total()), Some(0));

    for id in ["bad-1", "ok-1", "ok-2"] {
        router.health().mark_down(id);
    }
    assert!(matches!(
        router.clone().oneshot(Get("x".into())).await,
        Err(RouterError::AllReplicasDown { .. })
    ));
}

#[test]
fn bad_router_config_is_rejected() {
    let result = Router::from_map(
        map(&["a"]),
        node_service,
        key,
        RouterConfig::default().with_attempts(0),
    );
    assert!(matches!(result, Err(RouterError::Config(_))));
    let factor = BoundedLoadConfig::default().with_balance_factor(0.5);
    let config = RouterConfig::default().with_bounded_load(factor);
    let result = Router::from_map(map(&["a"]), node_service, key, config);
    assert!(matches!(result, Err(RouterError::Config(_))));
}

#[test]
fn public_handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ShardMap>();
    assert_send_sync::<StaticMembership>();
    assert_send_sync::<trestle_shard_router::BoundedLoad>();
    assert_send_sync::<trestle_shard_router::LoadGuard>();
    assert_send_sync::<trestle_shard_router::NodeHealth>();
    assert_send_sync::<RouterError>();
    assert_send_sync::<TestRouter>();
    #[cfg(feature = "etcd")]
    assert_send_sync::<trestle_shard_router::EtcdMembership>();
}

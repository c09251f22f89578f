//! `StaticMembership` against the membership conformance suite, and its own edge cases.

use std::future::Future;
use std::time::Duration;

use trestle_shard_router::conformance::{MembershipDriver, check_membership};
use trestle_shard_router::{Membership, MembershipEvent, Node, ShardError, StaticMembership};

struct Driver<'a>(&'a StaticMembership);

impl MembershipDriver for Driver<'_> {
    fn join(&mut self, node: Node) -> impl Future<Output = ()> + Send {
        let result = self.0.add(node);
        async move { result.expect("add") }
    }

    fn leave(&mut self, id: &str) -> impl Future<Output = ()> + Send {
        let result = self.0.remove(id);
        async move { result.expect("remove") }
    }
}

#[tokio::test(start_paused = true)]
async fn static_membership_conforms() {
    let members = StaticMembership::new([], Default::default()).expect("valid");
    check_membership(&members, &mut Driver(&members), Duration::from_secs(1))
        .await
        .expect("conforms");
}

#[test]
fn invalid_changes_change_nothing() {
    let members = StaticMembership::new([Node::new("a")], Default::default()).expect("valid");
    let mut events = members.subscribe();
    let before = members.current().expect("one node");
    assert_eq!(
        members.set_nodes([Node::new("b"), Node::new("b")]),
        Err(ShardError::DuplicateNode { node: "b".into() })
    );
    assert_eq!(
        members.add(Node::new("c").with_weight(0)),
        Err(ShardError::ZeroWeight { node: "c".into() })
    );
    assert_eq!(
        members.remove("zz"),
        Err(ShardError::UnknownNode { node: "zz".into() })
    );
    let after = members.current().expect("one node");
    assert!(
        std::sync::Arc::ptr_eq(&before, &after),
        "the map was not replaced"
    );
    assert!(events.try_recv().is_err(), "no events");
}

#[test]
fn replacing_the_set_publishes_one_map_and_every_event() {
    let members = StaticMembership::new([Node::new("a"), Node::new("b")], Default::default()).expect("valid");
    let mut maps = members.watch();
    maps.mark_unchanged();
    let mut events = members.subscribe();
    members
        .set_nodes([Node::new("b").with_weight(2), Node::new("c")])
        .expect("valid");
    let mut got = Vec::new();
    while let Ok(e) = events.try_recv() {
        got.push(e);
    }
    assert_eq!(
        got,
        [
            MembershipEvent::Changed(Node::new("b").with_weight(2)),
            MembershipEvent::Joined(Node::new("c")),
            MembershipEvent::Left("a".into()),
        ]
    );
    assert!(maps.has_changed().unwrap_or(false));
    assert_eq!(
        maps.borrow_and_update().as_ref().map(|m| m.total_weight()),
        Some(3)
    );
    // Setting the same set again changes nothing.
    members
        .set_nodes([Node::new("b").with_weight(2), Node::new("c")])
        .expect("valid");
    assert!(!maps.has_changed().unwrap_or(true));
}

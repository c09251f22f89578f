//! A conformance suite for [`Membership`] implementations.
//!
//! Every implementation runs it in a few lines (see the crate's tests for [`StaticMembership`] and, with the
//! `etcd` feature, `EtcdMembership`): provide a [`MembershipDriver`] that makes nodes join and leave through the
//! implementation's own source of truth, and call [`check_membership`] on a membership that starts empty.
//!
//! [`StaticMembership`]: crate::StaticMembership

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{Membership, MembershipEvent, Node, NodeId};

/// Makes nodes join, change and leave through a membership's source (a program call, keys in etcd, …).
pub trait MembershipDriver {
    /// Registers `node`, or updates it if its id is registered.
    fn join(&mut self, node: Node) -> impl Future<Output = ()> + Send;

    /// Deregisters node `id`.
    fn leave(&mut self, id: &str) -> impl Future<Output = ()> + Send;
}

/// Checks the guarantees documented on [`Membership`], waiting up to `deadline` for each change to be observed:
///
/// - a join, an update and a leave each produce exactly the expected event, in order;
/// - when an event arrives, [`Membership::current`] already shows the change (maps are swapped before events
///   are sent), and the watch receiver has been notified;
/// - the map's nodes carry the registered weights and zones;
/// - with no nodes left, the current map is `None`.
///
/// The membership must start empty.
///
/// # Errors
/// A description of the first guarantee that did not hold.
pub async fn check_membership<M, D>(membership: &M, driver: &mut D, deadline: Duration) -> Result<(), String>
where
    M: Membership + ?Sized,
    D: MembershipDriver,
{
    if membership.current().is_some() {
        return Err("the membership must start empty".into());
    }
    let mut events = membership.subscribe();
    let mut maps = membership.watch();
    maps.mark_unchanged();

    let a = Node::new("conformance-a").with_zone("z1");
    let b = Node::new("conformance-b").with_weight(2).with_zone("z2");
    for node in [&a, &b] {
        driver.join(node.clone()).await;
        expect(&mut events, MembershipEvent::Joined(node.clone()), deadline).await?;
        let shown = membership
            .current()
            .and_then(|m| m.node(node.id().as_str()).cloned());
        if shown.as_ref() != Some(node) {
            return Err(format!(
                "after Joined({}), the current map shows {shown:?}",
                node.id()
            ));
        }
    }
    if !maps.has_changed().unwrap_or(false) {
        return Err("the watch receiver was not notified of the joins".into());
    }
    maps.mark_unchanged();

    let heavier = a.clone().with_weight(3);
    driver.join(heavier.clone()).await;
    expect(&mut events, MembershipEvent::Changed(heavier.clone()), deadline).await?;
    if membership.current().map(|m| m.total_weight()) != Some(5) {
        return Err("after Changed, the map's total weight is not 3 + 2".into());
    }

    driver.leave(b.id().as_str()).await;
    expect(&mut events, MembershipEvent::Left(b.id().clone()), deadline).await?;
    let ids: Option<Vec<NodeId>> = membership
        .current()
        .map(|m| m.nodes().iter().map(|n| n.id().clone()).collect());
    if ids.as_deref() != Some(std::slice::from_ref(a.id())) {
        return Err(format!("after Left({}), the map holds {ids:?}", b.id()));
    }

    driver.leave(a.id().as_str()).await;
    expect(&mut events, MembershipEvent::Left(a.id().clone()), deadline).await?;
    if membership.current().is_some() {
        return Err("with every node gone, the current map is not None".into());
    }
    if !maps.has_changed().unwrap_or(false) {
        return Err("the watch receiver was not notified of the leaves".into());
    }
    Ok(())
}

async fn expect(
    events: &mut broadcast::Receiver<MembershipEvent>,
    expected: MembershipEvent,
    deadline: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(deadline, events.recv()).await {
        Ok(Ok(event)) if event == expected => Ok(()),
        Ok(Ok(event)) => Err(format!("expected {expected:?}, got {event:?}")),
        Ok(Err(e)) => Err(format!("expected {expected:?}, the event channel said {e}")),
        Err(_) => Err(format!(
            "expected {expected:?}, nothing arrived within {deadline:?}"
        )),
    }
}

//! How a node joining an existing cluster with a new data directory learns its id.
//!
//! `MemberAdd` gives every member it adds a new id, never one a group has had before (see
//! [`MemberChange::Add`](crate::MemberChange::Add)): a member removed, wiped and added back at the same peer URL
//! must not be taken for the old one by a group that still lists it, because it holds none of the old one's log
//! or votes. So the new node cannot derive its id from its URL, as founders do; like an etcd member, it asks the
//! cluster. The members listed in `initial_cluster` are asked in turn for the membership group's members; only
//! that group's leader answers, after a linearizable read, so the answer includes every `MemberAdd` and
//! `MemberRemove` that completed before the node started. The node takes the id listed at its peer URL.
//!
//! Either way a node on a new data directory refuses to start when the cluster lists its peer URL with client URLs,
//! which a member publishes only once it has run: that member's data was wiped or swapped, and with an empty log
//! it could vote a member missing acknowledged writes into leadership (etcd refuses such a member as "already
//! bootstrapped"). A joining node learns it from the answer above; a founder (`ClusterState::New`) asks the same
//! question once ([`refuse_if_bootstrapped`]).

use std::time::Duration;

use tracing::{debug, info};

use crate::network::{PeerChannels, members_at};
use crate::node::{NodeConfig, NodeError};
use crate::types::{NodeId, PeerNode};

/// Time allowed for one member to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds over the members, doubled each round up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The peer URLs of `config.initial_cluster` but this node's own.
fn other_members(config: &NodeConfig) -> Vec<&str> {
    config
        .initial_cluster
        .iter()
        .map(|(_, url)| url.as_str())
        .filter(|url| !same_url(url, &config.advertise_peer_url))
        .collect()
}

/// Whether member `id` of `members` has published its client URLs, which a member does once it has run.
fn has_run(members: &[(NodeId, PeerNode)], id: NodeId) -> bool {
    members
        .iter()
        .any(|(member, node)| *member == id && !node.client_urls.is_empty())
}

/// The id `members` give the member at `peer_url`, if any.
pub(crate) fn id_at(members: &[(NodeId, PeerNode)], peer_url: &str) -> Option<NodeId> {
    members
        .iter()
        .find(|(_, node)| same_url(&node.peer_url, peer_url))
        .map(|(id, _)| *id)
}

/// Asks the other members of `config.initial_cluster` for this node's id until one leader lists its peer URL,
/// or `config.join_timeout` passes.
pub(crate) async fn own_id_from_cluster(
    config: &NodeConfig,
    channels: &PeerChannels,
) -> Result<NodeId, NodeError> {
    let me = &config.advertise_peer_url;
    let group = config.membership_group;
    let others = other_members(config);
    let join_error = |reason: String| NodeError::Join {
        peer_url: me.clone(),
        reason,
    };
    if others.is_empty() {
        return Err(join_error(
            "the initial cluster lists no other member to ask for this node's id".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + config.join_timeout;
    let mut pause = FIRST_PAUSE;
    let mut last = String::from("no member answered");
    loop {
        for url in &others {
            match members_at(channels, url, group, ASK_TIMEOUT).await {
                Ok(members) => match id_at(&members, me) {
                    // Listed with client URLs: that member has run, and this empty directory is not its data (a
                    // member added with MemberAdd publishes them only once it has started).
                    Some(id) if has_run(&members, id) => {
                        return Err(NodeError::AlreadyBootstrapped {
                            peer_url: me.clone(),
                            id,
                            asked: (*url).to_owned(),
                        });
                    }
                    Some(id) => {
                        info!(
                            id,
                            leader = url,
                            group,
                            "joining with the id the cluster gave this peer URL"
                        );
                        return Ok(id);
                    }
                    None => {
                        last = format!(
                            "the leader at {url} lists no member at this peer URL in group {group} (add it with \
                             MemberAdd first)"
                        );
                    }
                },
                Err(status) => {
                    debug!(url, %status, "no membership from this member");
                    last = format!("{url}: {}", status.message());
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(join_error(last));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Time a founder on a new data directory gives the other founders to answer (all at once).
const BOOTSTRAPPED_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// For a founder starting on a new data directory: asks every other member of `config.initial_cluster` at once,
/// and fails with [`NodeError::AlreadyBootstrapped`] when a leader of the membership group lists this peer URL
/// with client URLs, which a member publishes only after it has run: its data directory was wiped or swapped,
/// and a member with an empty log could vote a member missing acknowledged writes into leadership. Members
/// founding a cluster together are never refused (none has published yet); when no leader answers within
/// [`BOOTSTRAPPED_ASK_TIMEOUT`] (no cluster yet, or none reachable), the node starts.
pub(crate) async fn refuse_if_bootstrapped(
    config: &NodeConfig,
    channels: &PeerChannels,
) -> Result<(), NodeError> {
    let me = &config.advertise_peer_url;
    let group = config.membership_group;
    let asked = other_members(config).into_iter().map(|url| async move {
        (
            url,
            members_at(channels, url, group, BOOTSTRAPPED_ASK_TIMEOUT).await,
        )
    });
    for (url, answer) in futures::future::join_all(asked).await {
        let Ok(members) = answer else {
            continue;
        };
        if let Some(id) = id_at(&members, me)
            && has_run(&members, id)
        {
            return Err(NodeError::AlreadyBootstrapped {
                peer_url: me.clone(),
                id,
                asked: url.to_owned(),
            });
        }
    }
    Ok(())
}

/// `group`'s members as its leader knows them after a linearizable read: asked of the leader `raft` knows, then
/// of every other member its view lists, each within `timeout`; the last error if none answers.
///
/// A member removed from a group may never receive the entry that removes it (the leader stops replicating to
/// it), so its own view can list it long after: ask this when that matters.
pub async fn members_from_leader(
    channels: &PeerChannels,
    raft: &crate::Raft,
    group: crate::GroupId,
    timeout: Duration,
) -> Result<Vec<(NodeId, PeerNode)>, tonic::Status> {
    let metrics = {
        use openraft::async_runtime::WatchReceiver as _;
        raft.metrics().borrow_watched().clone()
    };
    let membership = metrics.membership_config.membership();
    let mut urls: Vec<String> = Vec::new();
    if let Some(node) = metrics.current_leader.and_then(|id| membership.get_node(&id)) {
        urls.push(node.peer_url.clone());
    }
    for (_, node) in membership.nodes() {
        if !urls.contains(&node.peer_url) {
            urls.push(node.peer_url.clone());
        }
    }
    let mut last = tonic::Status::unavailable(format!("group {group} lists no member to ask"));
    for url in &urls {
        match members_at(channels, url, group, timeout).await {
            Ok(members) => return Ok(members),
            Err(status) => {
                debug!(url, %status, group, "no membership from this member");
                last = status;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, url: &str) -> (NodeId, PeerNode) {
        (
            id,
            PeerNode {
                name: String::new(),
                peer_url: url.into(),
                client_urls: Vec::new(),
            },
        )
    }

    #[test]
    fn a_joining_node_takes_the_id_listed_at_its_peer_url() {
        let members = [member(7, "http://a:2380"), member(9, "http://b:2380/")];
        assert_eq!(id_at(&members, "http://b:2380"), Some(9));
        assert_eq!(id_at(&members, "http://a:2380/"), Some(7));
        assert_eq!(id_at(&members, "http://c:2380"), None);
    }
}

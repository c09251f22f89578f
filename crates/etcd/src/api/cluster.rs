//! etcd `Cluster`: MemberList, MemberAdd (learner or voter), MemberPromote, MemberRemove, MemberUpdate.

use std::time::Duration;
use trestle_raft::WatchReceiver as _;

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::EtcdServer;
use trestle_raft::MemberChange;
use trestle_raft::{NodeId, PeerNode};

impl EtcdServer {
    /// The members as this node's Raft state knows them: voters first, then learners, each in id order.
    pub(crate) fn members(&self) -> Vec<PbMember> {
        let metrics = self.store.raft().metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let member = |id: NodeId, learner: bool| {
            let node = membership.get_node(&id).cloned().unwrap_or_default();
            PbMember {
                id,
                name: node.name,
                peer_ur_ls: vec![node.peer_url],
                client_ur_ls: node.client_urls,
                is_learner: learner,
            }
        };
        let mut members: Vec<PbMember> = membership.voter_ids().map(|id| member(id, false)).collect();
        members.extend(membership.learner_ids().map(|id| member(id, true)));
        members
    }

    /// The members once this node has applied everything committed before the call (a change just made through
    /// the leader included), so a response lists its own change. Without a leader, after a short wait, this
    /// node's view.
    async fn members_now(&self) -> Vec<PbMember> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.store.read_barrier()).await;
        self.members()
    }

    fn member_header(&self) -> etcd_client::proto::PbResponseHeader {
        let revision = self.store.read(|app| app.store().revision());
        self.header(revision)
    }
}

fn one_peer_url(urls: &[String]) -> Result<String, Status> {
    match urls {
        [url] if url.starts_with("http://") || url.starts_with("https://") => Ok(url.clone()),
        [url] => Err(Status::invalid_argument(format!(
            "etcdserver: peer URL {url:?} must start with http:// or https://"
        ))),
        [] => Err(Status::invalid_argument("etcdserver: no peer URL given")),
        _ => Err(Status::invalid_argument(
            "etcdserver: Trestle members have exactly one peer URL",
        )),
    }
}

#[tonic::async_trait]
impl PbClusterService for EtcdServer {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        let req = request.into_inner();
        let peer_url = one_peer_url(&req.peer_ur_ls)?;
        let node = PeerNode {
            name: String::new(),
            peer_url: peer_url.clone(),
            client_urls: Vec::new(),
        };
        let id = self
            .store
            .change_member(MemberChange::Add {
                node,
                learner: req.is_learner,
            })
            .await?;
        Ok(Response::new(PbMemberAddResponse {
            header: Some(self.member_header()),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: vec![peer_url],
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members_now().await,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        self.store.change_member(MemberChange::Remove(id)).await?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: Some(self.member_header()),
            members: self.members_now().await,
        }))
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        let req = request.into_inner();
        let peer_url = one_peer_url(&req.peer_ur_ls)?;
        self.store
            .change_member(MemberChange::UpdatePeerUrl(req.id, peer_url))
            .await?;
        Ok(Response::new(PbMemberUpdateResponse {
            header: Some(self.member_header()),
            members: self.members_now().await,
        }))
    }

    async fn member_list(
        &self,
        _request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        // Read your own membership changes on any node: catch up with the leader's commit index first. Without a
        // leader, answer from this node's view after a short wait rather than fail (a member list is what an
        // operator asks for during an outage).
        let _ = tokio::time::timeout(Duration::from_secs(1), self.store.read_barrier()).await;
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.member_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        self.store.change_member(MemberChange::Promote(id)).await?;
        Ok(Response::new(PbMemberPromoteResponse {
            header: Some(self.member_header()),
            members: self.members_now().await,
        }))
    }
}

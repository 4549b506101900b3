//! etcd's Cluster service: the member list, read from the Raft membership.

use tonic::{Request, Response, Status};

use super::SharedNode;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};

pub struct ClusterService {
    node: SharedNode,
}

impl ClusterService {
    pub fn new(node: SharedNode) -> Self {
        ClusterService { node }
    }

    fn members(&self) -> Vec<Member> {
        let metrics = self.node.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let learners: Vec<_> = membership.learner_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| Member {
                id: *id,
                name: member.name.clone(),
                peer_ur_ls: member.peer_urls.clone(),
                client_ur_ls: member.client_urls.clone(),
                is_learner: learners.contains(id),
            })
            .collect()
    }
}

fn needs_multi_member() -> Status {
    Status::unimplemented(
        "cairn: membership changes need multi-member clusters, which this build does not run",
    )
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(needs_multi_member())
    }

    async fn member_remove(
        &self,
        _request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(needs_multi_member())
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(needs_multi_member())
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(self.node.store.current_revision())),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(needs_multi_member())
    }
}

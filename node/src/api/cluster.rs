//! etcd's Cluster service: the member list from the Raft membership, and membership changes
//! run by the leader (forwarded there from any member).

use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{Route, SharedNode};
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use crate::raft::membership::{self, ChangeOutcome, Listed, MembershipChange};
use crate::raft::{self, MemberId};

/// How often a member checks its place in the cluster (attributes, promotions, removal).
const UPKEEP_INTERVAL: Duration = Duration::from_millis(300);

pub struct ClusterService {
    node: SharedNode,
}

impl ClusterService {
    pub fn new(node: SharedNode) -> Self {
        ClusterService { node }
    }

    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        Some(self.node.header(self.node.store.current_revision()))
    }
}

/// The members as etcd lists them.
pub(crate) fn members(node: &super::Node) -> Vec<Member> {
    let metrics = node.raft.metrics();
    let listed = membership::listed(metrics.borrow().membership_config.membership());
    to_proto(listed)
}

fn to_proto(listed: Vec<Listed>) -> Vec<Member> {
    listed
        .into_iter()
        .map(
            |Listed {
                 id,
                 member,
                 learner,
             }| Member {
                id,
                name: member.name,
                peer_ur_ls: member.peer_urls,
                client_ur_ls: member.client_urls,
                is_learner: learner,
            },
        )
        .collect()
}

/// Runs a membership change on the leader, wherever that is; answers the members once it is
/// committed, as the leader lists them (etcd answers the list after the change, which this
/// member may not have applied yet).
pub(crate) async fn change(
    node: &super::Node,
    change: MembershipChange,
) -> Result<Vec<Member>, Status> {
    match node.route().await? {
        Route::Here => membership::apply_change(&node.raft, change)
            .await
            .map(to_proto),
        Route::Leader(_, leader) => {
            let mut client = node
                .peers
                .client(&leader)
                .map_err(|_| super::errors::no_leader())?;
            let message = raft::encode_peer_message(&change)
                .map_err(|e| Status::internal(format!("cairn: cannot encode the change: {e}")))?;
            let reply = client
                .change_membership(message)
                .await
                .map_err(super::errors::from_peer_status)?;
            let outcome: ChangeOutcome = raft::decode_peer_message(reply.get_ref())
                .map_err(|e| Status::internal(format!("cairn: undecodable answer: {e}")))?;
            outcome
                .map(to_proto)
                .map_err(|(code, message)| Status::new(tonic::Code::from_i32(code), message))
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        if request.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: peer URLs are not provided",
            ));
        }
        for url in &request.peer_ur_ls {
            url::Url::parse(url).map_err(|e| {
                Status::invalid_argument(format!("etcdserver: invalid peer URL {url:?}: {e}"))
            })?;
        }
        let id = crate::config::member_id(&request.peer_ur_ls, &self.node.cluster_token);
        let member = raft::Member {
            name: String::new(),
            peer_urls: request.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            wants_vote: !request.is_learner,
        };
        let members = change(&self.node, MembershipChange::Add { id, member }).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: request.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: request.is_learner,
            }),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let members = change(&self.node, MembershipChange::Remove { id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let current = self
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&request.id)
            .cloned()
            .ok_or_else(membership::member_not_found)?;
        let member = raft::Member {
            peer_urls: request.peer_ur_ls,
            ..current
        };
        let members = change(
            &self.node,
            MembershipChange::Update {
                id: request.id,
                member,
            },
        )
        .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: members(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let members = change(&self.node, MembershipChange::Promote { id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}

/// Keeps this member's place in the cluster up to date, for as long as it runs:
/// publishes its name and client URLs once it has joined (etcd's published attributes), lets
/// the leader promote caught-up learners, and stops the member once it has been removed.
pub async fn maintain_membership(
    node: SharedNode,
    own: raft::Member,
    auto_promote: bool,
    stop: watch::Sender<bool>,
) {
    let mut was_member = false;
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        let (listed, is_leader) = {
            let metrics = node.raft.metrics();
            let metrics = metrics.borrow();
            let listed = metrics
                .membership_config
                .membership()
                .get_node(&node.member_id)
                .cloned();
            (listed, metrics.current_leader == Some(node.member_id))
        };
        match listed {
            Some(listed) => {
                was_member = true;
                if listed.name != own.name || listed.client_urls != own.client_urls {
                    let member = raft::Member {
                        name: own.name.clone(),
                        client_urls: own.client_urls.clone(),
                        ..listed
                    };
                    let published = change(
                        &node,
                        MembershipChange::Update {
                            id: node.member_id,
                            member,
                        },
                    )
                    .await;
                    if let Err(error) = published {
                        tracing::debug!(%error, "publishing member attributes failed; will retry");
                    }
                }
            }
            None if was_member => {
                tracing::warn!(
                    member_id = %format!("{:x}", node.member_id),
                    "this member has been removed from the cluster; stopping"
                );
                let _ = stop.send(true);
                return;
            }
            None => {}
        }
        if is_leader {
            if let Err(error) = membership::promote_learners(&node.raft, auto_promote).await {
                tracing::debug!(%error, "promoting learners failed; will retry");
            }
        }
    }
}

/// The ids of the members that vote.
pub fn voter_ids(node: &super::Node) -> Vec<MemberId> {
    node.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

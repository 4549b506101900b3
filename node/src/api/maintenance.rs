//! etcd's Maintenance service: Status, Alarm, HashKV, Defragment, Snapshot and MoveLeader.
//! Operations Cairn does not offer answer Unimplemented with a message saying so, never a
//! false success.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::SharedNode;
use crate::proto::cairnpb::{raft_request, raft_response, CampaignRequest};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

/// The etcd API level Cairn implements, reported in `Status.version`: clients such as
/// kube-apiserver gate features on it. Cairn's own version is `CARGO_PKG_VERSION`.
pub const ETCD_API_VERSION: &str = "3.5.13";

/// The size of a Snapshot response's piece of the store, as etcd's 32 KiB.
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

pub struct MaintenanceService {
    node: SharedNode,
}

impl MaintenanceService {
    pub fn new(node: SharedNode) -> Self {
        MaintenanceService { node }
    }
}

fn leader_transfer_timeout() -> Status {
    Status::unavailable("etcdserver: request timed out, leader transfer took too long")
}

/// etcd prints alarms in Status.errors in protobuf text form.
fn describe_alarm(alarm: &AlarmMember) -> String {
    let name = AlarmType::try_from(alarm.alarm)
        .map(|kind| kind.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{} alarm:{} ", alarm.member_id, name)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        if request.action == AlarmAction::Get as i32 {
            self.node.read_barrier().await?;
            let alarms = self
                .node
                .store
                .alarms()
                .into_iter()
                .filter(|alarm| {
                    request.alarm == AlarmType::None as i32 || alarm.alarm == request.alarm
                })
                .collect();
            return Ok(Response::new(AlarmResponse {
                header: Some(self.node.header(self.node.store.current_revision())),
                alarms,
            }));
        }
        match self
            .node
            .propose(raft_request::Request::Alarm(request))
            .await?
        {
            raft_response::Response::Alarm(mut response) => {
                response.header = Some(self.node.header(self.node.store.current_revision()));
                Ok(Response::new(response))
            }
            _ => Err(Status::internal(
                "etcdserver: the state machine answered a different request",
            )),
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let (leader, raft_term, raft_applied_index, is_learner) = {
            let metrics = node.raft.metrics();
            let metrics = metrics.borrow();
            let is_learner = metrics
                .membership_config
                .membership()
                .learner_ids()
                .any(|id| id == node.member_id);
            (
                metrics.current_leader.unwrap_or(0),
                metrics.current_term,
                metrics.last_applied.map_or(0, |id| id.index),
                is_learner,
            )
        };
        Ok(Response::new(StatusResponse {
            header: Some(node.header(node.store.current_revision())),
            version: ETCD_API_VERSION.to_owned(),
            db_size: node.store.db_size(),
            leader,
            raft_index: node.log.last_index(),
            raft_term,
            raft_applied_index,
            errors: node
                .store
                .alarms()
                .iter()
                .map(describe_alarm)
                .chain(crate::health::expiring_certificates(node))
                .collect(),
            db_size_in_use: node.store.db_size_in_use(),
            is_learner,
        }))
    }

    /// Compacts this member's state file, as etcd defragments its own backend; the other
    /// members are not involved.
    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.node.store.clone();
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|error| Status::internal(format!("cairn: defragment failed: {error}")))?
            .map_err(|error| Status::internal(format!("cairn: defragment failed: {error}")))?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.node.header(self.node.store.current_revision())),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented(
            "cairn: Hash is not supported; use HashKV",
        ))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let request = request.into_inner();
        let (hash, compact_revision, hash_revision) = self.node.store.hash_kv(request.revision)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(self.node.store.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// This member's whole store as one [`crate::store::Store::backup`], in chunks: what
    /// `etcdctl snapshot save` writes to its file and `cairn snapshot restore` loads
    /// (etcdctl's own restore expects a bbolt file and cannot).
    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.node.store.clone();
        let bytes = tokio::task::spawn_blocking(move || store.backup())
            .await
            .map_err(|error| Status::internal(format!("cairn: snapshot failed: {error}")))?
            .map_err(|error| Status::internal(format!("cairn: snapshot failed: {error}")))?;
        let header = self.node.header(self.node.store.current_revision());
        let chunks = bytes.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        let responses = futures::stream::iter(0..chunks).map(move |chunk| {
            let start = chunk * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            Ok(SnapshotResponse {
                header: Some(header),
                remaining_bytes: (bytes.len() - end) as u64,
                blob: bytes[start..end].to_vec(),
                version: ETCD_API_VERSION.to_owned(),
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let node = &self.node;
        if node.raft.metrics().borrow().state != openraft::ServerState::Leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        let respond = || {
            Ok(Response::new(MoveLeaderResponse {
                header: Some(node.header(node.store.current_revision())),
            }))
        };
        if target == node.member_id {
            return respond();
        }
        if !super::cluster::voter_ids(node).contains(&target) {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        let deadline = node.election_timeout * 10;
        let give_up = tokio::time::Instant::now() + deadline;
        // The transferee must hold every entry before it campaigns, or it cannot win.
        let mut metrics = node.raft.metrics();
        let caught_up = tokio::time::timeout(
            deadline,
            metrics.wait_for(|metrics| {
                let last = metrics.last_log_index;
                metrics.replication.as_ref().is_some_and(|replication| {
                    replication
                        .get(&target)
                        .is_some_and(|matched| matched.map(|id| id.index) == last)
                })
            }),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        if !caught_up {
            return Err(leader_transfer_timeout());
        }
        let transferee = {
            let current = metrics.borrow();
            current
                .membership_config
                .membership()
                .get_node(&target)
                .cloned()
        }
        .ok_or_else(|| Status::failed_precondition("etcdserver: bad leader transferee"))?;
        let mut client = node
            .peers
            .client(&transferee)
            .map_err(|_| leader_transfer_timeout())?;
        // Silent, this leader's lease runs out on the followers, and the transferee's
        // campaign succeeds; it also must not campaign itself meanwhile.
        node.raft.runtime_config().heartbeat(false);
        node.raft.runtime_config().elect(false);
        let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
        let campaign = client
            .campaign(CampaignRequest {
                deadline_ms: remaining.as_millis() as u64,
            })
            .await;
        node.raft.runtime_config().heartbeat(true);
        node.raft.runtime_config().elect(true);
        match campaign {
            Ok(reply) if reply.get_ref().elected => respond(),
            _ => Err(leader_transfer_timeout()),
        }
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("cairn: downgrade is not supported"))
    }
}

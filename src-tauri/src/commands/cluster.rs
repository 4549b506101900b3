//! The cluster view: members, their raft state and each one's lag behind the leader,
//! sampled every second. etcd has no API for follower lag, so it is computed here from
//! `Status` on every member's own client URL: leader's raft index minus the member's
//! applied index. That works against plain etcd too.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::Client;
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::State;

use crate::connections::connect_options;
use crate::error::{CommandError, CommandResult};
use crate::state::{AppState, Session};

const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// A member slower than this to answer Status counts as unreachable for the sample.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Learner,
    /// The member did not answer Status.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// A leader, and every member answers.
    Healthy,
    /// A leader, but some members do not answer or lag.
    Degraded,
    /// No leader (or no member answers): writes cannot succeed.
    Unavailable,
}

/// What one member reported in one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberStatus {
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub db_size: i64,
    pub version: String,
    pub is_learner: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberSample {
    /// Member ids are 64-bit; sent as hex text because JavaScript numbers lose the low bits.
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
    pub role: Role,
    pub raft_term: Option<u64>,
    pub raft_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub db_size: Option<i64>,
    pub version: Option<String>,
    /// Entries behind the leader: leader's raft index minus this member's applied index.
    pub lag: Option<u64>,
    /// Why the member has no status in this sample.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSample {
    /// Milliseconds since the Unix epoch, when the sample was taken.
    pub taken_at: u64,
    pub health: Health,
    pub leader_id: Option<String>,
    pub members: Vec<MemberSample>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClusterMessage {
    Sample { sample: ClusterSample },
    Failed { error: CommandError },
}

/// One member of the member list with its Status, or the reason it has none.
pub struct MemberReport {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    pub status: Result<MemberStatus, String>,
}

pub fn member_id_text(id: u64) -> String {
    format!("{id:x}")
}

/// Turns the members' Status answers into a sample: roles, lag and health.
pub fn summarise(taken_at: u64, reports: &[MemberReport]) -> ClusterSample {
    let leader = reports
        .iter()
        .filter_map(|report| report.status.as_ref().ok())
        .map(|status| status.leader)
        .find(|&leader| leader != 0);
    let leader_index = leader.and_then(|leader| {
        reports
            .iter()
            .find(|report| report.id == leader)
            .and_then(|report| report.status.as_ref().ok())
            .map(|status| status.raft_index)
    });
    let members: Vec<MemberSample> = reports
        .iter()
        .map(|report| match &report.status {
            Ok(status) => MemberSample {
                id: member_id_text(report.id),
                name: report.name.clone(),
                client_urls: report.client_urls.clone(),
                role: if Some(report.id) == leader {
                    Role::Leader
                } else if report.is_learner || status.is_learner {
                    Role::Learner
                } else {
                    Role::Follower
                },
                raft_term: Some(status.raft_term),
                raft_index: Some(status.raft_index),
                applied_index: Some(status.raft_applied_index),
                db_size: Some(status.db_size),
                version: Some(status.version.clone()),
                lag: leader_index.map(|index| index.saturating_sub(status.raft_applied_index)),
                error: None,
            },
            Err(error) => MemberSample {
                id: member_id_text(report.id),
                name: report.name.clone(),
                client_urls: report.client_urls.clone(),
                role: Role::Unknown,
                raft_term: None,
                raft_index: None,
                applied_index: None,
                db_size: None,
                version: None,
                lag: None,
                error: Some(error.clone()),
            },
        })
        .collect();
    let all_answer = members.iter().all(|member| member.error.is_none());
    let health = match leader {
        None => Health::Unavailable,
        Some(_) if all_answer && !members.is_empty() => Health::Healthy,
        Some(_) => Health::Degraded,
    };
    ClusterSample {
        taken_at,
        health,
        leader_id: leader.map(member_id_text),
        members,
    }
}

/// Clients to each member's own client URL, kept between samples.
pub struct MemberClients {
    session: Session,
    by_url: HashMap<String, Client>,
}

impl MemberClients {
    pub fn new(session: Session) -> Self {
        Self {
            session,
            by_url: HashMap::new(),
        }
    }

    async fn status(&mut self, client_urls: &[String]) -> Result<MemberStatus, String> {
        let Some(url) = client_urls.first() else {
            return Err("the member has not published a client URL yet".to_owned());
        };
        if !self.by_url.contains_key(url) {
            let options = connect_options(&self.session.profile, self.session.password.as_deref())
                .map_err(|error| error.message)?;
            let client = Client::connect([url], Some(options))
                .await
                .map_err(|error| CommandError::from(error).message)?;
            self.by_url.insert(url.clone(), client);
        }
        let client = self.by_url.get_mut(url).expect("inserted above");
        let status = tokio::time::timeout(STATUS_TIMEOUT, client.status())
            .await
            .map_err(|_| "no answer within 800 ms".to_owned())?
            .map_err(|error| CommandError::from(error).message)?;
        Ok(MemberStatus {
            leader: status.leader(),
            raft_term: status.raft_term(),
            raft_index: status.raft_index(),
            raft_applied_index: status.raft_applied_index(),
            db_size: status.db_size(),
            version: status.version().to_owned(),
            is_learner: status.is_learner(),
        })
    }

    /// One sample: the member list from the session's endpoints, then Status from each
    /// member in turn (each bounded by STATUS_TIMEOUT).
    pub async fn sample(&mut self) -> CommandResult<ClusterSample> {
        let mut client = self.session.client.clone();
        let list = client.member_list().await?;
        let mut reports = Vec::new();
        for member in list.members() {
            let client_urls = member.client_urls().to_vec();
            let status = self.status(&client_urls).await;
            reports.push(MemberReport {
                id: member.id(),
                name: member.name().to_owned(),
                client_urls,
                is_learner: member.is_learner(),
                status,
            });
        }
        let taken_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Ok(summarise(taken_at, &reports))
    }
}

/// Starts sampling the cluster every second; returns the stream id for `stop_stream`.
#[tauri::command]
pub async fn start_cluster_sampling(
    state: State<'_, AppState>,
    on_message: Channel<ClusterMessage>,
) -> CommandResult<u64> {
    let session = state.session().await?;
    let task = tokio::spawn(async move {
        let mut members = MemberClients::new(session);
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let message = match members.sample().await {
                Ok(sample) => ClusterMessage::Sample { sample },
                Err(error) => ClusterMessage::Failed { error },
            };
            if on_message.send(message).is_err() {
                return;
            }
        }
    });
    Ok(state.streams().start(task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_node;
    use crate::connections::ConnectionProfile;

    fn report(id: u64, is_learner: bool, status: Result<MemberStatus, String>) -> MemberReport {
        MemberReport {
            id,
            name: format!("m{id}"),
            client_urls: vec![format!("http://127.0.0.1:{id}")],
            is_learner,
            status,
        }
    }

    fn status(leader: u64, raft_index: u64, applied: u64) -> MemberStatus {
        MemberStatus {
            leader,
            raft_term: 3,
            raft_index,
            raft_applied_index: applied,
            db_size: 4096,
            version: "3.5.13".into(),
            is_learner: false,
        }
    }

    #[test]
    fn lag_is_leader_raft_index_minus_member_applied_index_learners_included() {
        let sample = summarise(
            1,
            &[
                report(1, false, Ok(status(1, 100, 100))),
                report(2, false, Ok(status(1, 98, 95))),
                report(3, true, Ok(status(1, 40, 30))),
            ],
        );
        let roles: Vec<Role> = sample.members.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::Leader, Role::Follower, Role::Learner]);
        let lags: Vec<Option<u64>> = sample.members.iter().map(|m| m.lag).collect();
        assert_eq!(lags, [Some(0), Some(5), Some(70)]);
        assert_eq!(sample.health, Health::Healthy);
        assert_eq!(sample.leader_id.as_deref(), Some("1"));
    }

    #[test]
    fn unreachable_member_degrades_health_and_no_leader_is_unavailable() {
        let degraded = summarise(
            1,
            &[
                report(1, false, Ok(status(1, 10, 10))),
                report(2, false, Err("no answer within 800 ms".into())),
            ],
        );
        assert_eq!(degraded.health, Health::Degraded);
        assert_eq!(degraded.members[1].role, Role::Unknown);
        assert_eq!(degraded.members[1].lag, None);

        let leaderless = summarise(1, &[report(1, false, Ok(status(0, 10, 10)))]);
        assert_eq!(leaderless.health, Health::Unavailable);
        assert_eq!(leaderless.members[0].lag, None);
    }

    #[test]
    fn member_ids_are_hex_text_so_javascript_keeps_every_bit() {
        let sample = summarise(1, &[report(u64::MAX, false, Ok(status(u64::MAX, 1, 1)))]);
        assert_eq!(sample.members[0].id, "ffffffffffffffff");
        let json = serde_json::to_value(&sample).unwrap();
        assert_eq!(json["members"][0]["role"], "leader");
        assert_eq!(json["members"][0]["appliedIndex"], 1);
        assert_eq!(json["health"], "healthy");
    }

    #[tokio::test]
    async fn sample_of_a_single_node_shows_it_as_leader_with_no_lag() {
        let Some((node, client)) = test_node::start().await else {
            return;
        };
        let session = Session {
            profile: ConnectionProfile {
                id: "t".into(),
                name: "test".into(),
                endpoints: vec![node.endpoint.clone()],
                tls: None,
                username: None,
            },
            password: None,
            client,
        };
        let mut members = MemberClients::new(session);
        // A new member publishes its client URLs shortly after it starts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let sample = loop {
            let sample = members.sample().await.unwrap();
            if sample.health == Health::Healthy || tokio::time::Instant::now() > deadline {
                break sample;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(sample.health, Health::Healthy, "{sample:?}");
        assert_eq!(sample.members.len(), 1);
        let member = &sample.members[0];
        assert_eq!(member.role, Role::Leader);
        assert_eq!(member.lag, Some(0));
        assert_eq!(member.version.as_deref(), Some("3.5.13"));
    }
}

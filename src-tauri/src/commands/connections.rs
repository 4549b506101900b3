//! Saved connections and the session: save, list, forget, connect, disconnect.

use etcd_client::Client;
use serde::{Deserialize, Serialize};
use tauri::State;

use crate::connections::{connect_options, validate, ConnectionProfile, SecretStorage};
use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::state::{AppState, Session};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedConnection {
    pub profile: ConnectionProfile,
    /// Where the password went, so the UI can warn when it is kept for this session only.
    pub secret_storage: SecretStorage,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDraft {
    pub profile: ConnectionProfile,
    /// None keeps the password already stored; Some("") removes it.
    pub password: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    pub connection_id: String,
    pub cluster_id: String,
    pub member_id: String,
    pub revision: i64,
    pub version: String,
    pub leader_id: String,
}

/// Opens a client and proves the cluster answers with a Status call.
pub async fn open(
    profile: &ConnectionProfile,
    password: Option<&str>,
) -> CommandResult<(Client, ClusterSummary)> {
    let options = connect_options(profile, password)?;
    let mut client = Client::connect(&profile.endpoints, Some(options)).await?;
    let status = client.status().await?;
    let header = status.header().ok_or_else(|| {
        CommandError::new(
            ErrorKind::Server,
            "The cluster answered without a response header.",
        )
    })?;
    let summary = ClusterSummary {
        connection_id: profile.id.clone(),
        cluster_id: format!("{:x}", header.cluster_id()),
        member_id: format!("{:x}", header.member_id()),
        revision: header.revision(),
        version: status.version().to_owned(),
        leader_id: format!("{:x}", status.leader()),
    };
    Ok((client, summary))
}

#[tauri::command]
pub fn list_connections(state: State<'_, AppState>) -> CommandResult<Vec<ConnectionProfile>> {
    state.connections.list()
}

#[tauri::command]
pub fn save_connection(
    state: State<'_, AppState>,
    draft: ConnectionDraft,
) -> CommandResult<SavedConnection> {
    validate(&draft.profile)?;
    state.connections.save(draft.profile.clone())?;
    let secret_storage = match draft.password.as_deref() {
        None => SecretStorage::None,
        Some("") => {
            state.secrets.forget(&draft.profile.id);
            SecretStorage::None
        }
        Some(password) => state.secrets.store(&draft.profile.id, password),
    };
    Ok(SavedConnection {
        profile: draft.profile,
        secret_storage,
    })
}

#[tauri::command]
pub fn delete_connection(state: State<'_, AppState>, id: String) -> CommandResult<()> {
    state.connections.remove(&id)?;
    state.secrets.forget(&id);
    Ok(())
}

#[tauri::command]
pub async fn connect(state: State<'_, AppState>, id: String) -> CommandResult<ClusterSummary> {
    let profile = state.connections.get(&id)?;
    let password = state.secrets.load(&id);
    let (client, summary) = open(&profile, password.as_deref()).await?;
    tracing::info!(connection_id = %id, cluster_id = %summary.cluster_id, "connected");
    state
        .set_session(Some(Session {
            profile,
            password,
            client,
        }))
        .await;
    Ok(summary)
}

#[tauri::command]
pub async fn disconnect(state: State<'_, AppState>) -> CommandResult<()> {
    state.set_session(None).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_node;

    #[tokio::test]
    async fn open_reports_the_cluster_and_an_unreachable_endpoint_is_unavailable() {
        let unreachable = ConnectionProfile {
            id: "x".into(),
            name: "nowhere".into(),
            // Port 1 on loopback: nothing listens there, so the connection is refused.
            endpoints: vec!["http://127.0.0.1:1".into()],
            tls: None,
            username: None,
        };
        let Err(error) = open(&unreachable, None).await else {
            panic!("connected to a port nobody listens on");
        };
        assert_eq!(error.kind, ErrorKind::Unavailable, "{error:?}");

        let Some((node, _client)) = test_node::start().await else {
            return;
        };
        let reachable = ConnectionProfile {
            endpoints: vec![node.endpoint.clone()],
            ..unreachable
        };
        let (_client, summary) = open(&reachable, None).await.unwrap();
        assert_eq!(summary.version, "3.5.13");
        assert_eq!(summary.leader_id, summary.member_id);
        assert!(summary.revision >= 1);
    }
}

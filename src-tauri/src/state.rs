//! What the app keeps between commands, handed to Tauri with `.manage()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use etcd_client::Client;
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

use crate::connections::{ConnectionProfile, ConnectionStore, SecretStore};
use crate::error::{CommandError, CommandResult};

/// The cluster the app is connected to.
#[derive(Clone)]
pub struct Session {
    pub profile: ConnectionProfile,
    /// Kept so the cluster view can open a client per member with the same credentials.
    pub password: Option<String>,
    pub client: Client,
}

pub struct AppState {
    pub connections: ConnectionStore,
    pub secrets: SecretStore,
    session: RwLock<Option<Session>>,
    streams: StreamRegistry,
}

impl AppState {
    pub fn new(connections: ConnectionStore, secrets: SecretStore) -> Self {
        Self {
            connections,
            secrets,
            session: RwLock::new(None),
            streams: StreamRegistry::default(),
        }
    }

    pub async fn session(&self) -> CommandResult<Session> {
        self.session
            .read()
            .await
            .clone()
            .ok_or_else(CommandError::not_connected)
    }

    /// Replaces the session; the streams of the old one stop with it.
    pub async fn set_session(&self, session: Option<Session>) {
        self.streams.stop_all();
        *self.session.write().await = session;
    }

    pub fn streams(&self) -> &StreamRegistry {
        &self.streams
    }
}

/// Background tasks that push to the UI (watches, cluster sampling), by the id the UI
/// uses to stop them when their view closes.
#[derive(Default)]
pub struct StreamRegistry {
    next_id: AtomicU64,
    running: Mutex<HashMap<u64, JoinHandle<()>>>,
}

impl StreamRegistry {
    pub fn start(&self, task: JoinHandle<()>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.running().insert(id, task);
        id
    }

    /// Returns whether a stream with that id was running.
    pub fn stop(&self, id: u64) -> bool {
        match self.running().remove(&id) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    pub fn stop_all(&self) {
        for (_, task) in self.running().drain() {
            task.abort();
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, JoinHandle<()>>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

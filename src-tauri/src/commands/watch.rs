//! Live watches: each one runs as a task that forwards events to the UI over a Tauri
//! channel until the UI stops it (view closed) or the session changes.

use etcd_client::{Client, EventType, WatchOptions};
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::State;

use super::{encode_value, key_text};
use crate::error::{CommandError, CommandResult};
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    /// "put" or "delete".
    pub kind: &'static str,
    pub key: String,
    /// The revision of the change (for a delete, the revision that deleted it).
    pub revision: i64,
    pub value: String,
    /// The value before this change; absent for a key created by this change.
    pub prev_value: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WatchMessage {
    Events {
        events: Vec<WatchEvent>,
    },
    /// The watch ended; the UI shows the error and offers to restart it.
    Failed {
        error: CommandError,
    },
}

/// Forwards events on `key` (a prefix if `prefix`) to `deliver` until the stream ends or
/// `deliver` returns false (the UI went away).
pub async fn forward_events(
    client: &mut Client,
    key: &str,
    prefix: bool,
    mut deliver: impl FnMut(WatchMessage) -> bool,
) {
    let mut options = WatchOptions::new().with_prev_key();
    if prefix {
        options = options.with_prefix();
    }
    let mut stream = match client.watch(key, Some(options)).await {
        Ok(stream) => stream,
        Err(error) => {
            deliver(WatchMessage::Failed {
                error: error.into(),
            });
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                let events: Vec<WatchEvent> = response
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = event.kv()?;
                        Some(WatchEvent {
                            kind: match event.event_type() {
                                EventType::Put => "put",
                                EventType::Delete => "delete",
                            },
                            key: key_text(kv.key()),
                            revision: kv.mod_revision(),
                            value: encode_value(kv.value()),
                            prev_value: event.prev_kv().map(|prev| encode_value(prev.value())),
                        })
                    })
                    .collect();
                if !events.is_empty() && !deliver(WatchMessage::Events { events }) {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                deliver(WatchMessage::Failed {
                    error: error.into(),
                });
                return;
            }
        }
    }
}

/// Starts a watch and returns its stream id, for `stop_stream`.
#[tauri::command]
pub async fn start_watch(
    state: State<'_, AppState>,
    key: String,
    prefix: bool,
    on_message: Channel<WatchMessage>,
) -> CommandResult<u64> {
    let mut client = state.session().await?.client;
    let task = tokio::spawn(async move {
        forward_events(&mut client, &key, prefix, |message| {
            on_message.send(message).is_ok()
        })
        .await;
    });
    Ok(state.streams().start(task))
}

/// Stops a watch or a cluster sampler; stopping one that already ended is not an error.
#[tauri::command]
pub fn stop_stream(state: State<'_, AppState>, stream_id: u64) {
    state.streams().stop(stream_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_node;

    #[tokio::test]
    async fn prefix_watch_delivers_puts_and_deletes_with_previous_values() {
        let Some((_node, client)) = test_node::start().await else {
            return;
        };
        let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
        let mut watch_client = client.clone();
        let watcher = tokio::spawn(async move {
            forward_events(&mut watch_client, "/w/", true, |message| {
                sender.send(message).is_ok()
            })
            .await;
        });
        let mut writer = client;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        // The watch may start after a write, so write a marker until one shows up.
        loop {
            writer.put("/w/marker", "", None).await.unwrap();
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(200), received.recv()).await;
            if let Ok(Some(WatchMessage::Events { .. })) = waited {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch never delivered"
            );
        }
        while received.try_recv().is_ok() {}
        writer.put("/w/a", "1", None).await.unwrap();
        writer.put("/w/a", "2", None).await.unwrap();
        writer.put("/outside", "x", None).await.unwrap();
        let delete_revision = writer
            .delete("/w/a", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut events = Vec::new();
        while events.len() < 3 {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(WatchMessage::Events { events: batch })) => {
                    events.extend(batch.into_iter().filter(|event| event.key != "/w/marker"))
                }
                other => panic!("no watch events: {other:?}"),
            }
        }
        let last = events.last().unwrap();
        assert_eq!(last.kind, "delete");
        assert_eq!(last.revision, delete_revision);
        assert_eq!(
            last.prev_value.as_deref(),
            Some(encode_value(b"2").as_str())
        );
        assert!(events.iter().all(|event| event.key == "/w/a"));
        assert_eq!(
            events[1].prev_value.as_deref(),
            Some(encode_value(b"1").as_str())
        );
        watcher.abort();
    }
}

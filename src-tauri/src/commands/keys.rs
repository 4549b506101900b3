//! Key browsing and editing: paging through the keyspace, reading one key with its
//! metadata and history, and writes guarded by a compare on mod_revision.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::Serialize;
use tauri::State;

use super::{decode_value, encode_value, key_text};
use crate::error::{CommandError, CommandResult, ErrorKind};
use crate::state::AppState;

/// The most keys one page may hold: bounds the size of one IPC message.
pub const MAX_PAGE_SIZE: u32 = 10_000;

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Whether keys remain after the last one of this page.
    pub more: bool,
    /// The revision the page was read at; later pages are read at the same revision so
    /// the whole listing is one consistent snapshot.
    pub revision: i64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyDetail {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersion {
    pub mod_revision: i64,
    pub version: i64,
    pub value: String,
}

/// The first key after every key that starts with `prefix`; empty prefix means all keys
/// (etcd's "\0" range end).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub async fn list_page(
    client: &mut Client,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
    at_revision: Option<i64>,
) -> CommandResult<KeyPage> {
    let limit = limit.clamp(1, MAX_PAGE_SIZE);
    let start = match after {
        // The smallest key greater than `after`.
        Some(after) => [after.as_bytes(), b"\0"].concat(),
        // etcd rejects an empty key; "\0" is the smallest key there is.
        None if prefix.is_empty() => vec![0],
        None => prefix.as_bytes().to_vec(),
    };
    let mut options = GetOptions::new()
        .with_range(prefix_range_end(prefix.as_bytes()))
        .with_keys_only()
        .with_limit(i64::from(limit));
    if let Some(revision) = at_revision {
        options = options.with_revision(revision);
    }
    let response = client.get(start, Some(options)).await?;
    let revision = response.header().map_or(0, |header| header.revision());
    Ok(KeyPage {
        keys: response.kvs().iter().map(|kv| key_text(kv.key())).collect(),
        more: response.more(),
        revision: at_revision.unwrap_or(revision),
    })
}

pub async fn get(client: &mut Client, key: &str) -> CommandResult<KeyDetail> {
    let response = client.get(key, None).await?;
    response
        .kvs()
        .first()
        .map(detail)
        .ok_or_else(|| key_not_found(key))
}

fn detail(kv: &etcd_client::KeyValue) -> KeyDetail {
    KeyDetail {
        key: key_text(kv.key()),
        value: encode_value(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn key_not_found(key: &str) -> CommandError {
    CommandError::new(
        ErrorKind::NotFound,
        format!("The key {key} does not exist (any more)."),
    )
}

/// Writes `value` only if the key's mod_revision is still `expected_mod_revision` (0: the
/// key must not exist). On a mismatch nothing is written and the error says what changed.
pub async fn put(
    client: &mut Client,
    key: &str,
    value: &[u8],
    expected_mod_revision: i64,
) -> CommandResult<KeyDetail> {
    if key.is_empty() {
        return Err(CommandError::new(
            ErrorKind::InvalidInput,
            "A key cannot be empty.",
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key,
            CompareOp::Equal,
            expected_mod_revision,
        )])
        .and_then([TxnOp::put(key, value, None), TxnOp::get(key, None)])
        .or_else([TxnOp::get(key, None)]);
    let response = client.txn(txn).await?;
    let current = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(detail),
        _ => None,
    });
    if response.succeeded() {
        return current.ok_or_else(|| key_not_found(key));
    }
    Err(conflict(key, expected_mod_revision, current.as_ref()))
}

/// Deletes the key only if its mod_revision is still `expected_mod_revision`.
pub async fn delete(
    client: &mut Client,
    key: &str,
    expected_mod_revision: i64,
) -> CommandResult<()> {
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key,
            CompareOp::Equal,
            expected_mod_revision,
        )])
        .and_then([TxnOp::delete(key, None)])
        .or_else([TxnOp::get(key, None)]);
    let response = client.txn(txn).await?;
    if response.succeeded() {
        return Ok(());
    }
    let current = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(detail),
        _ => None,
    });
    Err(conflict(key, expected_mod_revision, current.as_ref()))
}

fn conflict(key: &str, expected: i64, current: Option<&KeyDetail>) -> CommandError {
    let message = match (expected, current) {
        (0, Some(_)) => format!("The key {key} already exists: open it to edit it."),
        (_, None) => format!("The key {key} was deleted by someone else meanwhile. Nothing was changed."),
        (_, Some(now)) => format!(
            "The key {key} was changed by someone else (revision {expected} → {}). Nothing was changed: reload it and try again.",
            now.mod_revision
        ),
    };
    CommandError::new(ErrorKind::Conflict, message).with_detail(format!(
        "expected mod_revision {expected}, found {}",
        current.map_or(0, |now| now.mod_revision)
    ))
}

/// Deletes every key under a non-empty prefix and returns how many there were.
pub async fn delete_prefix(client: &mut Client, prefix: &str) -> CommandResult<i64> {
    if prefix.is_empty() {
        return Err(CommandError::new(
            ErrorKind::InvalidInput,
            "Refusing to delete with an empty prefix: that would delete every key.",
        ));
    }
    let response = client
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await?;
    Ok(response.deleted())
}

/// The key's versions, newest first, walking back from its current version through
/// reads at older revisions until its creation, a deletion or compaction.
pub async fn history(
    client: &mut Client,
    key: &str,
    max_versions: usize,
) -> CommandResult<Vec<KeyVersion>> {
    let mut versions = Vec::new();
    let mut at_revision = 0;
    while versions.len() < max_versions.max(1) {
        let options = GetOptions::new().with_revision(at_revision);
        let response = match client.get(key, Some(options)).await {
            Ok(response) => response,
            // Older versions were compacted away: the history ends here.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::OutOfRange =>
            {
                break
            }
            Err(error) => return Err(error.into()),
        };
        let Some(kv) = response.kvs().first() else {
            break;
        };
        versions.push(KeyVersion {
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            value: encode_value(kv.value()),
        });
        if kv.version() <= 1 {
            break;
        }
        at_revision = kv.mod_revision() - 1;
    }
    Ok(versions)
}

#[tauri::command]
pub async fn list_keys(
    state: State<'_, AppState>,
    prefix: String,
    after: Option<String>,
    limit: u32,
    at_revision: Option<i64>,
) -> CommandResult<KeyPage> {
    let mut client = state.session().await?.client;
    list_page(&mut client, &prefix, after.as_deref(), limit, at_revision).await
}

#[tauri::command]
pub async fn get_key(state: State<'_, AppState>, key: String) -> CommandResult<KeyDetail> {
    let mut client = state.session().await?.client;
    get(&mut client, &key).await
}

#[tauri::command]
pub async fn put_key(
    state: State<'_, AppState>,
    key: String,
    value: String,
    expected_mod_revision: i64,
) -> CommandResult<KeyDetail> {
    let mut client = state.session().await?.client;
    put(
        &mut client,
        &key,
        &decode_value(&value)?,
        expected_mod_revision,
    )
    .await
}

#[tauri::command]
pub async fn delete_key(
    state: State<'_, AppState>,
    key: String,
    expected_mod_revision: i64,
) -> CommandResult<()> {
    let mut client = state.session().await?.client;
    delete(&mut client, &key, expected_mod_revision).await
}

#[tauri::command]
pub async fn delete_keys_with_prefix(
    state: State<'_, AppState>,
    prefix: String,
) -> CommandResult<i64> {
    let mut client = state.session().await?.client;
    delete_prefix(&mut client, &prefix).await
}

#[tauri::command]
pub async fn key_history(
    state: State<'_, AppState>,
    key: String,
) -> CommandResult<Vec<KeyVersion>> {
    let mut client = state.session().await?.client;
    history(&mut client, &key, 50).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_node;

    #[test]
    fn prefix_range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[tokio::test]
    async fn pages_cover_every_key_under_the_prefix_exactly_once_in_order() {
        let Some((_node, mut client)) = test_node::start().await else {
            return;
        };
        for i in 0..25 {
            client.put(format!("/p/k{i:03}"), "v", None).await.unwrap();
        }
        client.put("/other", "v", None).await.unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        let mut revision = None;
        loop {
            let page = list_page(&mut client, "/p/", after.as_deref(), 10, revision)
                .await
                .unwrap();
            // A write between pages must not show: the pages read one snapshot.
            client.put("/p/k999-late", "v", None).await.unwrap();
            revision = Some(page.revision);
            after = page.keys.last().cloned();
            seen.extend(page.keys);
            if !page.more {
                break;
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("/p/k{i:03}")).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn empty_prefix_lists_every_key() {
        let Some((_node, mut client)) = test_node::start().await else {
            return;
        };
        for key in ["/a", "b", "/c/d"] {
            client.put(key, "v", None).await.unwrap();
        }
        let page = list_page(&mut client, "", None, 100, None).await.unwrap();
        assert_eq!(page.keys, ["/a", "/c/d", "b"]);
        assert!(!page.more);
    }

    #[tokio::test]
    async fn edit_with_a_stale_mod_revision_is_a_conflict_and_writes_nothing() {
        let Some((_node, mut client)) = test_node::start().await else {
            return;
        };
        let created = put(&mut client, "/cfg", b"one", 0).await.unwrap();
        assert_eq!(created.version, 1);
        let again = put(&mut client, "/cfg", b"dup", 0).await.unwrap_err();
        assert_eq!(again.kind, ErrorKind::Conflict);
        assert!(
            again.message.contains("already exists"),
            "{}",
            again.message
        );

        let edited = put(&mut client, "/cfg", b"two", created.mod_revision)
            .await
            .unwrap();
        assert_eq!(edited.version, 2);
        let stale = put(&mut client, "/cfg", b"three", created.mod_revision)
            .await
            .unwrap_err();
        assert_eq!(stale.kind, ErrorKind::Conflict);
        assert_eq!(
            get(&mut client, "/cfg").await.unwrap().value,
            encode_value(b"two")
        );

        let stale_delete = delete(&mut client, "/cfg", created.mod_revision)
            .await
            .unwrap_err();
        assert_eq!(stale_delete.kind, ErrorKind::Conflict);
        delete(&mut client, "/cfg", edited.mod_revision)
            .await
            .unwrap();
        assert_eq!(
            get(&mut client, "/cfg").await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn history_lists_versions_newest_first_back_to_creation() {
        let Some((_node, mut client)) = test_node::start().await else {
            return;
        };
        client.put("/h", "v0-before-delete", None).await.unwrap();
        client.delete("/h", None).await.unwrap();
        for value in ["a", "b", "c"] {
            client.put("/h", value, None).await.unwrap();
            client.put("/unrelated", value, None).await.unwrap();
        }
        let versions = history(&mut client, "/h", 50).await.unwrap();
        let values: Vec<String> = versions.iter().map(|v| v.value.clone()).collect();
        assert_eq!(values, ["c", "b", "a"].map(|v| encode_value(v.as_bytes())));
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [3, 2, 1]
        );
        assert_eq!(history(&mut client, "/h", 2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn delete_prefix_refuses_the_empty_prefix_and_counts_deleted_keys() {
        let Some((_node, mut client)) = test_node::start().await else {
            return;
        };
        for key in ["/d/1", "/d/2", "/e"] {
            client.put(key, "v", None).await.unwrap();
        }
        assert_eq!(
            delete_prefix(&mut client, "").await.unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        assert_eq!(delete_prefix(&mut client, "/d/").await.unwrap(), 2);
        assert!(get(&mut client, "/e").await.is_ok());
    }
}

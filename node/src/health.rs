//! The plain-HTTP pages etcd serves beside gRPC: `/health`, `/livez`, `/readyz`, `/version`
//! and `/metrics`, on the client URLs (next to gRPC, see [`router`]) and on
//! `--listen-metrics-urls` (a small HTTP/1 server of its own, see [`serve`]); with the expiry
//! of the certificates this member serves, also for Status.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::api::maintenance::ETCD_API_VERSION;
use crate::api::{Node, SharedNode};
use crate::proto::etcdserverpb::AlarmType;
use crate::security::{expiry, unix_seconds, EXPIRY_WARNING};

/// The longest request head read; `/health` needs no body.
const MAX_REQUEST_BYTES: usize = 8192;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Status errors for certificates that expire within [`EXPIRY_WARNING`] (renewal should have
/// replaced them long before) or cannot be read.
pub fn expiring_certificates(node: &Node) -> Vec<String> {
    let soon = SystemTime::now() + EXPIRY_WARNING;
    node.certificate_files
        .iter()
        .filter_map(|path| match expiry(path) {
            Ok(not_after) if not_after > soon => None,
            Ok(not_after) => Some(format!(
                "cairn: certificate {} expires at {} (unix seconds)",
                path.display(),
                unix_seconds(not_after)
            )),
            Err(error) => Some(format!("cairn: {error:#}")),
        })
        .collect()
}

/// What `/health` is asked, from its query string as etcd reads it: `exclude=ALARM` (any
/// number of times) ignores that alarm, `serializable=true` skips the leader check and reads
/// without a quorum.
#[derive(Debug, Default, PartialEq)]
struct HealthQuery {
    excluded: Vec<String>,
    serializable: bool,
}

impl HealthQuery {
    fn parse(query: &str) -> HealthQuery {
        let mut parsed = HealthQuery::default();
        for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            match name {
                "exclude" if !value.is_empty() => parsed.excluded.push(value.to_owned()),
                "serializable" => parsed.serializable = value == "true",
                _ => {}
            }
        }
        parsed
    }
}

/// Why `/health` fails, in etcd's words; `None` when healthy. Alarms first, then (unless
/// serializable) the leader, then a read: linearizable unless serializable, as etcd's range.
async fn unhealthy(node: &Node, query: &HealthQuery) -> Option<&'static str> {
    let alarm = node.store.alarms().iter().find_map(|alarm| {
        let (name, reason) = match AlarmType::try_from(alarm.alarm) {
            Ok(AlarmType::Nospace) => ("NOSPACE", "ALARM NOSPACE"),
            Ok(AlarmType::Corrupt) => ("CORRUPT", "ALARM CORRUPT"),
            _ => ("UNKNOWN", "ALARM UNKNOWN"),
        };
        (!query.excluded.iter().any(|excluded| excluded == name)).then_some(reason)
    });
    if alarm.is_some() {
        return alarm;
    }
    if query.serializable {
        // A local read of the store cannot fail short of the process failing.
        return None;
    }
    if !node.has_leader() {
        return Some("RAFT NO LEADER");
    }
    linearizable_read(node).await.err().map(|_| "QGET ERROR")
}

/// A linearizable read's barrier within three election timeouts, as the health checks ask
/// for one; the error says why it failed.
async fn linearizable_read(node: &Node) -> Result<(), String> {
    match tokio::time::timeout(node.leader_wait, node.read_barrier()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// The `/health` document: etcd's `health` and `reason`, and each certificate's expiry.
async fn health_document(node: &Node, query: &HealthQuery) -> serde_json::Value {
    let reason = unhealthy(node, query).await.unwrap_or("");
    let certificates: Vec<serde_json::Value> = node
        .certificate_files
        .iter()
        .map(|path| match expiry(path) {
            Ok(not_after) => serde_json::json!({
                "file": path.display().to_string(),
                "not_after": unix_seconds(not_after),
                "expires_in_seconds": not_after
                    .duration_since(SystemTime::now())
                    .map_or(0, |left| left.as_secs()),
            }),
            Err(error) => serde_json::json!({
                "file": path.display().to_string(),
                "error": format!("{error:#}"),
            }),
        })
        .collect();
    serde_json::json!({
        "health": if reason.is_empty() { "true" } else { "false" },
        "reason": reason,
        "certificates": certificates,
    })
}

/// Serves the pages over HTTP/1 on `listener` (a metrics URL) until `stop` turns true.
pub async fn serve(listener: TcpListener, node: SharedNode, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection on the metrics URL failed");
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &node).await {
                tracing::debug!(%error, "a request on the metrics URL failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        if read == 0 || head.len() > MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = String::from_utf8_lossy(&head);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let page = if method == "GET" {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        page(node, path, query).await
    } else {
        Page::new(StatusCode::METHOD_NOT_ALLOWED, TEXT, "Method Not Allowed\n")
    };
    let (status, content_type, body) = (page.status, page.content_type, page.body);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The paths served, on the client and the metrics URLs alike.
const PATHS: [&str; 5] = ["/health", "/livez", "/readyz", "/version", "/metrics"];

/// The content type of the plain-text pages.
const TEXT: &str = "text/plain; charset=utf-8";

/// One page's answer.
struct Page {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Page {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Self {
        Page {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A check in the form of etcd's `/livez` and `/readyz`: `ok`, or the failed check and
    /// its reason with 503.
    fn check(endpoint: &str, failed: Option<(&str, String)>) -> Self {
        match failed {
            None => Page::new(StatusCode::OK, TEXT, "ok"),
            Some((check, reason)) => Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("[-]{check} failed: {reason}\n{endpoint} check failed\n"),
            ),
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> axum::response::Response {
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, self.content_type)],
            self.body,
        )
            .into_response()
    }
}

/// The page at `path` with `query` (the part after `?`): one of [`PATHS`], else 404.
async fn page(node: &Node, path: &str, query: &str) -> Page {
    match path {
        "/health" => {
            let document = health_document(node, &HealthQuery::parse(query)).await;
            let status = if document["health"] == "true" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Page::new(status, "application/json", document.to_string())
        }
        // The process answers: that is what liveness asks.
        "/livez" => Page::check("livez", None),
        "/readyz" => {
            let corrupt = node
                .store
                .alarms()
                .iter()
                .any(|alarm| alarm.alarm == AlarmType::Corrupt as i32);
            let failed = if corrupt {
                Some(("data_corruption", "alarm activated: CORRUPT".to_owned()))
            } else {
                linearizable_read(node)
                    .await
                    .err()
                    .map(|reason| ("linearizable_read", reason))
            };
            Page::check("readyz", failed)
        }
        "/version" => Page::new(
            StatusCode::OK,
            "application/json",
            serde_json::json!({
                "etcdserver": ETCD_API_VERSION,
                "etcdcluster": cluster_version(),
            })
            .to_string(),
        ),
        "/metrics" => match crate::metrics::render(node) {
            Ok(text) => Page::new(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => Page::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "cannot encode the metrics\n",
            ),
        },
        _ => Page::new(StatusCode::NOT_FOUND, TEXT, "404 page not found\n"),
    }
}

/// etcd's cluster version: the server version's major and minor, patch 0.
fn cluster_version() -> String {
    let mut parts = ETCD_API_VERSION.split('.');
    let major = parts.next().unwrap_or("3");
    let minor = parts.next().unwrap_or("5");
    format!("{major}.{minor}.0")
}

/// The pages as routes beside the gRPC services of a client listener (see [`not_found`] for
/// any other path).
pub fn router(node: SharedNode) -> axum::Router {
    PATHS.iter().fold(axum::Router::new(), |router, &path| {
        let node = node.clone();
        router.route(
            path,
            axum::routing::get(move |RawQuery(query): RawQuery| async move {
                page(&node, path, query.as_deref().unwrap_or("")).await
            }),
        )
    })
}

/// The answer on a client listener to a path nothing serves: gRPC's Unimplemented to a gRPC
/// call (an unregistered service, such as Auth), etcd's 404 page to anything else.
pub async fn not_found(headers: axum::http::HeaderMap) -> axum::response::Response {
    let grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if grpc {
        tonic::Status::unimplemented("").into_http()
    } else {
        Page::new(StatusCode::NOT_FOUND, TEXT, "404 page not found\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::HealthQuery;

    #[test]
    fn the_health_query_reads_etcds_parameters() {
        assert_eq!(HealthQuery::parse(""), HealthQuery::default());
        assert_eq!(
            HealthQuery::parse("exclude=NOSPACE&serializable=true&exclude=&other=1"),
            HealthQuery {
                excluded: vec!["NOSPACE".to_owned()],
                serializable: true,
            }
        );
        assert_eq!(
            HealthQuery::parse("serializable=false&exclude=NOSPACE&exclude=CORRUPT"),
            HealthQuery {
                excluded: vec!["NOSPACE".to_owned(), "CORRUPT".to_owned()],
                serializable: false,
            }
        );
    }
}

//! etcd's `GET /health` and `GET /metrics` over plain HTTP on `--listen-metrics-urls`, with
//! the expiry of the certificates this member serves; and those expiries for Status.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::api::SharedNode;
use crate::security::{expiry, unix_seconds, EXPIRY_WARNING};

/// The longest request head read; `/health` needs no body.
const MAX_REQUEST_BYTES: usize = 8192;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Status errors for certificates that expire within [`EXPIRY_WARNING`] (renewal should have
/// replaced them long before) or cannot be read.
pub fn expiring_certificates(node: &crate::api::Node) -> Vec<String> {
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

/// The `/health` document: etcd's `health` and `reason`, and each certificate's expiry.
pub fn health_document(node: &crate::api::Node) -> serde_json::Value {
    let has_leader = node.raft.metrics().borrow().current_leader.is_some();
    let alarms = !node.store.alarms().is_empty();
    let reason = if !has_leader {
        "RAFT NO LEADER"
    } else if alarms {
        "ALARM ACTIVE"
    } else {
        ""
    };
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

/// Serves `/health` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, node: SharedNode, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a /health connection failed");
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &node).await {
                tracing::debug!(%error, "a /health request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, node: &crate::api::Node) -> std::io::Result<()> {
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
    let mut content_type = "application/json";
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match crate::metrics::render(node) {
            Ok(text) => {
                content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ("200 OK", text)
            }
            Err(_) => (
                "500 Internal Server Error",
                "cannot encode the metrics\n".to_owned(),
            ),
        },
        ("GET", "/health") => {
            let document = health_document(node);
            let healthy = document["health"] == "true";
            (
                if healthy {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                document.to_string(),
            )
        }
        ("GET", _) => ("404 Not Found", "404 page not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "Method Not Allowed\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

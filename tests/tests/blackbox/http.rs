//! The plain-HTTP pages etcd serves on its client URL next to gRPC (`/health`, `/livez`,
//! `/readyz`, `/version`, `/metrics`), as probes and `curl` use them.

use cairn_tests::http_get;

use crate::harness::{assert_etcd_error, Node, NodeOptions};

/// `GET path` on the node's client port, split into the status line and the body.
async fn get(node: &Node, path: &str) -> (String, String) {
    let (port, path) = (node.client_port(), path.to_owned());
    let response = tokio::task::spawn_blocking(move || http_get("127.0.0.1", port, &path))
        .await
        .expect("the HTTP request task")
        .unwrap_or_else(|e| node.fail(&format!("GET on the client port: {e}")));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| node.fail(&format!("not an HTTP response: {response:?}")));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[tokio::test]
async fn client_url_serves_etcds_http_pages_beside_grpc() {
    let node = Node::start(NodeOptions::default()).await;

    let (status, body) = get(&node, "/health").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("/health is JSON");
    assert_eq!(health["health"], "true", "{body}");

    for probe in ["/livez", "/readyz"] {
        assert_eq!(
            get(&node, probe).await,
            ("HTTP/1.1 200 OK".to_owned(), "ok".to_owned()),
            "{probe}"
        );
    }

    let (status, body) = get(&node, "/version").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).expect("/version is JSON");
    assert_eq!(version["etcdcluster"], "3.5.0", "{body}");
    assert!(
        version["etcdserver"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.5.")),
        "{body}"
    );

    let (status, body) = get(&node, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("\netcd_server_has_leader 1\n"), "{body}");

    assert_eq!(
        get(&node, "/no-such-page").await,
        (
            "HTTP/1.1 404 Not Found".to_owned(),
            "404 page not found\n".to_owned()
        )
    );

    // gRPC on the same port is untouched, and a service that is not served (Auth) still
    // answers as gRPC.
    let mut client = node.client().await;
    client.put("k", "v", None).await.expect("put over gRPC");
    let got = client.get("k", None).await.expect("get over gRPC");
    assert_eq!(got.kvs()[0].value(), b"v");
    assert_etcd_error(client.user_list().await, tonic::Code::Unimplemented, "");
}

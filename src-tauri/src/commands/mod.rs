//! The commands the UI invokes, one module per domain. Each command is a thin wrapper over a
//! function that takes an `etcd_client::Client`, so the logic is tested against a real node
//! without a window.

pub mod cluster;
pub mod connections;
pub mod keys;
pub mod watch;

use base64::Engine;

/// Values cross to the UI as base64: they may be binary (Kubernetes protobuf), and a JSON
/// array of numbers would be four times larger.
pub(crate) fn encode_value(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn decode_value(text: &str) -> crate::error::CommandResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|error| {
            crate::error::CommandError::new(
                crate::error::ErrorKind::InvalidInput,
                "The value could not be decoded.",
            )
            .with_detail(error)
        })
}

/// Keys are shown as text; a key that is not UTF-8 is shown with replacement characters.
pub(crate) fn key_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
pub(crate) mod test_node {
    //! A real `cairn` node for the command tests, when `CAIRN_BIN` names the binary.

    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct TestNode {
        child: Child,
        pub endpoint: String,
        _data_dir: tempfile::TempDir,
    }

    impl Drop for TestNode {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Starts a node, or returns None (and says so) when `CAIRN_BIN` is not set.
    pub async fn start() -> Option<(TestNode, etcd_client::Client)> {
        let Ok(bin) = std::env::var("CAIRN_BIN") else {
            eprintln!("CAIRN_BIN not set: skipping the test that needs a cairn node");
            return None;
        };
        let data_dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cairn");
        let node = TestNode {
            child,
            endpoint: client_url.clone(),
            _data_dir: data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = etcd_client::Client::connect([&client_url], None).await {
                if client.put("/__ready", "", None).await.is_ok() {
                    client.delete("/__ready", None).await.unwrap();
                    return Some((node, client));
                }
            }
            assert!(Instant::now() < deadline, "cairn did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

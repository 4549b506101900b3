//! Unconfigured nodes, as installers start them (`cairn serve --wait`): the node advertises
//! itself as `uninitialized` over mDNS and serves the `cairnpb.Setup` service on its peer
//! port until someone bootstraps a cluster on it or has it join one. Both need the node's
//! one-time setup code, which only the node shows (its log, `cairn setup-code`), so nobody
//! on the LAN can take the node over.
//!
//! The setup service runs over TLS with a throwaway self-signed certificate whose SHA-256
//! the node advertises, so the caller can check it talks to the node it saw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::cli::{found_cluster, join_cluster, Layout};
use crate::discovery::{Advertisement, Advertiser};
use crate::proto::cairnpb::setup_client::SetupClient;
use crate::proto::cairnpb::setup_server::{Setup, SetupServer};
use crate::proto::cairnpb::{
    BootstrapRequest, BootstrapResponse, SetupJoinRequest, SetupJoinResponse,
};
use crate::security::join::full_chain;
use crate::security::pki::{self, JoinToken};
use crate::security::tls::{self, CertSlot, ClientAuth, TlsConnector};

/// The setup code's file in the data dir (mode 0600).
const CODE_FILE: &str = "setup-code";

/// The throwaway certificate and key of the setup service.
const SETUP_CERT_FILE: &str = "setup.crt";
const SETUP_KEY_FILE: &str = "setup.key";

/// Pause before answering a wrong setup code, so that guessing is slow.
const WRONG_CODE_PAUSE: Duration = Duration::from_secs(1);

/// How long a join started through setup may look for members over mDNS.
const JOIN_DISCOVERY: Duration = Duration::from_secs(15);

/// How long the setup listener may take to free the peer port for the member.
const PORT_RELEASE: Duration = Duration::from_secs(10);

/// The answer to a wrong setup code.
pub const WRONG_CODE: &str = "cairn: wrong setup code (see `cairn setup-code` on the node)";

/// The setup code of the node waiting on `data_dir`.
pub fn read_code(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(CODE_FILE);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "no setup code at {}: is a node waiting there (`cairn serve --wait`)?",
                path.display()
            )
        })?
        .trim()
        .to_owned())
}

/// The node's setup code, made on first use and kept until setup.
fn load_or_create_code(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(code) = read_code(data_dir) {
        return Ok(code);
    }
    let digits = pki::random_secret();
    // Grouped, to be read off a screen and typed: 12 hexadecimal digits, 48 bits.
    let code = format!("{}-{}-{}", &digits[0..4], &digits[4..8], &digits[8..12]);
    pki::write_file(&data_dir.join(CODE_FILE), code.as_bytes(), true)?;
    Ok(code)
}

/// Makes the throwaway certificate; returns its files and SHA-256.
fn setup_certificate(
    data_dir: &Path,
    layout: &Layout,
) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let certified = rcgen::generate_simple_self_signed(layout.identity.hosts.clone())
        .context("cannot make the setup certificate")?;
    let cert_file = data_dir.join(SETUP_CERT_FILE);
    let key_file = data_dir.join(SETUP_KEY_FILE);
    pki::write_file(
        &key_file,
        certified.signing_key.serialize_pem().as_bytes(),
        true,
    )?;
    pki::write_file(&cert_file, certified.cert.pem().as_bytes(), false)?;
    let fingerprint = hex::encode(pki::cert_hash(certified.cert.der()));
    Ok((cert_file, key_file, fingerprint))
}

/// Waits until this node has been bootstrapped or has joined a cluster through the setup
/// service on `listen`; its certificates and settings are then in `layout`'s data dir.
pub(crate) async fn wait_for_setup(layout: &Layout, listen: SocketAddr) -> anyhow::Result<()> {
    let data_dir = &layout.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let code = load_or_create_code(data_dir)?;
    let (cert_file, key_file, fingerprint) = setup_certificate(data_dir, layout)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for setup on {listen}"))?;
    let config = tls::server_config(
        CertSlot::load(&cert_file, &key_file, None)?,
        None,
        ClientAuth::None,
    )?;
    tracing::warn!(
        setup_code = %code,
        %listen,
        %fingerprint,
        "this node is not set up; bootstrap it or have it join a cluster with its setup code (`cairn setup-code` shows it again)"
    );
    let advertiser = Advertiser::start(
        &Advertisement {
            cluster_id: String::new(),
            name: layout.name.clone(),
            member_id: String::new(),
            state: "uninitialized".to_owned(),
            client_urls: Vec::new(),
            peer_urls: vec![layout.peer_url.clone()],
            version: env!("CARGO_PKG_VERSION").to_owned(),
            fingerprint,
        },
        listen.port(),
    );
    if let Err(error) = &advertiser {
        tracing::warn!(error = %format!("{error:#}"), "not advertising over mDNS");
    }
    let (done_tx, mut done_rx) = watch::channel(false);
    let service = SetupService {
        code,
        layout: Arc::new(layout.clone()),
        done: done_tx,
        turn: Mutex::new(()),
    };
    tonic::transport::Server::builder()
        .add_service(SetupServer::new(service))
        .serve_with_incoming_shutdown(tls::incoming(listener, config, false), async move {
            let _ = done_rx.wait_for(|done| *done).await;
        })
        .await?;
    drop(advertiser);
    for file in [data_dir.join(CODE_FILE), cert_file, key_file] {
        let _ = std::fs::remove_file(file);
    }
    // The member binds the same port: wait until the setup listener has let it go.
    let give_up = tokio::time::Instant::now() + PORT_RELEASE;
    while TcpListener::bind(listen).await.is_err() {
        if tokio::time::Instant::now() > give_up {
            bail!("the setup listener did not free {listen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

struct SetupService {
    code: String,
    layout: Arc<Layout>,
    done: watch::Sender<bool>,
    /// One setup at a time; the first to succeed ends the service.
    turn: Mutex<()>,
}

impl SetupService {
    async fn check(&self, offered: &str) -> Result<tokio::sync::MutexGuard<'_, ()>, Status> {
        if !pki::same_secret(&self.code, offered) {
            tracing::warn!("refused a setup request with a wrong setup code");
            tokio::time::sleep(WRONG_CODE_PAUSE).await;
            return Err(Status::permission_denied(WRONG_CODE));
        }
        let turn = self.turn.lock().await;
        if *self.done.borrow() {
            return Err(Status::failed_precondition(
                "cairn: this node is set up already",
            ));
        }
        Ok(turn)
    }
}

#[tonic::async_trait]
impl Setup for SetupService {
    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        let _turn = self.check(&request.get_ref().setup_code).await?;
        let token = found_cluster(&self.layout)
            .map_err(|e| Status::internal(format!("cairn: cannot create the cluster: {e:#}")))?;
        tracing::info!("bootstrapped a new cluster through setup");
        let _ = self.done.send(true);
        Ok(Response::new(BootstrapResponse {
            join_token: token.to_string(),
        }))
    }

    async fn join_cluster(
        &self,
        request: Request<SetupJoinRequest>,
    ) -> Result<Response<SetupJoinResponse>, Status> {
        let _turn = self.check(&request.get_ref().setup_code).await?;
        let request = request.into_inner();
        let token: JoinToken = request
            .join_token
            .parse()
            .map_err(|e| Status::invalid_argument(format!("cairn: {e:#}")))?;
        let via = Some(request.join_url.as_str()).filter(|url| !url.is_empty());
        let answer = join_cluster(&self.layout, &token, via, JOIN_DISCOVERY)
            .await
            .map_err(|error| {
                let message = format!("{error:#}");
                if message.starts_with(crate::security::join::REFUSED) {
                    Status::permission_denied(message)
                } else {
                    Status::failed_precondition(message)
                }
            })?;
        let _ = self.done.send(true);
        Ok(Response::new(SetupJoinResponse {
            member_id: answer.member_id,
        }))
    }
}

async fn setup_client(
    node: &str,
    fingerprint: Option<[u8; 32]>,
) -> anyhow::Result<SetupClient<tonic::transport::Channel>> {
    let channel = Endpoint::from_shared(tls::plain_uri(node))
        .with_context(|| format!("{node:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(JOIN_DISCOVERY * 2)
        .connect_with_connector(TlsConnector::new(tls::setup_client_config(fingerprint)?))
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot reach the node at {node}: {}", full_chain(&error))
        })?;
    Ok(SetupClient::new(channel))
}

/// Has the waiting node at `node` found a new cluster; returns its join token.
pub async fn request_bootstrap(
    node: &str,
    fingerprint: Option<[u8; 32]>,
    code: &str,
) -> anyhow::Result<String> {
    let answer = setup_client(node, fingerprint)
        .await?
        .bootstrap(BootstrapRequest {
            setup_code: code.to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    Ok(answer.into_inner().join_token)
}

/// Has the waiting node at `node` join the cluster of `token`; returns its member id.
pub async fn request_join(
    node: &str,
    fingerprint: Option<[u8; 32]>,
    code: &str,
    token: &JoinToken,
    via: Option<&str>,
) -> anyhow::Result<u64> {
    let answer = setup_client(node, fingerprint)
        .await?
        .join_cluster(SetupJoinRequest {
            setup_code: code.to_owned(),
            join_token: token.to_string(),
            join_url: via.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    Ok(answer.into_inner().member_id)
}

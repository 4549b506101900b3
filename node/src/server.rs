//! Runs a member: storage and Raft, the etcd services on every client listener, and a clean
//! shutdown when the given future completes.

use std::future::Future;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tower_layer::{Identity, Stack};

use crate::api::leader::RequireLeader;
use crate::api::watch::{WatchService, WatchSettings};
use crate::api::{
    cluster::ClusterService, election::ElectionService, kv::KvService, lease::LeaseService,
    lock::LockService, maintenance::MaintenanceService, read_index::ReadIndexBatcher, Node,
};
use crate::coalesce::{Coalesced, CountRequests};
use crate::config::ServerConfig;
use crate::lease::Lessor;
use crate::proto::cairnpb::join_server::JoinServer;
use crate::proto::cairnpb::peer_server::PeerServer;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::raft::{Forwarder, PeerService, Peers};
use crate::security::join::JoinService;
use crate::security::tls::{self, CertSlot, ClientIdentity};
use crate::security::{ListenerTls, TlsSettings};
use crate::store::Store;
use crate::watch::{HubLimits, WatchHub};

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much so the request itself,
/// not the transport, answers "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How often the state machine is made durable. Nothing depends on it for safety (the Raft
/// log is), it bounds how much log is replayed after a crash.
const STATE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The nice value of the thread that makes the state machine durable (the request-serving
/// threads keep 0).
#[cfg(target_os = "linux")]
const SYNC_THREAD_NICE: i32 = 10;

/// Makes the store durable every [`STATE_SYNC_INTERVAL`] on a thread of its own until `stop`
/// turns. On Linux the thread runs at a lower CPU priority than those answering requests:
/// the flush is background work (about a tenth of a busy member's CPU), and when every core
/// is busy the requests should not wait for it. Applying never waits for this thread: past
/// the store's unflushed limit it flushes itself, unless this thread is flushing.
fn spawn_syncer(
    store: Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (stopping, stopped) = std::sync::mpsc::channel::<()>();
    tokio::spawn(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
        drop(stopping);
    });
    std::thread::Builder::new()
        .name("state-sync".into())
        .spawn(move || {
            lower_priority();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(STATE_SYNC_INTERVAL) {
                if let Err(error) = store.sync() {
                    tracing::error!(%error, "making the state machine durable failed");
                }
            }
        })
}

/// Lowers the calling thread's CPU priority to [`SYNC_THREAD_NICE`].
#[cfg(target_os = "linux")]
fn lower_priority() {
    // Linux keeps a nice value per thread; no pid names the calling thread.
    if let Err(error) = rustix::process::setpriority_process(None, SYNC_THREAD_NICE) {
        tracing::warn!(%error, "cannot lower the state sync thread's priority");
    }
}

/// Elsewhere the call would lower the whole process's priority: the thread keeps its own.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Accepted connections with Nagle's algorithm off. tonic ignores the builder's
/// `tcp_nodelay` for listeners it is handed; left on, a small response written while an
/// earlier one awaits its ACK (a watch event next to a put's answer on one connection)
/// waits for the client's delayed ACK, about 40 ms.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The certificates of the TLS listeners and of peer connections.
struct Certificates {
    client_server: Option<Arc<rustls::ServerConfig>>,
    peer_server: Option<Arc<rustls::ServerConfig>>,
    peer_client: Option<Arc<rustls::ClientConfig>>,
    /// This member's certificate in a zero-config cluster, renewed in place.
    member_slot: Option<Arc<CertSlot>>,
}

impl Certificates {
    fn load(settings: &TlsSettings) -> anyhow::Result<Certificates> {
        let mut slots: Vec<(ListenerTls, Arc<CertSlot>)> = Vec::new();
        // Listeners using the same files share one slot, so one reload serves them all.
        let mut slot_for = |listener: &ListenerTls| -> anyhow::Result<Arc<CertSlot>> {
            let same_files = |other: &ListenerTls| {
                other.cert_file == listener.cert_file
                    && other.key_file == listener.key_file
                    && other.chain_ca_file == listener.chain_ca_file
            };
            if let Some((_, slot)) = slots.iter().find(|(other, _)| same_files(other)) {
                return Ok(slot.clone());
            }
            let slot = CertSlot::load(
                &listener.cert_file,
                &listener.key_file,
                listener.chain_ca_file.as_deref(),
            )?;
            slots.push((listener.clone(), slot.clone()));
            Ok(slot)
        };
        let mut certificates = Certificates {
            client_server: None,
            peer_server: None,
            peer_client: None,
            member_slot: None,
        };
        if let Some(client) = &settings.client {
            certificates.client_server = Some(tls::server_config(
                slot_for(client)?,
                client.trusted_ca_file.as_deref(),
                client.client_auth,
            )?);
        }
        if let Some(peer) = &settings.peer {
            let slot = slot_for(peer)?;
            certificates.peer_server = Some(tls::server_config(
                slot.clone(),
                peer.trusted_ca_file.as_deref(),
                peer.client_auth,
            )?);
            if let Some(ca_file) = &peer.trusted_ca_file {
                certificates.peer_client = Some(tls::peer_client_config(slot.clone(), ca_file)?);
            }
            if settings.pki.is_some() {
                certificates.member_slot = Some(slot);
            }
        }
        Ok(certificates)
    }
}

type Serving = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves `router` on `listener` until `stop` turns true: over TLS with `tls`, else plaintext.
fn serve(
    router: tonic::transport::server::Router<Stack<CountRequests, Identity>>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    coalesce: bool,
) -> Serving {
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    match tls {
        Some(tls) => tokio::spawn(
            router.serve_with_incoming_shutdown(tls::incoming(listener, tls, coalesce), stopped),
        ),
        None => {
            let incoming = no_delay(listener).map(move |accepted| {
                accepted.map(|tcp| Coalesced::new(tcp, ClientIdentity::default(), coalesce))
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    }
}

/// Advertises a member of a zero-config cluster over mDNS; `None` when there is nothing to
/// advertise or mDNS is unavailable (which costs discovery, not service).
fn advertise(config: &ServerConfig) -> Option<crate::discovery::Advertiser> {
    config.tls.pki.as_ref()?;
    let port = config.peer_addrs.first()?.0.port();
    let advertisement = crate::discovery::Advertisement {
        cluster_id: format!("{:x}", config.cluster_id),
        name: config.name.clone(),
        member_id: format!("{:x}", config.member_id),
        state: "member".to_owned(),
        client_urls: config.advertise_client_urls.clone(),
        peer_urls: config.member.peer_urls.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        fingerprint: String::new(),
    };
    match crate::discovery::Advertiser::start(&advertisement, port) {
        Ok(advertiser) => Some(advertiser),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "not advertising over mDNS");
            None
        }
    }
}

/// The sockets a member serves on, each with whether it serves TLS.
pub struct Listeners {
    pub clients: Vec<(TcpListener, bool)>,
    pub peers: Vec<(TcpListener, bool)>,
    /// `--listen-metrics-urls`: plain HTTP, `/health`.
    pub metrics: Vec<TcpListener>,
}

/// Binds the client and peer listeners named in `config`.
pub async fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
    let mut clients = Vec::new();
    for (addr, tls) in &config.client_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for clients on {addr}: {e}"))?;
        clients.push((listener, *tls));
    }
    let mut peers = Vec::new();
    for (addr, tls) in &config.peer_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {addr}: {e}"))?;
        peers.push((listener, *tls));
    }
    let mut metrics = Vec::new();
    for addr in &config.metrics_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for /health on {addr}: {e}"))?;
        metrics.push(listener);
    }
    Ok(Listeners {
        clients,
        peers,
        metrics,
    })
}

/// Serves until `shutdown` completes, then stops Raft and makes the store durable.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let certs = Certificates::load(&config.tls)?;
    let peers = Peers::new(certs.peer_client.clone());
    let raft_node = crate::raft::start(
        &config.data_dir,
        config.member_id,
        config.bootstrap.clone(),
        peers.clone(),
        &config.raft,
    )
    .await?;
    // Fed by every batch this member applies, as leader or follower.
    let watch_hub = WatchHub::attach(raft_node.store.clone(), HubLimits::default());
    let lessor = Lessor::new(
        raft_node.raft.clone(),
        raft_node.proposer.clone(),
        raft_node.store.clone(),
        config.member_id,
        config.raft.election_timeout,
    );
    let (leader_lost_tx, leader_lost) = tokio::sync::watch::channel(false);
    let node = Arc::new(Node {
        member_id: config.member_id,
        cluster_id: config.cluster_id,
        raft: raft_node.raft.clone(),
        proposer: raft_node.proposer.clone(),
        store: raft_node.store.clone(),
        log: raft_node.log.clone(),
        forwarder: Forwarder::start(
            peers.clone(),
            crate::api::request_timeout(config.raft.election_timeout),
        ),
        peers,
        cluster_token: config.cluster_token.clone(),
        election_timeout: config.raft.election_timeout,
        limits: config.limits.clone(),
        lessor: lessor.clone(),
        read_index: ReadIndexBatcher::default(),
        leader_wait: config.raft.election_timeout * 3,
        certificate_files: config.tls.certificate_files(),
        leader_lost,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }

    let lease_expiry = tokio::spawn(lessor.clone().run(stop_rx.clone()));
    tokio::spawn(crate::api::leader::monitor(
        node.clone(),
        leader_lost_tx,
        stop_rx.clone(),
    ));

    let membership_upkeep = tokio::spawn(crate::api::cluster::maintain_membership(
        node.clone(),
        config.member.clone(),
        config.auto_promote_learners,
        stop_tx.clone(),
    ));

    let syncer = spawn_syncer(node.store.clone(), stop_rx.clone())?;

    let max_decoding = config.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let watch_settings = WatchSettings {
        progress_interval: config.watch_progress_notify_interval,
        fragment_bytes: max_decoding,
    };
    let renewal = match (&config.tls.pki, &certs.member_slot) {
        (Some(pki), Some(slot)) => Some(tokio::spawn(crate::security::renewal::run(
            pki.clone(),
            slot.clone(),
            stop_rx.clone(),
        ))),
        _ => None,
    };
    let mut servers = Vec::new();
    for (listener, tls) in listeners.peers {
        let addr = listener.local_addr()?;
        let peer_service = PeerServer::new(PeerService::new(
            node.raft.clone(),
            node.proposer.clone(),
            lessor.clone(),
            stop_rx.clone(),
        ))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(CountRequests);
        let router = match &config.tls.pki {
            // A zero-config cluster: members only on the peer service, anyone with the
            // token on the join service.
            Some(pki) if tls => builder
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    peer_service,
                    crate::security::tls::require_member,
                ))
                .add_service(JoinServer::new(JoinService::new(node.clone(), pki.clone()))),
            _ => builder.add_service(peer_service),
        };
        servers.push(serve(
            router,
            listener,
            certs.peer_server.clone().filter(|_| tls),
            stop_rx.clone(),
            false,
        ));
        tracing::info!(%addr, tls, "serving peer requests");
    }
    for (listener, tls) in listeners.clients {
        let addr = listener.local_addr()?;
        let services = Routes::new(
            KvServer::new(KvService::new(node.clone())).max_decoding_message_size(max_decoding),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService::new(node.clone()))
                .max_decoding_message_size(max_decoding),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(node.clone()))
                .max_decoding_message_size(max_decoding),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(node.clone(), stop_rx.clone()))
                .max_decoding_message_size(max_decoding),
        )
        .add_service(
            LockServer::new(LockService::new(
                node.clone(),
                watch_hub.clone(),
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max_decoding),
        )
        .add_service(
            ElectionServer::new(ElectionService::new(
                node.clone(),
                watch_hub.clone(),
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max_decoding),
        )
        .add_service(
            // Its streams end when `stop_rx` turns, so the graceful shutdown below
            // does not wait for them.
            WatchServer::new(WatchService::new(
                node.clone(),
                watch_hub.clone(),
                watch_settings,
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max_decoding),
        )
        .into_axum_router()
        .layer(RequireLeader(node.clone()))
        .merge(crate::health::router(node.clone()))
        .fallback(crate::health::not_found);
        // HTTP/1 too, for the pages (`curl http://127.0.0.1:2379/health`, as with etcd).
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .accept_http1(true)
            .layer(CountRequests)
            .add_routes(Routes::from(services));
        servers.push(serve(
            router,
            listener,
            certs.client_server.clone().filter(|_| tls),
            stop_rx.clone(),
            true,
        ));
        tracing::info!(%addr, tls, "serving client requests");
    }
    for listener in listeners.metrics {
        let addr = listener.local_addr()?;
        let health = tokio::spawn(crate::health::serve(
            listener,
            node.clone(),
            stop_rx.clone(),
        ));
        servers.push(tokio::spawn(async move {
            let _ = health.await;
            Ok(())
        }));
        tracing::info!(%addr, "serving /health, /metrics and the other pages");
    }
    let advertiser = advertise(&config);
    tracing::info!(
        name = %config.name,
        member_id = %format!("{:x}", config.member_id),
        cluster_id = %format!("{:x}", config.cluster_id),
        data_dir = %config.data_dir.display(),
        "ready to serve client requests"
    );

    let mut first_error = None;
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "client listener failed");
                first_error.get_or_insert_with(|| anyhow::Error::from(error));
            }
            Err(join) => {
                first_error.get_or_insert_with(|| anyhow::Error::from(join));
            }
        }
    }
    // A listener that failed on its own must still bring the member down cleanly.
    let _ = node.raft.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || syncer.join()).await;
    membership_upkeep.abort();
    lease_expiry.abort();
    if let Some(renewal) = renewal {
        renewal.abort();
    }
    drop(advertiser);
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.sync()).await??;
    tracing::info!("stopped");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

//! Runs a member: storage and Raft, the etcd services on every client listener, and a clean
//! shutdown when the given future completes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::api::watch::{WatchService, WatchSettings};
use crate::api::{
    cluster::ClusterService, election::ElectionService, kv::KvService, lease::LeaseService,
    lock::LockService, maintenance::MaintenanceService, read_index::ReadIndexBatcher, Node,
};
use crate::config::ServerConfig;
use crate::lease::Lessor;
use crate::proto::cairnpb::peer_server::PeerServer;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::raft::{Forwarder, PeerService, Peers};
use crate::watch::{HubLimits, WatchHub};

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much so the request itself,
/// not the transport, answers "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How often the state machine is made durable. Nothing depends on it for safety (the Raft
/// log is), it bounds how much log is replayed after a crash.
const STATE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Accepted connections with Nagle's algorithm off. tonic ignores the builder's
/// `tcp_nodelay` for listeners it is handed; left on, a small response written while an
/// earlier one awaits its ACK (a watch event next to a put's answer on one connection)
/// waits for the client's delayed ACK, about 40 ms.
fn no_delay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The sockets a member serves on.
pub struct Listeners {
    pub clients: Vec<TcpListener>,
    pub peers: Vec<TcpListener>,
}

/// Binds the client and peer listeners named in `config`.
pub async fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
    let mut clients = Vec::new();
    for addr in &config.client_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for clients on {addr}: {e}"))?;
        clients.push(listener);
    }
    let mut peers = Vec::new();
    for addr in &config.peer_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {addr}: {e}"))?;
        peers.push(listener);
    }
    Ok(Listeners { clients, peers })
}

/// Serves until `shutdown` completes, then stops Raft and makes the store durable.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let peers = Peers::default();
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
    let node = Arc::new(Node {
        member_id: config.member_id,
        cluster_id: config.cluster_id,
        raft: raft_node.raft.clone(),
        proposer: raft_node.proposer.clone(),
        store: raft_node.store.clone(),
        log: raft_node.log.clone(),
        forwarder: Forwarder::start(peers.clone()),
        peers,
        cluster_token: config.cluster_token.clone(),
        election_timeout: config.raft.election_timeout,
        limits: config.limits.clone(),
        lessor: lessor.clone(),
        read_index: ReadIndexBatcher::default(),
        leader_wait: config.raft.election_timeout * 3,
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

    let membership_upkeep = tokio::spawn(crate::api::cluster::maintain_membership(
        node.clone(),
        config.member.clone(),
        config.auto_promote_learners,
        stop_tx.clone(),
    ));

    let syncer = {
        let store = node.store.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(STATE_SYNC_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.changed() => break,
                }
                let store = store.clone();
                if let Ok(Err(error)) = tokio::task::spawn_blocking(move || store.sync()).await {
                    tracing::error!(%error, "making the state machine durable failed");
                }
            }
        })
    };

    let max_decoding = config.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let watch_settings = WatchSettings {
        progress_interval: config.watch_progress_notify_interval,
        fragment_bytes: max_decoding,
    };
    let mut servers = Vec::new();
    for listener in listeners.peers {
        let addr = listener.local_addr()?;
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                PeerServer::new(PeerService::new(
                    node.raft.clone(),
                    node.proposer.clone(),
                    lessor.clone(),
                ))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            );
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(no_delay(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        }));
        tracing::info!(%addr, "serving peer requests");
    }
    for listener in listeners.clients {
        let addr = listener.local_addr()?;
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
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
            );
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let incoming = no_delay(listener);
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await
        }));
        tracing::info!(%addr, "serving client requests");
    }
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
    let _ = syncer.await;
    membership_upkeep.abort();
    lease_expiry.abort();
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.sync()).await??;
    tracing::info!("stopped");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

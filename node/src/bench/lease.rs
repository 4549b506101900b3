//! `cairn bench lease-keepalive`, as etcd's `benchmark lease-keepalive`: each client grants
//! one lease (TTL 100 s, not measured), then keeps renewing it; each renewal is what clientv3's
//! `KeepAliveOnce` does: a new keepalive stream, one request, one answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use tonic::transport::Channel;

use super::report::{latency_histogram, Summary};
use super::{connect, BenchArgs};
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// The TTL etcd's benchmark grants its leases with: long enough never to expire mid-run.
const LEASE_TTL: i64 = 100;

pub async fn execute(args: &BenchArgs) -> anyhow::Result<Summary> {
    let channels = connect(&args.endpoints, args.conns).await?;
    let mut clients = Vec::with_capacity(args.clients as usize);
    for client in 0..args.clients as usize {
        let mut lease = LeaseClient::new(channels[client % channels.len()].clone());
        let granted = lease
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL,
                id: 0,
            })
            .await
            .with_context(|| format!("granting the lease of client {client}"))?
            .into_inner();
        clients.push((lease, granted.id));
    }

    let next = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::new());
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|(lease, id)| {
            tokio::spawn(renew_repeatedly(
                lease.clone(),
                *id,
                Arc::clone(&next),
                args.total,
                Arc::clone(&first_error),
            ))
        })
        .collect();
    let mut latencies = latency_histogram();
    let mut errors = 0;
    for task in tasks {
        let (client_latencies, client_errors) = task.await.context("benchmark client panicked")?;
        latencies
            .add(&client_latencies)
            .context("merging latency histograms")?;
        errors += client_errors;
    }
    let elapsed = started.elapsed();

    // Not part of etcd's benchmark: leaves the cluster as it was rather than with leases that
    // outlive the run by their TTL.
    for (mut lease, id) in clients {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(Summary::new(
        "lease-keepalive",
        &latencies,
        errors,
        first_error.get().cloned(),
        elapsed,
    ))
}

/// One closed-loop client: renews its lease until `total` renewals are taken by all clients.
async fn renew_repeatedly(
    mut lease: LeaseClient<Channel>,
    id: i64,
    next: Arc<AtomicU64>,
    total: u64,
    first_error: Arc<OnceLock<String>>,
) -> (hdrhistogram::Histogram<u64>, u64) {
    let mut latencies = latency_histogram();
    let mut errors = 0;
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let sent = Instant::now();
        match keep_alive_once(&mut lease, id).await {
            Ok(()) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(micros);
            }
            Err(status) => {
                errors += 1;
                // Only the first error across all clients is kept; later ones are counted.
                let _ = first_error.set(format!("{} ({:?})", status.message(), status.code()));
            }
        }
    }
    (latencies, errors)
}

/// clientv3's `KeepAliveOnce`: a stream carrying one keepalive, and its answer. A TTL of 0
/// or less is how etcd says the lease is gone.
async fn keep_alive_once(lease: &mut LeaseClient<Channel>, id: i64) -> Result<(), tonic::Status> {
    let request = tokio_stream::once(LeaseKeepAliveRequest { id });
    let mut answers = lease.lease_keep_alive(request).await?.into_inner();
    match answers.message().await? {
        Some(answer) if answer.ttl > 0 => Ok(()),
        Some(_) => Err(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        )),
        None => Err(tonic::Status::unavailable(
            "the keepalive stream ended without an answer",
        )),
    }
}

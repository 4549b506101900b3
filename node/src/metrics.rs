//! `GET /metrics` on `--listen-metrics-urls`: etcd's gauges that dashboards and alerts watch
//! (leader, database size, applied index) and Cairn's own follower lag, in the Prometheus
//! text format.
//!
//! Values are read when scraped, from Raft's metrics and the store, so nothing is counted on
//! the request path.

use std::time::SystemTime;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::Node;
use crate::raft::membership::follower_lag;
use crate::security::expiry;

/// What a member's lag gauge is labelled with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    /// etcd prints member ids in hex.
    member_id: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    file: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// The current values, encoded. (The encoder ends each help text with a full stop.)
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let metrics = node.raft.metrics().borrow().clone();
    let mut registry = Registry::default();
    gauge(
        &mut registry,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not",
        i64::from(metrics.current_leader.is_some()),
    );
    gauge(
        &mut registry,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise",
        i64::from(metrics.current_leader == Some(node.member_id)),
    );
    gauge(
        &mut registry,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied",
        as_gauge(metrics.last_applied.map_or(0, |id| id.index)),
    );
    gauge(
        &mut registry,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes",
        node.store.db_size(),
    );
    gauge(
        &mut registry,
        "cairn_raft_term",
        "The Raft term this member is in",
        as_gauge(metrics.current_term),
    );
    gauge(
        &mut registry,
        "cairn_raft_last_log_index",
        "The index of the newest entry in this member's Raft log",
        as_gauge(metrics.last_log_index.unwrap_or(0)),
    );

    // Only the leader knows how far each member has replicated.
    if let Some(lags) = follower_lag(&node.raft) {
        let family = Family::<MemberLabels, Gauge<i64>>::default();
        let membership = metrics.membership_config.membership();
        for (id, lag) in lags {
            let name = membership
                .get_node(&id)
                .map(|member| member.name.clone())
                .unwrap_or_default();
            let labels = MemberLabels {
                member_id: format!("{id:x}"),
                name,
            };
            family.get_or_create(&labels).set(as_gauge(lag));
        }
        registry.register(
            "cairn_raft_follower_lag_entries",
            "Entries the member lacks behind the leader's log (reported by the leader only)",
            family,
        );
    }

    if !node.certificate_files.is_empty() {
        let family = Family::<CertificateLabels, Gauge<i64>>::default();
        let now = SystemTime::now();
        for path in &node.certificate_files {
            if let Ok(not_after) = expiry(path) {
                let left = match not_after.duration_since(now) {
                    Ok(left) => as_gauge(left.as_secs()),
                    Err(past) => -as_gauge(past.duration().as_secs()),
                };
                let labels = CertificateLabels {
                    file: path.display().to_string(),
                };
                family.get_or_create(&labels).set(left);
            }
        }
        registry.register(
            "cairn_certificate_expiry_seconds",
            "Seconds until a certificate this member serves expires (negative: expired)",
            family,
        );
    }

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

//! `/metrics` on `--listen-metrics-urls`: who leads, and how far each member lags behind the
//! leader's log, as the leader sees it.

use crate::harness::{expect_ok, poll, put_acknowledged, Cluster, ClusterSpec};

/// The value of the sample named exactly `series` (metric name and labels), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The leader's lag sample for the member `index`.
fn lag_series(cluster: &Cluster, index: usize) -> String {
    let member = cluster.member(index);
    format!(
        "cairn_raft_follower_lag_entries{{member_id=\"{:x}\",name=\"{}\"}}",
        member.id(),
        member.name()
    )
}

#[tokio::test]
async fn the_leader_reports_each_members_lag_and_a_paused_member_falls_behind() {
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let paused = (leader + 1) % cluster.len();
    let running = (leader + 2) % cluster.len();

    for index in 0..cluster.len() {
        let metrics = expect_ok(cluster.member(index).metrics().await);
        assert_eq!(sample(&metrics, "etcd_server_has_leader"), Some(1.0));
        let is_leader = f64::from(u8::from(index == leader));
        assert_eq!(sample(&metrics, "etcd_server_is_leader"), Some(is_leader));
        if index != leader {
            assert!(
                !metrics.contains("cairn_raft_follower_lag_entries"),
                "only the leader knows the members' progress: {metrics}"
            );
        }
    }

    cluster.member_mut(paused).pause();
    let client = cluster.member(leader).client().await;
    for n in 0..20 {
        put_acknowledged(&client, &format!("lag-{n}"), "v").await;
    }
    let (paused_series, running_series) =
        (lag_series(&cluster, paused), lag_series(&cluster, running));
    let lags = poll(
        "the paused member's lag in the leader's metrics",
        || async {
            let metrics = cluster.member(leader).metrics().await?;
            match (
                sample(&metrics, &paused_series),
                sample(&metrics, &running_series),
            ) {
                (Some(paused), Some(running)) if paused >= 20.0 && running == 0.0 => {
                    Ok((paused, running))
                }
                _ => Err(metrics),
            }
        },
    )
    .await;
    expect_ok(lags);

    cluster.member_mut(paused).resume();
    let caught_up = poll("the resumed member's lag back to 0", || async {
        let metrics = cluster.member(leader).metrics().await?;
        match sample(&metrics, &paused_series) {
            Some(0.0) => Ok(()),
            _ => Err(metrics),
        }
    })
    .await;
    expect_ok(caught_up);
}

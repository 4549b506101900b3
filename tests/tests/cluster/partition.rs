//! A member cut off from the others (its peer link down in its network namespace) is a
//! minority of one: it must neither acknowledge a write nor serve a linearizable read,
//! while the majority elects a leader if needed and goes on. Requests and watches that
//! require a leader (kube-apiserver's) are refused and ended there, as etcd does. Once the
//! link is back, the member converges with the rest.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetResponse, WatchStream};

use crate::harness::{
    connect, expect_ok, linearizable_value, poll, put_acknowledged, retry, value_of, within,
    Cluster, ClusterSpec, DEADLINE, ELECTION_TIMEOUT, REQUEST_TIMEOUT,
};

/// Which member the test cuts off.
#[derive(Clone, Copy)]
enum Cut {
    Leader,
    Follower,
}

async fn minority_cannot_write_or_read_linearizably(cut: Cut) {
    let cluster = Cluster::start(ClusterSpec::new(3).in_namespaces()).await;
    let leader = cluster.leader().await;
    let isolated = match cut {
        Cut::Leader => leader,
        Cut::Follower => (leader + 1) % cluster.len(),
    };
    let majority: Vec<usize> = (0..cluster.len()).filter(|&i| i != isolated).collect();
    put_acknowledged(&cluster.member(leader).client().await, "before", "1").await;
    let mut requiring = cluster.member(isolated).client_requiring_leader().await;
    let mut watch_requiring = requiring.watch("w", None).await.expect("watch");
    let mut watch_plain = cluster
        .member(isolated)
        .client()
        .await
        .watch("w", None)
        .await
        .expect("watch");

    let lease = requiring.lease_grant(60, None).await.expect("grant").id();
    let (mut keeper, mut keepalives) = requiring.lease_keep_alive(lease).await.expect("keepalive");
    keeper.keep_alive().await.expect("send a keepalive");
    let renewed = keepalives.message().await.expect("an answer").expect("one");
    assert_eq!(renewed.ttl(), 60);

    cluster.cut(isolated);
    let minority = cluster.member(isolated).client().await;
    // A client that waits for the member's own answer, as etcd gives one: "request timed
    // out" after etcd's request timeout, or "no leader" once the member knows of none.
    let patient = Duration::from_secs(60);
    let mut writer = connect(cluster.member(isolated).endpoint(), patient).await;
    let sent = Instant::now();
    let (write, read) = tokio::join!(
        within(patient, writer.put("minority-write", "1", None)),
        value_of(&minority, "before", false),
    );
    let waited = sent.elapsed();
    let name = cluster.member(isolated).name();
    match &write {
        Ok(_) => panic!("the cut-off member {name} acknowledged a write: {write:?}"),
        Err(error) => assert!(
            error.contains("etcdserver: request timed out")
                || error.contains("etcdserver: no leader"),
            "the cut-off member {name} answered the write after {waited:?} with: {error}"
        ),
    }
    let request_timeout = Duration::from_secs(5) + 2 * ELECTION_TIMEOUT;
    assert!(
        waited < request_timeout * 2,
        "the write took {waited:?}; etcd's request timeout is {request_timeout:?}"
    );
    assert!(
        read.is_err(),
        "the cut-off member {name} served a linearizable read: {read:?}"
    );

    let (status, body) = expect_ok(cluster.member(isolated).page("/readyz").await);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    let (status, body) = expect_ok(cluster.member(isolated).page("/health").await);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(
        body.contains(r#""reason":"QGET ERROR""#) || body.contains(r#""reason":"RAFT NO LEADER""#),
        "{body}"
    );
    let (status, body) = expect_ok(
        cluster
            .member(isolated)
            .page("/health?serializable=true")
            .await,
    );
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "a local read needs no quorum: {body}"
    );

    // etcd refuses at once while it knows no leader, and ends the streams that require one
    // after three election timeouts without.
    let refused = poll("a refusal for want of a leader", || async {
        match within(REQUEST_TIMEOUT, get(&requiring)).await {
            Err(error) if error.contains("etcdserver: no leader") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    expect_ok(refused);
    let ended = ends_with_an_error(&mut watch_requiring).await;
    assert!(ended.contains("etcdserver: no leader"), "{ended}");
    let ended = tokio::time::timeout(DEADLINE, keepalives.message()).await;
    assert!(
        matches!(&ended, Ok(Err(error)) if error.to_string().contains("etcdserver: no leader")),
        "the keepalive stream that requires a leader: {ended:?}"
    );
    match tokio::time::timeout(Duration::from_millis(200), watch_plain.message()).await {
        Err(_) => {}
        Ok(Ok(Some(response))) if !response.canceled() && response.events().is_empty() => {}
        other => panic!("a watch that does not require a leader ended: {other:?}"),
    }

    let new_leader = cluster.leader_among(&majority).await;
    println!(
        "leader {} before the cut, {} in the majority after",
        cluster.member(leader).name(),
        cluster.member(new_leader).name()
    );
    for &writer in &majority {
        let key = format!("majority-write/{}", cluster.member(writer).name());
        let requiring = cluster.member(writer).client_requiring_leader().await;
        expect_ok(retry("a get that requires a leader", || get(&requiring)).await);
        put_acknowledged(&cluster.member(writer).client().await, &key, "1").await;
        for &reader in &majority {
            let client = cluster.member(reader).client().await;
            let read = linearizable_value(&client, &key).await;
            assert_eq!(read.as_deref(), Some("1"), "{key} read in the majority");
        }
        let stale = expect_ok(value_of(&minority, &key, true).await);
        assert_eq!(stale, None, "{key} reached the cut-off member {name}");
    }

    cluster.heal(isolated);
    let all: Vec<usize> = majority.iter().copied().chain([isolated]).collect();
    cluster.leader_among(&all).await;
    cluster.assert_converged(&all).await;
    let ready = poll("the healed member's /readyz", || async {
        match cluster.member(isolated).page("/readyz").await? {
            (status, body) if status == "HTTP/1.1 200 OK" && body == "ok" => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    expect_ok(ready);
    expect_ok(retry("a get that requires a leader", || get(&requiring)).await);
    for &writer in &majority {
        let key = format!("majority-write/{}", cluster.member(writer).name());
        let read = linearizable_value(&minority, &key).await;
        assert_eq!(
            read.as_deref(),
            Some("1"),
            "{key} read through {name} after healing"
        );
    }
}

#[tokio::test]
async fn minority_side_cannot_write_or_read_linearizably_when_the_leader_is_cut_off() {
    minority_cannot_write_or_read_linearizably(Cut::Leader).await;
}

#[tokio::test]
async fn minority_side_cannot_write_or_read_linearizably_when_a_follower_is_cut_off() {
    minority_cannot_write_or_read_linearizably(Cut::Follower).await;
}

/// A get of the key written before the cut, through `client`.
async fn get(client: &Client) -> Result<GetResponse, etcd_client::Error> {
    client.clone().get("before", None).await
}

/// Reads `stream` until it ends with an error, within [`DEADLINE`]; the error's text.
async fn ends_with_an_error(stream: &mut WatchStream) -> String {
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "the stream ended without an error".to_owned(),
                Err(error) => return error.to_string(),
            }
        }
    })
    .await;
    ended.unwrap_or_else(|_| format!("the stream was still open after {DEADLINE:?}"))
}

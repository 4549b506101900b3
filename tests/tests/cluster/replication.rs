//! Any member serves any request: a write through one member is visible to a linearizable
//! read through every member as soon as it is acknowledged.

use crate::harness::{linearizable_value, put_acknowledged, Cluster, ClusterSpec};

/// Writes a key through each member in turn and reads every one back through every member.
async fn every_write_is_read_through_every_member(size: u8) {
    let cluster = Cluster::start(ClusterSpec::new(size)).await;
    let mut clients = Vec::new();
    for index in 0..cluster.len() {
        clients.push(cluster.member(index).client().await);
    }
    for (writer, client) in clients.iter().enumerate() {
        let key = format!("written-through/{}", cluster.member(writer).name());
        let value = format!("value-{writer}");
        let revision = put_acknowledged(client, &key, &value).await;
        for (reader, client) in clients.iter().enumerate() {
            // No retry: once the write is acknowledged, a linearizable read must see it.
            let read = linearizable_value(client, &key).await;
            assert_eq!(
                read.as_deref(),
                Some(value.as_str()),
                "{key} (revision {revision}) read through {}",
                cluster.member(reader).name()
            );
        }
    }
    let mut client = clients[0].clone();
    let members = client.member_list().await.expect("MemberList");
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort_unstable();
    let expected: Vec<String> = (1..=size).map(|n| format!("n{n}")).collect();
    assert_eq!(names, expected, "MemberList names");
    cluster.assert_converged(&cluster.serving()).await;
}

#[tokio::test]
async fn three_members_read_every_write_through_every_member() {
    every_write_is_read_through_every_member(3).await;
}

#[tokio::test]
async fn five_members_read_every_write_through_every_member() {
    every_write_is_read_through_every_member(5).await;
}

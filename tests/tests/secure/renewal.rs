//! Member certificates renewed live: with a test-only lifetime of seconds, each member
//! serves a new certificate after two thirds of it, while the cluster keeps serving, and a
//! member restarted afterwards rejoins over the renewed certificates.

use crate::site::{etcdctl, member_list, text, tls_session, ClientFiles, Site};

/// Lifetime of member certificates in this test: renewed after about 16 s.
const VALIDITY_SECS: &str = "24";

#[test]
fn member_certificates_are_renewed_live_while_the_cluster_serves() {
    let env = [("CAIRN_TEST_MEMBER_CERT_VALIDITY_SECS", VALIDITY_SECS)];
    let mut site = Site::new(3);
    site.start(0, &["init"], &env);
    let founder = site.host(0).client_url();
    let admin = ClientFiles::admin_of(site.host(0));
    site.wait_for("the founder to serve", || member_list(&founder, &admin));
    let token = site.token(0);
    let founder_peer = site.host(0).peer_url();
    for index in 1..3 {
        site.start(
            index,
            &["join", "--token", &token, "--join", &founder_peer],
            &env,
        );
    }
    site.wait_for("three voters", || {
        member_list(&founder, &admin)
            .filter(|members| members.len() == 3 && members.iter().all(|(_, learner)| !learner))
    });
    let ips: Vec<String> = (0..3).map(|i| site.host(i).net.client_ip.clone()).collect();
    let first: Vec<(Vec<u8>, i64)> = ips
        .iter()
        .map(|ip| tls_session(ip, &admin.ca, Some(&admin)).expect("a TLS session"))
        .collect();

    // Writes through every member, one after another, until every member serves a new
    // certificate: each must succeed.
    let mut writes = 0;
    let renewed = site.wait_for("every member to serve a renewed certificate", || {
        let member = writes % 3;
        let key = format!("key-{writes}");
        let put = etcdctl(
            &site.host(member).client_url(),
            Some(&admin),
            None,
            &["put", &key, "v"],
        );
        assert!(
            put.status.success(),
            "write {writes} through member {member} failed during renewal: {}",
            text(&put)
        );
        writes += 1;
        let now: Vec<(Vec<u8>, i64)> = ips
            .iter()
            .map(|ip| tls_session(ip, &admin.ca, Some(&admin)).expect("a TLS session"))
            .collect();
        now.iter()
            .zip(&first)
            .all(|(now, first)| now.0 != first.0 && now.1 > first.1)
            .then_some(now)
    });
    assert_eq!(renewed.len(), 3);
    assert!(writes > 1);

    // New peer connections use the renewed certificates: a member restarted now rejoins
    // and serves writes forwarded to the leader.
    site.kill(1);
    site.start(1, &["join", "--token", &token], &env);
    site.wait_for("the restarted member to serve writes", || {
        etcdctl(
            &site.host(1).client_url(),
            Some(&admin),
            None,
            &["put", "after", "restart"],
        )
        .status
        .success()
        .then_some(())
    });
    let got = etcdctl(
        &founder,
        Some(&admin),
        None,
        &["get", "after", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "restart",
        "{}",
        text(&got)
    );
    assert_eq!(member_list(&founder, &admin).map(|m| m.len()), Some(3));
}

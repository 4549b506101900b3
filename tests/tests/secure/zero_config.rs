//! `cairn init` on one host and `cairn join --token` on two others, with nothing else: a
//! three-voter cluster over mutual TLS, found over mDNS; refused tokens and certificates.

use cairn_tests::http_get;

use crate::site::{etcdctl, member_list, text, tls_session, ClientFiles, Site, DEADLINE};

#[test]
fn init_and_token_joins_make_a_three_voter_mutual_tls_cluster() {
    // Host 3 plays outsiders: another cluster's CA, a rotated token.
    let mut site = Site::new(4);
    site.start(
        0,
        &["init"],
        &[("CAIRN_LISTEN_METRICS_URLS", "http://0.0.0.0:2381")],
    );
    let founder = site.host(0).client_url();
    let admin = ClientFiles::admin_of(site.host(0));
    site.wait_for("the founder to serve", || {
        member_list(&founder, &admin).filter(|members| members.len() == 1)
    });

    // `/health` reports the certificates' expiry.
    let health = http_get(&site.host(0).net.client_ip, 2381, "/health").expect("GET /health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""health":"true""#), "{health}");
    assert!(
        health.contains("node.crt") && health.contains("not_after"),
        "{health}"
    );

    // The founder is seen from another host, across the bridge.
    let founder_peer = site.host(0).peer_url();
    let listing = site.wait_for("host 1 to see the founder over mDNS", || {
        let output = site.run(1, &["discover", "--timeout", "2"]);
        let listing = text(&output);
        (output.status.success() && listing.contains(&founder_peer)).then_some(listing)
    });
    assert!(listing.contains("\tmember\t"), "{listing}");

    // A wrong secret is refused and changes nothing.
    let token = site.token(0);
    let (ca_part, _) = token.split_once("::").expect("a K10 token");
    let wrong = format!("{ca_part}::{}", "0".repeat(32));
    site.start(1, &["join", "--token", &wrong], &[]);
    let (status, log) = site.wait_exit(1, DEADLINE);
    assert!(!status.success(), "a wrong token must fail");
    assert!(log.contains("join refused"), "{log}");
    assert!(!site.host(1).pki("ca.crt").exists(), "nothing installed");
    assert_eq!(member_list(&founder, &admin).map(|m| m.len()), Some(1));

    // A token naming another CA: the founder's certificate is not trusted, so the secret
    // is never sent.
    let stranger_token = format!("K10{}::secret", "ab".repeat(32));
    site.start(
        1,
        &["join", "--token", &stranger_token, "--join", &founder_peer],
        &[],
    );
    let (status, log) = site.wait_exit(1, DEADLINE);
    assert!(!status.success(), "a token of another CA must fail");
    assert!(
        log.contains("not from the cluster CA named in the join token"),
        "{log}"
    );

    // A client certificate of another cluster's CA, made by a `cairn init` that is stopped
    // once its files exist.
    let stranger_dir = site.scratch("stranger");
    site.start_in(3, &stranger_dir, &["init"], &[]);
    let stranger_admin = ClientFiles {
        ca: admin.ca.clone(),
        cert: stranger_dir.join("pki/admin.crt"),
        key: stranger_dir.join("pki/admin.key"),
    };
    site.wait_for("the stranger's certificates", || {
        (stranger_admin.key.exists() && stranger_dir.join("cairn.toml").exists()).then_some(())
    });
    site.kill(3);

    // The real joins, with nothing but the token: members found over mDNS.
    site.start(1, &["join", "--token", &token], &[]);
    site.start(2, &["join", "--token", &token], &[]);
    let members = site.wait_for("three voters", || {
        member_list(&founder, &admin)
            .filter(|members| members.len() == 3 && members.iter().all(|(_, learner)| !learner))
    });
    assert_eq!(members.len(), 3);

    // etcdctl with the admin certificate, through every member.
    let put = etcdctl(
        &site.host(1).client_url(),
        Some(&admin),
        None,
        &["put", "greeting", "hello"],
    );
    assert!(put.status.success(), "{}", text(&put));
    let got = etcdctl(
        &site.host(2).client_url(),
        Some(&admin),
        None,
        &["get", "greeting", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "hello",
        "{}",
        text(&got)
    );

    // The TLS session itself fails without a client certificate or with one of another
    // CA; it works with the admin's.
    let founder_ip = site.host(0).net.client_ip.clone();
    assert!(tls_session(&founder_ip, &admin.ca, Some(&admin)).is_ok());
    let refused = tls_session(&founder_ip, &admin.ca, None).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    let refused = tls_session(&founder_ip, &admin.ca, Some(&stranger_admin)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");

    // No certificate, a certificate of another CA, plaintext: etcdctl fails.
    let no_cert = etcdctl(&founder, None, Some(&admin.ca), &["get", "greeting"]);
    assert!(
        !no_cert.status.success(),
        "no client certificate: {}",
        text(&no_cert)
    );
    let other_ca = etcdctl(&founder, Some(&stranger_admin), None, &["get", "greeting"]);
    assert!(
        !other_ca.status.success(),
        "another CA: {}",
        text(&other_ca)
    );
    let plaintext_url = founder.replace("https://", "http://");
    let plaintext = etcdctl(&plaintext_url, None, None, &["get", "greeting"]);
    assert!(
        !plaintext.status.success(),
        "plaintext: {}",
        text(&plaintext)
    );

    // A rotation on one member reaches every member, and the old token is refused
    // everywhere.
    let founder_dir = site.host(0).data_dir.display().to_string();
    let rotated = site.run(0, &["token", "--rotate", "--data-dir", &founder_dir]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        text(&rotated).contains("rotated on every member"),
        "{}",
        text(&rotated)
    );
    let new_token = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    assert_ne!(new_token, token);
    for index in 0..3 {
        assert_eq!(site.token(index), new_token, "host {index}'s token");
    }
    let late_dir = site.scratch("late");
    let other_peer = site.host(1).peer_url();
    site.start_in(
        3,
        &late_dir,
        &["join", "--token", &token, "--join", &other_peer],
        &[],
    );
    let (status, log) = site.wait_exit(3, DEADLINE);
    assert!(!status.success(), "a rotated token must fail");
    assert!(log.contains("join refused"), "{log}");
    assert_eq!(member_list(&founder, &admin).map(|m| m.len()), Some(3));
}

//! Certificates the operator brings, with etcd's flags: `https://` URLs served with
//! `--cert-file`/`--key-file`, clients checked with `--trusted-ca-file --client-cert-auth`,
//! peers with the `--peer-*` flags.

use crate::site::{etcdctl, member_list, text, ClientFiles, Site};

#[test]
fn etcd_certificate_flags_serve_tls_and_check_client_certificates() {
    let mut site = Site::new(1);
    // Certificates from a CA made by a `cairn init` that is stopped once its files exist;
    // the member below is an ordinary `cairn` given them with etcd's flags.
    let issuer = site.scratch("issuer");
    site.start_in(0, &issuer, &["init"], &[]);
    let pki = issuer.join("pki");
    site.wait_for("the issuer's certificates", || {
        issuer.join("cairn.toml").exists().then_some(())
    });
    site.kill(0);
    let file = |name: &str| pki.join(name).display().to_string();
    let ip = site.host(0).net.client_ip.clone();
    let client_url = format!("https://{ip}:2379");
    let peer_url = format!("https://{ip}:2380");
    site.start(
        0,
        &[
            "--name=solo",
            &format!("--listen-client-urls={client_url}"),
            &format!("--advertise-client-urls={client_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=solo={peer_url}"),
            &format!("--cert-file={}", file("node.crt")),
            &format!("--key-file={}", file("node.key")),
            &format!("--trusted-ca-file={}", file("ca.crt")),
            "--client-cert-auth",
            &format!("--peer-cert-file={}", file("node.crt")),
            &format!("--peer-key-file={}", file("node.key")),
            &format!("--peer-trusted-ca-file={}", file("ca.crt")),
            "--peer-client-cert-auth",
        ],
        &[],
    );
    let admin = ClientFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("admin.crt"),
        key: pki.join("admin.key"),
    };
    site.wait_for("the member to serve over TLS", || {
        member_list(&client_url, &admin)
    });
    let put = etcdctl(&client_url, Some(&admin), None, &["put", "k", "v"]);
    assert!(put.status.success(), "{}", text(&put));
    // etcdctl 3.4 sends an `https://` endpoint as the HTTP/2 authority of these calls.
    for command in [&["endpoint", "status"][..], &["endpoint", "hashkv"]] {
        let answer = etcdctl(&client_url, Some(&admin), None, command);
        assert!(
            answer.status.success()
                && String::from_utf8_lossy(&answer.stdout).contains(&client_url),
            "etcdctl {command:?}: {}",
            text(&answer)
        );
    }
    let no_cert = etcdctl(&client_url, None, Some(&admin.ca), &["get", "k"]);
    assert!(
        !no_cert.status.success(),
        "no client certificate: {}",
        text(&no_cert)
    );
}

//! Unconfigured nodes (`cairn serve --wait`): advertised as `uninitialized`, set up only
//! with the setup code the node shows, as a new cluster or as a member of one.

use crate::site::{member_list, text, ClientFiles, Site};

/// Each waiting node's peer URL and setup-certificate fingerprint, as `cairn discover`
/// lists them from `index`'s host.
fn waiting_nodes(site: &Site, index: usize) -> Vec<(String, String)> {
    let output = site.run(index, &["discover", "--timeout", "2"]);
    text(&output)
        .lines()
        .filter_map(|line| {
            let columns: Vec<&str> = line.split('\t').collect();
            (columns.len() == 8 && columns[1] == "uninitialized")
                .then(|| (columns[4].to_owned(), columns[7].to_owned()))
        })
        .collect()
}

#[test]
fn waiting_nodes_are_set_up_only_with_their_setup_code() {
    let mut site = Site::new(2);
    site.start(0, &["serve", "--wait"], &[]);
    site.start(1, &["serve", "--wait"], &[]);
    let peers = [site.host(0).peer_url(), site.host(1).peer_url()];
    let waiting = site.wait_for("both nodes advertised as uninitialized", || {
        let seen = waiting_nodes(&site, 0);
        peers
            .iter()
            .all(|peer| seen.iter().any(|(url, _)| url == peer))
            .then_some(seen)
    });
    let fingerprint = |peer: &str| {
        waiting
            .iter()
            .find(|(url, _)| url == peer)
            .map(|(_, fingerprint)| fingerprint.clone())
            .expect("an advertised fingerprint")
    };
    let code_of = |index: usize| {
        let data_dir = site.host(index).data_dir.display().to_string();
        let output = site.run(index, &["setup-code", "--data-dir", &data_dir]);
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };

    // A wrong code is refused and changes nothing.
    let fingerprint0 = fingerprint(&peers[0]);
    let wrong = site.run(
        1,
        &[
            "setup",
            "--node",
            &peers[0],
            "--code",
            "0000-0000-0000",
            "--fingerprint",
            &fingerprint0,
            "bootstrap",
        ],
    );
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("wrong setup code"),
        "{}",
        text(&wrong)
    );
    assert!(!site.host(0).pki("ca.crt").exists());

    // The right code with another node's fingerprint: the caller refuses to send it.
    let code0 = code_of(0);
    let impostor = site.run(
        1,
        &[
            "setup",
            "--node",
            &peers[0],
            "--code",
            &code0,
            "--fingerprint",
            &"ab".repeat(32),
            "bootstrap",
        ],
    );
    assert!(!impostor.status.success(), "{}", text(&impostor));
    assert!(
        text(&impostor).contains("fingerprint"),
        "{}",
        text(&impostor)
    );

    // Bootstrap with the code: the node founds a cluster and serves.
    let bootstrap = site.run(
        1,
        &[
            "setup",
            "--node",
            &peers[0],
            "--code",
            &code0,
            "--fingerprint",
            &fingerprint0,
            "bootstrap",
        ],
    );
    assert!(bootstrap.status.success(), "{}", text(&bootstrap));
    let token = String::from_utf8_lossy(&bootstrap.stdout).trim().to_owned();
    let founder = site.host(0).client_url();
    let admin = ClientFiles::admin_of(site.host(0));
    site.wait_for("the bootstrapped node to serve", || {
        member_list(&founder, &admin)
    });

    // The second node joins the new cluster through its own setup code.
    let code1 = code_of(1);
    let fingerprint1 = fingerprint(&peers[1]);
    let join = site.run(
        0,
        &[
            "setup",
            "--node",
            &peers[1],
            "--code",
            &code1,
            "--fingerprint",
            &fingerprint1,
            "join",
            "--token",
            &token,
        ],
    );
    assert!(join.status.success(), "{}", text(&join));
    site.wait_for("two members", || {
        member_list(&founder, &admin).filter(|members| members.len() == 2)
    });
    assert!(
        !site.host(0).data_dir.join("setup-code").exists(),
        "the code is single-use"
    );
}

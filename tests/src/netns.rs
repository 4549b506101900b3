//! A small private network for a partition or zero-config test: one network namespace per
//! member ("host"), joined by two bridges in the test's own namespace.
//!
//! Each member has two links. Its *peer* link (addresses `10.A.B.10+i`) joins the peer
//! bridge, which has no address: only members talk over it. Its *client* link (addresses
//! `10.A.B.138+i`) joins the client bridge, which has `10.A.B.129`, so the test reaches every
//! member's client URL. Setting a member's peer link down on the bridge side cuts it off from
//! the other members while the test still talks to it as a client.
//!
//! Names carry a tag unique to the test process and the [`Lab`], and everything created is
//! removed when the lab is dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Labs created by this process so far; part of each lab's tag.
static LABS: AtomicU32 = AtomicU32::new(0);

/// Attempts to find a tag and a subnet nobody on this host uses.
const TAG_ATTEMPTS: u32 = 64;

/// The addresses and names of one member inside a [`Lab`].
pub struct Host {
    /// Network namespace the member runs in (`ip netns exec NAMESPACE`).
    pub namespace: String,
    /// Address of the member's peer link.
    pub peer_ip: String,
    /// Address of the member's client link.
    pub client_ip: String,
}

/// Namespaces and bridges of one test; removed on drop.
pub struct Lab {
    tag: String,
    /// Second and third octets of the lab's `10.A.B.0/24`.
    subnet: (u8, u8),
    bridges: Vec<String>,
    namespaces: Vec<String>,
    /// Bridge-side ends of the members' links.
    links: Vec<String>,
}

impl Lab {
    /// Creates the two bridges on an unused tag and subnet.
    pub fn create() -> Lab {
        let pid = std::process::id();
        let used_addresses = ip_output(&["-o", "-4", "addr", "show"]);
        for _ in 0..TAG_ATTEMPTS {
            let serial = LABS.fetch_add(1, Ordering::Relaxed);
            // Interface names are at most 15 bytes: "ct" + 6 hex digits + a suffix of 4.
            let tag = format!("{:04x}{:02x}", pid & 0xffff, serial & 0xff);
            let subnet = (
                u8::try_from(64 + (pid + serial / 256) % 64).expect("fits in u8"),
                u8::try_from(serial % 256).expect("fits in u8"),
            );
            if used_addresses.contains(&format!(" 10.{}.{}.", subnet.0, subnet.1)) {
                continue;
            }
            let mut lab = Lab {
                tag,
                subnet,
                bridges: Vec::new(),
                namespaces: Vec::new(),
                links: Vec::new(),
            };
            if lab.add_bridges() {
                return lab;
            }
        }
        panic!("no free network tag and subnet in {TAG_ATTEMPTS} attempts");
    }

    /// Creates the peer and client bridges; false when their names are taken.
    fn add_bridges(&mut self) -> bool {
        for bridge in [self.bridge("bp"), self.bridge("bc")] {
            if !try_ip(&["link", "add", &bridge, "type", "bridge"]) {
                return false;
            }
            self.bridges.push(bridge.clone());
            ip(&["link", "set", &bridge, "up"]);
        }
        let gateway = format!("{}/25", self.address(129));
        ip(&["addr", "add", &gateway, "dev", &self.bridge("bc")]);
        true
    }

    /// Creates member `index`'s namespace and both its links.
    pub fn add_host(&mut self, index: u8) -> Host {
        let namespace = format!("cairn-{}-{index}", self.tag);
        ip(&["netns", "add", &namespace]);
        self.namespaces.push(namespace.clone());
        ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        let peer_ip = self.address(10 + index);
        let client_ip = self.address(138 + index);
        for (kind, inner, address) in [("p", "peer0", &peer_ip), ("c", "client0", &client_ip)] {
            let outer = self.link(kind, index);
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", &namespace,
            ]);
            self.links.push(outer.clone());
            ip(&[
                "link",
                "set",
                &outer,
                "master",
                &self.bridge(&format!("b{kind}")),
            ]);
            ip(&["link", "set", &outer, "up"]);
            let cidr = format!("{address}/25");
            ip(&["-n", &namespace, "addr", "add", &cidr, "dev", inner]);
            ip(&["-n", &namespace, "link", "set", inner, "up"]);
        }
        Host {
            namespace,
            peer_ip,
            client_ip,
        }
    }

    /// Cuts member `index` off from the other members (its client link stays up).
    pub fn cut(&self, index: u8) {
        ip(&["link", "set", &self.link("p", index), "down"]);
    }

    /// Reconnects member `index` to the other members.
    pub fn heal(&self, index: u8) {
        ip(&["link", "set", &self.link("p", index), "up"]);
    }

    fn bridge(&self, suffix: &str) -> String {
        format!("ct{}{suffix}", self.tag)
    }

    /// The bridge-side end of member `index`'s peer (`p`) or client (`c`) link.
    fn link(&self, kind: &str, index: u8) -> String {
        format!("ct{}{kind}{index}", self.tag)
    }

    fn address(&self, last: u8) -> String {
        format!("10.{}.{}.{last}", self.subnet.0, self.subnet.1)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own outcome. The links go
        // first and explicitly: a namespace outlives `ip netns delete` while sockets of its
        // killed processes still retransmit (to a member cut off, for minutes), and its
        // links would stay with it.
        for link in &self.links {
            try_ip(&["link", "delete", link]);
        }
        for namespace in &self.namespaces {
            try_ip(&["netns", "delete", namespace]);
        }
        for bridge in &self.bridges {
            try_ip(&["link", "delete", bridge]);
        }
    }
}

/// Runs `ip ARGS`; false when it fails.
fn try_ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs `ip ARGS` and panics with its error when it fails.
fn ip(args: &[&str]) {
    ip_output(args);
}

/// Runs `ip ARGS` and returns its standard output; panics when it fails.
fn ip_output(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` (scripts/install-test-deps.sh installs iproute2): {e}")
    });
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

//! mDNS: every zero-config member advertises `_cairn._tcp.local.` with TXT records saying
//! who it is (cluster and member ids, name, state, URLs, version); `cairn discover` and
//! `cairn join` browse for them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type Cairn members advertise.
pub const SERVICE_TYPE: &str = "_cairn._tcp.local.";

/// How long browsing goes on once `enough` is satisfied, so that the other members answering
/// the same query are seen too (a joining node then has more than one member to try).
const SETTLE: Duration = Duration::from_secs(1);

/// What a member says about itself over mDNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// `cluster_id` in hex; empty while uninitialised.
    pub cluster_id: String,
    pub name: String,
    /// `member_id` in hex; empty while uninitialised.
    pub member_id: String,
    /// `member` or `uninitialized`.
    pub state: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub version: String,
    /// SHA-256 of the setup certificate of an uninitialised node (`cairn setup
    /// --fingerprint`); empty for members.
    pub fingerprint: String,
}

impl Advertisement {
    fn properties(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cluster_id", self.cluster_id.clone()),
            ("name", self.name.clone()),
            ("member_id", self.member_id.clone()),
            ("state", self.state.clone()),
            ("client_urls", self.client_urls.join(",")),
            ("peer_urls", self.peer_urls.join(",")),
            ("version", self.version.clone()),
            ("fingerprint", self.fingerprint.clone()),
        ]
    }

    fn from_info(info: &ServiceInfo) -> Advertisement {
        let text = |key: &str| info.get_property_val_str(key).unwrap_or("").to_owned();
        let list = |key: &str| {
            text(key)
                .split(',')
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Advertisement {
            cluster_id: text("cluster_id"),
            name: text("name"),
            member_id: text("member_id"),
            state: text("state"),
            client_urls: list("client_urls"),
            peer_urls: list("peer_urls"),
            version: text("version"),
            fingerprint: text("fingerprint"),
        }
    }
}

/// An advertisement kept on the LAN until dropped.
pub struct Advertiser {
    daemon: ServiceDaemon,
}

impl Advertiser {
    /// Starts answering mDNS queries for `advertisement`, on every interface.
    pub fn start(advertisement: &Advertisement, port: u16) -> anyhow::Result<Advertiser> {
        let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
        // Instance names must be unique on the LAN; the member name may not be.
        let instance = format!(
            "{}-{}",
            advertisement.name,
            &crate::security::pki::random_secret()[..8]
        );
        let host = format!("{instance}.local.");
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            "",
            port,
            &advertisement.properties()[..],
        )
        .context("invalid mDNS advertisement")?
        .enable_addr_auto();
        daemon
            .register(info)
            .context("cannot advertise over mDNS")?;
        Ok(Advertiser { daemon })
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Listens for `wait`, or until [`SETTLE`] after `enough` first says so, and returns every
/// node seen (by name and peer URLs). Blocking: call from a thread that may block.
pub fn browse(
    wait: Duration,
    mut enough: impl FnMut(&Advertisement) -> bool,
) -> anyhow::Result<Vec<Advertisement>> {
    let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
    let events = daemon.browse(SERVICE_TYPE).context("cannot browse mDNS")?;
    let mut give_up = Instant::now() + wait;
    let mut seen = BTreeMap::new();
    while let Some(left) = give_up.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(info)) => {
                let advertisement = Advertisement::from_info(&info);
                let done = enough(&advertisement);
                seen.insert(
                    (advertisement.name.clone(), advertisement.peer_urls.clone()),
                    advertisement,
                );
                if done {
                    give_up = give_up.min(Instant::now() + SETTLE);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.shutdown();
    Ok(seen.into_values().collect())
}

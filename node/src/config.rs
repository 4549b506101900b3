//! The daemon's settings: etcd's flag names and meanings, each also an environment variable
//! (`CAIRN_DATA_DIR`, ...) and a key of the `--config-file` (TOML, `data-dir = "..."`).
//! Precedence: command line, then environment, then config file, then the embedded default.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::api::Limits;
use crate::raft::{Bootstrap, Member, MemberId, RaftSettings};
use crate::security::pki::Pki;
use crate::security::{ClientAuth, ListenerTls, TlsSettings};

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "CAIRN_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.cairn]
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma separated).
    #[arg(
        long,
        env = "CAIRN_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,

    /// Client URLs advertised to the cluster and to clients [default: the listen URLs].
    #[arg(long, env = "CAIRN_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,

    /// URLs to listen on for peer traffic (comma separated).
    #[arg(
        long,
        env = "CAIRN_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,

    /// This member's peer URLs advertised to the rest of the cluster [default: the listen peer URLs].
    #[arg(long, env = "CAIRN_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,

    /// Initial cluster configuration for bootstrapping, `name=peerURL,...`
    /// [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Initial cluster token; members and cluster ids are derived from it.
    #[arg(
        long,
        env = "CAIRN_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Raise the NOSPACE alarm when the store's data exceeds this many bytes (0 = 2 GiB).
    #[arg(long, env = "CAIRN_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Maximum number of operations in one txn request.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "CAIRN_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Promote caught-up learners to voters automatically, keeping the voter count odd.
    #[arg(long, env = "CAIRN_AUTO_PROMOTE_LEARNERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_promote_learners: bool,

    /// Time (in milliseconds) between progress notifications to watchers that asked for
    /// them (etcd's `--experimental-watch-progress-notify-interval`; 0 = 10 minutes, at
    /// least 100 ms).
    #[arg(
        long,
        env = "CAIRN_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value_t = 600_000
    )]
    pub watch_progress_notify_interval: u64,

    /// Path to the client server TLS certificate file (PEM).
    #[arg(long, env = "CAIRN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file (PEM).
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA certificate file.
    #[arg(long, env = "CAIRN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require client certificates of the trusted CA on TLS client listeners.
    #[arg(long, env = "CAIRN_CLIENT_CERT_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Path to the peer server TLS certificate file (PEM).
    #[arg(long, env = "CAIRN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file (PEM).
    #[arg(long, env = "CAIRN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "CAIRN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require peer certificates of the peer trusted CA.
    #[arg(long, env = "CAIRN_PEER_CLIENT_CERT_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// In a zero-config cluster (a CA in the data dir), serve plaintext `http://` client
    /// URLs on addresses other than loopback; refused without this flag.
    #[arg(long, env = "CAIRN_INSECURE_PLAINTEXT_CLIENTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub insecure_plaintext_clients: bool,

    /// URLs to serve `/health` on over plain HTTP (comma separated; none by default).
    #[arg(long, env = "CAIRN_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Log level: debug, info, warn, error.
    #[arg(long, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Path to a TOML file whose keys are these flags' names (`data-dir = "/var/lib/cairn"`).
    #[arg(long, env = "CAIRN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
}

/// Loads `--config-file` into the environment so that clap applies it beneath the command
/// line and the real environment. Call before any thread is started.
pub fn export_config_file(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    for (key, value) in table {
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| item.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => bail!("config file key {key}: unsupported value {other}"),
        };
        let variable = format!("CAIRN_{}", key.to_uppercase().replace('-', "_"));
        if std::env::var_os(&variable).is_none() {
            std::env::set_var(variable, value);
        }
    }
    Ok(())
}

/// Settings resolved and checked, ready to start a member.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Client listeners; `true` where the URL is `https://`.
    pub client_addrs: Vec<(SocketAddr, bool)>,
    /// Peer listeners; `true` where the URL is `https://`.
    pub peer_addrs: Vec<(SocketAddr, bool)>,
    pub tls: TlsSettings,
    /// `--listen-metrics-urls`.
    pub metrics_addrs: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub member_id: MemberId,
    pub cluster_id: u64,
    pub bootstrap: Bootstrap,
    /// This member's own attributes, published to the cluster once it has joined.
    pub member: Member,
    pub cluster_token: String,
    pub auto_promote_learners: bool,
    pub limits: Limits,
    pub raft: RaftSettings,
    pub watch_progress_notify_interval: Duration,
    pub log_level: String,
}

fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The socket address of an `http://host:port` or `https://host:port` URL, and whether it
/// is `https`.
fn listen_addr(url: &str) -> anyhow::Result<(SocketAddr, bool)> {
    let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
    let tls = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => bail!("{url}: unsupported scheme {other:?} (expected http or https)"),
    };
    let host = parsed
        .host_str()
        .with_context(|| format!("{url}: no host"))?;
    let port = parsed.port().with_context(|| format!("{url}: no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{url}: {host} has no address"))?;
    Ok((addr, tls))
}

/// FNV-1a: a stable hash so every member derives the same ids from the same flags.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(b"\0") {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash.max(1)
}

/// A member's id, derived as etcd does from its peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> MemberId {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let mut parts: Vec<&[u8]> = sorted.iter().map(|url| url.as_bytes()).collect();
    parts.push(token.as_bytes());
    fnv1a(&parts)
}

/// The cluster's id, from the cluster token alone, so that a member started later with
/// `--initial-cluster-state existing` derives the same id as the founders.
pub fn cluster_id(token: &str) -> u64 {
    fnv1a(&[b"cluster", token.as_bytes()])
}

impl ServerArgs {
    pub fn resolve(&self) -> anyhow::Result<ServerConfig> {
        let listen_client_urls = split_urls(&self.listen_client_urls);
        if listen_client_urls.is_empty() {
            bail!("--listen-client-urls is empty");
        }
        let client_addrs = listen_client_urls
            .iter()
            .map(|url| listen_addr(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let advertise_client_urls = self
            .advertise_client_urls
            .as_deref()
            .map(split_urls)
            .unwrap_or_else(|| listen_client_urls.clone());
        let peer_urls = split_urls(
            self.initial_advertise_peer_urls
                .as_deref()
                .unwrap_or(&self.listen_peer_urls),
        );
        let peer_addrs = split_urls(&self.listen_peer_urls)
            .iter()
            .map(|url| listen_addr(url).context("bad --listen-peer-urls"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for url in &peer_urls {
            url::Url::parse(url).with_context(|| format!("bad peer URL {url:?}"))?;
        }
        let initial_cluster = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, peer_urls.join(",")));

        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in split_urls(&initial_cluster) {
            let (name, url) = pair
                .split_once('=')
                .with_context(|| format!("--initial-cluster entry {pair:?} is not name=URL"))?;
            by_name
                .entry(name.to_owned())
                .or_default()
                .push(url.to_owned());
        }
        let Some(own_urls) = by_name.get(&self.name) else {
            bail!(
                "--initial-cluster {initial_cluster:?} has no entry for this member's --name {:?}",
                self.name
            );
        };
        let mut own_sorted = own_urls.clone();
        own_sorted.sort();
        let mut advertised = peer_urls.clone();
        advertised.sort();
        if own_sorted != advertised {
            bail!(
                "--initial-cluster has {:?} for {:?} but its --initial-advertise-peer-urls are {:?}",
                own_urls,
                self.name,
                peer_urls
            );
        }

        let token = &self.initial_cluster_token;
        let mut initial_members = BTreeMap::new();
        for (name, urls) in &by_name {
            let member = Member {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: if *name == self.name {
                    advertise_client_urls.clone()
                } else {
                    Vec::new()
                },
                wants_vote: true,
            };
            initial_members.insert(member_id(urls, token), member);
        }
        let bootstrap = match self.initial_cluster_state.as_str() {
            "new" => Bootstrap::New(initial_members),
            "existing" => Bootstrap::Existing,
            other => bail!("--initial-cluster-state {other:?}: expected \"new\" or \"existing\""),
        };
        if self.election_timeout < 5 * self.heartbeat_interval {
            bail!("--election-timeout must be at least 5 times --heartbeat-interval");
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name)));
        let tls = self.tls_settings(&data_dir, &client_addrs, &peer_addrs, &peer_urls)?;
        let mut metrics_addrs = Vec::new();
        for url in split_urls(&self.listen_metrics_urls) {
            match listen_addr(&url).context("bad --listen-metrics-urls")? {
                (addr, false) => metrics_addrs.push(addr),
                (_, true) => bail!("{url}: /health is served over http:// only"),
            }
        }
        Ok(ServerConfig {
            name: self.name.clone(),
            data_dir,
            client_addrs,
            peer_addrs,
            tls,
            metrics_addrs,
            advertise_client_urls: advertise_client_urls.clone(),
            member_id: member_id(&peer_urls, token),
            cluster_id: cluster_id(token),
            bootstrap,
            member: Member {
                name: self.name.clone(),
                peer_urls: peer_urls.clone(),
                client_urls: advertise_client_urls.clone(),
                wants_vote: true,
            },
            cluster_token: token.clone(),
            auto_promote_learners: self.auto_promote_learners,
            limits: Limits {
                max_request_bytes: self.max_request_bytes,
                quota_backend_bytes: if self.quota_backend_bytes <= 0 {
                    Limits::default().quota_backend_bytes
                } else {
                    self.quota_backend_bytes
                },
                max_txn_ops: self.max_txn_ops,
            },
            raft: RaftSettings {
                heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
                election_timeout: Duration::from_millis(self.election_timeout),
                snapshot_count: self.snapshot_count.max(1),
                ..RaftSettings::default()
            },
            watch_progress_notify_interval: match self.watch_progress_notify_interval {
                0 => crate::api::watch::DEFAULT_PROGRESS_INTERVAL,
                millis => Duration::from_millis(millis),
            },
            log_level: self.log_level.clone(),
        })
    }
}

impl ServerArgs {
    /// TLS from etcd's certificate flags, else from the data dir's PKI (a zero-config
    /// cluster), checked against the listeners' schemes.
    fn tls_settings(
        &self,
        data_dir: &std::path::Path,
        client_addrs: &[(SocketAddr, bool)],
        peer_addrs: &[(SocketAddr, bool)],
        peer_urls: &[String],
    ) -> anyhow::Result<TlsSettings> {
        let pki = Pki::in_data_dir(data_dir);
        let pki = pki.exists().then_some(pki);
        let from_pki = |pki: &Pki, client_auth| ListenerTls {
            cert_file: pki.node_cert_path(),
            key_file: pki.node_key_path(),
            chain_ca_file: Some(pki.ca_cert_path()),
            trusted_ca_file: Some(pki.ca_cert_path()),
            client_auth,
        };
        let client = match (&self.cert_file, &self.key_file, &pki) {
            (Some(cert_file), Some(key_file), _) => Some(ListenerTls {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                chain_ca_file: None,
                trusted_ca_file: self.trusted_ca_file.clone(),
                client_auth: if self.client_cert_auth {
                    ClientAuth::Required
                } else if self.trusted_ca_file.is_some() {
                    ClientAuth::Optional
                } else {
                    ClientAuth::None
                },
            }),
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!("--cert-file and --key-file go together")
            }
            // A zero-config cluster's clients prove who they are with a certificate of
            // the cluster CA (`cairn cert client NAME`).
            (None, None, Some(pki)) => Some(from_pki(pki, ClientAuth::Required)),
            (None, None, None) => None,
        };
        if client.is_none() && client_addrs.iter().any(|(_, tls)| *tls) {
            bail!("https:// client URLs need --cert-file and --key-file, or a cluster CA in the data dir (`cairn init`)");
        }
        if self.client_cert_auth
            && client
                .as_ref()
                .is_none_or(|tls| tls.trusted_ca_file.is_none())
        {
            bail!("--client-cert-auth needs --trusted-ca-file");
        }
        if pki.is_some() && !self.insecure_plaintext_clients {
            if let Some((addr, _)) = client_addrs
                .iter()
                .find(|(addr, tls)| !tls && !addr.ip().is_loopback())
            {
                bail!("{addr}: this member belongs to a TLS cluster; serve clients on https:// URLs (or pass --insecure-plaintext-clients to serve plaintext beyond loopback)");
            }
        }
        let peer = match (&self.peer_cert_file, &self.peer_key_file, &pki) {
            (Some(cert_file), Some(key_file), _) => Some(ListenerTls {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                chain_ca_file: None,
                trusted_ca_file: self.peer_trusted_ca_file.clone(),
                client_auth: if self.peer_client_cert_auth {
                    ClientAuth::Required
                } else {
                    ClientAuth::None
                },
            }),
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!("--peer-cert-file and --peer-key-file go together")
            }
            // Optional at the handshake so that a joining node can reach the join service;
            // the peer service itself requires a member certificate.
            (None, None, Some(pki)) => Some(from_pki(pki, ClientAuth::Optional)),
            (None, None, None) => None,
        };
        if self.peer_client_cert_auth
            && peer
                .as_ref()
                .is_none_or(|tls| tls.trusted_ca_file.is_none())
        {
            bail!("--peer-client-cert-auth needs --peer-trusted-ca-file");
        }
        let peer_tls_everywhere = peer_addrs.iter().all(|(_, tls)| *tls)
            && peer_urls.iter().all(|url| url.starts_with("https://"));
        if pki.is_some() && !peer_tls_everywhere {
            bail!(
                "this member belongs to a TLS cluster (a CA in {}): its peer URLs must be https://",
                data_dir.display()
            );
        }
        let https_peers = peer_urls.iter().any(|url| url.starts_with("https://"));
        if https_peers
            && peer
                .as_ref()
                .is_some_and(|tls| tls.trusted_ca_file.is_none())
        {
            bail!("https:// peer URLs need --peer-trusted-ca-file to verify the other members");
        }
        if peer.is_none() && peer_addrs.iter().any(|(_, tls)| *tls) {
            bail!("https:// peer URLs need --peer-cert-file and --peer-key-file, or a cluster CA in the data dir (`cairn init`)");
        }
        Ok(TlsSettings { client, peer, pki })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn resolve(argv: &[&str]) -> anyhow::Result<ServerConfig> {
        let mut full = vec!["cairn"];
        full.extend_from_slice(argv);
        Harness::try_parse_from(full)?.args.resolve()
    }

    #[test]
    fn defaults_are_a_loopback_single_member() {
        let config = resolve(&[]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("default.cairn"));
        assert_eq!(
            config.client_addrs,
            vec![("127.0.0.1:2379".parse().unwrap(), false)]
        );
        let Bootstrap::New(members) = &config.bootstrap else {
            panic!("a default member founds a new cluster");
        };
        assert_eq!(members.len(), 1);
        let member = &members[&config.member_id];
        assert_eq!(member.name, "default");
        assert_eq!(member.peer_urls, vec!["http://127.0.0.1:2380".to_owned()]);
        assert_eq!(config.limits.max_request_bytes, 1_572_864);
    }

    #[test]
    fn ids_follow_the_peer_urls_and_the_token() {
        let a = resolve(&["--initial-cluster-token", "one"]).unwrap();
        let b = resolve(&["--initial-cluster-token", "two"]).unwrap();
        assert_ne!(a.member_id, b.member_id);
        assert_ne!(a.cluster_id, b.cluster_id);
        assert_eq!(
            a.member_id,
            resolve(&["--initial-cluster-token", "one"])
                .unwrap()
                .member_id
        );
    }

    #[test]
    fn a_cluster_without_this_member_is_refused() {
        let error = resolve(&[
            "--name",
            "n1",
            "--initial-cluster",
            "n2=http://127.0.0.1:2380",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("no entry for this member"), "{error}");
    }

    #[test]
    fn a_zero_config_member_refuses_plaintext_peers_and_remote_plaintext_clients() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().display().to_string();
        Pki::in_data_dir(dir.path())
            .create(&crate::security::pki::Identity {
                name: "a".into(),
                hosts: vec!["127.0.0.1".into()],
            })
            .unwrap();
        let error = resolve(&["--data-dir", &data_dir]).unwrap_err().to_string();
        assert!(error.contains("must be https://"), "{error}");
        let https_peers = [
            "--data-dir",
            &data_dir,
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
        ];
        let config = resolve(&https_peers).unwrap();
        assert!(config.tls.pki.is_some() && config.tls.peer.is_some());
        let mut remote_plaintext = https_peers.to_vec();
        remote_plaintext.extend(["--listen-client-urls", "http://0.0.0.0:2379"]);
        let error = resolve(&remote_plaintext).unwrap_err().to_string();
        assert!(error.contains("--insecure-plaintext-clients"), "{error}");
        remote_plaintext.push("--insecure-plaintext-clients");
        assert!(resolve(&remote_plaintext).is_ok());
    }

    #[test]
    fn https_urls_need_a_certificate() {
        let error = resolve(&["--listen-client-urls", "https://127.0.0.1:2379"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--cert-file"), "{error}");
    }
}

//! The zero-config commands: `cairn init` founds a TLS cluster, `cairn join --token T`
//! joins one, `cairn token` shows or rotates the join token, `cairn cert client NAME` issues a
//! client certificate, `cairn discover` lists the members mDNS sees.
//!
//! `init` and `join` write the member's settings to `<data-dir>/cairn.toml` (flag names as
//! keys) and start the server from it; run again on a set-up data dir they just start it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{cluster_id, ServerArgs};
use crate::discovery::{self, Advertisement};
use crate::security::join::{join_through, share_rotated_token, Applicant};
use crate::security::pki::{self, Identity, JoinToken, Pki};

/// Where a zero-config member listens unless told otherwise.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// The member's settings file inside its data dir.
const SETTINGS_FILE: &str = "cairn.toml";

/// Where and as whom a zero-config member runs; everything has a default.
#[derive(Args, Debug, Clone)]
pub struct MemberArgs {
    /// Member name [default: the host name and the advertised address].
    #[arg(long)]
    pub name: Option<String>,

    /// Data directory [default: <name>.cairn].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address to advertise to the cluster and clients [default: the first address of a
    /// network interface other than loopback].
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,

    /// Address to listen on [default: every address].
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub member: MemberArgs,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The join token printed by `cairn init` or `cairn token` on a member.
    #[arg(long, env = "CAIRN_JOIN_TOKEN")]
    pub token: String,

    /// Peer URL of a member to join through [default: found over mDNS].
    #[arg(long)]
    pub join: Option<String>,

    /// How long to look for members over mDNS, in seconds.
    #[arg(long, default_value_t = 15)]
    pub discover_timeout: u64,

    #[command(flatten)]
    pub member: MemberArgs,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Data directory of a member of the cluster.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Replace the secret: the old token stops working on this member at once.
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Issue a client certificate whose common name is NAME (the user, with
    /// `--client-cert-auth`).
    Client(ClientCertArgs),
}

#[derive(Args, Debug)]
pub struct ClientCertArgs {
    pub name: String,

    /// Data directory of a member of the cluster.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// How long to listen, in seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// The server's flags alone, to parse a settings file.
#[derive(Parser)]
struct ServerOnly {
    #[command(flatten)]
    server: ServerArgs,
}

/// This host's name, for default member names.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "cairn".to_owned())
}

/// The addresses of the network interfaces other than loopback, IPv4 first.
fn interface_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    addresses.sort_by_key(IpAddr::is_ipv6);
    addresses
}

fn url(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// A zero-config member's settings, resolved from its arguments and the host.
struct Layout {
    name: String,
    data_dir: PathBuf,
    listen_client: String,
    listen_peer: String,
    client_url: String,
    peer_url: String,
    identity: Identity,
}

impl MemberArgs {
    fn layout(&self) -> anyhow::Result<Layout> {
        let interfaces = interface_addresses();
        let advertised = match self.advertise_address {
            Some(address) => address,
            None => *interfaces.first().context(
                "no network interface other than loopback has an address; pass --advertise-address",
            )?,
        };
        let name = self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                host_name(),
                advertised.to_string().replace([':', '.'], "-")
            )
        });
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{name}.cairn")));
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        hosts.push(advertised.to_string());
        hosts.extend(interfaces.iter().map(IpAddr::to_string));
        let host = host_name();
        // Only a name a certificate can carry as a DNS name.
        if host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            hosts.push(host);
        }
        Ok(Layout {
            identity: Identity {
                name: name.clone(),
                hosts,
            },
            name,
            data_dir,
            listen_client: url(self.listen_address, CLIENT_PORT),
            listen_peer: url(self.listen_address, PEER_PORT),
            client_url: url(advertised, CLIENT_PORT),
            peer_url: url(advertised, PEER_PORT),
        })
    }
}

impl Layout {
    /// Writes the member's settings file.
    fn save(&self, cluster_token: &str, state: &str) -> anyhow::Result<PathBuf> {
        let settings = BTreeMap::from([
            ("name", self.name.clone()),
            ("data-dir", self.data_dir.display().to_string()),
            ("listen-client-urls", self.listen_client.clone()),
            ("advertise-client-urls", self.client_url.clone()),
            ("listen-peer-urls", self.listen_peer.clone()),
            ("initial-advertise-peer-urls", self.peer_url.clone()),
            (
                "initial-cluster",
                format!("{}={}", self.name, self.peer_url),
            ),
            ("initial-cluster-state", state.to_owned()),
            ("initial-cluster-token", cluster_token.to_owned()),
        ]);
        let path = self.data_dir.join(SETTINGS_FILE);
        let text = toml::to_string(&settings).context("cannot write the member settings")?;
        pki::write_file(&path, text.as_bytes(), false)?;
        Ok(path)
    }
}

/// The server settings saved in a member's data dir (values from the command line and the
/// environment still apply to the flags the file leaves out).
pub fn saved_server_args(data_dir: &Path) -> anyhow::Result<ServerArgs> {
    let path = data_dir.join(SETTINGS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the member settings {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut argv = vec!["cairn".to_owned()];
    for (key, value) in table {
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        argv.push(format!("--{key}={value}"));
    }
    Ok(ServerOnly::try_parse_from(argv)
        .with_context(|| format!("{} holds an unknown setting", path.display()))?
        .server)
}

/// `cairn init`: creates the CA, this member's and the admin's certificates and the join
/// token, and returns the settings to serve with.
pub fn init(args: &InitArgs) -> anyhow::Result<ServerArgs> {
    let layout = args.member.layout()?;
    let pki = Pki::in_data_dir(&layout.data_dir);
    if pki.exists() {
        tracing::info!(data_dir = %layout.data_dir.display(), "already initialised; starting");
        return saved_server_args(&layout.data_dir);
    }
    let token = pki.create(&layout.identity)?;
    layout.save(&hex::encode(token.ca_hash), "new")?;
    let (admin_cert, admin_key) = pki.client_cert_paths("admin");
    println!("Cluster created. Join other nodes with:\n\n    cairn join --token {token}\n");
    println!(
        "etcdctl: etcdctl --endpoints {} --cacert {} --cert {} --key {} member list\n",
        layout.client_url,
        pki.ca_cert_path().display(),
        admin_cert.display(),
        admin_key.display()
    );
    saved_server_args(&layout.data_dir)
}

/// `cairn join`: finds a member, is admitted with the token, and returns the settings to
/// serve with.
pub async fn join(args: &JoinArgs) -> anyhow::Result<ServerArgs> {
    let token: JoinToken = args.token.parse()?;
    let layout = args.member.layout()?;
    let pki = Pki::in_data_dir(&layout.data_dir);
    if pki.exists() {
        tracing::info!(data_dir = %layout.data_dir.display(), "already joined; starting");
        return saved_server_args(&layout.data_dir);
    }
    let candidates = match &args.join {
        Some(url) => vec![url.clone()],
        None => members_on_lan(&token, Duration::from_secs(args.discover_timeout)).await?,
    };
    let applicant = Applicant {
        identity: layout.identity.clone(),
        peer_urls: vec![layout.peer_url.clone()],
        client_urls: vec![layout.client_url.clone()],
    };
    let mut failures = Vec::new();
    for candidate in &candidates {
        match join_through(candidate, &token, &applicant, &pki).await {
            Ok(answer) => {
                let members: Vec<&str> = answer.members.iter().map(|m| m.name.as_str()).collect();
                tracing::info!(via = %candidate, member_id = %format!("{:x}", answer.member_id), ?members, "admitted to the cluster");
                layout.save(&answer.cluster_token, "existing")?;
                return saved_server_args(&layout.data_dir);
            }
            // The token itself was refused: another member would refuse it too.
            Err(error)
                if error
                    .to_string()
                    .starts_with(crate::security::join::REFUSED) =>
            {
                return Err(error)
            }
            Err(error) => {
                tracing::warn!(via = %candidate, error = %format!("{error:#}"), "joining failed");
                failures.push(format!("{candidate}: {error:#}"));
            }
        }
    }
    bail!("no member admitted this node:\n  {}", failures.join("\n  "))
}

/// The peer URLs of the token's cluster's members that mDNS finds within `wait`.
async fn members_on_lan(token: &JoinToken, wait: Duration) -> anyhow::Result<Vec<String>> {
    let cluster = format!("{:x}", cluster_id(&hex::encode(token.ca_hash)));
    let wanted = cluster.clone();
    let seen = tokio::task::spawn_blocking(move || {
        discovery::browse(wait, |advertisement| {
            advertisement.cluster_id == wanted && advertisement.state == "member"
        })
    })
    .await??;
    let urls: Vec<String> = seen
        .into_iter()
        .filter(|advertisement| {
            advertisement.cluster_id == cluster && advertisement.state == "member"
        })
        .flat_map(|advertisement| advertisement.peer_urls)
        .collect();
    if urls.is_empty() {
        bail!(
            "no member of the token's cluster answered over mDNS within {}s; pass --join https://MEMBER:2380",
            wait.as_secs()
        );
    }
    Ok(urls)
}

/// `cairn token`: shows the token, or rotates it here and, through the running member, on
/// every member.
pub async fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let pki = existing_pki(&args.data_dir)?;
    if !args.rotate {
        println!("{}", pki.token()?);
        return Ok(());
    }
    let token = pki.rotate_token()?;
    println!("{token}");
    let peer_url = saved_server_args(&args.data_dir)
        .ok()
        .and_then(|server| server.initial_advertise_peer_urls)
        .and_then(|urls| urls.split(',').next().map(str::to_owned));
    let Some(peer_url) = peer_url else {
        eprintln!("rotated on this member only: no settings file in the data dir");
        return Ok(());
    };
    match share_rotated_token(&pki, &peer_url, &token).await {
        Ok(unreached) if unreached.is_empty() => {
            eprintln!("rotated on every member");
        }
        Ok(unreached) => {
            eprintln!(
                "rotated on this member; not reached (they still accept the old token; run `cairn token --rotate` again when they are back):\n  {}",
                unreached.join("\n  ")
            );
        }
        Err(error) => {
            eprintln!(
                "rotated on this member only (the others still accept the old token): {error:#}"
            );
        }
    }
    Ok(())
}

/// `cairn cert client NAME`.
pub fn client_cert(args: &ClientCertArgs) -> anyhow::Result<()> {
    let pki = existing_pki(&args.data_dir)?;
    let (cert, key) = pki.issue_client(&args.name)?;
    println!(
        "certificate: {}\nkey:         {}\nCA:          {}",
        cert.display(),
        key.display(),
        pki.ca_cert_path().display()
    );
    Ok(())
}

fn existing_pki(data_dir: &Path) -> anyhow::Result<Pki> {
    let pki = Pki::in_data_dir(data_dir);
    if !pki.exists() {
        bail!(
            "{} is not the data dir of a zero-config cluster member (no pki/ca.crt; see `cairn init`)",
            data_dir.display()
        );
    }
    Ok(pki)
}

/// `cairn discover`: one line per member seen.
pub fn discover(args: &DiscoverArgs) -> anyhow::Result<()> {
    let seen = discovery::browse(Duration::from_secs(args.timeout), |_| false)?;
    println!("NAME\tSTATE\tCLUSTER\tMEMBER\tPEER URLS\tCLIENT URLS\tVERSION");
    for Advertisement {
        cluster_id,
        name,
        member_id,
        state,
        client_urls,
        peer_urls,
        version,
    } in seen
    {
        println!(
            "{name}\t{state}\t{cluster_id}\t{member_id}\t{}\t{}\t{version}",
            peer_urls.join(","),
            client_urls.join(",")
        );
    }
    Ok(())
}

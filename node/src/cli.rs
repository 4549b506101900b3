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
use crate::proto::cairnpb::JoinResponse;
use crate::security::join::{join_through, share_rotated_token, Applicant};
use crate::security::pki::{self, Identity, JoinToken, Pki};

/// Where a zero-config member listens unless told otherwise.
const CLIENT_PORT: u16 = 2379;
pub(crate) const PEER_PORT: u16 = 2380;

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

    /// Address to listen on (0.0.0.0: every address).
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// On a data dir that is not set up yet: advertise this node as uninitialized over mDNS
    /// and wait for a bootstrap or a join made with its setup code (`cairn setup`).
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub member: MemberArgs,
}

#[derive(Args, Debug)]
pub struct SetupCodeArgs {
    /// Data directory of the waiting node.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// Peer URL of the waiting node, as `cairn discover` shows it.
    #[arg(long)]
    pub node: String,

    /// The node's setup code (`cairn setup-code` on the node).
    #[arg(long)]
    pub code: String,

    /// SHA-256 of the node's setup certificate, as `cairn discover` shows it; without it
    /// the node's identity is not checked.
    #[arg(long)]
    pub fingerprint: Option<String>,

    #[command(subcommand)]
    pub action: SetupAction,
}

#[derive(Subcommand, Debug)]
pub enum SetupAction {
    /// Found a new cluster on the node.
    Bootstrap,
    /// Have the node join a cluster.
    Join {
        /// The cluster's join token.
        #[arg(long)]
        token: String,
        /// Peer URL of a member [default: found over mDNS by the node].
        #[arg(long)]
        join: Option<String>,
    },
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

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Load a backup that `etcdctl snapshot save` took from a Cairn member into a new data
    /// directory; a member started on it with `--initial-cluster-state new` founds a new
    /// cluster holding that data (restore every member of the new cluster from the same file).
    Restore(SnapshotRestoreArgs),
}

#[derive(Args, Debug)]
pub struct SnapshotRestoreArgs {
    /// The file `etcdctl snapshot save` wrote.
    pub file: PathBuf,

    /// The new member's data directory; it must not hold a member's store or log yet.
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
#[derive(Clone)]
pub(crate) struct Layout {
    pub(crate) name: String,
    pub(crate) data_dir: PathBuf,
    listen_client: String,
    listen_peer: String,
    client_url: String,
    pub(crate) peer_url: String,
    pub(crate) identity: Identity,
}

impl MemberArgs {
    pub(crate) fn layout(&self) -> anyhow::Result<Layout> {
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
    if Pki::in_data_dir(&layout.data_dir).exists() {
        tracing::info!(data_dir = %layout.data_dir.display(), "already initialised; starting");
        return saved_server_args(&layout.data_dir);
    }
    let token = found_cluster(&layout)?;
    let pki = Pki::in_data_dir(&layout.data_dir);
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

/// Creates a new cluster's PKI and this member's settings in `layout`'s data dir.
pub(crate) fn found_cluster(layout: &Layout) -> anyhow::Result<JoinToken> {
    let token = Pki::in_data_dir(&layout.data_dir).create(&layout.identity)?;
    layout.save(&hex::encode(token.ca_hash), "new")?;
    Ok(token)
}

/// `cairn join`: finds a member, is admitted with the token, and returns the settings to
/// serve with.
pub async fn join(args: &JoinArgs) -> anyhow::Result<ServerArgs> {
    let token: JoinToken = args.token.parse()?;
    let layout = args.member.layout()?;
    if Pki::in_data_dir(&layout.data_dir).exists() {
        tracing::info!(data_dir = %layout.data_dir.display(), "already joined; starting");
        return saved_server_args(&layout.data_dir);
    }
    join_cluster(
        &layout,
        &token,
        args.join.as_deref(),
        Duration::from_secs(args.discover_timeout),
    )
    .await?;
    saved_server_args(&layout.data_dir)
}

/// Has this node admitted with `token` through `via` (else a member found over mDNS within
/// `wait`), and stores its certificates and settings in `layout`'s data dir.
pub(crate) async fn join_cluster(
    layout: &Layout,
    token: &JoinToken,
    via: Option<&str>,
    wait: Duration,
) -> anyhow::Result<JoinResponse> {
    let pki = Pki::in_data_dir(&layout.data_dir);
    let candidates = match via {
        Some(url) => vec![url.to_owned()],
        None => members_on_lan(token, wait).await?,
    };
    let applicant = Applicant {
        identity: layout.identity.clone(),
        peer_urls: vec![layout.peer_url.clone()],
        client_urls: vec![layout.client_url.clone()],
    };
    let mut failures = Vec::new();
    for candidate in &candidates {
        match join_through(candidate, token, &applicant, &pki).await {
            Ok(answer) => {
                let members: Vec<&str> = answer.members.iter().map(|m| m.name.as_str()).collect();
                tracing::info!(via = %candidate, member_id = %format!("{:x}", answer.member_id), ?members, "admitted to the cluster");
                layout.save(&answer.cluster_token, "existing")?;
                return Ok(answer);
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

/// `cairn serve`: a set-up member serves; with `--wait`, a node that is not set up waits for
/// its setup first.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<ServerArgs> {
    let layout = args.member.layout()?;
    if Pki::in_data_dir(&layout.data_dir).exists() {
        return saved_server_args(&layout.data_dir);
    }
    if !args.wait {
        bail!(
            "{} is not set up: run `cairn init`, `cairn join --token T`, or `cairn serve --wait` to be set up remotely",
            layout.data_dir.display()
        );
    }
    let listen = std::net::SocketAddr::new(args.member.listen_address, PEER_PORT);
    crate::setup::wait_for_setup(&layout, listen).await?;
    saved_server_args(&layout.data_dir)
}

/// `cairn setup-code`: the waiting node's setup code.
pub fn setup_code(args: &SetupCodeArgs) -> anyhow::Result<()> {
    println!("{}", crate::setup::read_code(&args.data_dir)?);
    Ok(())
}

/// `cairn setup`: bootstraps or joins a waiting node with its setup code.
pub async fn setup(args: &SetupArgs) -> anyhow::Result<()> {
    let fingerprint = args
        .fingerprint
        .as_deref()
        .map(|text| {
            hex::decode(text)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .context("--fingerprint must be 64 hexadecimal digits")
        })
        .transpose()?;
    if fingerprint.is_none() {
        eprintln!("warning: without --fingerprint the node's identity is not checked");
    }
    match &args.action {
        SetupAction::Bootstrap => {
            let token =
                crate::setup::request_bootstrap(&args.node, fingerprint, &args.code).await?;
            println!("{token}");
        }
        SetupAction::Join { token, join } => {
            let token: JoinToken = token.parse()?;
            let member_id = crate::setup::request_join(
                &args.node,
                fingerprint,
                &args.code,
                &token,
                join.as_deref(),
            )
            .await?;
            println!("joined as member {member_id:x}");
        }
    }
    Ok(())
}

/// `cairn discover`: one line per member seen.
pub fn discover(args: &DiscoverArgs) -> anyhow::Result<()> {
    let seen = discovery::browse(Duration::from_secs(args.timeout), |_| false)?;
    println!("NAME\tSTATE\tCLUSTER\tMEMBER\tPEER URLS\tCLIENT URLS\tVERSION\tFINGERPRINT");
    for Advertisement {
        cluster_id,
        name,
        member_id,
        state,
        client_urls,
        peer_urls,
        version,
        fingerprint,
    } in seen
    {
        println!(
            "{name}\t{state}\t{cluster_id}\t{member_id}\t{}\t{}\t{version}\t{fingerprint}",
            peer_urls.join(","),
            client_urls.join(",")
        );
    }
    Ok(())
}

/// `cairn snapshot restore`: checks the backup, then writes it as the store of a new member.
pub fn snapshot_restore(args: &SnapshotRestoreArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    for file in [crate::raft::STATE_FILE, crate::raft::LOG_FILE] {
        if data_dir.join(file).exists() {
            bail!(
                "{} already holds a member ({file}); restore into a new data directory",
                data_dir.display()
            );
        }
    }
    let backup = std::fs::read(&args.file)
        .with_context(|| format!("cannot read the backup {}", args.file.display()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let state_file = data_dir.join(crate::raft::STATE_FILE);
    let restored =
        crate::store::Store::open(&state_file).and_then(|store| store.restore_backup(&backup));
    match restored {
        Ok(revision) => {
            println!(
                "restored revision {revision} from {} into {}; start the member on it with \
                 --initial-cluster-state new",
                args.file.display(),
                data_dir.display()
            );
            Ok(())
        }
        Err(error) => {
            // Nothing half-restored is left for a member to start on.
            let _ = std::fs::remove_file(&state_file);
            Err(error).with_context(|| format!("cannot restore {}", args.file.display()))
        }
    }
}

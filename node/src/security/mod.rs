//! Security: the cluster CA and join tokens ([`pki`]), TLS for listeners and peer
//! connections with certificates that can change live ([`tls`]), admission of new members
//! ([`join`]) and the renewal of this member's certificate ([`renewal`]).

pub mod join;
pub mod pki;
pub mod renewal;
pub mod tls;

use std::path::PathBuf;

pub use tls::ClientAuth;

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How close to its expiry a certificate is reported as a problem (in Status's errors).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds since the Unix epoch, as expiries are reported.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// When the certificate in `path` expires.
pub fn expiry(path: &Path) -> anyhow::Result<SystemTime> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    pki::not_after(&pem)
}

impl TlsSettings {
    /// The certificate files served, each once.
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [&self.client, &self.peer]
            .into_iter()
            .flatten()
            .map(|listener| listener.cert_file.clone())
            .collect();
        files.dedup();
        files
    }
}

/// The TLS settings of a listener, from etcd's flags or from the data dir's PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Sent after the certificate: the CA, so a joining node can check it against its token.
    pub chain_ca_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// How a member uses TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// For `https://` client listeners.
    pub client: Option<ListenerTls>,
    /// For `https://` peer listeners and for connecting to `https://` peers.
    pub peer: Option<ListenerTls>,
    /// The data dir's PKI, in a zero-config cluster: peer requests need a member certificate,
    /// the join service is served, and this member's certificate is renewed automatically.
    pub pki: Option<pki::Pki>,
}

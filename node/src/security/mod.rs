//! Security: the cluster CA and join tokens ([`pki`]), TLS for listeners and peer
//! connections with certificates that can change live ([`tls`]), admission of new members
//! ([`join`]) and the renewal of this member's certificate ([`renewal`]).

pub mod join;
pub mod pki;
pub mod renewal;
pub mod tls;

use std::path::PathBuf;

pub use tls::ClientAuth;

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

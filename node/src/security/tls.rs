//! TLS for the client and peer listeners and for connections to peers, on rustls (ring).
//!
//! Certificates sit in a [`CertSlot`] that the listeners and the peer connector consult on
//! every handshake, so a renewed certificate is served from the next connection on, with no
//! restart and without touching connections already open.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::pki::{cert_hash, MEMBER_ORGANISATION};
use crate::coalesce::{Coalesced, Connection};

/// How long a client may take to complete its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for the gRPC server to take them.
const ACCEPT_BACKLOG: usize = 64;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds an unreadable certificate", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn roots(ca_file: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA", ca_file.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate, its chain and its key, replaceable while in use.
pub struct CertSlot {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Appended to the chain served, so that a peer holding only the CA's hash (a joining
    /// member) can find the CA in the handshake.
    chain_ca_file: Option<PathBuf>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl CertSlot {
    /// Loads `cert_file` and `key_file` (PEM).
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        chain_ca_file: Option<&Path>,
    ) -> anyhow::Result<Arc<CertSlot>> {
        let current = Self::read(cert_file, key_file, chain_ca_file)?;
        Ok(Arc::new(CertSlot {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            chain_ca_file: chain_ca_file.map(Path::to_owned),
            current: RwLock::new(current),
        }))
    }

    fn read(
        cert_file: &Path,
        key_file: &Path,
        chain_ca_file: Option<&Path>,
    ) -> anyhow::Result<Arc<CertifiedKey>> {
        let mut chain = read_certs(cert_file)?;
        if let Some(ca_file) = chain_ca_file {
            chain.extend(read_certs(ca_file)?);
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .with_context(|| format!("cannot read a private key from {}", key_file.display()))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("{} is not a supported key", key_file.display()))?;
        Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
    }

    /// Reads the files again; new handshakes use what they hold from now on.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Self::read(
            &self.cert_file,
            &self.key_file,
            self.chain_ca_file.as_deref(),
        )?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a listener asks of the clients' certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// A certificate of the trusted CA may be presented; the services decide what needs one.
    Optional,
    /// The handshake fails without a certificate of the trusted CA.
    Required,
}

/// The rustls settings of a TLS listener.
pub fn server_config(
    slot: Arc<CertSlot>,
    trusted_ca_file: Option<&Path>,
    client_auth: ClientAuth,
) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?;
    let builder = match (client_auth, trusted_ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => anyhow::bail!("client certificate authentication needs a trusted CA file"),
        (auth, Some(ca_file)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_file)?, provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .context("cannot verify client certificates")?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Who is at the other end of a TLS connection, as far as its certificate says.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// The verified client certificate's common name (the user, with `--client-cert-auth`).
    pub common_name: Option<String>,
    /// The certificate is a member certificate of the cluster CA.
    pub member: bool,
}

impl ClientIdentity {
    fn of(certs: Option<&[CertificateDer<'_>]>) -> ClientIdentity {
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return ClientIdentity::default();
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return ClientIdentity::default();
        };
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|value| value.as_str().ok())
            .map(str::to_owned);
        let member = cert
            .subject()
            .iter_organization()
            .any(|value| value.as_str().ok() == Some(MEMBER_ORGANISATION));
        ClientIdentity {
            common_name,
            member,
        }
    }
}

/// An accepted TLS connection; the client's identity reaches the services as part of its
/// [`Connection`].
pub type TlsConnection = Coalesced<tokio_rustls::server::TlsStream<TcpStream>>;

/// The TLS connections accepted on `listener`, for `serve_with_incoming`, their writes
/// coalesced or not (see [`crate::coalesce`]). Each handshake runs on its own task, so a slow
/// or silent client never holds up the others.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    coalesce: bool,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server is gone: stop accepting.
                () = sender.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle off, as for plaintext listeners (see `server::no_delay`).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = ClientIdentity::of(stream.get_ref().1.peer_certificates());
                        tracing::debug!(%remote, user = ?identity.common_name, member = identity.member, "TLS connection");
                        let connection = Coalesced::new(stream, identity, coalesce);
                        let _ = sender.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// Lets only members of the cluster (a member certificate of the cluster CA) call the peer
/// service; the join service on the same listener is open to anyone with the token.
#[allow(clippy::result_large_err)]
pub fn require_member(request: Request<()>) -> Result<Request<()>, Status> {
    match request.extensions().get::<Connection>() {
        Some(connection) if connection.identity.member => Ok(request),
        _ => Err(Status::permission_denied(
            "cairn: peer requests need a member certificate of the cluster CA",
        )),
    }
}

/// The rustls settings for connecting to peers: their certificate must be of the cluster
/// CA, and this member shows its own.
pub fn peer_client_config(
    slot: Arc<CertSlot>,
    trusted_ca_file: &Path,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_root_certificates(roots(trusted_ca_file)?)
        .with_client_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls settings for a joining node: it trusts the server only if the chain it is
/// shown contains the CA whose hash is in the token, and the server's certificate is valid
/// under that CA for the address dialled.
pub fn join_client_config(ca_hash: [u8; 32]) -> anyhow::Result<Arc<ClientConfig>> {
    pinned_client_config(Accept::Ca(ca_hash))
}

/// Client settings (no client certificate) that trust the server `accept` names.
fn pinned_client_config(accept: Accept) -> anyhow::Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            accept,
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What a pinned verifier accepts.
#[derive(Debug)]
enum Accept {
    /// A server certificate valid under the CA with this hash (the join token's), which the
    /// server must show in its chain.
    Ca([u8; 32]),
    /// A server certificate with this hash (a setup node's, advertised over mDNS); any, with
    /// none. The handshake still proves the server holds that certificate's key.
    Leaf(Option<[u8; 32]>),
}

/// A server verifier for a node whose CA is not in any trust store yet. It checks signatures
/// as rustls's own verifiers do; only which certificate it accepts differs.
#[derive(Debug)]
struct Pinned {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.accept {
            Accept::Ca(ca_hash) => {
                let ca = intermediates
                    .iter()
                    .find(|cert| cert_hash(cert) == ca_hash)
                    .ok_or_else(|| {
                        rustls::Error::General(
                            "the member's certificate is not from the cluster CA named in the \
                             join token"
                                .into(),
                        )
                    })?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned()).map_err(|e| {
                    rustls::Error::General(format!("the cluster CA is unusable: {e}"))
                })?;
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?
                    .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            }
            Accept::Leaf(Some(fingerprint)) if cert_hash(end_entity) != fingerprint => {
                Err(rustls::Error::General(
                    "the node's setup certificate does not have the fingerprint given".into(),
                ))
            }
            Accept::Leaf(_) => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls settings for talking to a node waiting for setup: its throwaway certificate
/// must have the SHA-256 `fingerprint` (advertised over mDNS), when one is given.
pub fn setup_client_config(fingerprint: Option<[u8; 32]>) -> anyhow::Result<Arc<ClientConfig>> {
    pinned_client_config(Accept::Leaf(fingerprint))
}

/// Opens TLS connections for a tonic channel: tonic is given `http://` URIs and this does the
/// TLS, so that the certificate it shows can change while the channel lives.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| io::Error::other(format!("{uri}: no port")))?;
            let server_name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The `http://` URI tonic is given for an `https://` URL whose TLS [`TlsConnector`] does.
pub fn plain_uri(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::Connected;

    fn request_from(identity: Option<ClientIdentity>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(identity) = identity {
            let connection = Coalesced::new(tokio::io::empty(), identity, true).connect_info();
            request.extensions_mut().insert(connection);
        }
        request
    }

    #[test]
    fn only_member_certificates_reach_the_peer_service() {
        let member = ClientIdentity {
            common_name: Some("a".into()),
            member: true,
        };
        let client = ClientIdentity {
            common_name: Some("admin".into()),
            member: false,
        };
        assert!(require_member(request_from(Some(member))).is_ok());
        for refused in [request_from(Some(client)), request_from(None)] {
            let status = require_member(refused).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
        }
    }

    #[test]
    fn member_and_client_certificates_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let pki = super::super::pki::Pki::in_data_dir(dir.path());
        pki.create(&super::super::pki::Identity {
            name: "a".into(),
            hosts: vec!["127.0.0.1".into()],
        })
        .unwrap();
        let identity = |path: &Path| {
            let certs = read_certs(path).unwrap();
            ClientIdentity::of(Some(&certs))
        };
        let member = identity(&pki.node_cert_path());
        assert!(member.member);
        assert_eq!(member.common_name.as_deref(), Some("a"));
        let admin = identity(&pki.client_cert_paths("admin").0);
        assert!(!admin.member);
        assert_eq!(admin.common_name.as_deref(), Some("admin"));
        assert!(!ClientIdentity::of(None).member);
    }

    #[test]
    fn https_urls_are_dialled_as_http_by_tonic() {
        assert_eq!(plain_uri("https://10.0.0.1:2380"), "http://10.0.0.1:2380");
        assert_eq!(plain_uri("http://10.0.0.1:2380"), "http://10.0.0.1:2380");
    }
}

//! The cluster's certificate authority and the files it keeps in `<data-dir>/pki/`:
//! `ca.crt`/`ca.key` (the cluster CA, 10 years), `node.crt`/`node.key` (this member's
//! certificate, 1 year, for serving and for connecting to peers), `admin.crt`/`admin.key`
//! (a client certificate for etcdctl and the console) and `token` (the join token). Every
//! key file is written with mode 0600.
//!
//! As in k3s, every member holds the CA key: any member can admit a joining node and renew its
//! own certificate, so the cluster keeps working when the member that ran `cairn init` is gone.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Lifetime of the cluster CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Lifetime of member and client certificates.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Test-only override of [`LEAF_VALIDITY`] for member certificates, in seconds, so a test
/// can watch a renewal happen.
/// Not a flag: nobody should run a cluster with minute-long certificates.
pub const MEMBER_VALIDITY_ENV: &str = "CAIRN_TEST_MEMBER_CERT_VALIDITY_SECS";

/// Certificates start this long in the past (at most a tenth of their lifetime, which
/// renewal counts from) so that a peer whose clock is slightly behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Prefix of a join token, as k3s writes them: the token's format version.
const TOKEN_PREFIX: &str = "K10";

/// Organisation of member certificates; client certificates have none, so a client
/// certificate cannot pass for a member on the peer port.
pub const MEMBER_ORGANISATION: &str = "cairn-member";

/// Paths of the PKI files inside a data dir.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// A certificate and its private key, both PEM.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The names a member's certificate is valid for.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub name: String,
    /// Host names and addresses (from the advertised URLs, the interfaces, `localhost`).
    pub hosts: Vec<String>,
}

/// A join token: `K10<sha256 of the CA certificate, hex>::<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: [u8; 32],
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}{}::{}",
            hex::encode(self.ca_hash),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken({TOKEN_PREFIX}{}::…)",
            hex::encode(self.ca_hash)
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<JoinToken> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix(TOKEN_PREFIX) else {
            bail!("not a Cairn join token: it must start with {TOKEN_PREFIX} (as `cairn token` prints it)");
        };
        let Some((hash, secret)) = rest.split_once("::") else {
            bail!("not a Cairn join token: expected K10<CA hash>::<secret>");
        };
        let bytes = hex::decode(hash)
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .context("join token: the CA hash must be 64 hexadecimal digits")?;
        if secret.is_empty() {
            bail!("join token: the secret after `::` is empty");
        }
        let mut ca_hash = [0; 32];
        ca_hash.copy_from_slice(&bytes);
        Ok(JoinToken {
            ca_hash,
            secret: secret.to_owned(),
        })
    }
}

impl JoinToken {
    /// Whether `offered` is this token's secret.
    pub fn secret_matches(&self, offered: &str) -> bool {
        same_secret(&self.secret, offered)
    }
}

/// Compares two secrets in constant time, so the time an answer takes says nothing about
/// how much of a guess was right.
pub fn same_secret(expected: &str, offered: &str) -> bool {
    let (expected, offered) = (expected.as_bytes(), offered.as_bytes());
    expected.len() == offered.len()
        && expected
            .iter()
            .zip(offered)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// A new random secret: 128 bits, hex.
pub fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// SHA-256 of a certificate's DER encoding.
pub fn cert_hash(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .context("no certificate in PEM text")?
        .context("unreadable PEM certificate")?;
    Ok(cert.to_vec())
}

/// When a PEM certificate stops being valid.
pub fn not_after(pem: &str) -> anyhow::Result<SystemTime> {
    Ok(validity(pem)?.1)
}

/// A PEM certificate's validity period.
pub fn validity(pem: &str) -> anyhow::Result<(SystemTime, SystemTime)> {
    let der = first_cert_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("unreadable certificate: {e}"))?;
    let to_time = |time: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(time.timestamp().max(0).unsigned_abs())
    };
    Ok((
        to_time(cert.validity().not_before),
        to_time(cert.validity().not_after),
    ))
}

/// The validity of new member certificates.
fn member_validity() -> Duration {
    std::env::var(MEMBER_VALIDITY_ENV)
        .ok()
        .and_then(|secs| secs.parse::<u64>().ok())
        .filter(|secs| *secs > 0)
        .map_or(LEAF_VALIDITY, Duration::from_secs)
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees
/// half a file; `private` files get mode 0600.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

fn san(host: &str) -> anyhow::Result<SanType> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            host.to_owned()
                .try_into()
                .with_context(|| format!("{host:?} is not a valid DNS name"))?,
        ),
    })
}

/// The parameters every leaf certificate shares.
fn leaf_params(
    common_name: &str,
    organisation: Option<&str>,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organisation) = organisation {
        name.push(DnType::OrganizationName, organisation);
    }
    params.distinguished_name = name;
    let now = SystemTime::now();
    params.not_before = offset(now - CLOCK_SKEW.min(validity / 10));
    params.not_after = offset(now + validity);
    params.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params
}

impl Pki {
    /// The PKI of the member whose data dir is `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Pki {
        Pki {
            dir: data_dir.join("pki"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn node_cert_path(&self) -> PathBuf {
        self.dir.join("node.crt")
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Where `cairn cert client NAME` and `cairn init` put client certificates.
    pub fn client_cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// Whether this data dir belongs to a member of a zero-config (TLS) cluster.
    pub fn exists(&self) -> bool {
        self.ca_cert_path().is_file()
    }

    /// Creates the cluster CA, this member's certificate, the admin client certificate and
    /// a join token.
    pub fn create(&self, identity: &Identity) -> anyhow::Result<JoinToken> {
        if self.exists() {
            bail!(
                "{} already holds a cluster CA; this data dir belongs to a cluster",
                self.dir.display()
            );
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "cairn cluster CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - CLOCK_SKEW);
        params.not_after = offset(now + CA_VALIDITY);
        params.serial_number = Some(rand::random::<[u8; 16]>().to_vec().into());
        let ca_cert = params.self_signed(&ca_key)?;
        write_file(&self.ca_key_path(), ca_key.serialize_pem().as_bytes(), true)?;
        write_file(&self.ca_cert_path(), ca_cert.pem().as_bytes(), false)?;

        let node_key = KeyPair::generate()?;
        let node_cert = self.sign_member(&node_key, identity)?;
        write_file(
            &self.node_key_path(),
            node_key.serialize_pem().as_bytes(),
            true,
        )?;
        write_file(&self.node_cert_path(), node_cert.as_bytes(), false)?;
        self.issue_client("admin")?;
        let token = JoinToken {
            ca_hash: cert_hash(ca_cert.der()),
            secret: random_secret(),
        };
        self.save_token(&token)?;
        Ok(token)
    }

    /// Stores what a member received when it joined: the CA (certificate and key), its own
    /// certificate (for the key it generated) and the join token.
    pub fn install_joined(
        &self,
        ca: &CertAndKey,
        node: &CertAndKey,
        token: &JoinToken,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_file(&self.ca_key_path(), ca.key_pem.as_bytes(), true)?;
        write_file(&self.node_key_path(), node.key_pem.as_bytes(), true)?;
        write_file(&self.node_cert_path(), node.cert_pem.as_bytes(), false)?;
        self.save_token(token)?;
        // Last: the CA certificate marks the data dir as set up.
        write_file(&self.ca_cert_path(), ca.cert_pem.as_bytes(), false)
    }

    fn issuer(&self) -> anyhow::Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&read(&self.ca_key_path())?)
            .context("the cluster CA key is unreadable")?;
        Issuer::from_ca_cert_pem(&read(&self.ca_cert_path())?, key)
            .context("the cluster CA certificate is unreadable")
    }

    /// The CA certificate and key, PEM, for a joining member.
    pub fn ca(&self) -> anyhow::Result<CertAndKey> {
        Ok(CertAndKey {
            cert_pem: read(&self.ca_cert_path())?,
            key_pem: read(&self.ca_key_path())?,
        })
    }

    pub fn ca_cert_pem(&self) -> anyhow::Result<String> {
        read(&self.ca_cert_path())
    }

    /// Signs a member certificate (server and client use) for `public_key`.
    fn sign_member(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
    ) -> anyhow::Result<String> {
        let mut params = leaf_params(&identity.name, Some(MEMBER_ORGANISATION), member_validity());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut hosts: Vec<&String> = identity.hosts.iter().collect();
        hosts.sort();
        hosts.dedup();
        params.subject_alt_names = hosts
            .into_iter()
            .map(|host| san(host))
            .collect::<anyhow::Result<_>>()?;
        Ok(params.signed_by(public_key, &self.issuer()?)?.pem())
    }

    /// Signs the certificate a joining member asked for in `csr_pem`. Only the public key is
    /// taken from the request: the names come from what the member advertises.
    pub fn sign_member_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
    ) -> anyhow::Result<String> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .context("the certificate signing request is invalid")?;
        self.sign_member(&request.public_key, identity)
    }

    /// Issues a new certificate for this member's own key, with the names of the current
    /// one, and stores it. Returns the new certificate.
    pub fn renew_member(&self) -> anyhow::Result<String> {
        let current = read(&self.node_cert_path())?;
        let der = first_cert_der(&current)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("unreadable member certificate: {e}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("cairn")
            .to_owned();
        let mut hosts = Vec::new();
        if let Ok(Some(names)) = cert.subject_alternative_name() {
            for general in &names.value.general_names {
                match general {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        hosts.push((*dns).to_owned())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        hosts.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let key = KeyPair::from_pem(&read(&self.node_key_path())?)
            .context("the member key is unreadable")?;
        let renewed = self.sign_member(&key, &Identity { name, hosts })?;
        write_file(&self.node_cert_path(), renewed.as_bytes(), false)?;
        Ok(renewed)
    }

    /// Issues a client certificate whose CN is `name` (the user, with `--client-cert-auth`)
    /// and stores it with its key in the PKI dir. Returns the two paths.
    pub fn issue_client(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            bail!("client name {name:?}: use letters, digits and - _ . @ only");
        }
        let key = KeyPair::generate()?;
        let mut params = leaf_params(name, None, LEAF_VALIDITY);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let (cert_path, key_path) = self.client_cert_paths(name);
        write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        Ok((cert_path, key_path))
    }

    /// The current join token.
    pub fn token(&self) -> anyhow::Result<JoinToken> {
        read(&self.token_path())?
            .parse()
            .with_context(|| format!("{} is damaged", self.token_path().display()))
    }

    /// Stores `token` as the cluster's join token.
    pub fn save_token(&self, token: &JoinToken) -> anyhow::Result<()> {
        write_file(&self.token_path(), token.to_string().as_bytes(), true)
    }

    /// Replaces the token's secret; the old token stops working at once.
    pub fn rotate_token(&self) -> anyhow::Result<JoinToken> {
        let token = JoinToken {
            secret: random_secret(),
            ..self.token()?
        };
        self.save_token(&token)?;
        Ok(token)
    }
}

/// A key pair and a certificate signing request for a member joining as `identity`.
pub fn member_request(identity: &Identity) -> anyhow::Result<(KeyPair, String)> {
    let key = KeyPair::generate()?;
    // Only the name: the signing member sets validity, usages and addresses itself.
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity.name.as_str());
    params.distinguished_name = name;
    let request = params.serialize_request(&key)?.pem()?;
    Ok((key, request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_printing_and_parsing() {
        let token = JoinToken {
            ca_hash: [7; 32],
            secret: "abc".into(),
        };
        let parsed: JoinToken = token.to_string().parse().unwrap();
        assert!(parsed == token);
        assert!(parsed.secret_matches("abc"));
        assert!(!parsed.secret_matches("abd"));
        assert!(!parsed.secret_matches("ab"));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        for (text, reason) in [
            ("abc", "must start with K10"),
            ("K10abcd", "expected K10"),
            ("K10abcd::s", "64 hexadecimal"),
            (&format!("K10{}::", "00".repeat(32)), "secret"),
        ] {
            let error = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn a_new_pki_has_a_member_certificate_signed_by_its_ca_and_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::in_data_dir(dir.path());
        let token = pki
            .create(&Identity {
                name: "a".into(),
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
            })
            .unwrap();
        assert_eq!(
            token.ca_hash,
            cert_hash(&first_cert_der(&pki.ca_cert_pem().unwrap()).unwrap())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in ["ca.key", "node.key", "admin.key", "token"] {
                let mode = fs::metadata(pki.dir().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
        let before = read(&pki.node_cert_path()).unwrap();
        let renewed = pki.renew_member().unwrap();
        assert_ne!(before, renewed);
        assert!(not_after(&renewed).unwrap() > SystemTime::now());
        assert!(pki.create(&Identity::default()).is_err());
        let rotated = pki.rotate_token().unwrap();
        assert_ne!(rotated.secret, token.secret);
        assert_eq!(rotated.ca_hash, token.ca_hash);
    }
}

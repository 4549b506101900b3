//! Saved cluster connections: the profiles live in `connections.json` in the app's config
//! directory; passwords never do. They go to the OS keychain when there is one, otherwise
//! they are kept in memory for this session only and the UI says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::error::{CommandError, CommandResult, ErrorKind};

const KEYCHAIN_SERVICE: &str = "cairn-console";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    /// PEM file of the CA that signed the members' certificates.
    pub ca_file: Option<String>,
    /// PEM client certificate and key, for clusters started with `--client-cert-auth`.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionProfile {
    pub id: String,
    pub name: String,
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub username: Option<String>,
}

/// Where a saved password ended up, so the UI can tell the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretStorage {
    Keychain,
    SessionOnly,
    None,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct ConnectionsFile {
    connections: Vec<ConnectionProfile>,
}

/// The file of saved profiles.
pub struct ConnectionStore {
    path: PathBuf,
}

impl ConnectionStore {
    pub fn new(config_dir: &Path) -> Self {
        Self {
            path: config_dir.join("connections.json"),
        }
    }

    pub fn list(&self) -> CommandResult<Vec<ConnectionProfile>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<ConnectionsFile>(&bytes)
                .map(|file| file.connections)
                .map_err(|error| {
                    storage_error("The saved connections file is damaged.", &self.path, error)
                }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(storage_error(
                "Could not read the saved connections.",
                &self.path,
                error,
            )),
        }
    }

    /// Inserts or replaces the profile with the same id.
    pub fn save(&self, profile: ConnectionProfile) -> CommandResult<()> {
        let mut connections = self.list()?;
        match connections.iter_mut().find(|saved| saved.id == profile.id) {
            Some(saved) => *saved = profile,
            None => connections.push(profile),
        }
        self.write(connections)
    }

    pub fn remove(&self, id: &str) -> CommandResult<()> {
        let mut connections = self.list()?;
        connections.retain(|saved| saved.id != id);
        self.write(connections)
    }

    pub fn get(&self, id: &str) -> CommandResult<ConnectionProfile> {
        self.list()?
            .into_iter()
            .find(|saved| saved.id == id)
            .ok_or_else(|| {
                CommandError::new(ErrorKind::NotFound, "That connection no longer exists.")
            })
    }

    fn write(&self, connections: Vec<ConnectionProfile>) -> CommandResult<()> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let json = serde_json::to_vec_pretty(&ConnectionsFile { connections })?;
            // Write then rename so a crash never leaves half a file.
            let partial = self.path.with_extension("json.partial");
            std::fs::write(&partial, json)?;
            std::fs::rename(&partial, &self.path)
        };
        write().map_err(|error| storage_error("Could not save the connections.", &self.path, error))
    }
}

fn storage_error(message: &str, path: &Path, error: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::Storage, message)
        .with_detail(format!("{}: {error}", path.display()))
}

/// Passwords by connection id: the OS keychain when it answers, else this session's memory.
pub struct SecretStore {
    use_keychain: bool,
    session_only: Mutex<HashMap<String, String>>,
}

impl SecretStore {
    pub fn with_keychain() -> Self {
        Self {
            use_keychain: true,
            session_only: Mutex::default(),
        }
    }

    /// For tests and for runs where the keychain must not be touched.
    pub fn session_only() -> Self {
        Self {
            use_keychain: false,
            session_only: Mutex::default(),
        }
    }

    pub fn store(&self, connection_id: &str, password: &str) -> SecretStorage {
        if self.use_keychain {
            let stored = keyring::Entry::new(KEYCHAIN_SERVICE, connection_id)
                .and_then(|entry| entry.set_password(password));
            match stored {
                Ok(()) => {
                    self.sessions().remove(connection_id);
                    return SecretStorage::Keychain;
                }
                Err(error) => {
                    tracing::warn!(%error, connection_id, "no keychain; password kept in memory");
                }
            }
        }
        self.sessions()
            .insert(connection_id.to_owned(), password.to_owned());
        SecretStorage::SessionOnly
    }

    pub fn load(&self, connection_id: &str) -> Option<String> {
        if let Some(password) = self.sessions().get(connection_id) {
            return Some(password.clone());
        }
        if !self.use_keychain {
            return None;
        }
        keyring::Entry::new(KEYCHAIN_SERVICE, connection_id)
            .and_then(|entry| entry.get_password())
            .ok()
    }

    pub fn forget(&self, connection_id: &str) {
        self.sessions().remove(connection_id);
        if self.use_keychain {
            // A missing entry is the state we want, so its error is not worth reporting.
            let _ = keyring::Entry::new(KEYCHAIN_SERVICE, connection_id)
                .and_then(|entry| entry.delete_credential());
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.session_only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Checks a profile before it is saved or used, with messages that name the field.
pub fn validate(profile: &ConnectionProfile) -> CommandResult<()> {
    if profile.name.trim().is_empty() {
        return Err(invalid("Give the connection a name."));
    }
    if profile.endpoints.is_empty() {
        return Err(invalid(
            "Add at least one endpoint, such as http://127.0.0.1:2379.",
        ));
    }
    for endpoint in &profile.endpoints {
        let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !scheme_ok || endpoint.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "Endpoint \"{endpoint}\" must start with http:// or https://."
            )));
        }
        if profile.tls.is_some() && endpoint.starts_with("http://") {
            return Err(invalid(format!(
                "Endpoint \"{endpoint}\" uses http:// but TLS is on: use https://."
            )));
        }
    }
    if let Some(tls) = &profile.tls {
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(
                "A client certificate needs its key file, and a key needs its certificate.",
            ));
        }
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorKind::InvalidInput, message)
}

/// The etcd-client options for a profile: timeouts, credentials and TLS files read now.
pub fn connect_options(
    profile: &ConnectionProfile,
    password: Option<&str>,
) -> CommandResult<ConnectOptions> {
    validate(profile)?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(15));
    if let Some(username) = profile.username.as_deref().filter(|name| !name.is_empty()) {
        let password = password.ok_or_else(|| {
            invalid(format!(
                "No password is known for user \"{username}\": enter it again (it was kept only for the last session)."
            ))
        })?;
        options = options.with_user(username, password);
    }
    if let Some(tls) = &profile.tls {
        let mut tls_options = TlsOptions::new();
        if let Some(ca_file) = &tls.ca_file {
            tls_options = tls_options
                .ca_certificate(Certificate::from_pem(read_pem(ca_file, "CA certificate")?));
        }
        if let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) {
            let cert = read_pem(cert_file, "client certificate")?;
            let key = read_pem(key_file, "client key")?;
            tls_options = tls_options.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls_options);
    }
    Ok(options)
}

fn read_pem(path: &str, what: &str) -> CommandResult<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|error| {
        invalid(format!("Could not read the {what} file {path}.")).with_detail(error)
    })?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(invalid(format!(
            "The {what} file {path} is not PEM (it should start with -----BEGIN)."
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(endpoints: &[&str]) -> ConnectionProfile {
        ConnectionProfile {
            id: "c1".into(),
            name: "local".into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            tls: None,
            username: None,
        }
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn saved_profiles_round_trip_and_replace_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConnectionStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        store.save(profile(&["http://127.0.0.1:2379"])).unwrap();
        let mut renamed = profile(&["http://127.0.0.1:2379"]);
        renamed.name = "renamed".into();
        store.save(renamed.clone()).unwrap();
        assert_eq!(store.list().unwrap(), vec![renamed]);
        store.remove("c1").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn password_is_never_written_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConnectionStore::new(dir.path());
        let secrets = SecretStore::session_only();
        let mut with_user = profile(&["http://127.0.0.1:2379"]);
        with_user.username = Some("root".into());
        store.save(with_user).unwrap();
        assert_eq!(secrets.store("c1", "s3cret-pw"), SecretStorage::SessionOnly);
        let file = std::fs::read_to_string(dir.path().join("connections.json")).unwrap();
        assert!(file.contains("root"));
        assert!(!file.contains("s3cret-pw"));
        assert_eq!(secrets.load("c1").as_deref(), Some("s3cret-pw"));
        secrets.forget("c1");
        assert_eq!(secrets.load("c1"), None);
    }

    #[test]
    fn damaged_connections_file_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("connections.json"), b"{not json").unwrap();
        let error = ConnectionStore::new(dir.path()).list().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Storage);
    }

    #[test]
    fn endpoints_must_be_http_or_https_urls() {
        assert!(validate(&profile(&["http://127.0.0.1:2379"])).is_ok());
        assert_eq!(
            validate(&profile(&[])).unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        let error = validate(&profile(&["127.0.0.1:2379"])).unwrap_err();
        assert!(
            error.message.contains("127.0.0.1:2379"),
            "{}",
            error.message
        );
    }

    #[test]
    fn tls_profile_rejects_plain_http_endpoints_and_lone_client_certificate() {
        let mut tls = profile(&["http://10.0.0.1:2379"]);
        tls.tls = Some(TlsFiles {
            ca_file: None,
            cert_file: None,
            key_file: None,
        });
        assert!(validate(&tls).unwrap_err().message.contains("https://"));
        tls.endpoints = vec!["https://10.0.0.1:2379".into()];
        tls.tls = Some(TlsFiles {
            ca_file: None,
            cert_file: Some("c.pem".into()),
            key_file: None,
        });
        assert!(validate(&tls).unwrap_err().message.contains("key"));
    }

    #[test]
    fn tls_files_are_read_and_checked_for_pem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&ca, PEM).unwrap();
        std::fs::write(&cert, PEM).unwrap();
        std::fs::write(&key, b"not a pem").unwrap();
        let path = |p: &PathBuf| Some(p.display().to_string());
        let mut tls = profile(&["https://10.0.0.1:2379"]);
        tls.tls = Some(TlsFiles {
            ca_file: path(&ca),
            cert_file: None,
            key_file: None,
        });
        assert!(connect_options(&tls, None).is_ok());

        tls.tls = Some(TlsFiles {
            ca_file: path(&ca),
            cert_file: path(&cert),
            key_file: path(&key),
        });
        let error = connect_options(&tls, None).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(error.message.contains("client key"), "{}", error.message);

        let missing = dir.path().join("missing.pem");
        tls.tls = Some(TlsFiles {
            ca_file: path(&missing),
            cert_file: None,
            key_file: None,
        });
        let error = connect_options(&tls, None).unwrap_err();
        assert!(error.message.contains("missing.pem"), "{}", error.message);
    }

    #[test]
    fn user_without_a_known_password_is_asked_for_it() {
        let mut with_user = profile(&["http://127.0.0.1:2379"]);
        with_user.username = Some("root".into());
        let error = connect_options(&with_user, None).unwrap_err();
        assert!(error.message.contains("password"), "{}", error.message);
        assert!(connect_options(&with_user, Some("pw")).is_ok());
    }
}

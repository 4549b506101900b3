//! Cairn Console's backend: Tauri commands over the etcd v3 API.

pub mod commands;
pub mod connections;
pub mod error;
pub mod state;

use tauri::{Manager, Runtime};

use crate::connections::{ConnectionStore, SecretStore};
use crate::state::AppState;

/// Set to keep passwords out of the OS keychain (CI, the end-to-end tests).
const NO_KEYCHAIN_ENV: &str = "CAIRN_CONSOLE_NO_KEYCHAIN";

/// Registers every command; tests drive the same builder with `tauri::test::mock_builder()`.
pub fn with_commands<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        commands::connections::list_connections,
        commands::connections::save_connection,
        commands::connections::delete_connection,
        commands::connections::connect,
        commands::connections::disconnect,
        commands::keys::list_keys,
        commands::keys::get_key,
        commands::keys::put_key,
        commands::keys::delete_key,
        commands::keys::delete_keys_with_prefix,
        commands::keys::key_history,
        commands::watch::start_watch,
        commands::watch::stop_stream,
        commands::cluster::start_cluster_sampling,
    ])
}

pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    with_commands(tauri::Builder::default())
        .setup(|app| {
            let config_dir = app.path().app_config_dir()?;
            let secrets = if std::env::var_os(NO_KEYCHAIN_ENV).is_some() {
                SecretStore::session_only()
            } else {
                SecretStore::with_keychain()
            };
            app.manage(AppState::new(ConnectionStore::new(&config_dir), secrets));
            Ok(())
        })
        .run(tauri::generate_context!())
        .expect("Cairn Console failed to start");
}

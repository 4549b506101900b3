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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tauri::ipc::{CallbackFn, InvokeBody};
    use tauri::test::{get_ipc_response, mock_builder, INVOKE_KEY};
    use tauri::webview::InvokeRequest;
    use tauri::WebviewWindowBuilder;

    use super::*;

    fn invoke(
        webview: &tauri::WebviewWindow<tauri::test::MockRuntime>,
        cmd: &str,
        args: Value,
    ) -> Result<Value, Value> {
        let request = InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(webview, request).map(|body| body.deserialize::<Value>().unwrap())
    }

    fn app(config_dir: &std::path::Path) -> tauri::App<tauri::test::MockRuntime> {
        with_commands(mock_builder())
            .manage(AppState::new(
                ConnectionStore::new(config_dir),
                SecretStore::session_only(),
            ))
            .build(tauri::generate_context!())
            .unwrap()
    }

    #[test]
    fn key_command_before_connect_fails_with_the_not_connected_error_over_ipc() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let webview = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        let response = invoke(
            &webview,
            "list_keys",
            json!({"prefix": "", "after": null, "limit": 10, "atRevision": null}),
        );
        assert_eq!(
            response.unwrap_err(),
            json!({"kind": "not_connected", "message": "Not connected to a cluster. Choose a connection first."})
        );
    }

    #[test]
    fn saved_connection_is_listed_and_its_password_reported_session_only_over_ipc() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let webview = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        let profile = json!({
            "id": "c1", "name": "local", "endpoints": ["http://127.0.0.1:2379"],
            "tls": null, "username": "root"
        });
        let saved = invoke(
            &webview,
            "save_connection",
            json!({"draft": {"profile": profile, "password": "pw"}}),
        )
        .unwrap();
        assert_eq!(saved["secretStorage"], "session_only");
        assert_eq!(
            invoke(&webview, "list_connections", json!({})).unwrap(),
            json!([profile])
        );

        let invalid =
            json!({"id": "c2", "name": "", "endpoints": [], "tls": null, "username": null});
        let error = invoke(
            &webview,
            "save_connection",
            json!({"draft": {"profile": invalid, "password": null}}),
        )
        .unwrap_err();
        assert_eq!(error["kind"], "invalid_input");
    }
}

// Every command is declared here so that Tauri generates an `allow-<command>` permission for
// it; `capabilities/main.json` then grants the window exactly these and nothing else.
const COMMANDS: &[&str] = &[
    "list_connections",
    "save_connection",
    "delete_connection",
    "connect",
    "disconnect",
    "list_keys",
    "get_key",
    "put_key",
    "delete_key",
    "delete_keys_with_prefix",
    "key_history",
    "start_watch",
    "stop_stream",
    "start_cluster_sampling",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri-build failed");
}

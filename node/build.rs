//! Compiles the etcd v3 wire API and Cairn's internal protos with protox, a pure-Rust
//! protobuf compiler, so building needs no `protoc` on the machine.

const PROTO_DIR: &str = "proto";

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "cairnpb/raft.proto",
    "cairnpb/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    let fds = protox::compile(PROTOS, [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    compile_watch_server();
    Ok(())
}

/// The server side of etcd's Watch service once more, answering with
/// `crate::api::watch::Reply`: a `WatchResponse` whose events were encoded ahead, once per
/// published batch for all of its watchers. The route and the bytes on the wire are etcd's.
fn compile_watch_server() {
    use tonic_prost_build::manual::{Builder, Method, Service};
    let watch = Method::builder()
        .name("watch")
        .route_name("Watch")
        .input_type("crate::proto::etcdserverpb::WatchRequest")
        .output_type("crate::api::watch::Reply")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(watch)
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}

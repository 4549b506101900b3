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
    Ok(())
}

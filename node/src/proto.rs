//! Rust types and tonic services generated from `proto/`: the etcd v3 wire API
//! (`mvccpb`, `authpb`, `etcdserverpb`, `v3lockpb`, `v3electionpb`) and Cairn's internal Raft
//! payloads (`cairnpb`).

#[allow(clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}

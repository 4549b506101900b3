use std::sync::Mutex;

use clap::Parser;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request as GrpcRequest, Response, Status};

use super::*;
use crate::proto::etcdserverpb::kv_server::{Kv, KvServer};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutResponse,
    RangeResponse, TxnResponse,
};

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
}

#[test]
fn defaults_match_etcd_benchmark() {
    let args = parse(&["put"]).unwrap();
    assert_eq!(args.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!((args.clients, args.conns, args.total), (1, 1, 10_000));
    assert_eq!(
        (args.key_size, args.val_size, args.key_space_size),
        (8, 8, 1)
    );
    assert!(!args.sequential_keys && !args.json);
    assert_eq!(args.workload, Workload::Put);
}

#[test]
fn global_flags_parse_before_or_after_the_workload() {
    let args = parse(&[
        "--endpoints=a:2379,b:2379",
        "--clients=100",
        "--conns",
        "10",
        "put",
        "--total=500",
        "--key-size=16",
        "--val-size=256",
        "--key-space-size=1000",
        "--sequential-keys",
        "--json",
    ])
    .unwrap();
    assert_eq!(args.endpoints, vec!["a:2379", "b:2379"]);
    assert_eq!((args.clients, args.conns, args.total), (100, 10, 500));
    assert_eq!((args.key_size, args.val_size), (16, 256));
    assert_eq!(args.key_space_size, 1000);
    assert!(args.sequential_keys && args.json);
}

#[test]
fn range_takes_key_end_and_consistency() {
    let args = parse(&["range", "a", "z", "--consistency", "s", "--limit", "10"]).unwrap();
    assert_eq!(
        args.workload,
        Workload::Range {
            key: "a".into(),
            end: Some("z".into()),
            consistency: Consistency::S,
            limit: 10,
            count_only: false,
        }
    );
    let args = parse(&["range", "foo"]).unwrap();
    assert!(matches!(
        args.workload,
        Workload::Range {
            end: None,
            consistency: Consistency::L,
            ..
        }
    ));
    assert!(parse(&["range", "foo", "--consistency", "x"]).is_err());
    assert!(parse(&["range"]).is_err());
}

#[test]
fn txn_put_takes_ops_per_txn() {
    let args = parse(&["txn-put", "--txn-ops", "4"]).unwrap();
    assert_eq!(args.workload, Workload::TxnPut { txn_ops: 4 });
    assert_eq!(
        parse(&["txn-put"]).unwrap().workload,
        Workload::TxnPut { txn_ops: 1 }
    );
}

#[test]
fn nonsensical_counts_are_rejected() {
    for bad in [
        &["--clients=0", "put"][..],
        &["--conns=0", "put"],
        &["--total=0", "put"],
        &["--key-space-size=0", "put"],
        &["--key-space-size=4294967296", "put"],
        &["txn-put", "--txn-ops=0"],
        &[],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn endpoints_without_a_scheme_default_to_http() {
    assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
    assert_eq!(endpoint_url("http://h:1"), "http://h:1");
    assert_eq!(endpoint_url("https://h:1"), "https://h:1");
}

fn put_key(request: Request) -> Vec<u8> {
    match request {
        Request::Put(put) => put.key,
        other => panic!("expected a put, got {other:?}"),
    }
}

#[test]
fn sequential_puts_walk_the_key_space() {
    let args = parse(&[
        "--key-space-size=3",
        "--sequential-keys",
        "--val-size=5",
        "put",
    ])
    .unwrap();
    let plan = Plan::new(&args).unwrap();
    let mut rng = SplitMix64::new(1);
    let keys: Vec<_> = (0..4).map(|n| put_key(plan.request(n, &mut rng))).collect();
    assert_eq!(keys[0], plan.keys.key(0));
    assert_eq!(keys[2], plan.keys.key(2));
    assert_eq!(keys[3], keys[0]);
    let Request::Put(put) = plan.request(0, &mut rng) else {
        unreachable!()
    };
    assert_eq!(put.value.len(), 5);
}

#[test]
fn random_puts_stay_in_the_key_space() {
    let args = parse(&["--key-space-size=4", "put"]).unwrap();
    let plan = Plan::new(&args).unwrap();
    let mut rng = SplitMix64::new(3);
    let seen: std::collections::HashSet<_> = (0..200)
        .map(|n| put_key(plan.request(n, &mut rng)))
        .collect();
    let all: std::collections::HashSet<_> = (0..4).map(|i| plan.keys.key(i)).collect();
    assert_eq!(seen, all);
}

#[test]
fn ranges_carry_their_options() {
    let args = parse(&["range", "a", "b", "--consistency=s", "--count-only"]).unwrap();
    let plan = Plan::new(&args).unwrap();
    let Request::Range(range) = plan.request(0, &mut SplitMix64::new(0)) else {
        panic!("expected a range")
    };
    assert_eq!((range.key, range.range_end), (b"a".to_vec(), b"b".to_vec()));
    assert!(range.serializable && range.count_only);
}

#[test]
fn txn_puts_never_repeat_a_key_within_a_txn() {
    let args = parse(&["--key-space-size=5", "txn-put", "--txn-ops=5"]).unwrap();
    let plan = Plan::new(&args).unwrap();
    let mut rng = SplitMix64::new(9);
    for n in 0..50 {
        let Request::Txn(txn) = plan.request(n, &mut rng) else {
            panic!("expected a txn")
        };
        assert!(txn.compare.is_empty() && txn.failure.is_empty());
        let keys: std::collections::HashSet<_> = txn
            .success
            .into_iter()
            .map(|op| match op.request {
                Some(request_op::Request::RequestPut(put)) => put.key,
                other => panic!("expected a put, got {other:?}"),
            })
            .collect();
        assert_eq!(keys.len(), 5);
    }
}

#[test]
fn txns_larger_than_the_key_space_are_rejected() {
    let args = parse(&["--key-space-size=2", "txn-put", "--txn-ops=3"]).unwrap();
    let err = Plan::new(&args).unwrap_err().to_string();
    assert!(err.contains("--txn-ops 3"), "{err}");
}

/// An in-process KV service that records put keys and fails every `fail_every`th put.
struct FakeKv {
    puts: Mutex<Vec<Vec<u8>>>,
    fail_every: usize,
}

#[tonic::async_trait]
impl Kv for FakeKv {
    async fn range(&self, _: GrpcRequest<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse::default()))
    }

    async fn put(&self, request: GrpcRequest<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let mut puts = self.puts.lock().unwrap();
        puts.push(request.into_inner().key);
        if puts.len() % self.fail_every == 0 {
            return Err(Status::unavailable("etcdserver: no leader"));
        }
        Ok(Response::new(PutResponse::default()))
    }

    async fn delete_range(
        &self,
        _: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("not used by the benchmark"))
    }

    async fn txn(&self, _: GrpcRequest<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(TxnResponse::default()))
    }

    async fn compact(
        &self,
        _: GrpcRequest<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("not used by the benchmark"))
    }
}

async fn serve(kv: Arc<FakeKv>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::from_arc(kv))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_sent_once_and_errors_are_counted() {
    let kv = Arc::new(FakeKv {
        puts: Mutex::default(),
        fail_every: 100,
    });
    let endpoint = serve(Arc::clone(&kv)).await;
    let args = parse(&[
        &format!("--endpoints={endpoint},{endpoint}"),
        "--clients=8",
        "--conns=3",
        "--total=200",
        "--key-space-size=50",
        "--sequential-keys",
        "put",
    ])
    .unwrap();

    let summary = execute(&args).await.unwrap();

    assert_eq!(summary.workload, "put");
    assert_eq!(
        (summary.total, summary.succeeded, summary.errors),
        (200, 198, 2)
    );
    assert_eq!(
        summary.first_error.as_deref(),
        Some("etcdserver: no leader (Unavailable)")
    );
    let mut puts = kv.puts.lock().unwrap().clone();
    puts.sort();
    let keys = Plan::new(&args).unwrap().keys;
    let mut expected: Vec<_> = (0..200).map(|n| keys.key(n)).collect();
    expected.sort();
    assert_eq!(
        puts, expected,
        "each key of the space is written total/size times"
    );

    let err = run(args).await.unwrap_err().to_string();
    assert!(err.contains("2 of 200 requests failed"), "{err}");
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_before_the_run() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = parse(&[&format!("--endpoints={addr}"), "put"]).unwrap();
    let err = format!("{:#}", execute(&args).await.unwrap_err());
    assert!(
        err.contains(&format!("connecting to http://{addr}")),
        "{err}"
    );
}

#[test]
fn watch_takes_watchers_streams_rate_and_prev_kv() {
    let args = parse(&[
        "watch",
        "--watchers=1000",
        "--streams=20",
        "--put-rate=500",
        "--prev-kv",
    ])
    .unwrap();
    assert_eq!(
        args.workload,
        Workload::Watch {
            watchers: 1000,
            streams: 20,
            put_rate: 500,
            prev_kv: true,
        }
    );
    assert_eq!(
        parse(&["watch"]).unwrap().workload,
        Workload::Watch {
            watchers: 100,
            streams: 10,
            put_rate: 0,
            prev_kv: false,
        }
    );
    assert!(parse(&["watch", "--watchers=0"]).is_err());
}

#[tokio::test]
async fn watch_needs_room_for_the_send_time_and_a_watcher_per_stream() {
    let short = parse(&["--val-size=4", "watch"]).unwrap();
    let err = execute(&short).await.unwrap_err().to_string();
    assert!(err.contains("--val-size must be at least 8"), "{err}");
    let sparse = parse(&["watch", "--watchers=2", "--streams=3"]).unwrap();
    let err = execute(&sparse).await.unwrap_err().to_string();
    assert!(err.contains("--streams 3 exceeds --watchers 2"), "{err}");
}

/// The watch workload against a real member, started in-process on free ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_put_to_every_watcher_of_a_real_member() {
    #[derive(clap::Parser)]
    struct Server {
        #[command(flatten)]
        args: crate::config::ServerArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = Server::try_parse_from([
        "cairn",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--listen-peer-urls",
        "http://127.0.0.1:0",
    ])
    .unwrap()
    .args
    .resolve()
    .unwrap();
    let listeners = crate::server::bind(&config).await.unwrap();
    let endpoint = listeners.clients[0].0.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let member = tokio::spawn(crate::server::run(config, listeners, async {
        let _ = stopped.await;
    }));

    let args = parse(&[
        &format!("--endpoints={endpoint}"),
        "--conns=2",
        "--total=40",
        "--key-space-size=5",
        "--val-size=16",
        "watch",
        "--watchers=7",
        "--streams=3",
        "--prev-kv",
    ])
    .unwrap();
    let summary = execute(&args).await.unwrap();
    assert_eq!(summary.workload, "watch");
    assert_eq!(
        (summary.succeeded, summary.errors, summary.first_error),
        (280, 0, None)
    );
    assert!(summary.p99_ms > 0.0);

    stop.send(()).unwrap();
    member.await.unwrap().unwrap();
}

#[test]
fn lease_keepalive_parses_with_the_global_flags() {
    let args = parse(&["lease-keepalive", "--clients=4", "--total=100"]).unwrap();
    assert_eq!(args.workload, Workload::LeaseKeepalive);
    assert_eq!((args.clients, args.total), (4, 100));
}

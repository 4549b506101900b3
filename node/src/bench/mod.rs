//! `cairn bench`: a load generator in the style of etcd's `benchmark` tool.
//!
//! It is a plain etcd v3 gRPC client, so the same workload can be run against Cairn and
//! against etcd itself and the figures compared directly.

mod keys;
mod lease;
mod report;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use tonic::transport::{Channel, Endpoint};

use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keys::{KeySpace, SplitMix64};
use report::{latency_histogram, Summary};

/// Load-test an etcd v3 endpoint (Cairn or etcd).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct BenchArgs {
    /// gRPC endpoints, comma separated (`host:port` means `http://host:port`).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// Number of concurrent clients, each with one request in flight.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,

    /// Number of gRPC connections the clients are spread over.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,

    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub total: u64,

    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,

    /// Number of distinct keys written (at most 2^32, which keeps key arithmetic exact).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub key_space_size: u64,

    /// Write keys in order instead of picking them at random.
    #[arg(long, global = true)]
    pub sequential_keys: bool,

    /// Print the summary as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq)]
pub enum Workload {
    /// Benchmark puts.
    Put,
    /// Benchmark ranges over [key, end), or reads of the single key when end is absent.
    Range {
        key: String,
        end: Option<String>,
        /// Linearizable (l) or serializable (s) reads.
        #[arg(long, value_enum, default_value_t = Consistency::L)]
        consistency: Consistency,
        /// Maximum number of keys per response (0 means no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Ask only for the number of keys.
        #[arg(long)]
        count_only: bool,
    },
    /// Benchmark transactions made of puts.
    TxnPut {
        /// Puts per transaction.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        txn_ops: u64,
    },
    /// Benchmark watch delivery: watchers of the whole key space, one writer making --total
    /// puts; reports events delivered per second and put-to-watcher latency (--clients is
    /// not used).
    Watch {
        /// Watchers, spread evenly over the streams.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        watchers: u32,
        /// Watch streams (gRPC Watch calls), spread over the connections.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        streams: u32,
        /// Puts per second the writer aims at (0: as fast as one writer goes).
        #[arg(long, default_value_t = 0)]
        put_rate: u64,
        /// Ask for each event's previous key-value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Benchmark lease keepalives: each client grants a lease, then renews it with one
    /// keepalive stream per renewal (clientv3's KeepAliveOnce).
    LeaseKeepalive,
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::Watch { .. } => "watch",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// Runs the benchmark and prints its summary. Fails if any request failed, after
/// printing, so scripts notice a run that did not measure what it claims to.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let summary = execute(&args).await?;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        println!("{summary}");
    }
    if summary.errors > 0 {
        bail!(
            "{} of {} requests failed; first error: {}",
            summary.errors,
            summary.total,
            summary.first_error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

async fn execute(args: &BenchArgs) -> anyhow::Result<Summary> {
    if let Workload::Watch {
        watchers,
        streams,
        put_rate,
        prev_kv,
    } = args.workload
    {
        let load = watch::WatchLoad {
            watchers,
            streams,
            put_rate,
            prev_kv,
        };
        return watch::execute(args, load).await;
    }
    if args.workload == Workload::LeaseKeepalive {
        return lease::execute(args).await;
    }
    let plan = Arc::new(Plan::new(args)?);
    let channels = connect(&args.endpoints, args.conns).await?;

    let next = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::new());
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients as usize);
    for client in 0..args.clients {
        let channel = channels[client as usize % channels.len()].clone();
        // etcd's own client accepts responses of any size; tonic's default cap of 4 MiB
        // would turn a large range into an error that says nothing about the server.
        let kv = KvClient::new(channel).max_decoding_message_size(usize::MAX);
        let rng = SplitMix64::new(seed ^ u64::from(client).wrapping_mul(0x9E37_79B9));
        tasks.push(tokio::spawn(drive_client(
            kv,
            rng,
            Arc::clone(&plan),
            Arc::clone(&next),
            args.total,
            Arc::clone(&first_error),
        )));
    }

    let mut latencies = latency_histogram();
    let mut errors = 0;
    for task in tasks {
        let outcome = task.await.context("benchmark client panicked")?;
        latencies
            .add(&outcome.latencies)
            .context("merging latency histograms")?;
        errors += outcome.errors;
    }
    let elapsed = started.elapsed();

    Ok(Summary::new(
        plan.workload.name(),
        &latencies,
        errors,
        first_error.get().cloned(),
        elapsed,
    ))
}

fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// Opens `conns` connections, assigned to the endpoints round-robin. Connecting up front
/// makes an unreachable endpoint fail the run at once instead of as `total` errors.
async fn connect(endpoints: &[String], conns: u32) -> anyhow::Result<Vec<Channel>> {
    let endpoints: Vec<&String> = endpoints.iter().filter(|e| !e.is_empty()).collect();
    ensure!(
        !endpoints.is_empty(),
        "--endpoints must name at least one endpoint"
    );
    let mut channels = Vec::with_capacity(conns as usize);
    for conn in 0..conns as usize {
        let url = endpoint_url(endpoints[conn % endpoints.len()]);
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid endpoint {url}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

struct ClientOutcome {
    latencies: hdrhistogram::Histogram<u64>,
    errors: u64,
}

/// One closed-loop client: takes the next request number until `total` are taken.
async fn drive_client(
    mut kv: KvClient<Channel>,
    mut rng: SplitMix64,
    plan: Arc<Plan>,
    next: Arc<AtomicU64>,
    total: u64,
    first_error: Arc<OnceLock<String>>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        latencies: latency_histogram(),
        errors: 0,
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            return outcome;
        }
        let request = plan.request(n, &mut rng);
        let sent = Instant::now();
        match request.send(&mut kv).await {
            Ok(()) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                outcome.latencies.saturating_record(micros);
            }
            Err(status) => {
                outcome.errors += 1;
                // Only the first error across all clients is kept; later ones are counted.
                let _ = first_error.set(format!("{} ({:?})", status.message(), status.code()));
            }
        }
    }
}

/// Everything needed to build request number `n`, fixed before the clients start.
#[derive(Debug)]
struct Plan {
    workload: Workload,
    keys: KeySpace,
    value: Vec<u8>,
    sequential_keys: bool,
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let keys = KeySpace::new(args.key_size, args.key_space_size)?;
        if let Workload::TxnPut { txn_ops } = args.workload {
            // etcd rejects a txn that writes one key twice, so every put in a txn needs
            // its own key.
            ensure!(
                txn_ops <= keys.size(),
                "--txn-ops {txn_ops} exceeds --key-space-size {}; a txn cannot put one key twice",
                keys.size()
            );
        }
        // A fixed seed writes the same bytes on every run, so runs stay comparable.
        let value = SplitMix64::new(0).bytes(args.val_size);
        Ok(Self {
            workload: args.workload.clone(),
            keys,
            value,
            sequential_keys: args.sequential_keys,
        })
    }

    /// The key space index for request `n`, always below the key space size.
    fn key_index(&self, n: u64, rng: &mut SplitMix64) -> u64 {
        if self.sequential_keys {
            n % self.keys.size()
        } else {
            rng.below(self.keys.size())
        }
    }

    fn request(&self, n: u64, rng: &mut SplitMix64) -> Request {
        match &self.workload {
            Workload::Put => Request::Put(PutRequest {
                key: self.keys.key(self.key_index(n, rng)),
                value: self.value.clone(),
                ..Default::default()
            }),
            Workload::Range {
                key,
                end,
                consistency,
                limit,
                count_only,
            } => Request::Range(RangeRequest {
                key: key.clone().into_bytes(),
                range_end: end.clone().map(String::into_bytes).unwrap_or_default(),
                limit: *limit,
                serializable: *consistency == Consistency::S,
                count_only: *count_only,
                ..Default::default()
            }),
            Workload::TxnPut { txn_ops } => {
                // Consecutive indices, so the puts of one txn never share a key.
                let first = self.key_index(n.wrapping_mul(*txn_ops), rng);
                let success = (0..*txn_ops)
                    .map(|op| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: self.keys.key(first + op),
                            value: self.value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                Request::Txn(TxnRequest {
                    success,
                    ..Default::default()
                })
            }
            Workload::Watch { .. } => unreachable!("the watch workload has its own driver"),
            Workload::LeaseKeepalive => unreachable!("the lease workload has its own driver"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Request {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

impl Request {
    async fn send(self, kv: &mut KvClient<Channel>) -> Result<(), tonic::Status> {
        match self {
            Request::Put(r) => kv.put(r).await.map(drop),
            Request::Range(r) => kv.range(r).await.map(drop),
            Request::Txn(r) => kv.txn(r).await.map(drop),
        }
    }
}

#[cfg(test)]
mod tests;

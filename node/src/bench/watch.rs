//! `cairn bench watch`: many watchers over a key space, one writer, and how fast and how
//! soon each put reaches every watcher.
//!
//! Each put's value starts with the moment it was sent (nanoseconds since the run began,
//! little-endian), so a watcher measures delivery latency from the value alone. A "request"
//! in the summary is one event delivered to one watcher.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::keys::{KeySpace, SplitMix64};
use super::report::{latency_histogram, Summary};
use super::{connect, BenchArgs};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};

/// How long the watchers may take, after the last put, to receive what is still on its way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a value taken by the send time.
const STAMP_BYTES: usize = 8;

/// The watch workload's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLoad {
    pub watchers: u32,
    pub streams: u32,
    pub put_rate: u64,
    pub prev_kv: bool,
}

pub async fn execute(args: &BenchArgs, load: WatchLoad) -> anyhow::Result<Summary> {
    ensure!(
        args.val_size >= STAMP_BYTES,
        "--val-size must be at least {STAMP_BYTES} for watch: each value carries its send time"
    );
    ensure!(
        load.streams <= load.watchers,
        "--streams {} exceeds --watchers {}: every stream needs a watcher",
        load.streams,
        load.watchers
    );
    let keys = KeySpace::new(args.key_size, args.key_space_size)?;
    let channels = connect(&args.endpoints, args.conns).await?;
    let origin = Instant::now();
    let first_error = Arc::new(OnceLock::new());

    // Every watcher watches the whole key space: [first key, last key + "\0").
    let mut range_end = keys.key(keys.size() - 1);
    range_end.push(0);
    let create = WatchCreateRequest {
        key: keys.key(0),
        range_end,
        prev_kv: load.prev_kv,
        ..WatchCreateRequest::default()
    };
    let mut streams = Vec::with_capacity(load.streams as usize);
    for stream in 0..load.streams {
        // The watchers spread as evenly as they go.
        let watchers =
            load.watchers / load.streams + u32::from(stream < load.watchers % load.streams);
        let channel = channels[stream as usize % channels.len()].clone();
        let ready = open_stream(channel, &create, watchers)
            .await
            .with_context(|| format!("opening watch stream {stream}"))?;
        let expected = args.total * u64::from(watchers);
        streams.push(tokio::spawn(receive(
            ready,
            expected,
            origin,
            Arc::clone(&first_error),
        )));
    }

    let started = Instant::now();
    write(
        KvClient::new(channels[0].clone()),
        args,
        &keys,
        load.put_rate,
        origin,
        &first_error,
    )
    .await;

    let mut latencies = latency_histogram();
    let mut missing = 0;
    let mut last_event = started;
    for stream in streams {
        let outcome = stream.await.context("a watch stream panicked")?;
        latencies
            .add(&outcome.latencies)
            .context("merging latency histograms")?;
        missing += outcome.missing;
        last_event = last_event.max(outcome.last_event);
    }
    if missing > 0 {
        let _ = first_error.set(format!(
            "{missing} events did not arrive within {DRAIN_TIMEOUT:?} after the last put"
        ));
    }
    Ok(Summary::new(
        "watch",
        &latencies,
        missing,
        first_error.get().cloned(),
        last_event - started,
    ))
}

/// A watch stream whose watchers the server has confirmed.
struct ReadyStream {
    responses: tonic::Streaming<crate::proto::etcdserverpb::WatchResponse>,
    /// Kept so that the stream stays open in both directions.
    _requests: mpsc::Sender<WatchRequest>,
}

async fn open_stream(
    channel: Channel,
    create: &WatchCreateRequest,
    watchers: u32,
) -> anyhow::Result<ReadyStream> {
    let (requests, outgoing) = mpsc::channel(watchers as usize);
    for _ in 0..watchers {
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create.clone())),
            })
            .await
            .context("queueing a watch request")?;
    }
    let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = client
        .watch(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let mut created = 0;
    while created < watchers {
        let response = responses
            .message()
            .await?
            .context("the server ended the stream while creating watchers")?;
        if response.canceled {
            anyhow::bail!("the server refused a watcher: {}", response.cancel_reason);
        }
        created += u32::from(response.created);
    }
    Ok(ReadyStream {
        responses,
        _requests: requests,
    })
}

struct StreamOutcome {
    latencies: Histogram<u64>,
    missing: u64,
    last_event: Instant,
}

/// Receives until every expected event has arrived, or the stream fails, or nothing has
/// arrived for [`DRAIN_TIMEOUT`].
async fn receive(
    mut stream: ReadyStream,
    expected: u64,
    origin: Instant,
    first_error: Arc<OnceLock<String>>,
) -> StreamOutcome {
    let mut outcome = StreamOutcome {
        latencies: latency_histogram(),
        missing: expected,
        last_event: Instant::now(),
    };
    while outcome.missing > 0 {
        let response = match tokio::time::timeout(DRAIN_TIMEOUT, stream.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => {
                let _ = first_error.set("the server ended a watch stream".to_owned());
                break;
            }
            Ok(Err(status)) => {
                let _ = first_error.set(format!("{} ({:?})", status.message(), status.code()));
                break;
            }
            Err(_) => break,
        };
        let now = Instant::now();
        let elapsed = now.duration_since(origin);
        for event in &response.events {
            let Some(stamp) = event
                .kv
                .as_ref()
                .and_then(|kv| kv.value.first_chunk::<STAMP_BYTES>())
            else {
                continue;
            };
            let sent = Duration::from_nanos(u64::from_le_bytes(*stamp));
            let micros = elapsed.saturating_sub(sent).as_micros();
            outcome
                .latencies
                .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            outcome.missing = outcome.missing.saturating_sub(1);
            outcome.last_event = now;
        }
    }
    outcome
}

/// One writer: `total` puts, each value stamped with its send time, at `rate` per second
/// (0: back to back).
async fn write(
    mut kv: KvClient<Channel>,
    args: &BenchArgs,
    keys: &KeySpace,
    rate: u64,
    origin: Instant,
    first_error: &OnceLock<String>,
) {
    let mut rng = SplitMix64::new(0);
    let mut value = rng.bytes(args.val_size);
    let mut pace = (rate > 0).then(|| {
        let mut interval =
            tokio::time::interval(Duration::from_secs(1) / rate.min(1_000_000) as u32);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    for n in 0..args.total {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let index = if args.sequential_keys {
            n % keys.size()
        } else {
            rng.below(keys.size())
        };
        let stamp = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        value[..STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
        let put = PutRequest {
            key: keys.key(index),
            value: value.clone(),
            ..PutRequest::default()
        };
        if let Err(status) = kv.put(put).await {
            // The watchers will miss this one; the run reports them as missing events.
            let _ = first_error.set(format!("{} ({:?})", status.message(), status.code()));
        }
    }
}

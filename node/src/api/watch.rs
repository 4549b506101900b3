//! etcd's Watch service: one bidirectional stream carries many watchers. The watch hub
//! decides what to send and in which order; this file speaks etcd 3.5's protocol around it
//! (created, canceled and compacted responses, progress, fragments, headers).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{leader, SharedNode};
use crate::coalesce::Connection;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse};
use crate::watch::{Created, Output, WatchHub, WatchStream};

/// Responses a stream may have ready while the client reads slowly; beyond that its
/// watchers' queues in the hub fill up, and they fall back to reading history.
const SEND_BUFFER: usize = 16;

/// Outputs sent back to back before the session looks at requests and shutdown again.
const BURST: usize = 64;

/// etcd's default progress notification interval (`--experimental-watch-progress-notify-interval`).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// etcd raises a shorter interval to this.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How the service behaves, from the member's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Between two progress notifications to a watcher that asked for them (etcd adds up
    /// to a tenth of random jitter per stream).
    pub progress_interval: Duration,
    /// A watcher with `fragment` gets responses split at about this size (etcd uses
    /// `--max-request-bytes` plus its gRPC overhead allowance).
    pub fragment_bytes: usize,
}

pub struct WatchService {
    node: SharedNode,
    hub: WatchHub,
    settings: WatchSettings,
    /// Becomes true when the member shuts down: every stream ends then.
    stop: watch::Receiver<bool>,
}

impl WatchService {
    pub fn new(
        node: SharedNode,
        hub: WatchHub,
        settings: WatchSettings,
        stop: watch::Receiver<bool>,
    ) -> Self {
        WatchService {
            node,
            hub,
            settings: WatchSettings {
                progress_interval: settings.progress_interval.max(MIN_PROGRESS_INTERVAL),
                ..settings
            },
            stop,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Some(connection) = request.extensions().get::<Connection>() {
            connection.fan_out();
        }
        let leader_lost = leader::requires_leader(&request).then(|| self.node.leader_lost.clone());
        let (sender, receiver) = mpsc::channel(SEND_BUFFER);
        let session = Session {
            node: self.node.clone(),
            leader_lost,
            watchers: self.hub.stream(),
            settings: self.settings,
            sender,
            stop: self.stop.clone(),
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One client stream: reads its requests and sends what its watchers produce.
struct Session {
    node: SharedNode,
    /// For a stream opened with `hasleader`: ends it once the member has lost its leader.
    leader_lost: Option<watch::Receiver<bool>>,
    watchers: WatchStream,
    settings: WatchSettings,
    sender: mpsc::Sender<Result<WatchResponse, Status>>,
    stop: watch::Receiver<bool>,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<WatchRequest>) {
        let period = jittered(self.settings.progress_interval);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        // etcd keeps sending after the client closes its side of the stream.
        let mut receiving = true;
        loop {
            let responses = tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    let _ = self.sender.send(Err(super::errors::stopped())).await;
                    return;
                }
                _ = self.sender.closed() => return,
                _ = leader::leader_lost(&mut self.leader_lost) => {
                    let _ = self.sender.send(Err(super::errors::no_leader())).await;
                    return;
                }
                request = requests.message(), if receiving => match request {
                    Ok(Some(request)) => self.handle(request),
                    Ok(None) => {
                        receiving = false;
                        continue;
                    }
                    // The client is gone or broke the protocol.
                    Err(_) => return,
                },
                _ = ticks.tick() => {
                    self.watchers.progress_tick();
                    continue;
                }
                output = self.watchers.next() => match output {
                    Ok(output) => self.respond(output),
                    Err(error) => return self.fail(error).await,
                },
            };
            for response in responses {
                if !self.send(response).await {
                    return;
                }
            }
            // Whatever else is ready goes out without another round of the select: one
            // publish usually readies several watchers of the stream at once.
            for _ in 0..BURST {
                let output = match self.watchers.ready() {
                    Ok(Some(output)) => output,
                    Ok(None) => break,
                    Err(error) => return self.fail(error).await,
                };
                for response in self.respond(output) {
                    if !self.send(response).await {
                        return;
                    }
                }
            }
        }
    }

    /// Ends the stream after the store failed to serve it.
    async fn fail(&self, error: crate::store::KvError) {
        tracing::error!(%error, "a watch stream cannot read the store's history");
        let _ = self.sender.send(Err(error.into())).await;
    }

    /// Sends one response; false when the stream is over (client gone or member stopping).
    async fn send(&mut self, response: WatchResponse) -> bool {
        // The common case, room in the channel, needs no wait and so no watch on shutdown.
        let response = match self.sender.try_send(Ok(response)) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(response)) => response,
        };
        tokio::select! {
            sent = self.sender.send(response) => sent.is_ok(),
            _ = stopped(&mut self.stop) => {
                let _ = self.sender.try_send(Err(super::errors::stopped()));
                false
            }
        }
    }

    fn handle(&mut self, request: WatchRequest) -> Vec<WatchResponse> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let response = match self.watchers.create(&create) {
                    Created::Watching { watch_id, revision } => WatchResponse {
                        header: Some(self.node.header(revision)),
                        watch_id,
                        created: true,
                        ..WatchResponse::default()
                    },
                    Created::Refused { reason, revision } => WatchResponse {
                        header: Some(self.node.header(revision)),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: reason.to_owned(),
                        ..WatchResponse::default()
                    },
                };
                vec![response]
            }
            Some(RequestUnion::CancelRequest(cancel)) => self
                .watchers
                .cancel(cancel.watch_id)
                .map(|revision| WatchResponse {
                    header: Some(self.node.header(revision)),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..WatchResponse::default()
                })
                .into_iter()
                .collect(),
            Some(RequestUnion::ProgressRequest(_)) => {
                self.watchers.request_progress();
                Vec::new()
            }
            // etcd ignores a request it does not understand rather than end the stream.
            None => Vec::new(),
        }
    }

    fn respond(&self, output: Output) -> Vec<WatchResponse> {
        match output {
            Output::Events {
                watch_id,
                revision,
                events,
                fragment,
            } => {
                let response = WatchResponse {
                    header: Some(self.node.header(revision)),
                    watch_id,
                    events,
                    ..WatchResponse::default()
                };
                if fragment {
                    fragments(response, self.settings.fragment_bytes)
                } else {
                    vec![response]
                }
            }
            // etcd's compaction notice carries no revision in its header.
            Output::Compacted {
                watch_id,
                compact_revision,
            } => vec![WatchResponse {
                header: Some(self.node.header(0)),
                watch_id,
                canceled: true,
                compact_revision,
                ..WatchResponse::default()
            }],
            Output::Progress { watch_id, revision } => vec![WatchResponse {
                header: Some(self.node.header(revision)),
                watch_id,
                ..WatchResponse::default()
            }],
        }
    }
}

/// Completes once the member is shutting down.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns must not live across an await: dropped here.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// etcd's `sendFragments`: a response of at least `limit` bytes with more than one event
/// becomes several, each filled with events while it stays under `limit` (but never empty),
/// all flagged `fragment` except the last.
fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response.clone()
    };
    let mut parts = Vec::new();
    let mut events = response.events.into_iter().peekable();
    while events.peek().is_some() {
        let mut part = template.clone();
        let mut size = part.encoded_len();
        while let Some(event) = events.peek() {
            let len = event.encoded_len();
            // The tag of field 11 is one byte, then the length, then the event.
            let field = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if !part.events.is_empty() && size + field >= limit {
                break;
            }
            size += field;
            part.events.extend(events.next());
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

/// `interval` plus up to a tenth of it, random per stream, so that watchers created
/// together (a client restart) are not all notified at the same moment.
fn jittered(interval: Duration) -> Duration {
    let tenth = u64::try_from(interval.as_nanos() / 10).unwrap_or(u64::MAX);
    if tenth == 0 {
        return interval;
    }
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    interval + Duration::from_nanos(random % tenth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::{Event, KeyValue};

    fn event(value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: vec![7; value_len],
                mod_revision: 5,
                ..KeyValue::default()
            }),
            ..Event::default()
        }
    }

    fn response(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            watch_id: 3,
            events,
            ..WatchResponse::default()
        }
    }

    #[test]
    fn small_or_single_event_responses_are_not_split() {
        let small = response(vec![event(10), event(10)]);
        assert_eq!(fragments(small.clone(), 1000), vec![small]);
        let single = response(vec![event(5000)]);
        assert_eq!(fragments(single.clone(), 1000), vec![single]);
    }

    #[test]
    fn large_responses_split_in_order_flagged_until_the_last() {
        let events: Vec<Event> = (0..10).map(|_| event(300)).collect();
        let parts = fragments(response(events.clone()), 1000);
        assert_eq!(parts.len(), 4, "3 events of ~310 bytes fit under 1000");
        for (at, part) in parts.iter().enumerate() {
            assert_eq!(part.fragment, at + 1 < parts.len());
            assert_eq!(part.watch_id, 3);
            assert!(part.encoded_len() < 1000 || part.events.len() == 1);
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|part| part.events).collect();
        assert_eq!(joined, events);
    }

    #[test]
    fn an_oversized_event_still_travels_alone() {
        let events = vec![event(10), event(5000), event(10)];
        let parts = fragments(response(events), 1000);
        let sizes: Vec<usize> = parts.iter().map(|part| part.events.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
        let flags: Vec<bool> = parts.iter().map(|part| part.fragment).collect();
        assert_eq!(flags, [true, true, false]);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let interval = Duration::from_secs(10);
        for _ in 0..100 {
            let period = jittered(interval);
            assert!(period >= interval && period < interval + Duration::from_secs(1));
        }
    }
}

//! Carries writes that reach a follower to the leader, many in one message.
//!
//! One call per write would cost each forwarded write a gRPC exchange on both members;
//! under load that overhead, not Raft, limited a cluster whose clients spread over every
//! member. The forwarder keeps one stream open to the leader with several batches on it at
//! once and, while they travel, gathers what arrives; the next batch carries it all. A lone
//! write still goes out at once. The leader answers a stream's batches in their order.
//!
//! A leader that stops answering without closing the connection (paused, or cut off while
//! the others elect a new one) fails the stream once a batch has waited etcd's request
//! timeout: its writes, and those queued behind them, get "request timed out", as a write
//! waiting on etcd's proposal does, instead of waiting for HTTP/2 keepalive to give up.

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::network::Peers;
use super::types::{Applied, Member};
use crate::api::errors;
use crate::proto::cairnpb::{ProposeResponse, RaftBatch, RaftRequest};

/// Most requests in one batch, and most bytes: the leader's proposer takes them as they come.
const MAX_BATCH_REQUESTS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Writes waiting for the next batch before callers are pushed back.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Batches on their way at once. The leader answers a batch once its writes are applied,
/// up to two entry cycles later; writes that arrive meanwhile should reach the leader's next
/// entry rather than wait here for a free slot. With 4, a 3-member cluster at 64 clients
/// spread over every member made about 27,000 puts/s; with 16, about 30,000
/// (`docs/benchmarks.md`, eleventh session). The leader reads as many ahead on each stream.
pub const IN_FLIGHT: usize = 16;

type Reply = oneshot::Sender<Result<Applied, Status>>;

struct Forward {
    leader: Member,
    request: RaftRequest,
    reply: Reply,
}

/// A handle to the member's forwarder task; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Forward>,
}

impl Forwarder {
    /// Starts the forwarder task; a batch the leader has not answered within `timeout`
    /// fails its stream. The task ends when every handle is dropped.
    pub fn start(peers: Peers, timeout: Duration) -> Forwarder {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(peers, timeout, receiver));
        Forwarder { queue }
    }

    /// Has `leader` replicate `request`; returns the state machine's answer. A leader that
    /// cannot be reached answers etcd's "no leader", so the client retries.
    pub async fn forward(&self, leader: &Member, request: RaftRequest) -> Result<Applied, Status> {
        let (reply, answer) = oneshot::channel();
        let forward = Forward {
            leader: leader.clone(),
            request,
            reply,
        };
        self.queue
            .send(forward)
            .await
            .map_err(|_| errors::stopped())?;
        answer.await.map_err(|_| errors::stopped())?
    }
}

/// A gathered batch: the writes, and where each one's answer goes.
struct Batch {
    requests: Vec<RaftRequest>,
    replies: Vec<Reply>,
}

/// The stream to one leader, run by its own task.
struct Link {
    leader: Member,
    batches: mpsc::Sender<Batch>,
}

async fn run(peers: Peers, timeout: Duration, mut receiver: mpsc::Receiver<Forward>) {
    let mut link: Option<Link> = None;
    // A write for another leader than the batch's (the leader changed meanwhile) starts the
    // next batch.
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let leader = first.leader.clone();
        let mut bytes = first.request.encoded_len();
        let mut gathered = vec![first];
        while gathered.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(next) if next.leader == leader => {
                    bytes += next.request.encoded_len();
                    gathered.push(next);
                }
                Ok(next) => {
                    held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let (requests, replies) = gathered
            .into_iter()
            .map(|forward| (forward.request, forward.reply))
            .unzip();
        let batch = Batch { requests, replies };
        // A new leader, or a stream that failed, gets a new link; an old link ends once its
        // batches are answered.
        let current = link
            .as_ref()
            .filter(|link| link.leader == leader && !link.batches.is_closed());
        let batches = match current {
            Some(link) => link.batches.clone(),
            None => {
                let (batches, queued) = mpsc::channel(1);
                tokio::spawn(carry(peers.clone(), leader.clone(), timeout, queued));
                link = Some(Link {
                    leader,
                    batches: batches.clone(),
                });
                batches
            }
        };
        // Waits while the link has its fill of batches on their way: meanwhile the queue
        // gathers the next batch.
        if let Err(mpsc::error::SendError(batch)) = batches.send(batch).await {
            fail(batch.replies, &errors::no_leader());
        }
    }
}

/// The writes of a batch on its way, and when it was sent.
struct Sent {
    at: Instant,
    replies: Vec<Reply>,
}

/// Sends the batches for `leader` on one stream and hands each write its answer. Ends when
/// the stream fails or a batch waits longer than `timeout` (every write on its way or
/// waiting gets the error), or when the last batch is answered after the forwarder moved on
/// to another link.
async fn carry(
    peers: Peers,
    leader: Member,
    timeout: Duration,
    mut batches: mpsc::Receiver<Batch>,
) {
    let Some(first) = batches.recv().await else {
        return;
    };
    let (requests, queued) = mpsc::channel(IN_FLIGHT);
    let mut pending = VecDeque::with_capacity(IN_FLIGHT);
    let _ = requests.try_send(RaftBatch {
        requests: first.requests,
    });
    pending.push_back(Sent {
        at: Instant::now(),
        replies: first.replies,
    });
    let opened = match peers.client(&leader) {
        Ok(mut client) => client
            .propose(ReceiverStream::new(queued))
            .await
            .map(tonic::Response::into_inner)
            .map_err(errors::from_peer_status),
        Err(_) => Err(errors::no_leader()),
    };
    let status = match opened {
        Ok(answers) => relay(&requests, answers, timeout, &mut batches, &mut pending).await,
        Err(status) => Some(status),
    };
    let Some(status) = status else {
        return;
    };
    for sent in pending {
        fail(sent.replies, &status);
    }
    batches.close();
    while let Some(batch) = batches.recv().await {
        fail(batch.replies, &status);
    }
}

/// Moves batches onto the stream and answers off it until the forwarder has moved on and
/// nothing is left on its way (`None`), or the stream fails or the oldest batch on it has
/// waited `timeout` (the error).
async fn relay(
    requests: &mpsc::Sender<RaftBatch>,
    mut answers: Streaming<ProposeResponse>,
    timeout: Duration,
    batches: &mut mpsc::Receiver<Batch>,
    pending: &mut VecDeque<Sent>,
) -> Option<Status> {
    let mut open = true;
    loop {
        let oldest = pending.front().map(|sent| sent.at + timeout);
        tokio::select! {
            batch = batches.recv(), if open && pending.len() < IN_FLIGHT => match batch {
                Some(batch) => {
                    // The channel has room for IN_FLIGHT batches, and no more are on their
                    // way: this cannot wait.
                    if requests.send(RaftBatch { requests: batch.requests }).await.is_err() {
                        fail(batch.replies, &errors::no_leader());
                        return Some(errors::no_leader());
                    }
                    pending.push_back(Sent { at: Instant::now(), replies: batch.replies });
                }
                None if pending.is_empty() => return None,
                None => open = false,
            },
            answer = answers.message(), if !pending.is_empty() => match answer {
                Ok(Some(response)) => {
                    let replies = pending.pop_front().map(|sent| sent.replies);
                    deliver(replies.unwrap_or_default(), response);
                    if !open && pending.is_empty() {
                        return None;
                    }
                }
                Ok(None) => return Some(errors::no_leader()),
                Err(status) => return Some(errors::from_peer_status(status)),
            },
            () = sleep_until(oldest) => return Some(errors::timeout()),
        }
    }
}

/// Resolves at `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Hands each write of a batch its answer from the leader's response.
fn deliver(replies: Vec<Reply>, response: ProposeResponse) {
    if response.applied.len() != replies.len() {
        let status = Status::internal(format!(
            "cairn: the leader answered {} of {} forwarded writes",
            response.applied.len(),
            replies.len()
        ));
        return fail(replies, &status);
    }
    for (reply, applied) in replies.into_iter().zip(response.applied) {
        let answer = postcard::from_bytes(&applied).map_err(|e| {
            Status::internal(format!("cairn: undecodable answer from the leader: {e}"))
        });
        let _ = reply.send(answer);
    }
}

fn fail(replies: Vec<Reply>, status: &Status) {
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures::{Stream, StreamExt};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Code, Request, Response};

    use super::*;
    use crate::proto::cairnpb::peer_server::{Peer, PeerServer};
    use crate::proto::cairnpb::raft_request;
    use crate::proto::cairnpb::{
        CampaignRequest, CampaignResponse, LeaseRenewRequest, LeaseRenewResponse, RaftMessage,
        ReadIndexRequest, ReadIndexResponse,
    };
    use crate::proto::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest};

    /// The forwarder's timeout where no test expects it to fire.
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// How the stand-in leader answers the batches of each forward stream.
    #[derive(Clone, Copy)]
    enum Script {
        /// Keeps each stream open and never answers (a paused leader).
        Silent,
        /// Answers every write of the first `batches` batches with its key (as a rejection's
        /// message), then ends the stream as a stopping member does.
        AnswerThenEnd { batches: usize },
        /// Answers each batch with no answers at all.
        AnswerNone,
    }

    struct StandInLeader {
        script: Script,
        streams: Arc<AtomicUsize>,
    }

    fn unused<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not part of the stand-in leader"))
    }

    type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Peer for StandInLeader {
        type AppendEntriesStream = Answers<RaftMessage>;
        type ProposeStream = Answers<ProposeResponse>;

        async fn append_entries(
            &self,
            _: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Self::AppendEntriesStream>, Status> {
            unused()
        }

        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            unused()
        }

        async fn install_snapshot(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            unused()
        }

        async fn propose(
            &self,
            request: Request<Streaming<RaftBatch>>,
        ) -> Result<Response<Self::ProposeStream>, Status> {
            self.streams.fetch_add(1, Ordering::SeqCst);
            let batches = request.into_inner();
            let answers: Self::ProposeStream = match self.script {
                Script::Silent => Box::pin(futures::stream::pending()),
                Script::AnswerThenEnd { batches: count } => {
                    Box::pin(batches.take(count).map(|batch| {
                        let applied = batch?
                            .requests
                            .iter()
                            .map(|request| {
                                let Some(raft_request::Request::Put(put)) = &request.request else {
                                    panic!("the tests forward puts only");
                                };
                                postcard::to_allocvec(&Applied::Rejected {
                                    code: 0,
                                    message: String::from_utf8_lossy(&put.key).into_owned(),
                                })
                                .expect("encode an answer")
                            })
                            .collect();
                        Ok(ProposeResponse { applied })
                    }))
                }
                Script::AnswerNone => Box::pin(batches.map(|batch| {
                    batch?;
                    Ok(ProposeResponse::default())
                })),
            };
            Ok(Response::new(answers))
        }

        async fn read_index(
            &self,
            _: Request<ReadIndexRequest>,
        ) -> Result<Response<ReadIndexResponse>, Status> {
            unused()
        }

        async fn change_membership(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            unused()
        }

        async fn campaign(
            &self,
            _: Request<CampaignRequest>,
        ) -> Result<Response<CampaignResponse>, Status> {
            unused()
        }

        async fn lease_renew(
            &self,
            _: Request<LeaseRenewRequest>,
        ) -> Result<Response<LeaseRenewResponse>, Status> {
            unused()
        }

        async fn lease_time_to_live(
            &self,
            _: Request<LeaseTimeToLiveRequest>,
        ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
            unused()
        }
    }

    /// Serves a stand-in leader on a free loopback port; returns it as a member and the
    /// count of forward streams it has been opened.
    async fn stand_in_leader(script: Script) -> (Member, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let streams = Arc::new(AtomicUsize::new(0));
        let leader = StandInLeader {
            script,
            streams: streams.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(leader))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (member_at(addr), streams)
    }

    /// A member whose peer URL is `addr`.
    fn member_at(addr: std::net::SocketAddr) -> Member {
        Member {
            name: addr.to_string(),
            peer_urls: vec![format!("http://{addr}")],
            ..Member::default()
        }
    }

    fn put(key: &str) -> RaftRequest {
        RaftRequest {
            request: Some(raft_request::Request::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                ..PutRequest::default()
            })),
        }
    }

    /// The key the stand-in leader answered the write with.
    fn answered_key(answer: Result<Applied, Status>) -> String {
        match answer {
            Ok(Applied::Rejected { message, .. }) => message,
            other => panic!("expected the stand-in leader's answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_writes_each_get_their_own_answer_on_one_stream() {
        let (leader, streams) = stand_in_leader(Script::AnswerThenEnd {
            batches: usize::MAX,
        })
        .await;
        let forwarder = Forwarder::start(Peers::new(None), TIMEOUT);
        let writes = (0..200).map(|n| {
            let (forwarder, leader) = (forwarder.clone(), leader.clone());
            async move {
                let key = format!("k{n}");
                let answer = forwarder.forward(&leader, put(&key)).await;
                (key, answer)
            }
        });
        for (key, answer) in futures::future::join_all(writes).await {
            assert_eq!(answered_key(answer), key);
        }
        assert_eq!(
            streams.load(Ordering::SeqCst),
            1,
            "one stream carried them all"
        );
    }

    #[tokio::test]
    async fn a_write_on_a_stream_the_leader_ended_gets_no_leader_and_the_next_opens_another() {
        let (leader, streams) = stand_in_leader(Script::AnswerThenEnd { batches: 1 }).await;
        let forwarder = Forwarder::start(Peers::new(None), TIMEOUT);

        assert_eq!(
            answered_key(forwarder.forward(&leader, put("a")).await),
            "a"
        );
        let status = forwarder
            .forward(&leader, put("b"))
            .await
            .expect_err("the stream ended before answering");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), errors::no_leader().message());

        assert_eq!(
            answered_key(forwarder.forward(&leader, put("c")).await),
            "c"
        );
        assert_eq!(streams.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_batch_answered_with_the_wrong_number_of_answers_fails_as_a_whole() {
        let (leader, _) = stand_in_leader(Script::AnswerNone).await;
        let forwarder = Forwarder::start(Peers::new(None), TIMEOUT);
        let status = forwarder
            .forward(&leader, put("a"))
            .await
            .expect_err("no answer for the write");
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().contains("answered 0 of 1"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn writes_to_a_leader_that_stops_answering_fail_with_request_timed_out() {
        const SHORT: Duration = Duration::from_millis(300);
        let (leader, streams) = stand_in_leader(Script::Silent).await;
        let forwarder = Forwarder::start(Peers::new(None), SHORT);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            forwarder.forward(&leader, put("a")),
            forwarder.forward(&leader, put("b")),
        );
        assert!(started.elapsed() >= SHORT, "failed before the timeout");
        for answer in [a, b] {
            let status = answer.expect_err("nobody answered");
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), "etcdserver: request timed out");
        }
        let status = forwarder
            .forward(&leader, put("c"))
            .await
            .expect_err("nobody answered");
        assert_eq!(status.message(), "etcdserver: request timed out");
        assert_eq!(
            streams.load(Ordering::SeqCst),
            2,
            "the timed-out stream was replaced"
        );
    }

    #[tokio::test]
    async fn an_unreachable_leader_answers_no_leader() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let leader = member_at(addr);
        let forwarder = Forwarder::start(Peers::new(None), TIMEOUT);
        let status = forwarder
            .forward(&leader, put("a"))
            .await
            .expect_err("nobody listens");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

//! The peer network, client side: one cached gRPC channel per peer URL, used for openraft's
//! messages and for the requests a member sends to the leader (forwarded writes, read index).
//!
//! openraft messages travel as their postcard encoding inside `cairnpb.RaftMessage`, so the
//! peer protocol follows openraft's types without a hand-written protobuf mirror of each.
//! Append-entries, which a leader sends its followers several hundred times a second under
//! load (entries, then the commit index), go on one long-lived stream per follower; votes and
//! snapshots are one call each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::log_store::LogStore;
use super::types::{Member, MemberId, TypeConfig};
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::RaftMessage;

/// How long connecting to a peer may take before the attempt counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Channels to peers, by URL. tonic channels reconnect by themselves (with backoff), so one
/// channel per peer serves for the life of the process.
#[derive(Clone, Default)]
pub struct Peers {
    // A std mutex: held only to look up or insert a channel.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// For `https://` peers: mutual TLS with the cluster's CA. Its client certificate is
    /// looked up at each handshake, so a renewed certificate needs no new channel.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// This member's log, once open: a follower's acknowledgement reaches openraft only
    /// when the leader's own copy is durable too (see [`LogStore::lead_as`]).
    log: Arc<OnceLock<LogStore>>,
    /// Told the index a follower acknowledged, each time one accepts entries (see
    /// [`Peers::on_acknowledged`]).
    acknowledged: Arc<OnceLock<Acknowledged>>,
}

type Acknowledged = Box<dyn Fn(u64) + Send + Sync>;

impl Peers {
    /// Peers reached over plaintext, or over TLS with `tls` for `https://` URLs.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Peers {
        Peers {
            channels: Arc::default(),
            tls,
            log: Arc::default(),
            acknowledged: Arc::default(),
        }
    }

    /// Has `listener` told, synchronously and before openraft hears of it, the log index up
    /// to which a follower accepted an append with entries. The proposer cuts its next entry
    /// then. Only the first listener counts.
    pub fn on_acknowledged(&self, listener: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.acknowledged.set(Box::new(listener));
    }

    /// Sets the log whose durability acknowledgements wait for.
    pub fn attach_log(&self, log: LogStore) {
        let _ = self.log.set(log);
    }

    /// A client for `member`'s peer service, on its first peer URL.
    pub fn client(&self, member: &Member) -> Result<PeerClient<Channel>, String> {
        Ok(PeerClient::new(self.channel(member)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// The channel to `member`'s first peer URL, for any service on the peer listener.
    pub fn channel(&self, member: &Member) -> Result<Channel, String> {
        let url = member
            .peer_urls
            .first()
            .ok_or_else(|| format!("member {:?} has no peer URL", member.name))?;
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(crate::security::tls::plain_uri(url))
            .map_err(|e| format!("bad peer URL {url:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = if url.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                format!("peer URL {url:?} needs TLS, and this member has no peer certificate")
            })?;
            endpoint.connect_with_connector_lazy(crate::security::tls::TlsConnector::new(tls))
        } else {
            endpoint.connect_lazy()
        };
        channels.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

/// Encodes an openraft message for the wire.
pub fn encode<T: Serialize>(message: &T) -> Result<RaftMessage, postcard::Error> {
    Ok(RaftMessage {
        payload: postcard::to_allocvec(message)?,
    })
}

/// Decodes an openraft message from the wire.
pub fn decode<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, postcard::Error> {
    postcard::from_bytes(&message.payload)
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            client: self.client(node),
            appends: None,
            log: self.log.clone(),
            acknowledged: self.acknowledged.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    target: MemberId,
    client: Result<PeerClient<Channel>, String>,
    /// The append-entries stream to the peer, opened by the first request. openraft sends
    /// one request at a time and waits for its answer, so answers come back in order. A
    /// stream that failed or timed out is dropped, and the next request opens a new one.
    appends: Option<AppendStream>,
    log: Arc<OnceLock<LogStore>>,
    acknowledged: Arc<OnceLock<Acknowledged>>,
}

struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    answers: Streaming<RaftMessage>,
}

fn stream_closed() -> tonic::Status {
    tonic::Status::unavailable("cairn: the peer closed the append-entries stream")
}

/// How openraft sees a failed call: a peer that cannot be reached, timed out or went away
/// is unreachable (openraft backs off); anything else is a network error.
fn rpc_error<E: std::error::Error>(status: tonic::Status) -> RPCError<MemberId, Member, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

type RpcResult<T, E> = Result<T, RPCError<MemberId, Member, RaftError<MemberId, E>>>;

impl PeerConnection {
    fn peer_client(&self) -> Result<PeerClient<Channel>, tonic::Status> {
        self.client.clone().map_err(tonic::Status::unavailable)
    }

    /// Sends `message` on the append-entries stream, opening one if there is none, and
    /// returns the peer's answer to it.
    async fn exchange(&mut self, message: RaftMessage) -> Result<RaftMessage, tonic::Status> {
        // Taken out for the exchange: if it fails, or the caller gives up waiting, the
        // stream is dropped with its unanswered request.
        let mut stream = match self.appends.take() {
            Some(stream) => {
                stream
                    .requests
                    .send(message)
                    .await
                    .map_err(|_| stream_closed())?;
                stream
            }
            None => {
                let mut client = self.peer_client()?;
                let (requests, queued) = mpsc::channel(1);
                requests.send(message).await.map_err(|_| stream_closed())?;
                let answers = client
                    .append_entries(ReceiverStream::new(queued))
                    .await?
                    .into_inner();
                AppendStream { requests, answers }
            }
        };
        let answer = stream.answers.message().await?.ok_or_else(stream_closed)?;
        self.appends = Some(stream);
        Ok(answer)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let message = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = match kind {
            Rpc::AppendEntries => tokio::time::timeout(option.hard_ttl(), self.exchange(message))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(
                        "cairn: no answer on the append-entries stream in time",
                    ))
                }),
            Rpc::Vote => {
                let mut client = self.peer_client().map_err(rpc_error)?;
                client.vote(timed(message, option)).await.map(into_inner)
            }
            Rpc::InstallSnapshot => {
                let mut client = self.peer_client().map_err(rpc_error)?;
                let reply = client.install_snapshot(timed(message, option)).await;
                reply.map(into_inner)
            }
        };
        let reply = reply.map_err(rpc_error)?;
        let result: Result<Resp, RaftError<MemberId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A one-call request that the peer gives up on when openraft does.
fn timed(message: RaftMessage, option: &RPCOption) -> tonic::Request<RaftMessage> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

fn into_inner(response: tonic::Response<RaftMessage>) -> RaftMessage {
    response.into_inner()
}

enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MemberId>, openraft::error::Infallible> {
        // What this member had queued for its log before sending includes every entry the
        // follower can confirm with this answer, new or probed (`prev_log_id`): the leader
        // appended them before openraft read them for replication.
        let queued = self.log.get().map(|log| (log.clone(), log.queued()));
        let last = rpc.entries.last().map(|entry| entry.log_id.index);
        let answer = self.call(Rpc::AppendEntries, &rpc, &option).await;
        // Whether the follower confirmed a log position, and the index of the entries it
        // accepted, if any were sent.
        let (confirmed, accepted) = match &answer {
            Ok(AppendEntriesResponse::Success) => (true, last),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                (true, last.and(matching.map(|matching| matching.index)))
            }
            _ => (false, None),
        };
        if let (true, Some((log, queued))) = (confirmed, queued) {
            log.durable(queued).await;
        }
        if let (Some(accepted), Some(listener)) = (accepted, self.acknowledged.get()) {
            listener(accepted);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<MemberId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

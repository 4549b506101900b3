//! etcd's "require leader": clientv3's `WithRequireLeader`, which kube-apiserver puts on its
//! watches, sends the gRPC metadata `hasleader: true`. A request that carries it fails with
//! "etcdserver: no leader" while this member knows no leader, and a watch or keepalive stream
//! opened with it ends with that error once the member has been without a leader for three
//! election timeouts in a row (etcd's `monitorLeader`). A member cut off from the rest so
//! sends such clients to another member, instead of holding a stream that would never see
//! another event.

use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tokio::sync::watch;

use super::{errors, SharedNode};

/// The metadata key clientv3 sets (`rpctypes.MetadataRequireLeaderKey`).
const REQUIRE_LEADER: &str = "hasleader";

/// Election timeouts without a leader before the streams that require one are ended.
const MAX_NO_LEADER: u32 = 3;

/// Marks a request whose client requires a leader; [`RequireLeader`] sets it.
#[derive(Clone, Copy)]
struct LeaderRequired;

/// Whether a request asks for a leader (clientv3's `WithRequireLeader`).
pub fn requires_leader<T>(request: &tonic::Request<T>) -> bool {
    request.extensions().get::<LeaderRequired>().is_some()
}

/// Refuses requests that require a leader while this member knows none, and marks the
/// others that require one for the streams that must end when the leader is lost.
#[derive(Clone)]
pub struct RequireLeader(pub SharedNode);

impl<S> tower_layer::Layer<S> for RequireLeader {
    type Service = RequireLeaderService<S>;

    fn layer(&self, inner: S) -> RequireLeaderService<S> {
        RequireLeaderService {
            node: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RequireLeaderService<S> {
    node: SharedNode,
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RequireLeaderService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let required = request
            .headers()
            .get(REQUIRE_LEADER)
            .is_some_and(|value| value == "true");
        if required {
            if !self.node.has_leader() {
                return Either::Left(futures::future::ready(Ok(errors::no_leader().into_http())));
            }
            request.extensions_mut().insert(LeaderRequired);
        }
        Either::Right(self.inner.call(request))
    }
}

/// Checks for a leader every election timeout until `stop` turns; `lost` is true while the
/// member has been without one for [`MAX_NO_LEADER`] checks in a row.
pub async fn monitor(node: SharedNode, lost: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(node.election_timeout);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut without = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        without = if node.has_leader() { 0 } else { without + 1 };
        let now_lost = without >= MAX_NO_LEADER;
        lost.send_if_modified(|lost| std::mem::replace(lost, now_lost) != now_lost);
    }
}

/// Completes when a stream that requires a leader must end (`lost` is `None` for one that
/// does not: it never completes).
pub async fn leader_lost(lost: &mut Option<watch::Receiver<bool>>) {
    if let Some(lost) = lost {
        if lost.wait_for(|lost| *lost).await.is_ok() {
            return;
        }
    }
    // No need, or no monitor (the member is stopping; its shutdown ends the stream).
    std::future::pending().await
}

//! Write coalescing for the server's connections.
//!
//! HTTP/2 writes each batch of frames to the socket as soon as the connection task runs, and
//! tokio runs a task that another task just woke right after it. So when one applied Raft
//! entry answers ten puts, or one publish readies ten watch streams of a connection, each of
//! them wakes the connection task in turn and leaves in a system call (and a TCP segment, and
//! a wake-up of the reader) of its own.
//!
//! [`Coalesced`] keeps what the connection writes in a buffer until it is flushed. At the
//! first flush of a buffer, if other requests of the connection are still being answered, it
//! yields once: every task that is already runnable gets its turn first, adds its frames, and
//! the buffer then goes out in one write. The yield costs one extra poll of the connection
//! task and no timer; a connection with nothing else in flight (a lone client) flushes at once
//! and answers as fast as without it. [`CountRequests`] is the layer that counts the requests
//! in flight.
//!
//! The yield also puts a response behind whatever else the worker thread has queued. Where
//! that costs more than the saved writes, the connection flushes at once instead: on the peer
//! listener (one Raft call in flight per peer, nothing to gather).
//!
//! A client connection that carries a watch stream is in *fan-out* mode: one publish readies
//! many of its streams at once, but their work is not counted as requests in flight, and the
//! answer to a put that caused it must not wait behind it. So a flush there yields once
//! unless an answer became ready since the last flush: watch events of one publish leave
//! together, an answer leaves at once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::future::BoxFuture;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::authority::AuthorityFix;
use crate::security::tls::ClientIdentity;

/// Above this many waiting bytes a write goes out at once, without waiting for the flush.
const BUFFER_LIMIT: usize = 64 * 1024;

/// What the services learn about the connection a request came on (a request extension).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Who the TLS client certificate says the peer is; the default for plain TCP.
    pub identity: ClientIdentity,
    flow: Arc<Flow>,
}

/// What decides whether a flush waits a round.
#[derive(Debug)]
struct Flow {
    /// The connection carries a watch stream (see the module documentation).
    fan_out: AtomicBool,
    /// Requests whose answer is not ready yet (see [`CountRequests`]).
    in_flight: AtomicUsize,
    /// Answers that became ready, ever.
    answered: AtomicUsize,
}

impl Connection {
    /// From now on the connection carries a watch stream: a flush waits a round unless an
    /// answer became ready since the last one.
    pub fn fan_out(&self) {
        self.flow.fan_out.store(true, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the returned guard is dropped.
    fn start_request(&self) -> InFlight {
        self.flow.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.flow.clone())
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Flow>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tower layer that counts each connection's requests in flight, from the call until
/// the service's answer is ready, for [`Coalesced`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

impl<S> tower_layer::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner }
    }
}

/// A service whose requests [`CountRequests`] counts.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Counted<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<Connection>()
            .map(Connection::start_request);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}

/// A connection whose writes wait for the flush (see the module documentation).
pub struct Coalesced<T> {
    inner: T,
    connection: Connection,
    buffer: Vec<u8>,
    /// How much of `buffer` the socket has taken.
    written: usize,
    /// The current buffer has been held back for one round of the scheduler.
    yielded: bool,
    /// `Flow::answered` as the last flush saw it.
    answers_seen: usize,
    /// Every write leaves at the next flush, without waiting a round (`coalesce` off).
    flush_at_once: bool,
    /// The read side: what etcdctl 3.4 sends as `:authority` is made acceptable to h2.
    authority: AuthorityFix,
    /// Bytes read and fixed, not yet taken by HTTP/2, from `read_at` on.
    readable: Vec<u8>,
    read_at: usize,
}

impl<T> Coalesced<T> {
    /// `coalesce`: whether flushes wait a round at all (see the module documentation).
    pub fn new(inner: T, identity: ClientIdentity, coalesce: bool) -> Self {
        Coalesced {
            inner,
            connection: Connection {
                identity,
                flow: Arc::new(Flow {
                    fan_out: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                    answered: AtomicUsize::new(0),
                }),
            },
            buffer: Vec::new(),
            written: 0,
            yielded: false,
            answers_seen: 0,
            flush_at_once: !coalesce,
            authority: AuthorityFix::default(),
            readable: Vec::new(),
            read_at: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out the whole buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes. `Ready(true)` when they should bypass the buffer: it
    /// is empty and either they alone exceed the limit or the connection never waits to
    /// flush (then buffering would only copy them).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buffer.len() + len > BUFFER_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        let at_once = self.flush_at_once;
        Poll::Ready(Ok(len > BUFFER_LIMIT || (at_once && self.buffer.is_empty())))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if ready!(this.poll_room(cx, buf.len()))? {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.buffer.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|buf| buf.len()).sum();
        if ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.buffer.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buffer.is_empty() {
            let flow = &this.connection.flow;
            let answered = flow.answered.load(Ordering::Relaxed);
            let new_answers = answered != this.answers_seen;
            this.answers_seen = answered;
            let others_pending = if this.flush_at_once {
                false
            } else if flow.fan_out.load(Ordering::Relaxed) {
                !new_answers
            } else {
                flow.in_flight.load(Ordering::Relaxed) > 0
            };
            if !this.yielded && others_pending {
                // A task that wakes itself goes to the back of its worker's queue, behind
                // everything already runnable there.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_drain(cx))?;
        }
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.read_at < this.readable.len() {
                let n = buf.remaining().min(this.readable.len() - this.read_at);
                buf.put_slice(&this.readable[this.read_at..this.read_at + n]);
                this.read_at += n;
                if this.read_at == this.readable.len() {
                    this.readable.clear();
                    this.read_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.authority.passes_through() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Read into the caller's buffer, take the new bytes back out through the fix,
            // and hand on what it lets through.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = &buf.filled()[before..];
            if read.is_empty() {
                this.authority.finish(&mut this.readable);
                if this.readable.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.authority.feed(read, &mut this.readable);
                buf.set_filled(before);
            }
        }
    }
}

impl<T> Connected for Coalesced<T> {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.connection.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_together() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = Coalesced::new(client, ClientIdentity::default(), true);
        client.write_all(b"one ").await.unwrap();
        let taken = client
            .write_vectored(&[IoSlice::new(b"two "), IoSlice::new(b"three")])
            .await
            .unwrap();
        assert_eq!(taken, 9, "a vectored write is taken whole");
        let mut probe = [0u8; 16];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            server.read(&mut probe),
        )
        .await;
        assert!(
            early.is_err(),
            "nothing may reach the peer before the flush"
        );
        client.flush().await.unwrap();
        let mut got = vec![0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
    }

    #[tokio::test]
    async fn a_full_buffer_and_a_large_write_go_out_without_a_flush() {
        let (client, mut server) = tokio::io::duplex(4 << 20);
        let mut client = Coalesced::new(client, ClientIdentity::default(), true);
        let small = vec![1u8; BUFFER_LIMIT - 10];
        let large = vec![2u8; BUFFER_LIMIT + 1];
        client.write_all(&small).await.unwrap();
        client.write_all(&large).await.unwrap();
        let mut got = vec![0u8; small.len() + large.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..small.len()], &small[..]);
        assert_eq!(&got[small.len()..], &large[..]);
    }

    #[tokio::test]
    async fn a_flush_waits_a_round_only_while_other_requests_are_in_flight() {
        let (client, _server) = tokio::io::duplex(1 << 20);
        let mut client = Coalesced::new(client, ClientIdentity::default(), true);
        let connection = client.connect_info();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);

        client.write_all(b"a").await.unwrap();
        assert!(
            Pin::new(&mut client).poll_flush(&mut cx).is_ready(),
            "nothing else in flight: the flush goes out at once"
        );

        let other = connection.start_request();
        client.write_all(b"b").await.unwrap();
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_ready());
        drop(other);

        let (peer, _server) = tokio::io::duplex(1 << 20);
        let mut peer = Coalesced::new(peer, ClientIdentity::default(), false);
        let _call = peer.connect_info().start_request();
        peer.write_all(b"c").await.unwrap();
        assert!(
            Pin::new(&mut peer).poll_flush(&mut cx).is_ready(),
            "a connection made to flush at once does"
        );
    }

    #[tokio::test]
    async fn a_fan_out_connection_waits_a_round_unless_an_answer_became_ready() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = Coalesced::new(client, ClientIdentity::default(), true);
        let connection = client.connect_info();
        connection.fan_out();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);

        client.write_all(b"event ").await.unwrap();
        assert!(
            Pin::new(&mut client).poll_flush(&mut cx).is_pending(),
            "watch events wait a round for the rest of their publish, in flight or not"
        );
        client.write_all(b"event ").await.unwrap();
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_ready());

        drop(connection.start_request());
        client.write_all(b"answer ").await.unwrap();
        assert!(
            Pin::new(&mut client).poll_flush(&mut cx).is_ready(),
            "an answer that became ready leaves at once"
        );

        client.write_all(b"event").await.unwrap();
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut client).poll_flush(&mut cx).is_ready());
        let mut got = vec![0u8; 24];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"event event answer event");
    }

    /// A service whose answer is ready when the test says so.
    struct Answer(Option<tokio::sync::oneshot::Receiver<()>>);

    impl tower_service::Service<http::Request<()>> for Answer {
        type Response = ();
        type Error = ();
        type Future = BoxFuture<'static, Result<(), ()>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let ready = self.0.take().expect("one call");
            Box::pin(async move { ready.await.map_err(drop) })
        }
    }

    #[tokio::test]
    async fn the_layer_counts_a_request_until_its_answer_is_ready() {
        use tower_layer::Layer;
        use tower_service::Service;

        let connection =
            Coalesced::new(tokio::io::empty(), ClientIdentity::default(), true).connect_info();
        let (answer, ready) = tokio::sync::oneshot::channel();
        let mut service = CountRequests.layer(Answer(Some(ready)));
        let mut request = http::Request::new(());
        request.extensions_mut().insert(connection.clone());
        let call = service.call(request);
        assert_eq!(connection.flow.in_flight.load(Ordering::Relaxed), 1);
        answer.send(()).unwrap();
        call.await.unwrap();
        assert_eq!(connection.flow.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn reads_pass_through_the_authority_fix_in_small_pieces() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Coalesced::new(server, ClientIdentity::default(), true);
        let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let block = [&[0x41, 21][..], b"http://127.0.0.1:2379"].concat();
        sent.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
        sent.extend_from_slice(&block);
        sent.extend_from_slice(&[0, 0, 100, 0x0, 0x1, 0, 0, 0, 1]);
        sent.extend_from_slice(&[7; 100]);
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            sent
        });
        let mut got = Vec::new();
        let mut piece = [0; 10];
        loop {
            let n = server.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        let mut expected = writer.await.unwrap();
        let at = expected.windows(7).position(|w| w == b"http://").unwrap();
        expected[at..at + 7].copy_from_slice(b"http:_@");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn shutdown_delivers_what_waits() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = Coalesced::new(client, ClientIdentity::default(), true);
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}

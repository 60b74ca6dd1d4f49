//! A deadline for every request head on a connection, not only the first's. actix-web gives
//! a new connection 5 s for its first request head and closes a keep-alive connection left
//! idle for 5 s, but the first byte of a later request stops the keep-alive timer and no
//! head timer starts then: one byte after an answer held the connection, its file
//! descriptor and its buffers for as long as the client liked (a few hundred such
//! connections took an instance's descriptors, and new clients were not accepted).
//!
//! Every connection is read through `Watched`. While no request on it is being answered,
//! the next one must begin within `NEXT_REQUEST_WITHIN` of the connection's start, of the
//! last answer's end or of the last byte written, whichever is latest; past that its reads
//! fail and actix-web closes it. A request being answered holds a `Turn` (kept by the
//! answer's body until it is sent) and has no such limit; its answer, though, must be
//! taken by the client: a write that finds it taking nothing for `WRITE_STALL_LIMIT`
//! fails too.
//!
//! Requests sent before the answers to earlier ones (HTTP/1.1 pipelining) are read one at
//! a time. actix-web parses every request head in what it has read (up to 128 KiB, which
//! it goes on reading while a request is answered), each with a header map of about 8 KB:
//! a client that sent thousands of small requests at once and read no answer held some
//! 25 MB per connection, and an address's 256 connections 4 GB. So `Watched` gives
//! actix-web at most `READ_MAX` bytes per turn of the connection's task while no request is
//! answered (a head longer than `HEAD_MAX` ends the connection), and while one is, only
//! what its body asks for (`Watch::body_wanted`, said by the body's stream), at most
//! `BODY_READ_MAX` a turn. Bytes read meanwhile wait in the connection (at most `HELD_MAX`),
//! the rest in the socket, where TCP holds the client back; nor is anything read while an
//! answer waits for the client to take it.
//!
//! A body left unread when its request was answered (refused before it was read: too large,
//! no key) is read and dropped by actix-web once the answer is sent, for at most its
//! `client_disconnect_timeout`, before it closes the connection: closed with the body
//! unread, the connection is reset, and a client still sending its body fails to send and
//! never reads the answer. Those bytes (`Watch::unread_body`, at most `DRAIN_MAX`) are
//! given as a body's, not counted against the next request's head.

use bytes::BytesMut;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The most bytes actix-web is given per turn of a connection's task while no request is
/// answered: any API request fits, and the heads it can hold are few.
pub const READ_MAX: usize = 1024;

/// The most bytes of a body given per turn while its request is answered.
pub const BODY_READ_MAX: usize = 4 * 1024;

/// The most bytes given while no request is answered before one begins: a request line
/// (8 KiB at most) and headers (16 KiB) with room to spare. actix-web parses what it has
/// again from its start at each turn: past this the connection ends.
pub const HEAD_MAX: usize = 32 * 1024;

/// The most bytes a connection reads ahead of what it gave actix-web.
pub const HELD_MAX: usize = 16 * 1024;

/// The most bytes of a body left unread at its answer given for actix-web to drop.
pub const DRAIN_MAX: u64 = 16 * 1024 * 1024;

/// The keep-alive wait (5 s) and the time a request head may take (5 s).
pub const NEXT_REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// How long an answer may wait for the client to take any of it: one that never reads
/// held the connection (and the answer's buffers) without end, a request being answered
/// having no other limit.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// What a connection is doing, shared by its stream and its requests (one worker thread).
pub struct Watch {
    answering: Cell<u32>,
    quiet_since: Cell<Instant>,
    /// Requests begun on the connection, counted.
    begun: Cell<u64>,
    /// The request being answered waits for more of its body.
    body_wanted: Cell<bool>,
    /// Bytes the request being answered said its body has and that were not read yet (a
    /// chunked body's: `DRAIN_MAX`); once it is answered, what may still be given for
    /// actix-web to drop.
    unread_body: Cell<u64>,
    /// The connection's task, while its reads wait for an answer to end or a body to ask.
    parked: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("answering", &self.answering.get())
            .field("body_wanted", &self.body_wanted.get())
            .finish_non_exhaustive()
    }
}

impl Watch {
    fn quiet_now(&self) {
        self.quiet_since.set(Instant::now());
    }

    fn unpark(&self) {
        if let Some(waker) = self.parked.take() {
            waker.wake();
        }
    }

    /// The request's body is not all there: reads go on for it.
    pub fn body_wanted(&self) {
        if !self.body_wanted.replace(true) {
            self.unpark();
        }
    }

    /// The body took what it was given (or ended, or was dropped).
    pub fn body_given(&self) {
        self.body_wanted.set(false);
    }

    /// The request being answered has a body of `bytes` (`DRAIN_MAX` when it does not say).
    pub fn body_declared(&self, bytes: u64) {
        self.unread_body.set(bytes.min(DRAIN_MAX));
    }

    /// The body's stream gave `bytes` of it (`None`: its end).
    pub fn body_read(&self, bytes: Option<usize>) {
        let left = match bytes {
            Some(n) => self.unread_body.get().saturating_sub(n as u64),
            None => 0,
        };
        self.unread_body.set(left);
    }
}

/// A request being answered on a watched connection; dropped when its answer is sent (or
/// given up).
#[derive(Debug)]
pub struct Turn(Rc<Watch>);

impl Turn {
    pub fn begin(watch: &Rc<Watch>) -> Turn {
        watch.answering.set(watch.answering.get().saturating_add(1));
        watch.begun.set(watch.begun.get().wrapping_add(1));
        watch.unread_body.set(0);
        Turn(Rc::clone(watch))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let watch = &self.0;
        watch.answering.set(watch.answering.get().saturating_sub(1));
        watch.quiet_now();
        watch.body_given();
        watch.unpark();
    }
}

/// A connection's stream, whose reads fail once the next request is overdue.
pub struct Watched<T> {
    io: T,
    watch: Rc<Watch>,
    /// Wakes the connection at the deadline; made the first time a read waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` has been polled since it was last set.
    armed: bool,
    /// Since a write found the client taking nothing (cleared by the next that goes
    /// through).
    write_stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's place among its address's (`per_address`), given back with it.
    _counted: Option<super::per_address::Slot>,
    /// Bytes read ahead of what actix-web was given (at most `HELD_MAX`); allocated only
    /// when a client sends more than `READ_MAX` at once.
    held: BytesMut,
    /// The client closed its side while bytes were held.
    ended: bool,
    /// Bytes were given in this turn of the task: the next read waits for the next turn.
    gave: bool,
    /// Bytes given while no request was answered, since the request counted `since_begun`
    /// began.
    head_given: usize,
    since_begun: u64,
    /// Bytes of that request's body, left unread at its answer, still to be given for
    /// actix-web to drop (taken from `Watch::unread_body` when it was answered).
    draining: u64,
}

impl<T> Watched<T> {
    pub fn new(io: T, counted: Option<super::per_address::Slot>) -> Self {
        Watched {
            io,
            watch: Rc::new(Watch {
                answering: Cell::new(0),
                quiet_since: Cell::new(Instant::now()),
                begun: Cell::new(0),
                body_wanted: Cell::new(false),
                unread_body: Cell::new(0),
                parked: Cell::new(None),
            }),
            timer: None,
            armed: false,
            write_stalled: None,
            _counted: counted,
            held: BytesMut::new(),
            ended: false,
            gave: false,
            head_given: 0,
            since_begun: 0,
            draining: 0,
        }
    }

    /// What a write gave, noted: bytes the client took move the deadline for the next
    /// request; a write that waits past `WRITE_STALL_LIMIT` fails.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.watch.quiet_now();
                    // Reads waited for this (`poll_read`): the next turn reads again.
                    if self.write_stalled.take().is_some() {
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let stalled = self
                    .write_stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_LIMIT)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took none of the answer in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            failed => failed,
        }
    }

    /// For the connection's requests (`HttpRequest::conn_data`).
    pub fn watch(&self) -> Rc<Watch> {
        Rc::clone(&self.watch)
    }

    /// Whether a read that waits has waited past the deadline; otherwise the timer wakes
    /// the connection by the deadline. The deadline only moves later, so the timer is
    /// left as it is until it fires, and set again then if the deadline moved meanwhile:
    /// not once per request.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        if self.watch.answering.get() > 0 {
            return false;
        }
        let deadline = self.watch.quiet_since.get() + NEXT_REQUEST_WITHIN;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if !timer.is_elapsed() {
                // Polled once to register the connection's waker (a connection is one task
                // throughout), not at every read: a poll costs more than the rest together.
                if self.armed {
                    return false;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    self.armed = true;
                    return false;
                }
            }
            if timer.deadline() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
            self.armed = false;
        }
    }
}

impl<T: AsyncRead + Unpin> Watched<T> {
    /// Reads into `held` what the socket has (at most `HELD_MAX` held), so that the task
    /// is woken when the client sends or closes: by the socket when it has nothing; else,
    /// while a request is answered, when it ends or its body asks (`parked`), otherwise at
    /// once, for the next turn to give what came.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answering = self.watch.answering.get() > 0;
        while !self.ended && self.held.len() < HELD_MAX {
            let mut room = [MaybeUninit::<u8>::uninit(); READ_MAX];
            let mut room = ReadBuf::uninit(&mut room);
            match Pin::new(&mut self.io).poll_read(cx, &mut room) {
                Poll::Ready(Ok(())) if room.filled().is_empty() => self.ended = true,
                Poll::Ready(Ok(())) => self.held.extend_from_slice(room.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.held.is_empty() => {
                    return match self.overdue(cx) {
                        true => Poll::Ready(Err(overdue_error())),
                        false => Poll::Pending,
                    };
                }
                Poll::Pending => break,
            }
        }
        if answering {
            self.watch.parked.set(Some(cx.waker().clone()));
        } else {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

fn overdue_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no request began within the time after the last answer",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An answer the client takes nothing of: the socket's readiness to write wakes
        // the task, and reading waits until then.
        if this.write_stalled.is_some() {
            return Poll::Pending;
        }
        let answering = this.watch.answering.get() > 0;
        if std::mem::take(&mut this.gave) || (answering && !this.watch.body_wanted.get()) {
            return this.read_ahead(cx);
        }
        let from = buf.filled().len();
        let most = if answering {
            BODY_READ_MAX
        } else {
            let begun = this.watch.begun.get();
            if this.since_begun != begun {
                this.since_begun = begun;
                this.head_given = 0;
                this.draining = this.watch.unread_body.replace(0);
            }
            if this.draining > 0 {
                usize::try_from(this.draining).map_or(BODY_READ_MAX, |n| n.min(BODY_READ_MAX))
            } else if this.head_given >= HEAD_MAX {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no request began within the bytes a request head may take",
                )));
            } else {
                READ_MAX
            }
        }
        .min(buf.remaining());
        if !this.held.is_empty() {
            let n = this.held.len().min(most);
            buf.put_slice(&this.held.split_to(n));
        } else if this.ended {
            return Poll::Ready(Ok(()));
        } else {
            // Room for the most either kind of read gives.
            let mut room = [MaybeUninit::<u8>::uninit(); BODY_READ_MAX];
            let mut room = ReadBuf::uninit(&mut room);
            let mut room = room.take(most);
            match Pin::new(&mut this.io).poll_read(cx, &mut room) {
                Poll::Pending if this.overdue(cx) => return Poll::Ready(Err(overdue_error())),
                // The client closed its side: said as it is.
                Poll::Ready(Ok(())) if room.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => buf.put_slice(room.filled()),
                other => return other,
            }
        }
        let given = buf.filled().len().saturating_sub(from);
        if answering {
            this.watch.body_given();
        } else if this.draining > 0 {
            this.draining = this.draining.saturating_sub(given as u64);
        } else {
            this.head_given = this.head_given.saturating_add(given);
        }
        this.gave = true;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_read_fails_once_no_request_began_in_time_and_not_while_one_is_answered() {
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, None);
        let watch = watched.watch();
        let mut client = client;
        client.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 1);
        // A request being answered: no limit.
        let turn = Turn::begin(&watch);
        let waited = tokio::time::timeout(NEXT_REQUEST_WITHIN * 3, watched.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a read failed while a request was answered"
        );
        // Answered: the next must begin in time.
        drop(turn);
        let started = Instant::now();
        let err = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), NEXT_REQUEST_WITHIN);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_does_not_take_fails_its_write_in_time() {
        let (_client, server) = tokio::io::duplex(16);
        let mut watched = Watched::new(server, None);
        let _turn = Turn::begin(&watched.watch());
        let started = Instant::now();
        let err = watched.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), WRITE_STALL_LIMIT);
    }

    /// One poll of the task: two reads, as actix-web's read loop makes them.
    async fn two_reads_in_one_turn<T: AsyncRead + Unpin>(
        w: &mut Watched<T>,
    ) -> (Poll<usize>, Poll<usize>) {
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        std::future::poll_fn(|cx| {
            let mut first = ReadBuf::new(&mut a);
            let one = Pin::new(&mut *w)
                .poll_read(cx, &mut first)
                .map(|r| r.map(|()| first.filled().len()).expect("read"));
            let mut second = ReadBuf::new(&mut b);
            let two = Pin::new(&mut *w)
                .poll_read(cx, &mut second)
                .map(|r| r.map(|()| second.filled().len()).expect("read"));
            Poll::Ready((one, two))
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_of_the_task_is_given_at_most_read_max_bytes() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut watched = Watched::new(server, None);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        // Pipelined requests in one write: the first turn gets READ_MAX of them, and the
        // read after it in the same turn waits (what came is held for the next turn).
        assert_eq!(
            two_reads_in_one_turn(&mut watched).await,
            (Poll::Ready(READ_MAX), Poll::Pending)
        );
        assert!(watched.held.len() <= HELD_MAX);
        // Turn after turn, everything arrives, in order, then the client's end.
        let mut got = vec![0u8; READ_MAX];
        let mut all = Vec::new();
        all.extend_from_slice(&sent[..READ_MAX]);
        drop(client);
        loop {
            let n = watched.read(&mut got).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= READ_MAX);
            all.extend_from_slice(&got[..n]);
        }
        assert_eq!(all, sent);
    }

    /// Counts the wake-ups of the task it stands for.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_read_while_an_answer_waits_for_the_client() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut watched = Watched::new(server, None);
        // The answer fills what the client takes: the rest waits.
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut watched).poll_write(&mut cx, &[1u8; 16]);
        let second = Pin::new(&mut watched).poll_write(&mut cx, &[2u8; 16]);
        assert!(matches!(first, Poll::Ready(Ok(16))) && second.is_pending());
        // The client sends its next requests without reading: they are not read.
        client.write_all(b"GET /").await.unwrap();
        let mut buf = [0u8; 64];
        let waited = tokio::time::timeout(Duration::from_secs(5), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "read while the answer waited");
        // It takes the answer: the rest is written, the task is woken to read on (it read
        // nothing before, and nothing else would wake it), and what it sent is read.
        let mut answer = [0u8; 16];
        client.read_exact(&mut answer).await.unwrap();
        let woken = wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let third = Pin::new(&mut watched).poll_write(&mut cx, &[2u8; 16]);
        assert!(matches!(third, Poll::Ready(Ok(16))));
        assert!(wakes.0.load(std::sync::atomic::Ordering::SeqCst) > woken);
        assert_eq!(watched.read(&mut buf).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_is_given_only_what_its_body_asks_for() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut watched = Watched::new(server, None);
        let watch = watched.watch();
        let turn = Turn::begin(&watch);
        // The body, and pipelined requests after it.
        client.write_all(&[7u8; 10_000]).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let waited = tokio::time::timeout(Duration::from_secs(5), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "read before the body asked");
        watch.body_wanted();
        assert_eq!(watched.read(&mut buf).await.unwrap(), BODY_READ_MAX);
        let waited = tokio::time::timeout(Duration::from_secs(5), watched.read(&mut buf)).await;
        assert!(waited.is_err(), "read on without the body asking again");
        // The answer sent: the rest comes a little at a time, as for any next request.
        drop(turn);
        assert_eq!(watched.read(&mut buf).await.unwrap(), READ_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_ends_the_connection() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut watched = Watched::new(server, None);
        client.write_all(&[b'x'; 40 * 1024]).await.unwrap();
        let mut given = 0;
        let mut buf = vec![0u8; 8 * 1024];
        let err = loop {
            match watched.read(&mut buf).await {
                Ok(n) => given += n,
                Err(e) => break e,
            }
        };
        assert_eq!((err.kind(), given), (io::ErrorKind::InvalidData, HEAD_MAX));
        // A request that begins starts the count again.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut watched = Watched::new(server, None);
        let watch = watched.watch();
        client.write_all(&[b'x'; 40 * 1024]).await.unwrap();
        let mut given = 0;
        while given < HEAD_MAX {
            given += watched.read(&mut buf).await.unwrap();
        }
        drop(Turn::begin(&watch));
        assert_eq!(watched.read(&mut buf).await.unwrap(), READ_MAX);
    }

    /// Bytes given after the answer, until a read fails at a head's limit.
    async fn given_until_refused<T: AsyncRead + Unpin>(watched: &mut Watched<T>) -> usize {
        let mut given = 0;
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            match watched.read(&mut buf).await {
                Ok(n) => given += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    return given;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_left_unread_at_its_answer_is_given_as_a_body_not_a_head() {
        const BODY: usize = 100 * 1024;
        for (read, end, left) in [
            // Refused after reading 10 KiB: the 90 KiB left, then a head's limit.
            (10 * 1024, false, 90 * 1024),
            // Read to its end: a head's limit at once.
            (BODY, true, 0),
        ] {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let mut watched = Watched::new(server, None);
            let watch = watched.watch();
            let turn = Turn::begin(&watch);
            watch.body_declared(BODY as u64);
            watch.body_read(Some(read));
            if end {
                watch.body_read(None);
            }
            drop(turn);
            client.write_all(&[b' '; BODY + HEAD_MAX]).await.unwrap();
            assert_eq!(given_until_refused(&mut watched).await, left + HEAD_MAX);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_written_push_the_deadline_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, None);
        let started = Instant::now();
        tokio::time::sleep(NEXT_REQUEST_WITHIN / 2).await;
        watched.write_all(b"streamed").await.unwrap();
        let mut sink = [0u8; 8];
        client.read_exact(&mut sink).await.unwrap();
        let mut buf = [0u8; 8];
        let err = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), NEXT_REQUEST_WITHIN * 3 / 2);
    }
}

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
//! Requests sent before their predecessors were answered (HTTP/1.1 pipelining) are read
//! one at a time. actix-web parses every request head in what it has read (up to 128 KiB)
//! and queues them, each with its own header map (about 8 KB): a client that sent
//! thousands of small requests at once and read no answer held some 25 MB per connection,
//! and an address's 256 connections 4 GB. So `Watched` hands over at most two request heads
//! at a time (the second may follow the first's body in the same read) and no more while
//! they wait to begin; while a request is answered, only what its body asks for. Bytes
//! read meanwhile wait in the connection (what one read gave past those heads, and at most
//! `HELD_MAX` read ahead) and the rest in the socket, where TCP holds the client back.

use bytes::BytesMut;
use memchr::memmem::Finder;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The keep-alive wait (5 s) and the time a request head may take (5 s).
pub const NEXT_REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// How long an answer may wait for the client to take any of it: one that never reads
/// held the connection (and the answer's buffers) without end, a request being answered
/// having no other limit.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The most bytes a connection reads ahead of the requests it hands over: as much as
/// the socket's reads give at a time, which is plenty for a request head.
pub const HELD_MAX: usize = 16 * 1024;

/// Request heads handed over at once, at most: one, and the next after its body.
const HEADS_AT_ONCE: u32 = 2;

/// What a connection is doing, shared by its stream and its requests (one worker thread).
pub struct Watch {
    answering: Cell<u32>,
    quiet_since: Cell<Instant>,
    /// Request heads handed over that have not begun (`Turn`) yet.
    heads_waiting: Cell<u32>,
    /// The request being answered waits for more of its body (`BodyWait`).
    body_wanted: Cell<bool>,
    /// The connection's task, when bytes it read ahead wait for a request to end or for a
    /// body to want them.
    parked: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("answering", &self.answering.get())
            .field("heads_waiting", &self.heads_waiting.get())
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

    /// A request's body is not all there: reads go on for it.
    pub fn body_wanted(&self) {
        if !self.body_wanted.replace(true) {
            self.unpark();
        }
    }

    /// The body gave what it had (or was dropped): reads wait again until it asks.
    pub fn body_given(&self) {
        self.body_wanted.set(false);
    }
}

/// A request being answered on a watched connection; dropped when its answer is sent (or
/// given up).
#[derive(Debug)]
pub struct Turn(Rc<Watch>);

impl Turn {
    pub fn begin(watch: &Rc<Watch>) -> Turn {
        watch.answering.set(watch.answering.get().saturating_add(1));
        watch
            .heads_waiting
            .set(watch.heads_waiting.get().saturating_sub(1));
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
    /// Bytes read ahead of what was handed over (at most `HELD_MAX`); allocated only
    /// when a client sends before it is answered.
    held: BytesMut,
    /// The client closed its side (read while bytes were held back).
    ended: bool,
    /// Where the last bytes handed over left a request head's end (`head_ends`).
    scan: Scan,
    /// Woken to look again at heads handed over: none began from them.
    looked_again: bool,
}

impl<T> Watched<T> {
    pub fn new(io: T, counted: Option<super::per_address::Slot>) -> Self {
        Watched {
            io,
            watch: Rc::new(Watch {
                answering: Cell::new(0),
                quiet_since: Cell::new(Instant::now()),
                heads_waiting: Cell::new(0),
                body_wanted: Cell::new(false),
                parked: Cell::new(None),
            }),
            timer: None,
            armed: false,
            write_stalled: None,
            _counted: counted,
            held: BytesMut::new(),
            ended: false,
            scan: Scan::default(),
            looked_again: false,
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
                    self.write_stalled = None;
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
    /// Whether bytes may be handed over now: while a request is answered, only when its
    /// body wants them; otherwise once the heads handed over have begun.
    fn open(&mut self) -> bool {
        let watch = &self.watch;
        if watch.answering.get() > 0 {
            self.looked_again = false;
            return watch.body_wanted.get();
        }
        if watch.heads_waiting.get() == 0 {
            return true;
        }
        // Woken to look again and still nothing is answered: what was handed over began
        // no request (a blank line in a body read after its answer), so it does not count.
        if std::mem::take(&mut self.looked_again) {
            watch.heads_waiting.set(0);
            return true;
        }
        false
    }

    /// Reads ahead while nothing may be handed over, so that the connection is woken when
    /// the client sends (or closes): at most `HELD_MAX` bytes, then it waits for the
    /// request that holds it back to end.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answering = self.watch.answering.get() > 0;
        while !self.ended && self.held.len() < HELD_MAX {
            let mut room = [MaybeUninit::<u8>::uninit(); 2048];
            let mut room = ReadBuf::uninit(&mut room);
            let mut ahead = room.take(HELD_MAX - self.held.len());
            match Pin::new(&mut self.io).poll_read(cx, &mut ahead) {
                Poll::Ready(Ok(())) if ahead.filled().is_empty() => self.ended = true,
                Poll::Ready(Ok(())) => self.held.extend_from_slice(ahead.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.held.is_empty() {
                        // Woken by the socket; no request is waited on, so the deadline
                        // for the next one runs.
                        if !answering && self.overdue(cx) {
                            return Poll::Ready(Err(overdue_error()));
                        }
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        // Bytes wait here, and nothing from the socket will wake the connection for them.
        if answering {
            self.watch.parked.set(Some(cx.waker().clone()));
        } else {
            // The heads handed over begin (or do not) in this same turn of the task.
            self.looked_again = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Counts the request heads in the `from..` part of `buf` just handed over, and keeps
    /// back what follows the last one allowed (`HEADS_AT_ONCE`).
    fn handed(&mut self, buf: &mut ReadBuf<'_>, from: usize) {
        let answering = self.watch.answering.get() > 0;
        let new = buf.filled().get(from..).unwrap_or_default();
        let (heads, cut) = head_ends(&mut self.scan, new, HEADS_AT_ONCE);
        if let Some(cut) = cut {
            let rest = new.get(cut..).unwrap_or_default();
            if !rest.is_empty() {
                // Before what was held (bytes handed from the held ones came off its front).
                let mut held = BytesMut::with_capacity(rest.len() + self.held.len());
                held.extend_from_slice(rest);
                held.extend_from_slice(&self.held);
                self.held = held;
                buf.set_filled(from + cut);
            }
        }
        let waiting = &self.watch.heads_waiting;
        waiting.set(waiting.get().saturating_add(heads));
        if answering {
            self.watch.body_given();
        }
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
        if !this.open() {
            return this.read_ahead(cx);
        }
        let from = buf.filled().len();
        if !this.held.is_empty() {
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held.split_to(n));
        } else if this.ended {
            return Poll::Ready(Ok(()));
        } else {
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Pending if this.overdue(cx) => return Poll::Ready(Err(overdue_error())),
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        this.handed(buf, from);
        Poll::Ready(Ok(()))
    }
}

/// Where the bytes handed over so far left off, for finding request heads' ends across
/// reads: after a line feed, after a line feed and a carriage return, or elsewhere.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    #[default]
    Elsewhere,
    AfterLf,
    AfterLfCr,
}

/// Counts the ends of request heads in `bytes` (an empty line: `\n\n` or `\n\r\n`, as
/// the HTTP/1 parser ends a head, which takes bare line feeds), continuing from `scan`;
/// stops after the `max`-th and says where it ends. A blank line in a body counts too:
/// the count is an upper bound, which is the safe side.
fn head_ends(scan: &mut Scan, bytes: &[u8], max: u32) -> (u32, Option<usize>) {
    static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\r\n"));
    static LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    let mut found = 0;
    let mut from = 0;
    // An end begun in the bytes before.
    let mut next = match (*scan, bytes) {
        (Scan::AfterLf | Scan::AfterLfCr, [b'\n', ..]) => Some(1),
        (Scan::AfterLf, [b'\r', b'\n', ..]) => Some(2),
        _ => None,
    };
    loop {
        let end = match next.take() {
            Some(end) => end,
            None => {
                let rest = bytes.get(from..).unwrap_or_default();
                let crlf = CRLF.find(rest).map(|at| at + 3);
                let lf = LF.find(rest).map(|at| at + 2);
                match crlf.into_iter().chain(lf).min() {
                    Some(end) => from + end,
                    None => break,
                }
            }
        };
        found += 1;
        from = end;
        if found == max {
            *scan = Scan::Elsewhere;
            return (found, Some(end));
        }
    }
    *scan = match (bytes.get(from..).unwrap_or_default(), *scan) {
        ([], before) if found == 0 => before,
        ([b'\r'], Scan::AfterLf) if found == 0 => Scan::AfterLfCr,
        ([.., b'\n'], _) => Scan::AfterLf,
        ([.., b'\n', b'\r'], _) => Scan::AfterLfCr,
        _ => Scan::Elsewhere,
    };
    (found, None)
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

    #[test]
    fn head_ends_are_found_across_reads_and_counted_up_to_a_most() {
        let one = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        // Whole, and split at every byte: one end, where the head ends.
        for split in 0..=one.len() {
            let mut scan = Scan::default();
            let (a, cut_a) = head_ends(&mut scan, &one[..split], 2);
            let (b, cut_b) = head_ends(&mut scan, &one[split..], 2);
            assert_eq!((a + b, cut_a, cut_b), (1, None, None), "split at {split}");
            assert_eq!(scan, Scan::Elsewhere);
        }
        // Bare line feeds end a head too; a lone carriage return line does not end one.
        assert_eq!(
            head_ends(&mut Scan::default(), b"GET / HTTP/1.1\n\n", 9).0,
            1
        );
        assert_eq!(head_ends(&mut Scan::default(), b"a\r\n\r\r\n", 9).0, 0);
        assert_eq!(head_ends(&mut Scan::default(), b"a\n\r\n", 9).0, 1);
        // Three heads: cut after the second.
        let three = one.repeat(3);
        let (n, cut) = head_ends(&mut Scan::default(), &three, 2);
        assert_eq!((n, cut), (2, Some(2 * one.len())));
        // A head, its body, the next head: one read hands both over whole.
        let post = b"POST /v1/states HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let both = [&post[..], &one[..]].concat();
        assert_eq!(
            head_ends(&mut Scan::default(), &both, 2),
            (2, Some(both.len()))
        );
    }

    /// `head_ends` written the plain way, a byte at a time: what the fast one must match.
    fn head_ends_byte_by_byte(scan: &mut Scan, bytes: &[u8], max: u32) -> (u32, Option<usize>) {
        let mut found = 0;
        for (at, b) in bytes.iter().enumerate() {
            let (ends, next) = match (*b, *scan) {
                (b'\n', Scan::AfterLf | Scan::AfterLfCr) => (true, Scan::Elsewhere),
                (b'\n', Scan::Elsewhere) => (false, Scan::AfterLf),
                (b'\r', Scan::AfterLf) => (false, Scan::AfterLfCr),
                _ => (false, Scan::Elsewhere),
            };
            *scan = next;
            if ends {
                found += 1;
                if found == max {
                    return (found, Some(at + 1));
                }
            }
        }
        (found, None)
    }

    #[test]
    fn head_ends_match_a_byte_by_byte_reading_of_any_bytes() {
        // Every text of up to 7 bytes of \n, \r and x, cut in two at every place.
        let alphabet = [b'\n', b'\r', b'x'];
        for len in 0..=7u32 {
            for code in 0..3usize.pow(len) {
                let text: Vec<u8> = (0..len)
                    .map(|i| alphabet[code / 3usize.pow(i) % 3])
                    .collect();
                for split in 0..=text.len() {
                    let (one, two) = text.split_at(split);
                    let (mut fast, mut plain) = (Scan::default(), Scan::default());
                    for part in [one, two] {
                        for max in [1, 2, 9] {
                            let (mut f, mut p) = (fast, plain);
                            assert_eq!(
                                head_ends(&mut f, part, max),
                                head_ends_byte_by_byte(&mut p, part, max),
                                "{text:?} at {split}, max {max}"
                            );
                            assert_eq!(f, p, "{text:?} at {split}, max {max}");
                        }
                        head_ends(&mut fast, part, 9);
                        head_ends_byte_by_byte(&mut plain, part, 9);
                    }
                }
            }
        }
    }

    const ONE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Reads what is there within a second (of paused time), at most 8 KiB (actix-web's
    /// first read); `None` when the read waits.
    async fn read_now<T: AsyncRead + Unpin>(w: &mut Watched<T>) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 8 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(1), w.read(&mut buf))
            .await
            .ok()?
            .expect("read");
        Some(buf[..n].to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_requests_are_handed_over_two_heads_at_a_time() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let mut watched = Watched::new(server, None);
        let watch = watched.watch();
        client.write_all(&ONE.repeat(3000)).await.unwrap();
        assert_eq!(read_now(&mut watched).await, Some(ONE.repeat(2)));
        // The first begins; while it is answered nothing more is handed over, and what
        // was read ahead stays bounded.
        let first = Turn::begin(&watch);
        assert_eq!(read_now(&mut watched).await, None);
        assert!(
            watched.held.len() <= HELD_MAX + 2048,
            "{}",
            watched.held.len()
        );
        // Its answer sent, the second (queued) begins at once: still nothing.
        let second = Turn::begin(&watch);
        drop(first);
        assert_eq!(read_now(&mut watched).await, None);
        drop(second);
        // Both answered: the next two.
        assert_eq!(read_now(&mut watched).await, Some(ONE.repeat(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_waits_is_read_while_its_request_is_answered() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, None);
        let watch = watched.watch();
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 8\r\n\r\n";
        client.write_all(head).await.unwrap();
        assert_eq!(read_now(&mut watched).await.as_deref(), Some(&head[..]));
        let turn = Turn::begin(&watch);
        client.write_all(b"body").await.unwrap();
        assert_eq!(read_now(&mut watched).await, None);
        // The handler asks for its body: what came is handed over, then reads wait again.
        watch.body_wanted();
        assert_eq!(read_now(&mut watched).await.as_deref(), Some(&b"body"[..]));
        client.write_all(b"more").await.unwrap();
        assert_eq!(read_now(&mut watched).await, None);
        watch.body_wanted();
        assert_eq!(read_now(&mut watched).await.as_deref(), Some(&b"more"[..]));
        drop(turn);
        client.write_all(ONE).await.unwrap();
        assert_eq!(read_now(&mut watched).await.as_deref(), Some(ONE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_blank_line_that_began_no_request_does_not_stop_the_reads() {
        // A body read after its answer (actix-web drains what a handler left) that holds
        // an empty line: counted as a head, none begins, and reads go on.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut watched = Watched::new(server, None);
        client.write_all(b"x=1\r\n\r\ny=2").await.unwrap();
        assert_eq!(
            read_now(&mut watched).await.as_deref(),
            Some(&b"x=1\r\n\r\ny=2"[..])
        );
        client.write_all(ONE).await.unwrap();
        assert_eq!(read_now(&mut watched).await.as_deref(), Some(ONE));
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

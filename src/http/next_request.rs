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

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The keep-alive wait (5 s) and the time a request head may take (5 s).
pub const NEXT_REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// How long an answer may wait for the client to take any of it: one that never reads
/// held the connection (and the answer's buffers) without end, a request being answered
/// having no other limit.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// What a connection is doing, shared by its stream and its requests (one worker thread).
#[derive(Debug)]
pub struct Watch {
    answering: Cell<u32>,
    quiet_since: Cell<Instant>,
}

impl Watch {
    fn quiet_now(&self) {
        self.quiet_since.set(Instant::now());
    }
}

/// A request being answered on a watched connection; dropped when its answer is sent (or
/// given up).
#[derive(Debug)]
pub struct Turn(Rc<Watch>);

impl Turn {
    pub fn begin(watch: &Rc<Watch>) -> Turn {
        watch.answering.set(watch.answering.get().saturating_add(1));
        Turn(Rc::clone(watch))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let watch = &self.0;
        watch.answering.set(watch.answering.get().saturating_sub(1));
        watch.quiet_now();
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
}

impl<T> Watched<T> {
    pub fn new(io: T, counted: Option<super::per_address::Slot>) -> Self {
        Watched {
            io,
            watch: Rc::new(Watch {
                answering: Cell::new(0),
                quiet_since: Cell::new(Instant::now()),
            }),
            timer: None,
            armed: false,
            write_stalled: None,
            _counted: counted,
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

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.overdue(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request began within the time after the last answer",
            ))),
            other => other,
        }
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

//! A deadline for the whole request body. actix-web gives up on a connection's first
//! request head that takes longer than 5 s (`next_request` on every later one), but not on
//! a body: a client sending one byte a second would hold its connection (and a file
//! descriptor) for as long as it liked, on routes that read the body before anything else
//! (`POST /admin/login` needs no key). Every body is read through this
//! stream; past the deadline it ends with a timed-out I/O error, which `body::read_limited`
//! answers with `408 body_timeout`.
//!
//! A chunked body nobody reads to its end (a `401` answered before it) is another way to
//! hold a connection: actix-web drains such a body after the answer, for as long as the
//! client sends it. It closes the connection instead when the body's receiving end is
//! still held at the answer, so the receiving end of a chunked body is kept (`Unread`) by
//! the answer's body (`Held`) until it is sent. When the app lets go of a body not read to
//! its end, what actix-web holds of it is taken, to tell the connection how much of it may
//! still come after the answer (`next_request`): none when it has all come, and actix-web
//! keeps the connection for the next request.

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::Stream;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

use super::next_request::{Turn, Watch};

/// How long a request body may take, whole (`[limits] body_seconds`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// The error a body stream ends with past its deadline.
pub fn is_deadline(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The receiving end of a chunked request body, kept until the answer is sent (see the
/// module's notes).
pub struct Unread(#[allow(dead_code, reason = "held, never read")] Rc<RefCell<Payload>>);

/// A chunked body, read through the end that `Unread` keeps.
struct Shared(Rc<RefCell<Payload>>);

impl Stream for Shared {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut payload = self.0.borrow_mut();
        Pin::new(&mut *payload).poll_next(cx)
    }
}

/// Puts the request's body behind the app's deadline, and has it tell its connection when
/// it waits for more (`next_request` reads for a body only then); a request that declares
/// no body (most reads) is left as it is and costs nothing. The proxy's bodies, up to
/// `[proxy] max_request_bytes`, keep the proxy's own deadline (`timeout_seconds`). For a
/// chunked body (the proxy's too), what the answer must hold (`Held`) so that the
/// connection is closed when the body was not read to its end.
pub fn apply(req: &mut ServiceRequest) -> Option<Unread> {
    let headers = req.headers();
    // A body that runs until the connection ends: actix-web reads one after the head of a
    // request that asks for a WebSocket in any of its `Upgrade` fields (whatever else it
    // says), or of a CONNECT, and drains it after the answer like a chunked one. oauthd
    // serves neither, but without a deadline such a request, on a route that reads its
    // body (the sign-in form), held its connection without end.
    let endless = req.method() == actix_web::http::Method::CONNECT
        || headers.get_all(header::UPGRADE).any(|v| {
            v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        });
    let chunked = endless || headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers.get(header::CONTENT_LENGTH);
    if !chunked && length.is_none_or(|v| v.as_bytes() == b"0") {
        return None;
    }
    // The path as the router matches it (`/v1/%70roxy/` is the proxy's there).
    let deadline = match req.match_info().as_str().starts_with(super::proxy::PREFIX) {
        true => None,
        false => req.app_data::<BodyDeadline>().copied(),
    };
    let within = |deadline: Option<BodyDeadline>| {
        deadline.map(|BodyDeadline(within)| (Instant::now() + within, within))
    };
    // The connection reads on for a body only while it is waited for (`next_request`),
    // and knows how much of it may still come once the request is answered.
    let watch = req.conn_data::<Rc<Watch>>().cloned();
    if let Some(watch) = &watch {
        let declared = match chunked {
            true => None,
            // actix-web refused a length that is not a number before this.
            false => length.and_then(|v| v.to_str().ok()?.parse().ok()),
        };
        watch.body_declared(declared.unwrap_or(u64::MAX));
    }
    let inner = req.take_payload();
    let (body, unread) = match (chunked, within(deadline)) {
        (false, None) => (waited(inner, watch), None),
        (false, Some((until, within))) => {
            (waited(Deadline::new(inner, until, within), watch), None)
        }
        (true, deadline) => {
            let shared = Rc::new(RefCell::new(inner));
            let unread = Some(Unread(shared.clone()));
            match deadline {
                Some((until, within)) => (
                    waited(Deadline::new(Shared(shared), until, within), watch),
                    unread,
                ),
                None => (waited(Shared(shared), watch), unread),
            }
        }
    };
    req.set_payload(Payload::from(body));
    unread
}

type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// A request body that tells its connection when it waits for more, and how much of it
/// was read (one allocation, as the deadline alone took).
fn waited<S>(inner: S, watch: Option<Rc<Watch>>) -> BodyStream
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    Box::pin(Waited {
        inner,
        watch,
        ended: false,
    })
}

struct Waited<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    inner: S,
    watch: Option<Rc<Watch>>,
    /// Read to its end, or to an error: nothing more comes from it.
    ended: bool,
}

impl<S> Stream for Waited<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Some(watch) = &this.watch {
            match &polled {
                Poll::Pending => watch.body_wanted(),
                Poll::Ready(read) => {
                    watch.body_given();
                    counted(watch, read);
                    this.ended = !matches!(read, Some(Ok(_)));
                }
            }
        }
        polled
    }
}

/// What the body gave, counted for its connection (`Watch::body_read`).
fn counted(watch: &Watch, read: &Option<Result<Bytes, PayloadError>>) {
    match read {
        Some(Ok(bytes)) => watch.body_read(Some(bytes.len())),
        // The deadline is oauthd's: actix-web, which knows nothing of it, reads and drops
        // the rest after the answer, as of any body left unread.
        Some(Err(e)) if is_deadline(e) => {}
        // Its own error ends the body: actix-web closes the connection.
        Some(Err(_)) | None => watch.body_read(None),
    }
}

impl<S> Drop for Waited<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    /// A body let go before its end: what actix-web holds of it is taken and counted, so
    /// that the connection knows how much more of it may come after the answer (none when
    /// it has all come: actix-web then keeps the connection).
    fn drop(&mut self) {
        let Some(watch) = &self.watch else { return };
        watch.body_given();
        if self.ended {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // What actix-web holds is bounded (it reads on only for a body that asks).
        while let Poll::Ready(read) = Pin::new(&mut self.inner).poll_next(&mut cx) {
            counted(watch, &read);
            if !matches!(read, Some(Ok(_))) {
                break;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, holding what `apply` kept of the request's until it is sent, and
    /// the request's turn on its connection (`next_request`).
    pub struct Held<B> {
        #[pin]
        body: B,
        unread: Option<Unread>,
        turn: Option<Turn>,
    }
}

impl<B> Held<B> {
    pub fn new(body: B, unread: Option<Unread>, turn: Option<Turn>) -> Self {
        Held { body, unread, turn }
    }
}

impl<B: MessageBody> MessageBody for Held<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }

    /// Never lets go early of what it holds: the bytes would be sent without it. (A body
    /// given whole ends the request's turn: it is written at once.)
    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self.unread {
            Some(_) => Err(self),
            None => {
                let Held { body, turn, .. } = self;
                body.try_into_bytes().map_err(|body| Held {
                    body,
                    unread: None,
                    turn,
                })
            }
        }
    }
}

struct Deadline<S> {
    inner: S,
    until: Instant,
    within: Duration,
    /// Made the first time the body is not there yet: a body that came with its head
    /// (the usual case) never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl<S> Deadline<S> {
    fn new(inner: S, until: Instant, within: Duration) -> Self {
        Deadline {
            inner,
            until,
            within,
            timer: None,
            ended: false,
        }
    }
}

impl<S> Stream for Deadline<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        let until = this.until;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                this.ended = true;
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the request body did not arrive within {} s ([limits] body_seconds)",
                        this.within.as_secs()
                    ),
                )))))
            }
        }
    }
}

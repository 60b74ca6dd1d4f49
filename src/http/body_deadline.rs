//! A deadline for the whole request body. actix-web gives up on a request head that takes
//! longer than 5 s, but not on a body: a client sending one byte a second would hold its
//! connection (and a file descriptor) for as long as it liked, on routes that read the body
//! before anything else (`POST /admin/login` needs no key). Every body is read through this
//! stream; past the deadline it ends with a timed-out I/O error, which `body::read_limited`
//! answers with `408 body_timeout`.

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Where the proxy's routes start (see `apply`).
const PROXY_PREFIX: &str = "/v1/proxy/";

/// How long a request body may take, whole (`[limits] body_seconds`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// The error a body stream ends with past its deadline.
pub fn is_deadline(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Puts the request's body behind the app's deadline; a request that declares no body
/// (most reads) is left as it is and costs nothing. The proxy's bodies, up to
/// `[proxy] max_request_bytes`, keep the proxy's own deadline (`timeout_seconds`).
pub fn apply(req: &mut ServiceRequest) {
    if req.path().starts_with(PROXY_PREFIX) {
        return;
    }
    let headers = req.headers();
    let declares_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !declares_body {
        return;
    }
    let Some(BodyDeadline(within)) = req.app_data::<BodyDeadline>().copied() else {
        return;
    };
    let inner = req.take_payload();
    let limited: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(Deadline {
        inner,
        until: Instant::now() + within,
        within,
        timer: None,
        ended: false,
    });
    req.set_payload(Payload::from(limited));
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

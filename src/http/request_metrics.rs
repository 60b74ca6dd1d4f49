//! Every answer counted by route pattern, method and status
//! (`oauthd_http_requests_total`), and timed to the end of its body
//! (`oauthd_http_requests_duration_seconds`: a streamed proxy answer counts until its last
//! byte). Paths no route matched count as `UNMATCHED` and methods outside HTTP's own as
//! `OTHER`, so probing bots cannot grow the label set. The access log's line, when one is
//! logged (`access_log`), is written at the same moment with the same duration.

use super::access_log::{AccessLog, Line};
use crate::metrics;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The endpoint label of a request no route matched.
pub const UNMATCHED: &str = "UNMATCHED";

/// The endpoint label of requests served under a prefix whose handler reads the rest of
/// the path itself (the proxy), where actix has no route pattern to tell: set on the
/// request (`set_endpoint`) before anything else runs.
struct Endpoint(&'static str);

/// A resource's route pattern as its label, kept with the resource (`app_data`): read
/// after the answer instead of found again by matching the path against the patterns in
/// order (`match_pattern`: a regex for each `{segment}` pattern tried, measured at a tenth
/// of the token API's CPU with the router's own match).
#[derive(Clone)]
pub struct RoutePattern(Arc<str>);

impl RoutePattern {
    pub fn new(pattern: &str) -> Self {
        RoutePattern(Arc::from(pattern))
    }
}

/// Labels `req` `endpoint` in the metrics, whatever actix's router knows of it.
pub fn set_endpoint(req: &ServiceRequest, endpoint: &'static str) {
    req.extensions_mut().insert(Endpoint(endpoint));
}

/// The method label: HTTP's own methods by name, any other token a client makes up (actix
/// accepts every one, however long) as `OTHER`.
pub(super) fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("OTHER", |(_, name)| name)
}

/// The middleware (`from_fn`).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<Timed<impl MessageBody>>, actix_web::Error> {
    let started = Instant::now();
    let res = next.call(req).await?;
    let request = res.request();
    let labelled = request.extensions().get::<Endpoint>().map(|e| e.0);
    let kept = match labelled {
        Some(_) => None,
        None => request.app_data::<RoutePattern>().map(|p| Arc::clone(&p.0)),
    };
    // A route registered without its pattern: actix finds it again.
    let found = match (labelled, &kept) {
        (None, None) => request.match_pattern(),
        _ => None,
    };
    let latency = metrics::http_answered(
        labelled
            .or(kept.as_deref())
            .or(found.as_deref())
            .unwrap_or(UNMATCHED),
        method_label(request.method()),
        res.status().as_str(),
    );
    let line = request
        .app_data::<AccessLog>()
        .and_then(|log| log.line(request, res.status()));
    Ok(res.map_body(|_, body| Timed {
        body,
        latency: Some((latency, started)),
        line,
    }))
}

pin_project! {
    /// An answer's body that observes its request's latency (and writes its access line)
    /// when it is dropped: after its last byte was written, or when the client left.
    pub struct Timed<B> {
        #[pin]
        body: B,
        latency: Option<(prometheus::Histogram, Instant)>,
        line: Option<Line>,
    }

    impl<B> PinnedDrop for Timed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((histogram, started)) = this.latency.take() {
                let elapsed = started.elapsed();
                histogram.observe(elapsed.as_secs_f64());
                if let Some(line) = this.line.take() {
                    line.write(elapsed);
                }
            }
        }
    }
}

impl<B: MessageBody> MessageBody for Timed<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_next(cx);
        if let (Some(line), Poll::Ready(Some(Ok(bytes)))) = (this.line.as_mut(), &polled) {
            line.sent(bytes.len());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, web, App, HttpResponse};

    fn sample(series: &str) -> f64 {
        metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[actix_web::test]
    async fn answers_are_counted_by_pattern_and_timed_when_their_body_is_done() {
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(record))
                .route(
                    "/t/{name}",
                    web::get().to(|| async { HttpResponse::Ok().body("x".repeat(10)) }),
                ),
        )
        .await;
        let count =
            "oauthd_http_requests_total{endpoint=\"/t/{name}\",method=\"GET\",status=\"200\"}";
        let timed =
            "oauthd_http_requests_duration_seconds_count{endpoint=\"/t/{name}\",method=\"GET\",status=\"200\"}";
        let unmatched =
            "oauthd_http_requests_total{endpoint=\"UNMATCHED\",method=\"GET\",status=\"404\"}";
        let (count0, timed0, unmatched0) = (sample(count), sample(timed), sample(unmatched));

        let res = test::call_service(&app, test::TestRequest::get().uri("/t/a").to_request()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(sample(count), count0 + 1.0);
        // Not timed before its body is done with.
        assert_eq!(sample(timed), timed0);
        assert_eq!(test::read_body(res).await.len(), 10);
        assert_eq!(sample(timed), timed0 + 1.0);

        let res = test::call_service(
            &app,
            test::TestRequest::get().uri("/nowhere/x").to_request(),
        )
        .await;
        assert_eq!(res.status(), 404);
        drop(res);
        assert_eq!(sample(unmatched), unmatched0 + 1.0);
        assert!(!metrics::render().contains("/nowhere"));

        // A method a client made up is one label, however many it makes up.
        // (The route answers only GET: actix answers another method 404.)
        let other =
            "oauthd_http_requests_total{endpoint=\"/t/{name}\",method=\"OTHER\",status=\"404\"}";
        let other0 = sample(other);
        for made_up in ["FOO123", "BAR456"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("token");
            let req = test::TestRequest::default().method(method).uri("/t/a");
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), 404);
        }
        assert_eq!(sample(other), other0 + 2.0, "{}", metrics::render());
        assert!(!metrics::render().contains("FOO123"));
    }

    #[actix_web::test]
    async fn a_resource_that_keeps_its_pattern_is_labelled_by_it_without_matching_again() {
        // The kept label differs from the pattern here only to show which one was used.
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(record))
                .service(
                    web::resource("/k/{name}")
                        .app_data(RoutePattern::new("/kept/{name}"))
                        .route(web::get().to(HttpResponse::NoContent)),
                ),
        )
        .await;
        let kept =
            "oauthd_http_requests_total{endpoint=\"/kept/{name}\",method=\"GET\",status=\"204\"}";
        let kept0 = sample(kept);
        let req = test::TestRequest::get().uri("/k/a").to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 204);
        assert_eq!(sample(kept), kept0 + 1.0, "{}", metrics::render());
        assert!(!metrics::render().contains("endpoint=\"/k/{name}\""));
    }
}

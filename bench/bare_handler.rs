//! Baseline for the benchmark: the same endpoints and JSON shapes as oauthd's state API and
//! token API, on actix-web with the same worker count, but no authentication and no
//! storage. What oauthd adds on top of this is the cost of its work.
//!
//! It also stands in for provider "bench"'s token endpoint (`POST /provider/token`), so
//! the benchmark can connect an account without a real provider.
//!
//! With `BARE_WRITES=FILE` it is instead the floor under any design that keeps oauthd's
//! promise for a state change: create and consume each hand a record to one writer thread
//! and answer once it is on disk. The thread takes whatever is queued, appends it to FILE
//! and `fsync`s it once for the group (as oauthd's SQLite writer commits a group with
//! `synchronous = FULL`), over the same tokio channels. No SQL, no key, no JSON checked:
//! the hop to the thread, the wake-ups and the sync, and nothing else.
//! `BARE_WRITES_SYNC=0` leaves the sync out (the hop alone).

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::io::Write;
use tokio::sync::{mpsc, oneshot};

/// A record for the writer thread, and where to say it is on disk.
type Job = ([u8; 64], oneshot::Sender<bool>);

/// The writer thread's queue, when `BARE_WRITES` names a file.
#[derive(Clone)]
struct Writes(Option<mpsc::Sender<Job>>);

impl Writes {
    fn start() -> std::io::Result<Writes> {
        let Some(path) = std::env::var_os("BARE_WRITES") else {
            return Ok(Writes(None));
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let sync = std::env::var_os("BARE_WRITES_SYNC").is_none_or(|v| v != "0");
        let (queue, mut rx) = mpsc::channel::<Job>(1024);
        std::thread::spawn(move || {
            let mut group = Vec::new();
            let mut bytes = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                group.push(first);
                while let Ok(next) = rx.try_recv() {
                    group.push(next);
                }
                bytes.clear();
                for (record, _) in &group {
                    bytes.extend_from_slice(record);
                }
                let ok = file
                    .write_all(&bytes)
                    .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
                    .is_ok();
                for (_, done) in group.drain(..) {
                    let _ = done.send(ok);
                }
            }
        });
        Ok(Writes(Some(queue)))
    }

    /// Whether `record` is on disk (true at once without a file).
    async fn write(&self, record: &[u8]) -> bool {
        let Some(queue) = &self.0 else {
            return true;
        };
        let mut fixed = [0u8; 64];
        let n = record.len().min(64);
        fixed[..n].copy_from_slice(&record[..n]);
        let (done, written) = oneshot::channel();
        queue.send((fixed, done)).await.is_ok() && written.await.unwrap_or(false)
    }
}

async fn create(writes: web::Data<Writes>, body: web::Json<Value>) -> HttpResponse {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() || !writes.write(&bytes).await {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let now = chrono::Utc::now();
    HttpResponse::Created().json(json!({
        "state": URL_SAFE_NO_PAD.encode(bytes),
        "namespace": body.get("namespace"),
        "created_at": now.to_rfc3339(),
        "expires_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
    }))
}

async fn consume(writes: web::Data<Writes>, body: web::Json<Value>) -> HttpResponse {
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !writes.write(state.as_bytes()).await {
        return HttpResponse::ServiceUnavailable().finish();
    }
    verify(body).await
}

/// What consume answers, without a write.
async fn verify(body: web::Json<Value>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "namespace": body.get("namespace"),
        "data": null,
        "created_at": chrono::Utc::now().to_rfc3339(),
    }))
}

async fn token() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({
            "access_token": "bench-access-token-0123456789abcdefghijklmnopqrstuvwxyz",
            "token_type": "Bearer",
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(24)).to_rfc3339(),
            "scope": null,
        }))
}

/// Provider "bench": hands out a day-long token for any code or refresh token.
async fn provider_token() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "access_token": "bench-access-token-0123456789abcdefghijklmnopqrstuvwxyz",
        "token_type": "Bearer",
        "expires_in": 86400,
        "refresh_token": "bench-refresh-token",
    }))
}

/// Provider "bench"'s API, for the proxy scenario: a small JSON answer, as `/v1/me` of a
/// music service gives. Called directly (the baseline) and through oauthd's proxy.
async fn api_me() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "id": "bench-user",
        "display_name": "Bench User",
        "country": "DE",
        "product": "premium",
    }))
}

/// The same answer after 20 ms, as a provider's API across the internet gives it.
async fn api_me_remote() -> HttpResponse {
    actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    api_me().await
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let writes = web::Data::new(Writes::start()?);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(writes.clone())
            .route("/v1/states", web::post().to(create))
            .route("/v1/states/consume", web::post().to(consume))
            // Verify answers what consume does (a read, not a delete, in oauthd).
            .route("/v1/states/verify", web::post().to(verify))
            .route(
                "/v1/connections/{provider}/{account}/token",
                web::get().to(token),
            )
            .route("/provider/token", web::post().to(provider_token))
            .route("/api/me", web::get().to(api_me))
            .route("/api/me-20ms", web::get().to(api_me_remote))
    })
    .bind(listen)?;
    for addr in server.addrs() {
        println!("bare listening on http://{addr}");
    }
    server.run().await
}

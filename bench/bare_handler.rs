//! Baseline for the benchmark: the same endpoints and JSON shapes as oauthd's state API and
//! token API, on actix-web with the same worker count, but no authentication and no
//! storage. What oauthd adds on top of this is the cost of its work.
//!
//! It also stands in for provider "bench"'s token endpoint (`POST /provider/token`), so
//! the benchmark can connect an account without a real provider.

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

async fn create(body: web::Json<Value>) -> HttpResponse {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
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

async fn consume(body: web::Json<Value>) -> HttpResponse {
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
    let server = HttpServer::new(|| {
        App::new()
            .route("/v1/states", web::post().to(create))
            .route("/v1/states/consume", web::post().to(consume))
            // Verify answers what consume does (a read, not a delete, in oauthd).
            .route("/v1/states/verify", web::post().to(consume))
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

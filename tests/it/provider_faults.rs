//! Provider behaviour the real test provider cannot produce: preset quirks, refresh
//! responses without a refresh token, 5xx, garbage, huge bodies and timeouts. A mock HTTP
//! server (wiremock) plays the provider's token endpoint.

use crate::common;

use common::{Daemon, Home};
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A provider table using `preset` with the endpoints pointed at the mock.
fn provider_toml(name: &str, preset: &str, mock: &MockServer) -> String {
    format!(
        "[providers.{name}]\npreset = \"{preset}\"\nauthorization_url = \"{uri}/authorize\"\n\
         token_url = \"{uri}/token\"\nrevocation_url = \"{uri}/revoke\"\nclient_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        uri = mock.uri()
    )
}

/// oauthd serving provider `name` (`preset`, endpoints on `mock`) with `extra` config
/// lines, and an API key.
fn serving(name: &str, preset: &str, mock: &MockServer, extra: &str) -> (Home, String, Daemon) {
    let home = Home::new();
    home.write_config(&format!("{extra}\n{}", provider_toml(name, preset, mock)));
    let key = home.create_key("app", &[]);
    let d = home.start();
    (home, key, d)
}

/// The mock answers the code `code` with these tokens.
async fn on_code(mock: &MockServer, code: &str, tokens: serde_json::Value) {
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .and(body_string_contains(format!("code={code}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(tokens))
        .mount(mock)
        .await;
}

use common::on_refresh;

/// Starts a flow and lands on the callback with `code`, as the provider would redirect.
use common::connect_with_code as connect;

async fn token_requests(mock: &MockServer, grant: &str) -> Vec<wiremock::Request> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r.url.path() == "/token"
                && String::from_utf8_lossy(&r.body).contains(&format!("grant_type={grant}"))
        })
        .collect()
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn spotify_refresh_without_refresh_token_keeps_the_old_one() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1, "refresh_token": "rt-1"})).await;
    on_refresh(
        &mock,
        "rt-1",
        ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 1}),
        ),
    )
    .await;
    let (_home, key, d) = serving("spotify", "spotify", &mock, "");
    connect(&d, &key, "spotify", "me", "c1").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = d.get("/v1/connections/spotify/me/token", &key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], "at-2");
    }
    let refreshes = token_requests(&mock, "refresh_token").await;
    assert_eq!(refreshes.len(), 2, "each expiry should refresh once");
    for r in &refreshes {
        assert!(
            String::from_utf8_lossy(&r.body).contains("refresh_token=rt-1"),
            "the old refresh token was not kept"
        );
        // The preset's client authentication: HTTP Basic.
        assert_eq!(
            r.headers.get("authorization").unwrap().to_str().unwrap(),
            basic("cid", "c-secret")
        );
    }
    let (_, conn) = d.get("/v1/connections/spotify/me", &key).await;
    assert_eq!(conn["has_refresh_token"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn smartthings_rotating_refresh_tokens_are_replaced_on_every_refresh() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-0", "token_type": "bearer", "expires_in": 1, "refresh_token": "rt-0", "scope": "r:devices:*"})).await;
    for i in 0..3 {
        on_refresh(
            &mock,
            &format!("rt-{i}"),
            ResponseTemplate::new(200).set_body_json(json!({
                "access_token": format!("at-{}", i + 1), "token_type": "bearer", "expires_in": 1,
                "refresh_token": format!("rt-{}", i + 1)
            })),
        )
        .await;
    }
    let (_home, key, d) = serving("st", "smartthings", &mock, "");
    connect(&d, &key, "st", "home", "c1").await;
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], format!("at-{i}"));
        assert_eq!(
            body["scope"], "r:devices:*",
            "scope kept from the first grant"
        );
    }
    let refreshes = token_requests(&mock, "refresh_token").await;
    assert_eq!(refreshes.len(), 3);
    for r in &refreshes {
        assert_eq!(
            r.headers.get("authorization").unwrap().to_str().unwrap(),
            basic("cid", "c-secret")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn google_preset_asks_for_offline_access_and_posts_client_credentials() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1"})).await;
    let (_home, key, d) = serving("google", "google", &mock, "");
    let (_, body) = d.post("/v1/connect/google", &key, json!({})).await;
    let url =
        reqwest::Url::parse(&d.confirm(body["authorize_url"].as_str().unwrap()).await).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert!(q.contains_key("nonce"), "openid scope should carry a nonce");
    let state = &q["state"];
    let (status, _, _) = d
        .browser_get(&format!("{}/callback/google?code=c1&state={state}", d.url))
        .await;
    assert_eq!(status, 200);
    let exchange = &token_requests(&mock, "authorization_code").await[0];
    let form = String::from_utf8_lossy(&exchange.body).into_owned();
    assert!(
        form.contains("client_secret=c-secret") && form.contains("client_id=cid"),
        "{form}"
    );
    assert!(form.contains("code_verifier="), "{form}");
    assert!(exchange.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_faults_become_503_with_retry_after_and_back_off() {
    let mock = MockServer::start().await;
    let faults = [
        ("err500", ResponseTemplate::new(500).set_body_string("oops")),
        (
            "garbage",
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string("{not json"),
        ),
        (
            "html",
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/html")
                .set_body_string("<html>maintenance</html>"),
        ),
        (
            "huge",
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(format!(
                    "{{\"access_token\":\"{}\"}}",
                    "x".repeat(2 * 1024 * 1024)
                )),
        ),
        (
            "slow",
            ResponseTemplate::new(200)
                .set_delay(Duration::from_secs(4))
                .set_body_json(json!({"access_token": "late", "token_type": "Bearer"})),
        ),
    ];
    for (name, _) in &faults {
        on_code(&mock, name, json!({"access_token": format!("at-{name}"), "token_type": "Bearer", "expires_in": 1, "refresh_token": format!("rt-{name}")})).await;
    }
    for (name, response) in faults.clone() {
        on_refresh(&mock, &format!("rt-{name}"), response).await;
    }
    let (home, key, d) = serving("p", "spotify", &mock, "provider_timeout_seconds = 1");
    for (name, _) in &faults {
        connect(&d, &key, "p", name, name).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (name, _) in &faults {
        let resp = d
            .get_raw(&format!("/v1/connections/p/{name}/token"), Some(&key))
            .await;
        assert_eq!(resp.status(), 503, "{name}");
        let retry_after: u64 = common::retry_after(&resp);
        assert!(retry_after >= 1, "{name}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "provider_unavailable", "{name}: {problem}");
        if *name == "slow" {
            // Slow is not failed: the caller is answered after provider_timeout_seconds,
            // and the provider's answer, when it comes, is stored. It carries the refresh
            // token a rotating provider issued in place of the stored one: given up on
            // (as it was after provider_timeout_seconds), the connection was lost.
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("has not answered the refresh"), "{detail}");
            let mut token = serde_json::Value::Null;
            for _ in 0..100 {
                let (status, body) = d.get("/v1/connections/p/slow/token", &key).await;
                if status == 200 {
                    token = body;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(token["access_token"], "late", "{token}");
            let asked = token_requests(&mock, "refresh_token")
                .await
                .iter()
                .filter(|r| String::from_utf8_lossy(&r.body).contains("rt-slow"))
                .count();
            assert_eq!(asked, 1, "the slow refresh was asked again");
            continue;
        }
        // Backing off: asking again at once does not reach the provider.
        let before = token_requests(&mock, "refresh_token").await.len();
        assert_eq!(
            d.get(&format!("/v1/connections/p/{name}/token"), &key)
                .await
                .0,
            503
        );
        assert_eq!(
            token_requests(&mock, "refresh_token").await.len(),
            before,
            "{name}: no backoff"
        );
        let (_, conn) = d.get(&format!("/v1/connections/p/{name}"), &key).await;
        assert_eq!(
            conn["status"], "active",
            "{name}: a transient fault is not needs_reauth"
        );
        assert_eq!(conn["failures"], 1, "{name}");
        assert!(
            conn["last_error"].is_string() && conn["retry_at"].is_string(),
            "{name}: {conn}"
        );
    }
    // No refresh lease is left behind by a fault.
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let stuck: i64 = conn
        .query_row(
            "SELECT count(*) FROM connections WHERE lease_until IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stuck, 0);
    assert!(
        !home.log_text().contains(&"x".repeat(100)),
        "a provider body reached the log"
    );
}

/// A token endpoint that cannot be reached is said to the app, in the connection's
/// `last_error` and in the log without its URL: the URL may carry what its query holds.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_token_endpoint_is_said_without_its_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let home = Home::new();
    home.write_config(&format!(
        "[providers.p]\nauthorization_url = \"http://127.0.0.1:{port}/authorize\"\n\
         token_url = \"http://127.0.0.1:{port}/token?tenant=query-secret-77\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\n"
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let imported = json!({"access_token": "at-1", "refresh_token": "rt-1",
                          "expires_at": "2000-01-01T00:00:00Z"});
    assert!(d.put("/v1/connections/p/alice", &key, imported).await.0 < 300);
    let (status, problem) = d.get("/v1/connections/p/alice/token", &key).await;
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("provider_unavailable"))
    );
    let (_, conn) = d.get("/v1/connections/p/alice", &key).await;
    let said = [
        problem["detail"].to_string(),
        conn["last_error"].to_string(),
        home.log_text(),
    ];
    for text in &said {
        assert!(
            !text.contains("query-secret-77") && !text.contains(&format!(":{port}/token")),
            "{text}"
        );
    }
    // What went wrong is still said: the connection was refused.
    assert!(
        conn["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{conn}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn github_tokens_without_expiry_or_refresh_token_are_served_as_they_are() {
    let mock = MockServer::start().await;
    on_code(
        &mock,
        "c1",
        json!({"access_token": "gho_1", "token_type": "bearer", "scope": "read:user"}),
    )
    .await;
    let (_home, key, d) = serving("gh", "github", &mock, "");
    connect(&d, &key, "gh", "me", "c1").await;
    let exchange = &token_requests(&mock, "authorization_code").await[0];
    assert!(
        String::from_utf8_lossy(&exchange.body).contains("client_secret=c-secret"),
        "GitHub takes credentials in the body"
    );
    for _ in 0..3 {
        let (status, body) = d
            .get("/v1/connections/gh/me/token?min_ttl=3600", &key)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], "gho_1");
        assert!(body["expires_at"].is_null());
    }
    assert!(
        token_requests(&mock, "refresh_token").await.is_empty(),
        "nothing to refresh"
    );
    let (_, conn) = d.get("/v1/connections/gh/me", &key).await;
    assert_eq!(conn["has_refresh_token"], false);
}

/// GitHub answers a token request's errors with 200. A dead refresh token
/// (`bad_refresh_token`) marks the connection needs_reauth once, as invalid_grant does,
/// instead of a provider fault retried forever.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_answered_with_200_is_that_error() {
    let mock = MockServer::start().await;
    on_code(
        &mock,
        "c1",
        json!({"access_token": "ghu_1", "token_type": "bearer", "expires_in": 1, "refresh_token": "ghr_1"}),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "error": "bad_refresh_token",
            "error_description": "The refresh token passed is incorrect or expired."
        })))
        .mount(&mock)
        .await;
    let (home, key, d) = serving("gh", "github", &mock, "");
    connect(&d, &key, "gh", "me", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let (status, body) = d.get("/v1/connections/gh/me/token", &key).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("needs_reauth")),
            "{body}"
        );
    }
    assert_eq!(
        token_requests(&mock, "refresh_token").await.len(),
        1,
        "a dead refresh token was tried again"
    );
    assert!(
        !home.log_text().contains("malformed token response"),
        "{}",
        home.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn microsoft_preset_asks_for_offline_access() {
    let mock = MockServer::start().await;
    let (_home, key, d) = serving("ms", "microsoft", &mock, "");
    let (status, body) = d.post("/v1/connect/ms", &key, json!({})).await;
    assert_eq!(status, 201, "{body}");
    let url =
        reqwest::Url::parse(&d.confirm(body["authorize_url"].as_str().unwrap()).await).unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .unwrap()
        .1
        .into_owned();
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_key_from_oauthd_key_file_and_admin_token_from_the_environment() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1"})).await;
    let home = Home::new();
    home.write_config(&provider_toml("sp", "spotify", &mock));
    let key_file = home.dir.path().join("vault.key");
    std::fs::write(
        &key_file,
        format!("{}\n", oauthd::vault::generate_key_text().unwrap().as_str()),
    )
    .unwrap();
    let key = home.create_key("app", &[]);
    let admin_token = "a-long-enough-admin-token";
    let d = home.start_with_env(&[
        ("OAUTHD_KEY_FILE", key_file.to_str().unwrap()),
        ("OAUTHD_ADMIN_TOKEN", admin_token),
    ]);
    connect(&d, &key, "sp", "me", "c1").await;
    let mut default_file = home.db().into_os_string();
    default_file.push(".key");
    assert!(
        !std::path::Path::new(&default_file).exists(),
        "OAUTHD_KEY_FILE was ignored"
    );
    let id = oauthd::vault::key_ids(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let sealed: Vec<u8> = conn
        .query_row("SELECT access_token FROM connections", [], |r| r.get(0))
        .unwrap();
    assert_eq!(oauthd::vault::sealed_key_id(&sealed), Some(id[0].clone()));
    // The admin token signs in through the page's form, never from a URL; anything else
    // does not sign in at all.
    let form = d
        .post_form("/admin/login", &[("token", admin_token)], None)
        .await;
    assert_eq!(form.status(), 303);
    assert!(form.headers().get("set-cookie").is_some());
    let (status, _, location) = d
        .browser_get(&format!("{}/admin/login?token={admin_token}", d.url))
        .await;
    // Answered as any link that does not work: an answer of its own would tell it apart.
    assert_eq!((status, location), (401, None));
    let (status, _, _) = d
        .browser_get(&format!("{}/admin/login?token=wrong-token-0000000", d.url))
        .await;
    assert_eq!(status, 401);
}

// Two processes on one store: each runs on SQLite and on Redis.
contract![
    a_disconnect_revokes_what_another_processs_refresh_brings,
    a_refresh_that_starts_while_a_disconnect_revokes_is_revoked_too,
    a_refresh_refused_while_a_disconnect_revokes_sends_no_token_twice,
];

/// The `token` values of the revocation requests the mock received.
async fn revoked_tokens(mock: &MockServer) -> Vec<String> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/revoke")
        .filter_map(|r| {
            url::form_urlencoded::parse(&r.body)
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .collect()
}

/// A disconnect made while another oauthd process on the same store is refreshing the
/// connection revokes the tokens that refresh brings, not only the ones it read first:
/// deleting the row under the refresh would leave the new grant live at the provider,
/// with no row left to revoke it from.
async fn a_disconnect_revokes_what_another_processs_refresh_brings(home: Home) {
    let (status, body, revoked) =
        disconnect_and_refresh(home, First::Refresh, refreshed().set_delay(SLOW)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "at-2");
    assert!(
        revoked.contains(&"rt-2".to_owned()) && revoked.contains(&"at-2".to_owned()),
        "the refreshed grant was left live at the provider; revoked: {revoked:?}"
    );
}

/// The other order: another process starts refreshing after the disconnect read the row,
/// while the provider is still answering its revocations. The delete finds the row moved
/// on and revokes the refreshed tokens in turn, without sending the first ones again.
async fn a_refresh_that_starts_while_a_disconnect_revokes_is_revoked_too(home: Home) {
    let (status, body, revoked) =
        disconnect_and_refresh(home, First::Disconnect, refreshed()).await;
    assert_eq!(status, 200, "b refreshed before the delete: {body}");
    assert_eq!(body["access_token"], "at-2");
    assert_eq!(
        revoked,
        ["at-1", "at-2", "rt-1", "rt-2"],
        "each token revoked once, the refreshed ones included"
    );
}

/// A refresh refused meanwhile (the disconnect revoked its refresh token first) moves the
/// row on with the same tokens: the delete tries again without revoking them twice, which
/// providers that answer 400 for a revoked token would refuse for good.
async fn a_refresh_refused_while_a_disconnect_revokes_sends_no_token_twice(home: Home) {
    let refused = json!({"error": "invalid_grant", "error_description": "revoked"});
    let (status, body, revoked) = disconnect_and_refresh(
        home,
        First::Disconnect,
        ResponseTemplate::new(400).set_body_json(refused),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("needs_reauth")),
        "{body}"
    );
    assert_eq!(revoked, ["at-1", "rt-1"], "a token was revoked twice");
}

/// How long the provider takes over the first side's request in `disconnect_and_refresh`.
const SLOW: Duration = Duration::from_millis(1500);

/// The code c1 gets at-1, which expires after a second, and rt-1.
async fn on_code_expiring(mock: &MockServer) {
    let tokens = json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 1, "refresh_token": "rt-1"});
    on_code(mock, "c1", tokens).await;
}

/// The provider's answer to a refresh of rt-1: at-2 and rt-2.
fn refreshed() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"access_token": "at-2", "token_type": "bearer", "expires_in": 3600, "refresh_token": "rt-2"}))
}

/// st/home connected (SmartThings, rotating refresh tokens) with a token that has just
/// expired, and a provider that answers its refresh (at-2, rt-2) after `delay`.
async fn expired_with_slow_refresh(delay: Duration) -> (MockServer, Home, String, Daemon) {
    let mock = MockServer::start().await;
    on_code_expiring(&mock).await;
    on_refresh(&mock, "rt-1", refreshed().set_delay(delay)).await;
    let (home, key, d) = serving("st", "smartthings", &mock, "");
    connect(&d, &key, "st", "home", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    (mock, home, key, d)
}

/// A token call waiting on a refresh that an import replaced meanwhile answered `503`
/// ("the connection changed while refreshing"), though the import had stored a token
/// good for an hour: it now answers with that token.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_call_whose_refresh_an_import_replaced_gets_the_imported_token() {
    let (_mock, _home, key, d) = expired_with_slow_refresh(Duration::from_secs(3)).await;
    let (http, url, k) = (d.http.clone(), d.url.clone(), key.clone());
    let waiting = tokio::spawn(async move {
        let resp = http
            .get(format!("{url}/v1/connections/st/home/token"))
            .bearer_auth(&k)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = d
        .put(
            "/v1/connections/st/home",
            &key,
            json!({"access_token": "imported", "refresh_token": "rt-imp", "expires_in": 3600}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"imported\""), "{body}");
}

/// A refresh whose save meets the database locked by another process past the busy
/// timeout (5 s) is saved once the lock is gone, while the lease holds: the provider has
/// already rotated the refresh token, and a result given up would leave the connection
/// holding a retired one.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_is_saved_after_another_process_held_the_database_lock() {
    let (mock, home, key, d) = expired_with_slow_refresh(Duration::from_millis(1000)).await;
    // While the provider answers, another process takes the write lock for 7 s.
    let db = home.db();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_secs(7));
        conn.execute_batch("ROLLBACK").unwrap();
    });
    let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
    holder.join().unwrap();
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-2")),
        "{body}"
    );
    let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-2")),
        "{body}"
    );
    assert_eq!(token_requests(&mock, "refresh_token").await.len(), 1);
    assert!(
        home.log_text().contains("saving the new tokens failed"),
        "{}",
        home.log_text()
    );
}

/// Which side of `disconnect_and_refresh` reaches the provider first.
enum First {
    /// b's refresh (answered by `refresh`, which should take `SLOW`), then a's disconnect.
    Refresh,
    /// a's disconnect (the revocation of rt-1 takes `SLOW`), then b's refresh.
    Disconnect,
}

/// Connects st/home on two processes' shared store and lets its token expire; then a
/// disconnects it while b refreshes it (answered by `refresh`), the side that is not
/// `first` starting once the provider has the first one's request. Checks that the
/// delete answered 204 and that the connection is gone for both; returns b's answer and
/// the tokens revoked, sorted.
async fn disconnect_and_refresh(
    home: Home,
    first: First,
    refresh: ResponseTemplate,
) -> (u16, serde_json::Value, Vec<String>) {
    let mock = MockServer::start().await;
    on_code_expiring(&mock).await;
    on_refresh(&mock, "rt-1", refresh).await;
    if matches!(first, First::Disconnect) {
        Mock::given(method("POST"))
            .and(path("/revoke"))
            .and(body_string_contains("token=rt-1"))
            .respond_with(ResponseTemplate::new(200).set_delay(SLOW))
            .mount(&mock)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    home.write_config(&provider_toml("st", "smartthings", &mock));
    let key = home.create_key("app", &[]);
    let (a, b) = (home.start(), home.start());
    connect(&a, &key, "st", "home", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The second side starts once the provider has the first one's request.
    let started = |side: First| {
        let mock = &mock;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let seen = match side {
                    First::Refresh => !token_requests(mock, "refresh_token").await.is_empty(),
                    First::Disconnect => !revoked_tokens(mock).await.is_empty(),
                };
                if seen {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the first side never started"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let delete = async {
        if matches!(first, First::Refresh) {
            started(First::Refresh).await;
        }
        let resp = a.delete("/v1/connections/st/home", &key).await;
        (resp.status(), resp.text().await.unwrap_or_default())
    };
    let refresh = async {
        if matches!(first, First::Disconnect) {
            started(First::Disconnect).await;
        }
        b.get("/v1/connections/st/home/token", &key).await
    };
    let (deleted, (status, body)) = tokio::join!(delete, refresh);
    assert_eq!(deleted.0, 204, "{}", deleted.1);
    for d in [&a, &b] {
        let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
        assert_eq!(status, 404, "{body}");
    }
    let mut revoked = revoked_tokens(&mock).await;
    revoked.sort();
    (status, body, revoked)
}

/// A background refresh the provider fails was logged twice at WARN, the second line
/// repeating the first ("refresh st/one: …" then "background refresh st/one: refreshing
/// st/one failed: …"): once now, with the backoff.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_background_refresh_is_logged_once() {
    let mock = MockServer::start().await;
    let tokens = json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 1, "refresh_token": "rt-1"});
    on_code(&mock, "c1", tokens).await;
    on_refresh(&mock, "rt-1", ResponseTemplate::new(503)).await;
    let (home, key, d) = serving("st", "smartthings", &mock, "refresh_check_seconds = 1");
    connect(&d, &key, "st", "one", "c1").await;
    assert!(
        common::eventually(Duration::from_secs(10), || {
            home.log_text().contains("the next try waits")
        })
        .await,
        "no refresh failed: {}",
        home.log_text()
    );
    // The background round that failed has ended by the time its failure is recorded;
    // a moment for a line it would write after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.signal_and_wait("TERM");
    let log = home.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("st/one"))
        .collect();
    assert!(
        warned
            .iter()
            .any(|l| l.contains("refresh st/one: ") && l.contains("the next try waits")),
        "{log}"
    );
    assert!(
        !warned
            .iter()
            .any(|l| l.contains("background refresh st/one")),
        "{log}"
    );
}

/// A provider whose discovery hangs (frozen while oauthd starts): its two metadata
/// addresses took `provider_timeout_seconds` each, and a token call waited for them and
/// then as long again (35 s measured where 15 s is documented as the longest an app
/// waits). Discovery as a whole, and a caller's wait through it, are bounded by one
/// `provider_timeout_seconds` now.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_call_waits_one_provider_timeout_for_a_discovery_that_hangs() {
    let mock = MockServer::start().await;
    // Mounts discovery at both addresses, RFC 8414's answering after `delay`, OpenID's
    // after `openid_delay`.
    async fn discovery(mock: &MockServer, delay: Duration, openid_delay: Duration) {
        let uri = mock.uri();
        for (at, delay) in [
            ("/.well-known/oauth-authorization-server", delay),
            ("/.well-known/openid-configuration", openid_delay),
        ] {
            Mock::given(method("GET"))
                .and(path(at))
                .respond_with(
                    ResponseTemplate::new(200)
                        .set_body_json(json!({
                            "issuer": uri,
                            "authorization_endpoint": format!("{uri}/authorize"),
                            "token_endpoint": format!("{uri}/token"),
                        }))
                        .set_delay(delay),
                )
                .mount(mock)
                .await;
        }
    }
    discovery(&mock, Duration::ZERO, Duration::ZERO).await;
    let tokens = json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 1, "refresh_token": "rt-1"});
    on_code(&mock, "c1", tokens).await;
    let home = Home::new();
    home.write_config(&format!(
        "provider_timeout_seconds = 3\n[providers.op]\nissuer = \"{}\"\nclient_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    connect(&d, &key, "op", "me", "c1").await;
    d.signal_and_wait("TERM");
    // The provider freezes; oauthd starts again, and an app asks for the (expired) token.
    mock.reset().await;
    discovery(&mock, Duration::from_secs(30), Duration::from_secs(30)).await;
    let d = home.start();
    // Past the token's 1 s: a refresh is needed, and the endpoints for it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = std::time::Instant::now();
    let (status, body) = d.get("/v1/connections/op/me/token", &key).await;
    let waited = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        waited < Duration::from_secs(5),
        "the app waited {waited:?} with provider_timeout_seconds = 3: {body}"
    );
    d.signal_and_wait("TERM");
    // Only RFC 8414's address hangs: OpenID's answer is taken (asked at once, it was never
    // asked when a bound on the whole discovery cut the first address short).
    mock.reset().await;
    discovery(&mock, Duration::from_secs(30), Duration::ZERO).await;
    on_refresh(&mock, "rt-1", refreshed()).await;
    let d = home.start();
    let asked = std::time::Instant::now();
    let (status, body) = d.get("/v1/connections/op/me/token", &key).await;
    let waited = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "at-2", "{body}");
    assert!(waited < Duration::from_secs(5), "the app waited {waited:?}");
    d.signal_and_wait("TERM");
}

/// A stop during the background refresher's round waits for the refresh under way and
/// begins no other: a round in a provider's outage could take its timeout per connection,
/// past the unit's stop timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_begins_no_further_background_refresh() {
    let mock = MockServer::start().await;
    for (code, refresh) in [("c1", "rt-1"), ("c2", "rt-2")] {
        let tokens = json!({"access_token": format!("at-{code}"), "token_type": "bearer", "expires_in": 1, "refresh_token": refresh});
        on_code(&mock, code, tokens).await;
        on_refresh(
            &mock,
            refresh,
            refreshed().set_delay(Duration::from_secs(2)),
        )
        .await;
    }
    let (_home, key, d) = serving("st", "smartthings", &mock, "refresh_check_seconds = 1");
    connect(&d, &key, "st", "one", "c1").await;
    connect(&d, &key, "st", "two", "c2").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while token_requests(&mock, "refresh_token").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = tokio::task::spawn_blocking(move || d.signal_and_wait("TERM"))
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    assert_eq!(
        token_requests(&mock, "refresh_token").await.len(),
        1,
        "a refresh was begun after the stop"
    );
}

/// A stop waiting for a refresh the provider is slow to answer said nothing more until it
/// ended (a minute and more), and a second SIGTERM or Ctrl-C was not answered at all: an
/// operator took it for a hang and killed it, losing the refresh token the provider had
/// just rotated. A second signal is answered with what the stop waits for.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_a_stop_is_answered_with_what_it_waits_for() {
    let (mock, home, key, d) = expired_with_slow_refresh(Duration::from_secs(6)).await;
    let call = tokio::spawn({
        let (url, key) = (
            format!("{}/v1/connections/st/home/token", d.url),
            key.clone(),
        );
        async move {
            let _ = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await;
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while token_requests(&mock, "refresh_token").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::signal(d.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    common::signal(d.pid(), "INT");
    let stopped = tokio::task::spawn_blocking(move || d.wait_exit())
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    let _ = call.await;
    let log = home.log_text();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("still stopping: waiting for 1 refresh(es) a provider is answering")
            && l.contains("killed now")),
        "{log}"
    );
}

/// A stop while a refresh goes on past its caller's wait (answered 503): the HTTP server,
/// idle, stops at once, and the start's end waits for the refresh beside the server's own
/// stop; both said "still stopping" every 10 s. Said once now.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_says_what_it_waits_for_once() {
    let mock = MockServer::start().await;
    on_code_expiring(&mock).await;
    on_refresh(
        &mock,
        "rt-1",
        refreshed().set_delay(Duration::from_secs(14)),
    )
    .await;
    let (home, key, d) = serving("st", "smartthings", &mock, "provider_timeout_seconds = 2");
    connect(&d, &key, "st", "home", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The call waits 2 s and answers 503; the refresh goes on.
    let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
    assert_eq!(status, 503, "{body}");
    let stopped = tokio::task::spawn_blocking(move || d.signal_and_wait("TERM"))
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    let log = home.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("still stopping: waiting for 1 refresh(es)"))
        .count();
    assert_eq!(said, 1, "{log}");
}

/// A stop (SIGTERM) while a token call waits for the provider's refresh answer waits for
/// that answer (up to `provider_timeout_seconds`, 15 s by default), so the call gets the
/// new token and the refresh token the provider rotated is stored. Cut off half-way (the
/// stop used to wait 10 s), the rotated-out refresh token stayed stored, and replaying it
/// makes strict providers revoke the whole grant.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_waits_for_a_refresh_the_provider_is_answering() {
    let (mock, home, key, d) = expired_with_slow_refresh(Duration::from_secs(11)).await;

    let call = tokio::spawn({
        let (url, key) = (
            format!("{}/v1/connections/st/home/token", d.url),
            key.clone(),
        );
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            Ok::<_, String>((status, resp.text().await.unwrap_or_default()))
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while token_requests(&mock, "refresh_token").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = tokio::task::spawn_blocking(move || d.signal_and_wait("TERM"))
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    let (status, body) = call.await.unwrap().expect("an answer before the stop");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"at-2\""), "{body}");
    // The stop took 11 s: at 10 s it said what it waited for, once (the HTTP server's stop
    // and the start's end both wait for it, and each said it).
    let log = home.log_text();
    let said = log
        .lines()
        .filter(|l| {
            l.contains(" INFO ")
                && l.contains("still stopping: waiting for 1 refresh(es) a provider is answering")
        })
        .count();
    assert_eq!(said, 1, "{log}");

    let d = home.start();
    let (status, body) = d.get("/v1/connections/st/home/token", &key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "at-2");
    assert_eq!(token_requests(&mock, "refresh_token").await.len(), 1);
}

/// The real provider with 2 s tokens (rotating refresh tokens), oauthd with
/// `provider_timeout_seconds = 2`, peer/alice connected, and its token due for a refresh.
async fn alice_due_for_refresh(config: &str) -> (common::peer::Peer, Home, String, Daemon) {
    let peer = common::peer::Peer::start(2);
    let (home, key) = peer.home_with_key(&format!("provider_timeout_seconds = 2\n{config}"));
    let d = home.start();
    let authorize = d.start_connect(&key, "peer", "alice").await;
    let callback = peer.approve(&authorize).await;
    assert_eq!(d.browser_get(&callback).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    (peer, home, key, d)
}

/// peer/alice's token comes (within 20 s), and so does the next refresh's: the refresh
/// token stored is the one the provider issued last (a retired one revokes the grant).
async fn the_new_refresh_token_was_stored(d: &Daemon, key: &str) {
    let path = "/v1/connections/peer/alice/token";
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..100 {
        last = d.get(path, key).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = d.get(path, key).await;
    assert_eq!(status, 200, "{body}");
    let (_, conn) = d.get("/v1/connections/peer/alice", key).await;
    assert_eq!(conn["status"], "active", "{conn}");
}

/// A rotating provider (panva's oidc-provider: a refresh token is retired once used, and
/// one used again revokes the grant) that stalls for longer than provider_timeout_seconds
/// while a refresh waits for its answer, as a provider does while it restarts. oauthd used
/// to give the answer up, with the new refresh token in it, and its next try sent the
/// retired one: the account had to be connected again. Now the caller is answered 503
/// and the refresh waits for the answer, which keeps the connection. A second caller is
/// told what the refresh it waited for waits for (it was told of three things it might be).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_outlasts_a_rotating_provider_that_stalls() {
    let (peer, _home, key, d) = alice_due_for_refresh("").await;

    let signal = |sig: &str| common::signal(peer.pid(), sig);
    signal("STOP");
    let path = "/v1/connections/peer/alice/token";
    let (status, body) = d.get(path, &key).await;
    // A second call meanwhile waits as long as the first did for that same refresh: it is
    // not taken for another process's, waited for 20 s.
    let (second, said) = d.get(path, &key).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal("CONT");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("has not answered the refresh"),
        "{body}"
    );
    assert_eq!(second, 503, "{said}");
    assert!(
        said["detail"].as_str().unwrap_or_default().starts_with(
            "a refresh of this connection is under way here, waiting for peer's answer (up to"
        ),
        "{said}"
    );
    // The refresh token the stalled answer carried was stored: the next refresh uses it.
    the_new_refresh_token_was_stored(&d, &key).await;
    d.signal_and_wait("TERM");
}

/// A rotating provider that stalls past `provider_answer_wait_seconds`, then carries out the
/// refresh it was sent: the answer, with the new refresh token, never came, and the next
/// refresh sent the retired one (the provider revokes the grant). Nothing oauthd holds can
/// keep the connection then; what it said of it was `invalid_grant` alone, as if the user
/// had revoked access. It now names the refresh that got no answer, and the setting that
/// outlasts such a stall.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_grant_after_a_refresh_that_got_no_answer_names_it() {
    let (peer, home, key, d) = alice_due_for_refresh("provider_answer_wait_seconds = 2\n").await;
    let signal = |sig: &str| common::signal(peer.pid(), sig);
    let path = "/v1/connections/peer/alice/token";
    let connection = || async { d.get("/v1/connections/peer/alice", &key).await.1 };
    signal("STOP");
    let (status, body) = d.get(path, &key).await;
    assert_eq!(status, 503, "{body}");
    // Given up: the connection's first failure is recorded.
    let mut conn = serde_json::Value::Null;
    for _ in 0..50 {
        conn = connection().await;
        if !conn["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!conn["last_error"].is_null(), "{conn}");
    // The provider carries out the refresh it was sent; the next one sends the retired
    // refresh token.
    signal("CONT");
    let conn = once_it_needs_reauth(&d, &key, "peer/alice").await;
    let error = conn["last_error"].as_str().unwrap_or_default();
    for said in [
        "invalid_grant",
        "was sent and got no answer",
        "provider_answer_wait_seconds",
    ] {
        assert!(error.contains(said), "{said}: {conn}");
    }
    assert!(
        home.log_text().contains("was sent and got no answer"),
        "{}",
        home.log_text()
    );
    d.signal_and_wait("TERM");
}

/// The connection `provider/account` once it needs reauth (its token asked for meanwhile,
/// which refreshes it), or as it is after 30 s.
async fn once_it_needs_reauth(d: &Daemon, key: &str, connection: &str) -> serde_json::Value {
    let mut conn = serde_json::Value::Null;
    for _ in 0..100 {
        let _ = d
            .get(&format!("/v1/connections/{connection}/token"), key)
            .await;
        conn = d.get(&format!("/v1/connections/{connection}"), key).await.1;
        if conn["status"] == "needs_reauth" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(conn["status"], "needs_reauth", "{conn}");
    conn
}

/// The connection's `needs_reauth` after `first`, the provider's answer to a refresh (then
/// `invalid_grant`): peer/me connected through the mock with a token that expires at once.
async fn needs_reauth_after(first: ResponseTemplate) -> serde_json::Value {
    let mock = MockServer::start().await;
    on_code_expiring(&mock).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(first)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    let refused = json!({"error": "invalid_grant", "error_description": "grant revoked"});
    on_refresh(
        &mock,
        "rt-1",
        ResponseTemplate::new(400).set_body_json(refused),
    )
    .await;
    let (_home, key, d) = serving("peer", "spotify", &mock, "");
    connect(&d, &key, "peer", "me", "c1").await;
    let conn = once_it_needs_reauth(&d, &key, "peer/me").await;
    d.signal_and_wait("TERM");
    conn
}

/// The hint that a refresh got no answer comes from oauthd's own words only: a provider's
/// error text that reads the same does not bring it.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_s_error_text_does_not_pass_for_a_refresh_that_got_no_answer() {
    let forged = json!({
        "error": "temporarily_unavailable",
        "error_description": "no answer came to the request sent (operation timed out)"
    });
    let conn = needs_reauth_after(ResponseTemplate::new(503).set_body_json(forged)).await;
    assert_eq!(conn["status"], "needs_reauth", "{conn}");
    let error = conn["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid_grant") && !error.contains("got no answer"),
        "{conn}"
    );
}

/// An answer whose body was cut off (its headers came, then the provider stalled past
/// `provider_answer_wait_seconds`) is the surest sign the provider carried the refresh out:
/// the `invalid_grant` after it names it, as after one that got no answer at all.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_grant_after_an_answer_cut_off_names_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The token endpoint: the first refresh gets its headers and part of its body, then
    // nothing; every later one `invalid_grant`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0..20 {
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let _ = conn.read(&mut buf).await;
            let answer = match n {
                0 => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"access_token\": \"at-2\",".to_owned(),
                _ => {
                    let body = r#"{"error":"invalid_grant","error_description":"grant revoked"}"#;
                    format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                }
            };
            let _ = conn.write_all(answer.as_bytes()).await;
            held.push(conn);
        }
    });
    let home = Home::new();
    home.write_config(&format!(
        "provider_timeout_seconds = 1\nprovider_answer_wait_seconds = 2\n\
         [providers.peer]\npreset = \"spotify\"\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"{token_url}\"\nclient_id = \"cid\"\nclient_secret = \"c-secret\"\n"
    ));
    let key = home.create_key("app", &[]);
    let file = home.dir.path().join("tokens.jsonl");
    std::fs::write(
        &file,
        "{\"provider\":\"peer\",\"account\":\"me\",\"access_token\":\"at-1\",\"refresh_token\":\"rt-1\",\"expires_in\":1}\n",
    )
    .unwrap();
    let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let d = home.start();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let conn = once_it_needs_reauth(&d, &key, "peer/me").await;
    let error = conn["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid_grant") && error.contains("was sent and got no answer"),
        "{conn}"
    );
    d.signal_and_wait("TERM");
    server.abort();
}

/// A provider that answered a refresh with a rotated refresh token, and a store that could
/// not save it until past the refresh's lease (here another process's write lock, held
/// that long: as a Redis at `maxmemory` or down for a while): the new tokens were given up at
/// the lease's end with no word, the next refresh sent the retired token, and the provider
/// revoked the grant. They are now kept, and saved once the store takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_refresh_token_is_kept_until_the_store_takes_it_past_the_lease() {
    let (_peer, home, key, d, locker) = answered_and_unsaved_past_the_lease().await;
    assert_eq!(locker.free(), "free");
    kept_the_grant(&home, &d, &key).await;
    d.signal_and_wait("TERM");
}

/// The rotated refresh token was stored (the next refresh uses it), and no refresh sent
/// a retired one.
async fn kept_the_grant(home: &Home, d: &Daemon, key: &str) {
    the_new_refresh_token_was_stored(d, key).await;
    assert!(
        !home.log_text().contains("invalid_grant"),
        "{}",
        home.log_text()
    );
}

/// The same, with a second process on the database asking for the token as the store
/// takes writes again, while the first (which holds the provider's answer) is held up a
/// moment: it took the lease that had run out unreleased over at once and sent the
/// retired refresh token, and the provider revoked the grant. It now notes the takeover
/// and gives the holder a moment to save first, and gets the token the holder saved.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_taking_over_a_lease_that_ran_out_lets_its_holder_save_first() {
    let (_peer, home, key, a, locker) = answered_and_unsaved_past_the_lease().await;
    common::signal(a.pid(), "STOP");
    assert_eq!(locker.free(), "free");
    // The second process lets a caller wait 5 s for the connection's turn.
    let config = std::fs::read_to_string(home.config()).expect("read config");
    home.write_config(&config.replace(
        "provider_timeout_seconds = 2",
        "provider_timeout_seconds = 5",
    ));
    let b = home.start();
    let path = "/v1/connections/peer/alice/token";
    // Two callers at once: one of them (or the background refresher) notes the takeover
    // and waits; the other waits for the connection's turn. Both get the holder's token
    // once it saves (a second or two after it goes on): 409 invalid_grant before the
    // takeover was noted, then a 503 for whichever waited for the turn while the takeover
    // slept out its 10 s.
    let (first, second, ()) = tokio::join!(b.get(path, &key), b.get(path, &key), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        common::signal(a.pid(), "CONT");
    });
    for (status, body) in [&first, &second] {
        assert_eq!(*status, 200, "{body}");
    }
    let held = a.get(path, &key).await.1["access_token"].clone();
    assert_eq!(first.1["access_token"], held);
    assert_eq!(second.1["access_token"], held);
    kept_the_grant(&home, &b, &key).await;
    b.signal_and_wait("TERM");
    a.signal_and_wait("TERM");
}

/// A database write lock held (by `sqlite3`) over a refresh's save until past its lease.
struct Locker(common::SqliteShell);

impl Locker {
    /// Lets go of the lock; returns what the shell said after.
    fn free(mut self) -> String {
        let said = self.0.query("ROLLBACK; SELECT 'free';");
        assert!(self.0.close().success());
        said
    }
}

/// peer/alice due for a refresh; the refresh asked for, which the provider answers with a
/// rotated refresh token while the database is locked, until past the refresh's lease.
async fn answered_and_unsaved_past_the_lease() -> (common::peer::Peer, Home, String, Daemon, Locker)
{
    // A refresh's lease: the answer's wait (10 s) + provider_timeout_seconds + 5 s.
    let (peer, home, key, d) = alice_due_for_refresh("provider_answer_wait_seconds = 10\n").await;

    // The refresh takes its lease and asks the provider, which is stopped; the database is
    // locked before the provider answers, so only the save meets the lock.
    let path = "/v1/connections/peer/alice/token";
    common::signal(peer.pid(), "STOP");
    let mut locker = common::SqliteShell::open(&home.db());
    let (answer, ()) = tokio::join!(d.get(path, &key), async {
        // Once the lease is stored (a fixed wait could lock before it, and the lease's
        // own write met the lock).
        let leased = "SELECT lease_until IS NOT NULL FROM connections
                      WHERE provider = 'peer' AND account = 'alice';";
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while locker.query(leased) != "1" {
            assert!(std::time::Instant::now() < until, "no lease taken");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(locker.query("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
        common::signal(peer.pid(), "CONT");
    });
    let saving =
        "the provider answered the refresh, and saving its new tokens has not succeeded yet";
    let (status, body) = answer;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains(saving),
        "{body}"
    );
    // The next caller is told so too, at once: it waited for the connection's turn, then
    // heard of "a refresh of this connection under way".
    let (status, body) = d.get(path, &key).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains(saving),
        "{body}"
    );
    // The lease is as long as configured (17 s; 67 s with the default wait), and is
    // waited out.
    let ends: i64 = locker
        .query("SELECT lease_until FROM connections;")
        .parse()
        .expect("a lease");
    let left = ends - chrono::Utc::now().timestamp_millis();
    assert!((0..17_000).contains(&left), "{left} ms of lease left");
    tokio::time::sleep(Duration::from_millis(left.unsigned_abs() + 1_000)).await;
    (peer, home, key, d, Locker(locker))
}

/// A JSON body labelled `text/plain`, as some providers label token answers.
fn labelled_plain(body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_raw(body.to_string().into_bytes(), "text/plain; charset=utf-8")
}

/// A token answer is read by its body, whatever its `Content-Type` says: answers labelled
/// text/plain were refused as a provider fault, and a rotating provider's refresh answer
/// refused so lost its new refresh token (the next refresh sent the retired one, and the
/// provider ended the grant).
#[tokio::test(flavor = "multi_thread")]
async fn a_token_answer_labelled_other_than_json_is_read_by_its_body() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("code=c1"))
        .respond_with(labelled_plain(json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 1, "refresh_token": "rt-1"})))
        .mount(&mock)
        .await;
    for i in 1..=2 {
        let tokens = json!({"access_token": format!("at-{}", i + 1), "token_type": "bearer", "expires_in": 1, "refresh_token": format!("rt-{}", i + 1)});
        on_refresh(&mock, &format!("rt-{i}"), labelled_plain(tokens)).await;
    }
    let (_home, key, d) = serving("p", "spotify", &mock, "");
    connect(&d, &key, "p", "me", "c1").await;
    for i in 2..=3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
        assert_eq!(
            (status, body["access_token"].as_str()),
            (200, Some(format!("at-{i}").as_str())),
            "{body}"
        );
    }
}

/// `"refresh_token": ""` in a refresh's answer is no refresh token: the stored one is
/// kept, as for an answer without one (it was stored, sent empty at the next refresh, and
/// the connection lost).
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_refresh_token_keeps_the_stored_one() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1, "refresh_token": "rt-1"})).await;
    let empty = json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 1, "refresh_token": ""});
    on_refresh(
        &mock,
        "rt-1",
        ResponseTemplate::new(200).set_body_json(empty),
    )
    .await;
    let (_home, key, d) = serving("p", "spotify", &mock, "");
    connect(&d, &key, "p", "me", "c1").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
        assert_eq!(
            (status, body["access_token"].as_str()),
            (200, Some("at-2")),
            "{body}"
        );
    }
    let refreshes = token_requests(&mock, "refresh_token").await;
    assert_eq!(refreshes.len(), 2);
    for r in refreshes {
        let form = String::from_utf8_lossy(&r.body).into_owned();
        assert!(form.contains("refresh_token=rt-1"), "{form}");
    }
}

/// A token holding a line break would inject a header into every call an app or the
/// proxy makes with it: a provider's access token holding one is never handed out, on the
/// callback or on a refresh, as an import of it is refused. A refresh's answer keeps its
/// new refresh token all the same (a rotating provider retired the stored one), and the
/// next try uses it. A token type that is no HTTP token is taken as Bearer, and a line
/// break after a token is no part of it.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_would_inject_a_header_are_not_handed_out() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1, "refresh_token": "rt-1"})).await;
    on_code(&mock, "c2", json!({"access_token": "at-b\n", "token_type": "Bearer\r\nX-Injected: 1", "refresh_token": "rt-b"})).await;
    on_code(&mock, "c3", json!({"access_token": "at-x\r\nX-Injected: 1", "token_type": "Bearer", "refresh_token": "rt-x"})).await;
    let injected = json!({"access_token": "at-2\r\nX-Injected: 1", "token_type": "Bearer", "expires_in": 60, "refresh_token": "rt-2"});
    on_refresh(
        &mock,
        "rt-1",
        ResponseTemplate::new(200).set_body_json(injected),
    )
    .await;
    let good = json!({"access_token": "at-3", "token_type": "Bearer", "expires_in": 60, "refresh_token": "rt-3"});
    on_refresh(
        &mock,
        "rt-2",
        ResponseTemplate::new(200).set_body_json(good),
    )
    .await;
    let (home, key, d) = serving("p", "spotify", &mock, "");
    connect(&d, &key, "p", "me", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(
            "malformed token response: access_token holds a character other than visible ASCII"
        ),
        "{body}"
    );
    // After the backoff (5 s), the next try sends the refresh token that answer brought.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-3")),
        "{body}"
    );

    connect(&d, &key, "p", "b", "c2").await;
    let (_, body) = d.get("/v1/connections/p/b/token", &key).await;
    assert_eq!(
        (body["access_token"].as_str(), body["token_type"].as_str()),
        (Some("at-b"), Some("Bearer")),
        "{body}"
    );
    let state = common::query_param(&d.start_connect(&key, "p", "c").await, "state");
    let (status, page, _) = d
        .browser_get(&format!("{}/callback/p?code=c3&state={state}", d.url))
        .await;
    assert_ne!(status, 200, "{page}");
    assert!(!page.contains("X-Injected"), "{page}");
    let (status, body) = d.get("/v1/connections/p/c", &key).await;
    assert_eq!(status, 404, "stored a connection: {body}");
    assert!(
        !home.log_text().contains("X-Injected"),
        "{}",
        home.log_text()
    );
}

/// Only a 2xx answer holds tokens: a 500 whose body looks like a token answer was taken as
/// a refresh that worked, and its refresh token kept in place of the stored one (the next
/// refresh sent that, and the connection was lost). An answer without an access token
/// keeps no refresh token either.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_2xx_answer_with_an_access_token_replaces_the_refresh_token() {
    let mock = MockServer::start().await;
    for account in ["a", "b"] {
        on_code(&mock, account, json!({"access_token": format!("at-{account}"), "token_type": "Bearer", "expires_in": 1, "refresh_token": format!("rt-{account}")})).await;
    }
    let junk = |access: &str| json!({"access_token": access, "token_type": "Bearer", "expires_in": 600, "refresh_token": "junk"});
    on_refresh(
        &mock,
        "rt-a",
        ResponseTemplate::new(500).set_body_json(junk("at-a-2")),
    )
    .await;
    on_refresh(
        &mock,
        "rt-b",
        ResponseTemplate::new(200).set_body_json(junk("")),
    )
    .await;
    let (_home, key, d) = serving("p", "spotify", &mock, "");
    for account in ["a", "b"] {
        connect(&d, &key, "p", account, account).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for account in ["a", "b"] {
        let (status, body) = d
            .get(&format!("/v1/connections/p/{account}/token"), &key)
            .await;
        assert_eq!(status, 503, "{account}: {body}");
    }
    // After the backoff, each refreshes again with its own refresh token, not "junk".
    tokio::time::sleep(Duration::from_millis(5200)).await;
    for account in ["a", "b"] {
        d.get(&format!("/v1/connections/p/{account}/token"), &key)
            .await;
    }
    let refreshes = token_requests(&mock, "refresh_token").await;
    assert_eq!(refreshes.len(), 4);
    for r in refreshes {
        let form = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!form.contains("refresh_token=junk"), "{form}");
    }
}

/// A refresh answered `429` with `Retry-After` is not asked again before then, up to ten
/// minutes (a day asked, as here, would keep every token of the provider's from being
/// refreshed): apps are told that wait, and the provider is left alone meanwhile (oauthd's
/// own backoff, 5 s, asked again long before a rate limit ran out).
#[tokio::test(flavor = "multi_thread")]
async fn a_providers_retry_after_is_waited_for() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1, "refresh_token": "rt-1"})).await;
    let limited = ResponseTemplate::new(429)
        .insert_header("retry-after", "86400")
        .set_body_json(json!({"error": "rate_limited"}));
    on_refresh(&mock, "rt-1", limited).await;
    let (_home, key, d) = serving("p", "spotify", &mock, "");
    connect(&d, &key, "p", "me", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let resp = d.get_raw("/v1/connections/p/me/token", Some(&key)).await;
        assert_eq!(resp.status(), 503);
        let wait = common::retry_after(&resp);
        assert!((590..=600).contains(&wait), "Retry-After: {wait}");
    }
    assert_eq!(token_requests(&mock, "refresh_token").await.len(), 1);
    let (_, conn) = d.get("/v1/connections/p/me", &key).await;
    assert_eq!(conn["status"], "active", "{conn}");
}

/// Providers that answer `400 invalid_token` for a token no longer valid (Google, once
/// the refresh token's revocation ended the grant and the access token with it) or
/// `unsupported_token_type` for an access token (they do not revoke those): the token is
/// as good as revoked, and the disconnect goes through. A refresh token the provider will
/// not revoke still stops it (the grant would stay alive).
#[tokio::test(flavor = "multi_thread")]
async fn a_disconnect_takes_a_token_the_provider_calls_invalid_as_revoked() {
    let mock = MockServer::start().await;
    for (account, answer) in [
        ("a", json!({"error": "invalid_token"})),
        ("b", json!({"error": "unsupported_token_type"})),
    ] {
        on_code(&mock, account, json!({"access_token": format!("at-{account}"), "token_type": "Bearer", "expires_in": 3600, "refresh_token": format!("rt-{account}")})).await;
        Mock::given(method("POST"))
            .and(path("/revoke"))
            .and(body_string_contains(format!("token=at-{account}")))
            .respond_with(ResponseTemplate::new(400).set_body_json(answer))
            .mount(&mock)
            .await;
    }
    on_code(&mock, "c", json!({"access_token": "at-c", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-c"})).await;
    // A 401 invalid_token refuses the caller (oauthd's client), not the token.
    on_code(&mock, "d", json!({"access_token": "at-d", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-d"})).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(body_string_contains("token=at-d"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_token"})))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(body_string_contains("token=rt-c"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "unsupported_token_type"})),
        )
        .mount(&mock)
        .await;
    // A refresh token revoked before (a delete tried again): `invalid_grant`, as some
    // providers answer it, is no refusal.
    on_code(&mock, "f", json!({"access_token": "at-f", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-f"})).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(body_string_contains("token=rt-f"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&mock)
        .await;
    // The access token's revocation fails on the way, after the refresh token's went.
    on_code(&mock, "e", json!({"access_token": "at-e", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-e"})).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(body_string_contains("token=at-e"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let (_home, key, d) = serving("p", "spotify", &mock, "");
    for account in ["a", "b", "c", "d", "e", "f"] {
        connect(&d, &key, "p", account, account).await;
    }
    // What was revoked before a failure is said with it: "nothing was deleted" alone
    // read as if nothing had happened at the provider.
    let revoked_before =
        "the refresh token was revoked before (at most providers that ended the grant)";
    let resp = d.delete("/v1/connections/p/d", &key).await;
    assert_eq!(resp.status(), 502, "a 401 counted as revoked");
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(revoked_before), "{body}");
    let resp = d.delete("/v1/connections/p/e", &key).await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("nothing was deleted") && detail.contains(revoked_before),
        "{body}"
    );
    for account in ["a", "b", "f"] {
        let resp = d
            .delete(&format!("/v1/connections/p/{account}"), &key)
            .await;
        assert_eq!(
            resp.status(),
            204,
            "{account}: {}",
            resp.text().await.unwrap_or_default()
        );
        let (status, _) = d.get(&format!("/v1/connections/p/{account}"), &key).await;
        assert_eq!(status, 404, "{account}");
    }
    let resp = d.delete("/v1/connections/p/c", &key).await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("unsupported_token_type"),
        "{body}"
    );
    let (status, _) = d.get("/v1/connections/p/c", &key).await;
    assert_eq!(status, 200, "kept: the provider did not revoke its grant");
}

/// A lease script Redis ran whose answer never came back (the connection broke after
/// Redis ran it: a network fault, a Redis stalled past the call's deadline) took the
/// refresh lease for nobody: every token call of the connection, in every instance,
/// waited 20 s and answered 503 "another oauthd process is refreshing" until the lease ran
/// out, over a minute later. The lease is let go once Redis answers, and the next call
/// refreshes.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_taken_while_redis_did_not_answer_is_let_go() {
    let mock = MockServer::start().await;
    on_code(&mock, "c1", json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1, "refresh_token": "rt-1"})).await;
    for (i, expires_in) in [(1, 1), (2, 600)] {
        let refreshed = json!({"access_token": format!("at-{}", i + 1), "token_type": "Bearer", "expires_in": expires_in, "refresh_token": format!("rt-{}", i + 1)});
        on_refresh(
            &mock,
            &format!("rt-{i}"),
            ResponseTemplate::new(200).set_body_json(refreshed),
        )
        .await;
    }
    let server = common::redis::RedisServer::start();
    let relay = common::relay::Relay::start(server.port).await;
    let home = Home::redis_via(server, relay.url());
    home.write_config(&provider_toml("p", "spotify", &mock));
    let key = home.create_key("app", &[]);
    let d = home.start();
    connect(&d, &key, "p", "me", "c1").await;
    // A first refresh: Redis knows the lease script from then on (a first call of it is
    // answered NOSCRIPT, and sent again).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-2")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The next script naming the lease key (the token call's lease script) runs, and its
    // connection is cut before the answer.
    relay.arm("oauthd:cl:p/me", common::relay::Fault::Cut);
    let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
    assert_eq!(status, 503, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let (status, body) = d.get("/v1/connections/p/me/token", &key).await;
        if status == 200 || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last["access_token"], "at-3", "{last}");
    assert_eq!(token_requests(&mock, "refresh_token").await.len(), 2);
}

/// Two flows a capped tenant key started while it had room, whose callbacks arrive at
/// once and whose codes the provider takes a while to redeem: both pass the check made
/// before the exchange, and the one that stores second is refused where it stores (`429`,
/// nothing stored). Both connected before: the cap was checked only when a flow started.
/// Its tokens are not revoked: a provider that ends the whole grant on a revocation could
/// end another connection's of the same account.
#[tokio::test(flavor = "multi_thread")]
async fn flows_redeemed_at_once_stop_at_the_cap_where_they_store() {
    let mock = MockServer::start().await;
    for code in ["c1", "c2"] {
        let tokens = json!({"access_token": format!("at-{code}"), "token_type": "Bearer", "expires_in": 3600, "refresh_token": format!("rt-{code}")});
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains(format!("code={code}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(tokens)
                    .set_delay(Duration::from_millis(700)),
            )
            .mount(&mock)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let extra = "[limits]\nmax_connections_per_key = 1\n";
    let (home, key, d) = serving("acme", "spotify", &mock, extra);
    let made = home.cli(&["keys", "create", "--name", "tenant", "--account", "t.*"]);
    assert!(made.status.success(), "{made:?}");
    let tenant = String::from_utf8_lossy(&made.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let mut callbacks = Vec::new();
    for (account, code) in [("t.one", "c1"), ("t.two", "c2")] {
        let authorize = d.start_connect(&tenant, "acme", account).await;
        let state = common::query_param(&authorize, "state");
        callbacks.push(format!("{}/callback/acme?code={code}&state={state}", d.url));
    }
    let pages = futures::future::join_all(callbacks.iter().map(|c| d.browser_get(c))).await;
    let mut statuses: Vec<u16> = pages.iter().map(|(status, _, _)| *status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 429], "{pages:?}");
    let refused = pages
        .iter()
        .position(|(status, _, _)| *status == 429)
        .unwrap();
    let (refused_account, refused_code) = [("t.one", "c1"), ("t.two", "c2")][refused];
    let path = format!("/v1/connections/acme/{refused_account}");
    assert_eq!(d.get(&path, &key).await.0, 404);
    let said = format!("callback acme/{refused_account}: the API key that started this flow reaches 1 connections, its most (1); nothing stored; the tokens the provider handed out for it are kept nowhere and not revoked");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !home.log_text().contains(&said) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(home.log_text().contains(&said), "{}", home.log_text());
    assert_eq!(
        revoked_tokens(&mock).await,
        Vec::<String>::new(),
        "{refused_code}"
    );
}

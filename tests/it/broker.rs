//! The broker against a real OpenID provider (panva's oidc-provider, run by the harness):
//! connect with authorization code + PKCE, tokens sealed at rest, refresh rules.

use crate::common;

use common::peer::{approved_with_return_to, connect, serving, Peer};
use common::{Daemon, Home};
use serde_json::json;

/// A peer whose tokens live `token_secs`, and oauthd on SQLite with it as provider
/// "peer" and an API key.
fn setup(token_secs: u64, extra_toml: &str) -> (Peer, Home, String) {
    let peer = Peer::start(token_secs);
    let (home, key) = peer.home_with_key(extra_toml);
    (peer, home, key)
}

// The broker's storage contract: each runs on SQLite and on Redis.
contract![
    connect_flow_stores_a_connection_and_the_token_api_hands_out_its_token,
    twenty_concurrent_token_calls_at_expiry_refresh_once_and_the_grant_survives,
    token_past_its_expiry_is_refreshed_on_request,
    invalid_grant_marks_needs_reauth_and_is_not_retried,
    replayed_callback_is_refused_without_redeeming_the_code_again,
    callback_after_the_state_expired_sends_the_person_back_to_the_app,
    delete_revokes_at_the_provider_then_forgets_the_connection,
    a_disconnect_checks_at_once_the_connections_that_share_its_grant,
    the_terminal_asks_before_revoking_a_grant_other_connections_share,
    database_and_log_hold_no_token_secret_or_full_state,
    background_refresher_renews_tokens_before_they_expire,
    admin_signs_in_with_the_printed_link_and_connects_from_the_browser,
    the_token_api_sees_another_processs_delete_within_token_cache_seconds,
    a_reconnect_as_another_account_revokes_the_grant_it_replaced,
];

/// The access token `/v1/connections/peer/{account}/token` hands out now.
async fn token_of(d: &Daemon, key: &str, account: &str) -> String {
    let (status, body) = d
        .get(&format!("/v1/connections/peer/{account}/token"), key)
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap_or_default().to_owned()
}

/// A reconnect that came back as another account at the provider (a browser signed in
/// there as someone else) made the connection that account, and left the grant of the
/// account it was live at the provider, with no row left to revoke it from. It is revoked
/// now, once the new tokens are stored; kept while a connection whose account is unknown
/// (an import) may share it (a grant another connection is known to share is kept too:
/// `a_connect_names_the_provider_account_and_the_connections_that_are_it_too`).
async fn a_reconnect_as_another_account_revokes_the_grant_it_replaced(home: Home) {
    let (peer, key, d) = connected_alice(&home, 3600, "").await;
    let imported = json!({"access_token": "at-of-someone", "refresh_token": "rt-of-someone"});
    assert_eq!(
        d.put("/v1/connections/peer/legacy", &key, imported).await.0,
        201
    );
    let reconnect_as = |user: &'static str| {
        let (d, peer, key) = (&d, &peer, &key);
        async move {
            let authorize = d.start_connect(key, "peer", "alice").await;
            let callback = peer.approve_as(user, &authorize).await;
            let (status, page, _) = d.browser_get(&callback).await;
            assert_eq!(status, 200, "{page}");
            page
        }
    };
    let alices = token_of(&d, &key, "alice").await;
    let page = reconnect_as("carol").await;
    assert!(
        page.contains(
            "its grant was kept, since 1 connection(s) of peer whose account there is unknown"
        ),
        "{page}"
    );
    assert!(
        peer.is_active(&alices).await,
        "a grant an import may share was revoked"
    );

    let deleted = d
        .http
        .delete(format!("{}/v1/connections/peer/legacy?force=true", d.url));
    let deleted = deleted.bearer_auth(&key).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let carols = token_of(&d, &key, "alice").await;
    let page = reconnect_as("dave").await;
    assert!(
        page.contains("The account it was: its grant was revoked at peer."),
        "{page}"
    );
    assert!(
        !peer.is_active(&carols).await,
        "the replaced account's grant is still live at the provider"
    );
    // Refreshed once the revocation went through (a provider may count both accounts as
    // one person): said at once if the grant ended too. Here it holds.
    let refreshes = |log: String| log.matches("refresh peer/alice: ok").count();
    let mut waited = 0;
    while refreshes(home.log_text()) == 0 && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(refreshes(home.log_text()), 1, "{}", home.log_text());
    let new = token_of(&d, &key, "alice").await;
    assert!(peer.is_active(&new).await, "the new account's grant ended");
    let log = home.log_text();
    assert!(
        log.contains("connect peer/alice: it was id \"carol\" at peer, and is now id \"dave\"")
            && log
                .contains("connect peer/alice: the account it was: its grant was revoked at peer"),
        "{log}"
    );
}

/// The token API answers from memory: a delete made by another process (the CLI) is seen
/// within `token_cache_seconds` (on SQLite at the writer's next look for other processes'
/// commits, every quarter to half second, and while nothing else writes a token read once answers
/// from memory past that bound); with 0, at once.
async fn the_token_api_sees_another_processs_delete_within_token_cache_seconds(home: Home) {
    const PATH: &str = "/v1/connections/peer/alice/token";
    let (peer, key, d) = connected_alice(&home, 60, "token_cache_seconds = 3\n").await;
    let hits = r#"oauthd_cache_reads_total{cache="token",result="hit"}"#;
    assert_eq!(d.get(PATH, &key).await.0, 200);
    // SQLite's writer watches for other processes' commits; Redis has no such watch.
    let watched = home.shared().is_none();
    if watched {
        let hits_before = d.metric(hits).await.unwrap_or(0.0);
        tokio::time::sleep(std::time::Duration::from_millis(4000)).await;
        assert_eq!(d.get(PATH, &key).await.0, 200);
        assert_eq!(
            d.metric(hits).await,
            Some(hits_before + 1.0),
            "not from memory"
        );
    }

    let out = home.cli(&["connections", "delete", "peer", "alice"]);
    assert!(out.status.success(), "{out:?}");
    let deleted_at = std::time::Instant::now();
    if !watched {
        // Still in memory: the delete happened in another process.
        assert_eq!(d.get(PATH, &key).await.0, 200);
    }
    let mut status = 200;
    while status == 200 && deleted_at.elapsed() < std::time::Duration::from_secs(10) {
        status = d.get(PATH, &key).await.0;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 404);
    let seen_after = deleted_at.elapsed();
    let bound = std::time::Duration::from_millis(if watched { 1500 } else { 4500 });
    assert!(
        seen_after < bound,
        "the delete reached the token API only after {seen_after:?}"
    );
    d.signal_and_wait("TERM");

    home.write_config(&format!(
        "token_cache_seconds = 0\n{}",
        peer.provider_toml("peer")
    ));
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    assert_eq!(d.get(PATH, &key).await.0, 200);
    let out = home.cli(&["connections", "delete", "peer", "alice"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        d.get(PATH, &key).await.0,
        404,
        "token_cache_seconds = 0 reads the store"
    );
}

/// Starts a connect flow for `account` and returns the authorization URL.
async fn start_flow(d: &Daemon, key: &str, account: &str) -> String {
    d.confirm(&d.app_flow_address(key, "peer", account).await)
        .await
}

/// oauthd in `home` with the peer (tokens living `token_secs`) as provider "peer", and
/// account "alice" connected through the browser flow.
async fn connected_alice(home: &Home, token_secs: u64, extra_toml: &str) -> (Peer, String, Daemon) {
    let (peer, key, d) = serving(home, token_secs, extra_toml);
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    (peer, key, d)
}

async fn connect_flow_stores_a_connection_and_the_token_api_hands_out_its_token(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    // Every field is optional: no body works, with a JSON content type too.
    let resp = d
        .http
        .post(format!("{}/v1/connect/peer", d.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let (status, body) = d
        .post("/v1/connect/peer", &key, json!({"account": "alice"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let authorize =
        reqwest::Url::parse(&d.confirm(body["authorize_url"].as_str().unwrap()).await).unwrap();
    let params: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["redirect_uri"], format!("{}/callback/peer", d.url));
    assert_eq!(params["state"].len(), 43);
    assert_eq!(params["prompt"], "consent");
    assert!(body["expires_at"].is_string());

    let callback = peer.approve(authorize.as_str()).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected"), "{page}");

    let (status, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert_eq!(status, 200, "{conn}");
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["has_refresh_token"], true);
    assert!(conn.get("access_token").is_none() && !conn.to_string().contains("refresh_token\":\""));

    let (status, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    let access = token["access_token"].as_str().unwrap();
    assert!(
        peer.is_active(access).await,
        "the provider does not know the token"
    );
    assert!(token.get("refresh_token").is_none());

    let (status, list) = d.get("/v1/connections", &key).await;
    assert_eq!(status, 200);
    assert_eq!(list["connections"][0]["account"], "alice");
    assert_eq!(peer.grants("authorization_code").await, 1);
}

async fn twenty_concurrent_token_calls_at_expiry_refresh_once_and_the_grant_survives(home: Home) {
    let (peer, key, d) = connected_alice(&home, 3, "").await;
    let (_, first) = d
        .get("/v1/connections/peer/alice/token?min_ttl=0", &key)
        .await;
    let old = first["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    assert!(!peer.is_active(&old).await, "the token should have expired");

    // Twenty apps ask at the moment of expiry: one refresh, one new token for all.
    let new = common::peer::twenty_token_calls_refresh_once(&peer, &[&d], &key).await;
    assert_ne!(new, old);

    // The rotated refresh token was stored: the next expiry refreshes fine, and the
    // grant is alive (a replayed refresh token would have revoked it).
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let (status, body) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(peer.grants("refresh_token").await, 2);
    assert!(
        peer.is_active(body["access_token"].as_str().unwrap()).await,
        "the grant was revoked"
    );
    let (_, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert!(conn["last_refresh_at"].is_string());
}

/// `max_data_bytes` is the limit on apps' data: set low (for an app's short codes), it
/// still refuses such data, and connecting an account, whose flow keeps its sealed secrets
/// as a state's data, works.
/// A provider that gives no refresh token (here: the scope that asks for one misspelled,
/// `offline-access`) made a connection that said "Connected" and turned `needs_reauth` at
/// its token's first expiry, with no word before. The page and the log now say so at once,
/// naming the scope not granted.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_a_refresh_token_is_said_to_need_the_user_again_at_expiry() {
    let peer = Peer::start(3600);
    let home = Home::new();
    home.write_config(
        &peer
            .provider_toml("peer")
            .replace("offline_access", "offline-access"),
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, page) = connect(&d, &peer, &key, "alice").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is connected"), "{page}");
    let caution = "the provider gave no refresh token: this connection works until its \
                   access token expires (in about 60 min), then needs connecting again";
    assert!(page.contains(caution), "{page}");
    assert!(
        page.contains("(it did not grant offline-access of the scopes asked for)"),
        "{page}"
    );
    assert!(
        home.log_text().contains(&format!(
            "WARN  oauthd::broker::callback] connect peer/alice: {caution}"
        )),
        "{}",
        home.log_text()
    );
    // Spelled right but without the consent an OpenID provider grants it with: that is
    // what is said to change.
    let home = Home::new();
    home.write_config(
        &peer
            .provider_toml("peer")
            .replace("prompt = \"consent\"\n", ""),
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, page) = connect(&d, &peer, &key, "carol").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(caution), "{page}");
    assert!(
        page.contains("offline_access is among the scopes asked for, but an OpenID provider grants it only when the person is asked to consent: add authorize_params = { prompt = &quot;consent&quot; } to [providers.peer]")
            || page.contains("offline_access is among the scopes asked for, but an OpenID provider grants it only when the person is asked to consent: add authorize_params = { prompt = \"consent\" } to [providers.peer]"),
        "{page}"
    );
    // With the scope spelled right and consent asked for, nothing of the sort.
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, page) = connect(&d, &peer, &key, "bob").await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("no refresh token"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_low_max_data_bytes_limits_apps_data_and_not_connect_flows() {
    let (peer, home, key) = setup(3600, "[states]\nmax_data_bytes = 64\n");
    let d = home.start();
    let (status, body) = d
        .post(
            "/v1/states",
            &key,
            json!({"namespace": "2fa", "data": "x".repeat(80)}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("data_too_large")),
        "{body}"
    );
    let (status, page) = connect(&d, &peer, &key, "alice").await;
    assert_eq!(status, 200, "{page}");
    let (status, body) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn min_ttl_beyond_the_providers_token_lifetime_does_not_refresh_every_call() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    for _ in 0..10 {
        let (status, body) = d
            .get("/v1/connections/peer/alice/token?min_ttl=3600", &key)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        peer.grants("refresh_token").await,
        0,
        "a fresh 60 s token was refreshed anyway"
    );
    // A min_ttl within the lifetime but above what is left still refreshes.
    let (status, _) = d
        .get("/v1/connections/peer/alice/token?min_ttl=0", &key)
        .await;
    assert_eq!(status, 200);
    // Given twice, the first counted and the second was dropped unsaid: refused, as a
    // bad value is.
    for query in [
        "min_ttl=abc",
        "min_ttl=5&min_ttl=99999",
        "min_ttl=0&min_ttl=abc",
    ] {
        let (status, problem) = d
            .get(&format!("/v1/connections/peer/alice/token?{query}"), &key)
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_min_ttl")),
            "{query}: {problem}"
        );
    }
}

async fn token_past_its_expiry_is_refreshed_on_request(home: Home) {
    let (peer, key, d) = connected_alice(&home, 2, "").await;
    let (_, first) = d
        .get("/v1/connections/peer/alice/token?min_ttl=0", &key)
        .await;
    assert_eq!(peer.grants("refresh_token").await, 0);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        !peer
            .is_active(first["access_token"].as_str().unwrap())
            .await,
        "token should have expired"
    );
    let (status, second) = d
        .get("/v1/connections/peer/alice/token?min_ttl=0", &key)
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(peer.grants("refresh_token").await, 1);
    assert!(
        peer.is_active(second["access_token"].as_str().unwrap())
            .await
    );
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains("oauthd_refreshes_total{provider=\"peer\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oauthd_connections{provider=\"peer\",status=\"active\"} 1"),
        "{metrics}"
    );
}

async fn invalid_grant_marks_needs_reauth_and_is_not_retried(home: Home) {
    let (peer, key, d) = connected_alice(&home, 2, "").await;
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    // The user revokes access at the provider: the grant and its refresh token die.
    peer.revoke(token["access_token"].as_str().unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;

    let (status, problem) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "needs_reauth");
    let reconnect = problem["reconnect_url"].as_str().unwrap();
    assert!(
        reconnect.starts_with(&format!("{}/?reconnect=peer&account=alice", d.url)),
        "{reconnect}"
    );
    assert_eq!(peer.grant_errors("refresh_token").await, 1);

    for _ in 0..5 {
        let (status, _) = d.get("/v1/connections/peer/alice/token", &key).await;
        assert_eq!(status, 409);
    }
    assert_eq!(
        peer.grant_errors("refresh_token").await,
        1,
        "oauthd retried a dead grant"
    );
    let (_, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert_eq!(conn["status"], "needs_reauth");
    assert!(conn["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));

    // Connecting again brings it back.
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let (status, _) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200);
}

async fn replayed_callback_is_refused_without_redeeming_the_code_again(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let authorize = start_flow(&d, &key, "alice").await;
    let callback = peer.approve(&authorize).await;
    assert_eq!(d.browser_get(&callback).await.0, 200);
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("already used"), "{page}");
    // A reload of the page that said "Connected" lands here: it says the connection stands.
    assert!(page.contains("the connection made then stands"), "{page}");
    // The provider never saw the code twice (a replayed code would revoke the grant).
    assert_eq!(peer.grants("authorization_code").await, 1);
    assert_eq!(peer.grant_errors("authorization_code").await, 0);
    let (status, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200);
    assert!(
        peer.is_active(token["access_token"].as_str().unwrap())
            .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_with_a_wrong_or_missing_iss_is_refused() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    for (tamper, want) in [("wrong", "Wrong issuer"), ("missing", "Missing issuer")] {
        let authorize = start_flow(&d, &key, "alice").await;
        let callback = peer.approve(&authorize).await;
        let mut url = reqwest::Url::parse(&callback).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != "iss")
            .collect();
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
            if tamper == "wrong" {
                q.append_pair("iss", "https://attacker.example");
            }
        }
        let (status, page, _) = d.browser_get(url.as_str()).await;
        assert_eq!(status, 400, "{tamper}: {page}");
        assert!(page.contains(want), "{tamper}: {page}");
    }
    assert_eq!(
        peer.grants("authorization_code").await,
        0,
        "a code was redeemed"
    );
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn declining_at_the_provider_shows_the_declined_page() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    let authorize = start_flow(&d, &key, "alice").await;
    let callback = peer.deny(&authorize).await;
    assert!(callback.contains("error=access_denied"), "{callback}");
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 403, "{page}");
    // An app started the flow: starting again is the app's to do.
    assert!(
        page.contains("declined") && page.contains("go back to it and start again there"),
        "{page}"
    );
    assert!(!page.contains("reconnect="), "{page}");
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 404);
}

async fn callback_after_the_state_expired_sends_the_person_back_to_the_app(home: Home) {
    let peer = Peer::start(60);
    let key = peer.configure(
        &home,
        "[states.namespaces.\"connect:*\"]\ndefault_ttl_seconds = 1\n",
    );
    let d = home.start();
    let authorize = start_flow(&d, &key, "bob").await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let callback = peer.approve(&authorize).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 410, "{page}");
    assert!(
        page.contains("expired") && page.contains("go back to it and start again there"),
        "{page}"
    );
    assert!(!page.contains("reconnect="), "{page}");
    assert_eq!(peer.grants("authorization_code").await, 0);
}

async fn delete_revokes_at_the_provider_then_forgets_the_connection(home: Home) {
    let (peer, key, d) = connected_alice(&home, 60, "").await;
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    let access = token["access_token"].as_str().unwrap().to_owned();
    assert!(peer.is_active(&access).await);
    let resp = d.delete("/v1/connections/peer/alice", &key).await;
    assert_eq!(resp.status(), 204);
    assert!(
        !peer.is_active(&access).await,
        "the provider still honours the token"
    );
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 404);
}

/// Two connections signed in as the same user at the provider, in one browser, share the
/// provider's grant, which revoking one's tokens ends. The other went on looking active
/// until its next refresh (an hour on with hour-long tokens), and only then turned
/// `needs_reauth`. Now the disconnect refreshes it at once: it says so then, with its
/// event. (The page's question names it before.)
async fn a_disconnect_checks_at_once_the_connections_that_share_its_grant(home: Home) {
    let (peer, key, d) = connected_twice_from_one_browser(&home).await;
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    let access = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        d.delete("/v1/connections/peer/bob", &key).await.status(),
        204
    );
    // The provider ended the grant, peer/alice's token with it.
    assert!(
        !peer.is_active(&access).await,
        "the grant outlived the revocation"
    );
    let path = "/v1/connections/peer/alice";
    let mut status = serde_json::Value::Null;
    for _ in 0..50 {
        status = d.get(path, &key).await.1["status"].clone();
        if status == "needs_reauth" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "needs_reauth", "peer/alice still looks active");
    assert!(
        home.log_text().contains(
            "peer/alice is the same account at peer, whose grant the revocation may have ended"
        ),
        "{}",
        home.log_text()
    );
}

/// `peer/alice` and `peer/bob`, connected from one browser signed in at the provider once:
/// the same account there, sharing its grant.
async fn connected_twice_from_one_browser(home: &Home) -> (Peer, String, Daemon) {
    let (peer, key, d) = serving(home, 3600, "");
    let browser = Peer::browser();
    for account in ["alice", "bob"] {
        let authorize = d.start_connect(&key, "peer", account).await;
        let callback = peer.approve_in(&browser, &authorize).await;
        let (status, page, _) = d.browser_get(&callback).await;
        assert_eq!(status, 200, "{account}: {page}");
        // The browser signed in at the provider once: the page says as whom each time,
        // and the second time that it is the first connection's account again.
        let who = "signed in at <strong>peer</strong> as <strong>alice</strong>";
        assert!(page.contains(who), "{page}");
        // An app's flow, whose key may not reach the others: their names are not said.
        let again = "this is the same account at peer as 1 other connection(s): the browser was most likely still signed in there";
        assert_eq!(page.contains(again), account == "bob", "{page}");
        assert!(!page.contains("same account at peer as <strong>"), "{page}");
    }
    (peer, key, d)
}

/// Two tables of one provider (the same issuer and client: a paste-back table beside a
/// callback one, say) connected from one browser share one grant at the provider. The
/// delete of one asked nothing and revoked the other's grant unsaid: the connections that
/// share it were looked for under its own table only. Both tables count now.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_shared_across_two_tables_of_one_provider_is_named_before_it_is_revoked() {
    let peer = Peer::start(3600);
    let home = Home::new();
    home.write_config(&format!(
        "{}\n{}",
        peer.provider_toml("peer"),
        peer.provider_toml("direct")
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let browser = Peer::browser();
    for (table, account) in [("peer", "alice"), ("direct", "bob")] {
        let authorize = d.start_connect(&key, table, account).await;
        let callback = peer.approve_in(&browser, &authorize).await;
        let (status, page, _) = d.browser_get(&callback).await;
        assert_eq!(status, 200, "{table}/{account}: {page}");
    }
    let out = home.cli(&["connections", "delete", "direct", "bob"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("peer/alice is the same account") && said.contains("give --yes"),
        "{said}"
    );
    assert_eq!(d.get("/v1/connections/direct/bob", &key).await.0, 200);
    let out = home.cli(&["connections", "delete", "direct", "bob", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    // The other table's connection is refreshed at once, and found without a grant.
    let (_, alice) = d.get("/v1/connections/peer/alice", &key).await;
    assert_eq!(alice["status"], "needs_reauth", "{alice}");
}

/// `connections delete` from the terminal names the connections whose grant it would
/// revoke too, and in a terminal asks first: a "no" deletes nothing. A script (no
/// terminal) deletes nothing without `--yes` (exit 1): it went on, exit 0, and the other
/// connection needed reconnecting unseen. It revoked them without a word (the page asks).
async fn the_terminal_asks_before_revoking_a_grant_other_connections_share(home: Home) {
    let (_peer, key, d) = connected_twice_from_one_browser(&home).await;
    let told = "peer/alice is the same account at peer as peer/bob";
    // In a terminal (`script` gives the command one), answered "n".
    let cli = home.cli_command(&["connections", "delete", "peer", "bob"]);
    let line: Vec<String> = std::iter::once(cli.get_program())
        .chain(cli.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let mut in_terminal = std::process::Command::new("script");
    in_terminal
        .args(["-qec", &line.join(" "), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in cli.get_envs() {
        match value {
            Some(v) => in_terminal.env(name, v),
            None => in_terminal.env_remove(name),
        };
    }
    let mut child = in_terminal.spawn().expect("script (util-linux)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"n\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(told) && shown.contains("anyway? [y/N]"),
        "{shown}"
    );
    assert!(shown.contains("nothing was deleted"), "{shown}");
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 200);
    // Without a terminal: said, and nothing deleted without --yes.
    let out = home.cli(&["connections", "delete", "peer", "bob"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(told) && said.contains("give --yes"), "{said}");
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 200);
    let out = home.cli(&["connections", "delete", "peer", "bob", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 404);
}

async fn database_and_log_hold_no_token_secret_or_full_state(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let authorize = start_flow(&d, &key, "alice").await;
    let authorize = authorize.clone();
    let state = reqwest::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let callback = peer.approve(&authorize).await;
    assert_eq!(d.browser_get(&callback).await.0, 200);
    let mut tokens = Vec::new();
    for min_ttl in [0, 120, 120] {
        let (_, t) = d
            .get(
                &format!("/v1/connections/peer/alice/token?min_ttl={min_ttl}"),
                &key,
            )
            .await;
        tokens.push(t["access_token"].as_str().unwrap().to_owned());
    }
    d.signal_and_wait("TERM");
    let db = home.stored_bytes();
    let log = home.log_text();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(&db, "alice"), "the backend's files were not read");
    for t in &tokens {
        assert!(!contains(&db, t), "access token in the database file");
        assert!(!log.contains(t.as_str()), "access token in the log");
    }
    for secret in [common::peer::CLIENT_SECRET, state.as_str(), key.as_str()] {
        assert!(!contains(&db, secret), "{secret:.8}… in the database file");
        assert!(!log.contains(secret), "{secret:.8}… in the log");
    }
    // Named by its id (its value's first characters are only its creation time).
    assert!(
        !log.contains(&state[..8]),
        "log lines name the state by its value's first characters"
    );
    assert!(
        log.contains("connect peer/alice: flow started by API key \"app\", state id "),
        "log lines should name the state by its id: {log}"
    );
    assert!(
        !log.contains("code="),
        "an authorization code reached the log"
    );
}

async fn background_refresher_renews_tokens_before_they_expire(home: Home) {
    let (peer, key, d) = connected_alice(&home, 4, "refresh_check_seconds = 1\n").await;
    // Nobody asks for a token; the refresher must renew it at half its 4 s life.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while peer.grants("refresh_token").await < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        peer.grants("refresh_token").await >= 2,
        "the refresher did not renew the token"
    );
    assert_eq!(peer.grant_errors("refresh_token").await, 0);
    let before = peer.grants("refresh_token").await;
    let (status, token) = d
        .get("/v1/connections/peer/alice/token?min_ttl=1", &key)
        .await;
    assert_eq!(status, 200, "{token}");
    assert!(
        peer.is_active(token["access_token"].as_str().unwrap())
            .await
    );
    assert!(peer.grants("refresh_token").await <= before + 1);
    assert!(home.log_text().contains("refresher: renewed"));
}

async fn admin_signs_in_with_the_printed_link_and_connects_from_the_browser(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Not signed in: no data, no flows.
    let resp = browser
        .get(format!("{}/ui/api/overview", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = browser
        .post(format!("{}/ui/api/connect/peer", d.url))
        .json(&json!({"account": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let link = home.login_link(&d);
    assert!(
        link.starts_with(&format!("{}/admin/login?token=", d.url)),
        "{link}"
    );
    // Opening the link shows a button; pressing it (a POST) signs in.
    let page = browser.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let token = common::query_param(&link, "token");
    let resp = browser
        .post(format!("{}/admin/login", d.url))
        .header("sec-fetch-site", "same-origin")
        .form(&[("link", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = common::header(&resp, "set-cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // One-time: the same link does not work twice.
    let again = d
        .post_form("/admin/login", &[("link", token.as_str())], None)
        .await;
    assert_eq!(again.status(), 401);

    let index = browser.get(format!("{}/", d.url)).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let csp = common::header(&index, "content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(index.headers().get("x-frame-options").unwrap(), "DENY");
    let overview: serde_json::Value = browser
        .get(format!("{}/ui/api/overview", d.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        overview["providers"][0]["redirect_uri"],
        format!("{}/callback/peer", d.url)
    );
    assert_eq!(overview["providers"][0]["device"], true);
    let csrf = overview["csrf"].as_str().unwrap().to_owned();

    // State-changing calls need the session's CSRF token.
    let start = |token: &str| {
        browser
            .post(format!("{}/ui/api/connect/peer", d.url))
            .header("x-csrf-token", token)
            .json(&json!({"account": "bob"}))
            .send()
    };
    let refused = start("not-the-token").await.unwrap();
    assert_eq!(refused.status(), 403);
    let malformed = browser
        .post(format!("{}/ui/api/connect/peer", d.url))
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    common::assert_code(malformed, "malformed_json").await;
    let resp = start(&csrf).await.unwrap();
    assert_eq!(resp.status(), 201);
    let started: serde_json::Value = resp.json().await.unwrap();
    let to_provider = started["authorize_url"].as_str().unwrap().to_owned();
    assert!(to_provider.starts_with(&peer.issuer), "{to_provider}");
    let callback = peer.approve(&to_provider).await;
    // Back in the browser that started it, signed in (a flow started on the page finishes
    // nowhere else).
    let back = browser.get(&callback).send().await.unwrap();
    assert_eq!(back.status(), 200);

    let out = home.cli(&["connections", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("peer") && listed.contains("bob") && listed.contains("active"),
        "{listed}"
    );
    let (_, token) = d.get("/v1/connections/peer/bob/token", &key).await;
    let access = token["access_token"].as_str().unwrap().to_owned();
    let out = home.cli(&["connections", "show", "peer", "bob"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "active");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&access));
    let out = home.cli(&["connections", "delete", "peer", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !peer.is_active(&access).await,
        "the CLI delete did not revoke"
    );
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_limited_to_other_providers_cannot_reach_connections() {
    let (peer, home, key) = setup(60, "");
    let other = home.create_key("other", &["provider:spotify"]);
    let scoped = home.create_key("scoped", &["provider:peer"]);
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let (status, problem) = d.get("/v1/connections/peer/alice/token", &other).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("namespace_not_allowed"))
    );
    assert_eq!(d.post("/v1/connect/peer", &other, json!({})).await.0, 401);
    let (_, list) = d.get("/v1/connections", &other).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 0);
    assert_eq!(
        d.get("/v1/connections/peer/alice/token", &scoped).await.0,
        200
    );
    let (status, problem) = d.get("/v1/connections/nope/alice/token", &key).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("unknown_provider"))
    );
    // A key limited to other providers learns nothing of which are configured: the
    // same 401 for one that is (peer) and one that is not (nope).
    for provider in ["peer", "nope"] {
        let (status, problem) = d
            .get(&format!("/v1/connections/{provider}/alice/token"), &other)
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (401, Some("namespace_not_allowed")),
            "{provider}"
        );
    }
    // A name no provider can have is configured for no key: 404 for every key, on every
    // route that names a provider, never a 401 that blames the key.
    for (k, method, path) in [
        (&key, "GET", "/v1/connections/%FF/alice/token"),
        (&key, "GET", "/v1/connections/a%20b/alice"),
        (&key, "POST", "/v1/connect/%FF"),
        (&key, "POST", "/v1/device/-peer"),
        (&key, "GET", "/v1/proxy/%FF/alice/me"),
        (&other, "GET", "/v1/connections/%FF/alice/token"),
    ] {
        let (status, problem) = if method == "GET" {
            d.get(path, k).await
        } else {
            d.post(path, k, json!({})).await
        };
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("unknown_provider")),
            "{method} {path}: {problem}"
        );
    }
    let (status, problem) = d.get("/v1/connections/peer/nobody/token", &key).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("connection_not_found"))
    );
    // A name no connection can have is a bad request on every connection path, as on
    // `PUT`, and the answer quotes at most 64 of its characters, control ones escaped.
    let long = "a".repeat(7_000);
    for account in ["%1b%5b31mX%0aFAKE", "a%2Fb", "%00", long.as_str()] {
        for path in ["", "/token"] {
            let url = format!("/v1/connections/peer/{account}{path}");
            let (status, problem) = d.get(&url, &key).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (400, Some("invalid_account")),
                "{url}: {problem}"
            );
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.len() < 200 && !detail.chars().any(char::is_control),
                "{detail:?}"
            );
        }
        let resp = d
            .delete(&format!("/v1/connections/peer/{account}"), &key)
            .await;
        assert_eq!(resp.status(), 400);
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_account");
    }
    let (status, problem) = d
        .post("/v1/connect/peer", &key, json!({"account": "bad name"}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_account"))
    );
    let (status, problem) = d
        .post(
            "/v1/connect/peer",
            &key,
            json!({"return_to": "https://evil.example/"}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("return_to_not_allowed"))
    );
    // Where the allowlist is set, said (it was named only).
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`return_to_allowlist = [") && detail.contains("config file"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_return_to_gets_a_303_after_connecting() {
    let (peer, home, key) = setup(60, "return_to_allowlist = [\"http://127.0.0.1:9/app/\"]\n");
    let d = home.start();
    let callback = approved_with_return_to(&d, &peer, &key).await;
    let (status, _, location) = d.browser_get(&callback).await;
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("http://127.0.0.1:9/app/done"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_database_refresh_a_connection_once() {
    let (peer, home, key) = setup(3, "");
    let a = home.start();
    let b = home.start();
    assert_eq!(connect(&a, &peer, &key, "alice").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    common::peer::twenty_token_calls_refresh_once(&peer, &[&a, &b], &key).await;
}

/// Key ids of the sealed tokens stored for every connection.
fn sealed_key_ids(home: &Home) -> std::collections::BTreeSet<String> {
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT access_token, refresh_token FROM connections")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        })
        .unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for row in rows {
        let (a, r) = row.unwrap();
        ids.extend(oauthd::vault::sealed_key_id(&a));
        ids.extend(r.as_deref().and_then(oauthd::vault::sealed_key_id));
    }
    ids
}

fn key_file_ids(home: &Home) -> Vec<String> {
    let mut path = home.db().into_os_string();
    path.push(".key");
    oauthd::vault::key_ids(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Each key line of the key file names its key's id after it (`# id …`), the id `rekey`,
/// `check` and a refused start name keys by: nothing told which line was which. Returns
/// the ids with their lines.
fn key_lines_name_their_ids(home: &Home) -> Vec<(usize, String)> {
    let mut path = home.db().into_os_string();
    path.push(".key");
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (key, comment) = line.split_once('#').unwrap_or((line, ""));
        if key.trim().is_empty() {
            continue;
        }
        let id = oauthd::vault::key_ids(key).unwrap().remove(0);
        assert_eq!(comment.trim(), format!("id {id}"), "line {}: {text}", i + 1);
        found.push((i + 1, id));
    }
    found
}

/// `check` lists the key file's keys by id and line, the first as the one that seals.
fn check_lists(home: &Home, keys: &[(usize, String)]) {
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let said = report
        .lines()
        .find(|l| l.starts_with("ok    key file: "))
        .unwrap_or_else(|| panic!("{report}"));
    let ((line, sealing), older) = keys.split_first().expect("a key");
    let mut expected = format!("(mode 600); key(s) {sealing} on line {line} (seals)");
    for (line, id) in older {
        expected += &format!(", {id} on line {line}");
    }
    assert!(said.ends_with(&expected), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_moves_every_token_to_a_new_key_while_the_server_runs() {
    let (peer, home, key) = setup(3, "");
    let d = home.start();
    for account in ["alice", "bob"] {
        assert_eq!(connect(&d, &peer, &key, account).await.0, 200);
    }
    let original = key_file_ids(&home);
    assert_eq!(original.len(), 1);
    assert_eq!(sealed_key_ids(&home), original.iter().cloned().collect());
    let lines = key_lines_name_their_ids(&home);
    assert_eq!(lines.len(), 1);
    check_lists(&home, &lines);

    let out = home.cli(&["rekey"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = key_file_ids(&home);
    assert_eq!(ids.len(), 2, "new key first, old key kept");
    assert_eq!(ids[1], original[0]);
    let lines = key_lines_name_their_ids(&home);
    assert_eq!(
        lines.iter().map(|(_, id)| id).collect::<Vec<_>>(),
        [&ids[0], &ids[1]]
    );
    check_lists(&home, &lines);
    assert_eq!(
        sealed_key_ids(&home),
        [ids[0].clone()].into_iter().collect(),
        "tokens not re-sealed"
    );

    // The running server opens the re-sealed tokens and seals new ones with the new key.
    for account in ["alice", "bob"] {
        let (status, body) = d
            .get(
                &format!("/v1/connections/peer/{account}/token?min_ttl=0"),
                &key,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let (status, body) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "refresh after rekey: {body}");
    assert!(peer.is_active(body["access_token"].as_str().unwrap()).await);
    assert_eq!(
        sealed_key_ids(&home),
        [ids[0].clone()].into_iter().collect()
    );

    let out = home.cli(&["rekey", "--prune"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(key_file_ids(&home), vec![ids[0].clone()]);
    assert_eq!(key_lines_name_their_ids(&home).len(), 1);
    d.signal_and_wait("TERM");
    let d = home.start();
    let (status, _) = d
        .get("/v1/connections/peer/bob/token?min_ttl=0", &key)
        .await;
    assert_eq!(
        status, 200,
        "the pruned key file no longer opens the tokens"
    );
}

/// A database restored from a copy made before `rekey --prune` needs a key the prune
/// removed: the refusal to start names the copy of the key file the prune kept, which
/// holds it, and so does the restore itself (it said it restored, and that `check` would
/// tell whether the key file opens the copy).
#[tokio::test(flavor = "multi_thread")]
async fn a_start_on_a_copy_from_before_a_prune_names_the_key_file_the_prune_kept() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    let needed = key_file_ids(&home);
    for args in [&["rekey"][..], &["rekey", "--prune"]] {
        let out = home.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    d.signal_and_wait("TERM");
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let kept = format!("{}.before-prune-", home.key_file().display());
    assert!(
        said.contains(&format!(
            "does not have key(s) {}, which the copy's tokens were sealed with",
            needed[0]
        )) && said.contains(&kept),
        "{said}"
    );
    let mut serve = home
        .cli_command(&["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serve.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = serve.kill();
    let out = serve.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("`oauthd rekey --prune` kept the key file as it was before in ")
            && said.contains(&kept)
            && said.contains(&format!("add the line(s) of key(s) {} from it", needed[0])),
        "{said}"
    );
}

/// Root rekeying the key file of a service that runs as its own user (systemd's
/// DynamicUser) leaves the file that user's, not root's: the service reads it again on its
/// next start.
#[test]
fn rekey_keeps_the_key_files_owner() {
    use std::os::unix::fs::MetadataExt;
    let home = Home::new();
    let d = home.start();
    assert!(d.signal_and_wait("TERM").success());
    let mut key_file = home.db().into_os_string();
    key_file.push(".key");
    std::os::unix::fs::chown(&key_file, Some(65534), Some(65534)).unwrap();
    let out = home.cli(&["rekey"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(key_file_ids(&home).len(), 2);
}

/// A home whose key file is kept in a directory of its own (`secrets/vault.key`, the path
/// given back) and linked where oauthd reads it.
fn key_file_behind_a_link() -> (Home, std::path::PathBuf) {
    let home = Home::new();
    assert!(home.start().signal_and_wait("TERM").success());
    let secrets = home.dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let kept = secrets.join("vault.key");
    std::fs::rename(home.key_file(), &kept).unwrap();
    std::os::unix::fs::symlink(&kept, home.key_file()).unwrap();
    (home, kept)
}

/// A key file kept elsewhere (a secrets directory) and linked where oauthd reads it: rekey
/// replaced the link with a file of its own, and the file kept there never held the new
/// key that tokens were sealed with from then on.
#[test]
fn rekey_writes_through_a_linked_key_file() {
    let (home, kept) = key_file_behind_a_link();
    let out = home.cli(&["rekey"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = std::fs::symlink_metadata(home.key_file()).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let ids = oauthd::vault::key_ids(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(key_file_ids(&home), ids);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// One rotation at a time holds through a link too: a rekey given the link and one given
/// the file it leads to each locked the directory of the path they were given, both ran,
/// and each said its own new key sealed.
#[tokio::test(flavor = "multi_thread")]
async fn one_rekey_at_a_time_through_a_link_or_by_the_files_own_name() {
    let (home, kept) = key_file_behind_a_link();
    // Served: a rekey waits for the serving oauthd to take up the new key.
    let d = home.start();
    let first = home
        .cli_command(&["rekey"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Under way once it added its key (a fixed wait could start the second first).
    let added = common::eventually(std::time::Duration::from_secs(10), || {
        key_file_ids(&home).len() == 2
    })
    .await;
    assert!(added, "the first rekey added no key");
    let second = home
        .cli_command(&["rekey"])
        .env("OAUTHD_KEY_FILE", &kept)
        .output()
        .unwrap();
    let first = common::exit_of(first);
    assert!(first.status.success(), "{first:?}");
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(
        said.contains("another `oauthd rekey` is rotating"),
        "{said}"
    );
    assert_eq!(key_file_ids(&home).len(), 2);
    d.signal_and_wait("TERM");
}

#[test]
fn rekey_refuses_a_key_from_the_environment() {
    let home = Home::new();
    let out = std::process::Command::new(common::BIN)
        .args(["rekey", "--db"])
        .arg(home.db())
        .env(
            "OAUTHD_KEY",
            oauthd::vault::generate_key_text().unwrap().as_str(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OAUTHD_KEY_FILE"));
}

/// A delete from the command line while the provider cannot be reached (its discovery
/// fails in the new process) keeps the connection, and says how to delete it anyway.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_while_the_provider_is_down_says_how_to_force_it() {
    let home = Home::new();
    let (peer, _key, d) = connected_alice(&home, 60, "").await;
    d.signal_and_wait("TERM");
    drop(peer);
    let out = home.cli(&["connections", "delete", "peer", "alice"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nothing was deleted") && err.contains("--force"),
        "{err}"
    );
    let out = home.cli(&["connections", "delete", "--force", "peer", "alice"]);
    assert!(out.status.success(), "{out:?}");
    // Said once, without the advice to force it that it follows.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not be revoked") && err.contains("deleting anyway (force)"),
        "{err}"
    );
    assert!(!err.contains("nothing was deleted"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_key_file_stops_the_start_instead_of_sealing_with_a_new_key() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    d.signal_and_wait("TERM");
    let mut key_file = home.db().into_os_string();
    key_file.push(".key");
    std::fs::remove_file(&key_file).unwrap();
    let out = home.serve_once();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restore the key file that was used"), "{err}");
    assert!(err.contains(&*key_file.to_string_lossy()), "{err}");
    // No new key file was made where the real one must be put back.
    assert!(
        !std::path::Path::new(&key_file).exists(),
        "a new key file was made"
    );

    // A wrong key file names where the key it has came from.
    std::fs::write(
        &key_file,
        oauthd::vault::generate_key_text().unwrap().as_str(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = home.serve_once();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let from = format!("loaded from {}", key_file.to_string_lossy());
    assert!(
        err.contains("restore the key that was used") && err.contains(&from),
        "{err}"
    );
    // check names the same key ids as the start.
    let needed = err
        .split_once("sealed with vault key(s) ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(ids, _)| ids.to_owned())
        .expect("the start names the key");
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "FAIL  vault: 1 connection(s) sealed with key(s) {needed} that"
        )) && report.contains("restore the key that was used"),
        "{report}"
    );
}

/// During a rotation (a new key first in the key file, the tokens still sealed with the old
/// one), `check` names the key the tokens need as well as the one that seals next: it
/// named only the latter, inviting the removal of a line still needed.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_keys_the_tokens_are_sealed_with() {
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    d.signal_and_wait("TERM");
    let old = std::fs::read_to_string(home.key_file()).unwrap();
    let keygen = std::process::Command::new(common::BIN)
        .arg("keygen")
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let new_id = String::from_utf8_lossy(&keygen.stderr)
        .split_whitespace()
        .find(|w| w.len() == 8 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("keygen names the key's id")
        .to_owned();
    let before = String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    let old_id = before
        .split("sealed with key(s) ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the key the tokens are sealed with")
        .to_owned();
    std::fs::write(
        home.key_file(),
        format!("{}{old}", String::from_utf8_lossy(&keygen.stdout)),
    )
    .unwrap();
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!(
            "opens all 1 connection(s), sealed with key(s) {old_id} (each needed while one is sealed with it); new ones are sealed with {new_id}"
        )),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_database_key_file_and_providers() {
    use std::os::unix::fs::PermissionsExt;
    let (peer, home, key) = setup(60, "");
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("ok    store: database") && report.contains("passes integrity_check"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "ok    vault: {} opens all 1 connection(s)",
            home.key_file().display()
        )),
        "{report}"
    );
    assert!(
        report.contains("ok    provider peer: token endpoint"),
        "{report}"
    );
    assert!(!report.contains("not among those"), "{report}");
    // A misspelled scope asks for nothing: the provider's metadata says it does not know it.
    home.write_config(
        &peer
            .provider_toml("peer")
            .replace("\"offline_access\"", "\"offline_acces\""),
    );
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "a warning fails nothing: {report}");
    assert!(
        report.contains("warn  provider peer: scope(s) offline_acces are not among those the provider's metadata lists (")
            && report.contains("check the spelling in [providers.peer] scopes"),
        "{report}"
    );

    let mut key_file = home.db().into_os_string();
    key_file.push(".key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    home.write_config(&format!(
        "{}\n[providers.down]\nauthorization_url = \"http://127.0.0.1:9/auth\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"x\"\nclient_auth = \"none\"\n",
        peer.provider_toml("peer")
    ));
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("warn  key file:") && report.contains("chmod 600"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  provider down: token endpoint http://127.0.0.1:9/token unreachable"),
        "{report}"
    );
}

/// The callback of an app's flow that meets a store not answering (here the database held
/// locked by another process past the busy timeout) uses nothing up: the page says to
/// reload, the browser keeps the flow's cookie, and the reload connects. The cookie used to
/// be cleared whatever the outcome, and the reload was refused as "not confirmed in this
/// browser", its state spent.
#[tokio::test(flavor = "multi_thread")]
async fn a_callback_that_meets_a_store_not_answering_connects_on_reload() {
    let home = Home::new();
    let (peer, key, d) = serving(&home, 3600, "");
    let authorize = d.start_connect(&key, "peer", "alice").await;
    let callback = peer.approve(&authorize).await;
    // A browser: it keeps what oauthd's answers set, and drops what they clear.
    let browser = reqwest::Client::builder()
        .cookie_provider(d.flow_cookies.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut locker = common::SqliteShell::open(&home.db());
    assert_eq!(locker.query("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
    let resp = browser.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let page = resp.text().await.unwrap();
    assert!(page.contains("reload this page"), "{page}");
    assert_eq!(locker.query("ROLLBACK; SELECT 'free';"), "free");
    let resp = browser.get(&callback).send().await.unwrap();
    let status = resp.status();
    let page = resp.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    let held = common::held_value(&page).unwrap_or_else(|| panic!("{page}"));
    let (status, page, _) = common::press_connect(&callback, &held).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is connected"), "{page}");
    assert_eq!(
        d.get("/v1/connections/peer/alice", &key).await.1["status"],
        "active"
    );
}

/// A provider (its tokens living `ttl` seconds) whose token answers go through a relay,
/// and alice connected to it through a running oauthd that refreshes only when asked.
async fn alice_behind_a_relay(ttl: u64) -> (Peer, common::relay::Relay, Home, String, Daemon) {
    let peer = Peer::start(ttl);
    let (relay, provider) = peer.behind_relay("peer").await;
    let home = Home::new();
    home.write_config(&format!("refresh_check_seconds = 3600\n{provider}"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    (peer, relay, home, key, d)
}

/// `oauthd connections refresh` stopped (Ctrl-C, `timeout`'s SIGTERM, a lost terminal's
/// SIGHUP) while the provider
/// answered ended at once: the refresh token the provider had just rotated was never saved,
/// the next refresh sent the old one, and the provider ended the grant (`needs_reauth`).
/// The refresh under way ends and is saved first now.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_refresh_stopped_by_a_signal_saves_what_the_provider_answered() {
    use common::relay::Fault;
    let (peer, relay, home, _key, d) = alice_behind_a_relay(60).await;
    d.signal_and_wait("TERM");
    let refused_before = peer.grant_errors("refresh_token").await;

    relay.arm(
        "grant_type=refresh_token",
        Fault::Hold(std::time::Duration::from_secs(3)),
    );
    let cli = home
        .cli_command(&["connections", "refresh", "peer", "alice"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // At the provider once the relay holds it (a fixed wait could signal before the
    // command got there), which has rotated the refresh token; its answer is held. The
    // terminal it ran in goes away (an SSH session lost): SIGHUP, twice (the shell's, then
    // the kernel's as the session ends), which is no person insisting.
    let held = relay.struck(std::time::Duration::from_secs(20)).await;
    assert!(held, "the refresh never reached the provider");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    common::signal(cli.id(), "HUP");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    common::signal(cli.id(), "HUP");
    let out = common::exit_of(cli);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {said}", out.status);
    assert!(
        said.contains("stopping once what the provider is asked now is answered and saved")
            && said.contains("Refreshed peer/alice"),
        "{said}"
    );
    // The rotated refresh token was kept: the next refresh works.
    let again = home.cli(&["connections", "refresh", "peer", "alice"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(peer.grant_errors("refresh_token").await, refused_before);
}

/// A token's lifetime counts from when oauthd asked for it. Counted from the provider's
/// answer, it outlasted the token by as long as the answer took: with a refresh answered
/// after 8 s, `min_ttl=5` got a token with 3 s left and `min_ttl=0` one the provider had
/// already expired. A refresh answered after 3 s here: the `expires_at` handed out is
/// not later than the request plus the token's 10 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_answered_late_counts_the_tokens_lifetime_from_the_request() {
    use common::relay::Fault;
    let (_peer, relay, _home, key, d) = alice_behind_a_relay(10).await;
    // Past half the token's life: a call asking 5 s refreshes it.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    relay.arm(
        "grant_type=refresh_token",
        Fault::Hold(std::time::Duration::from_secs(3)),
    );
    let asked = chrono::Utc::now();
    let (status, body) = d
        .get("/v1/connections/peer/alice/token?min_ttl=5", &key)
        .await;
    assert_eq!(status, 200, "{body}");
    let answered = chrono::Utc::now();
    assert!(
        answered - asked >= chrono::Duration::seconds(3),
        "the refresh was not held: {body}"
    );
    let expires_at = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        expires_at <= asked + chrono::Duration::milliseconds(10_500),
        "expires {expires_at}, asked at {asked}: counted from the answer at {answered}"
    );
}

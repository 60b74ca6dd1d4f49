//! Traps an operator falls into in the first weeks: a provider taken out of the config, a
//! second oauthd on the same database, a CLI device flow stopped halfway.

use crate::common;

use common::peer::Peer;
use common::{Daemon, Home, BIN};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connects peer/`account` over the API and the test provider.
async fn connect(d: &Daemon, peer: &Peer, key: &str, account: &str) {
    let (status, page) = common::peer::connect(d, peer, key, account).await;
    assert_eq!(status, 200, "{page}");
}

/// A scrape while another process holds the write lock says the store is not ready, and
/// still counts the connections (reads answer under a lock, and a dashboard of connections
/// or of deliveries piling up should not freeze when writes are refused).
#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_under_a_write_lock_counts_the_connections_and_says_not_ready() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    connect(&d, &peer, &key, "alice").await;
    let mut locker = common::SqliteShell::open(&home.db());
    assert_eq!(locker.query("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
    let (status, body) = d.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    let metrics = d.metrics_text().await;
    assert_eq!(locker.query("ROLLBACK; SELECT 'free';"), "free");
    assert!(locker.close().success());
    assert!(metrics.contains("\noauthd_storage_ready 0\n"), "{metrics}");
    assert!(
        metrics.contains("oauthd_connections{provider=\"peer\",status=\"active\"} 1"),
        "{metrics}"
    );
    assert_eq!(d.metric("oauthd_storage_ready").await, Some(1.0));
    d.signal_and_wait("TERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_of_a_removed_provider_are_listed_and_can_be_deleted() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    connect(&d, &peer, &key, "alice").await;
    connect(&d, &peer, &key, "bob").await;
    connect(&d, &peer, &key, "living-room-speaker-2").await;
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    d.signal_and_wait("TERM");

    // bob's grant was gone before (needs_reauth), then the operator removes the provider
    // from the config.
    let db = rusqlite::Connection::open(home.db()).unwrap();
    let changed = db
        .execute(
            "UPDATE connections SET status = 'needs_reauth' WHERE account = 'bob'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    home.write_config("");
    let d = home.start();
    let (status, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert_eq!(status, 200, "{conn}");
    assert_eq!(conn["status"], "provider_missing");
    // No link to reconnect where nothing can reconnect it.
    let (_, bob) = d.get("/v1/connections/peer/bob", &key).await;
    assert_eq!(bob["status"], "provider_missing");
    assert!(bob.get("reconnect_url").is_none(), "{bob}");
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains("oauthd_connections{provider=\"peer\",status=\"provider_missing\"} 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("status=\"active\"} "), "{metrics}");
    // The list keeps its columns whatever the names and the status.
    let out = home.cli(&["connections", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "{listed}");
    assert!(listed.contains("provider_missing"), "{listed}");
    for name in ["ACCOUNT", "STATUS", "TOKEN EXPIRES"] {
        let at = lines[0].find(name).unwrap();
        for line in &lines[1..] {
            assert!(
                line[..at].ends_with("  ") && !line[at..].starts_with(' '),
                "column {name} not aligned:\n{listed}"
            );
        }
    }

    let resp = d.delete("/v1/connections/peer/alice", &key).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (&body["revoked"], &body["reason"]),
        (&json!(false), &json!("provider_missing")),
        "{body}"
    );
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("is not configured (not in the config given)"));
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 404);
    // Nothing was revoked at the provider (the answer said so).
    assert!(peer.is_active(&token).await);

    // From the terminal, only when told it revokes nothing there.
    let out = home.cli(&["connections", "delete", "peer", "bob"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = home.cli(&["connections", "delete", "peer", "bob", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not configured (not in the config given)"),
        "{said}"
    );
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 404);
}

/// A child process killed (by PID) and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_oauthd_without_the_provider_leaves_device_flows_alone() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let with = home.start();
    let start = with.start_device(&key, "peer", "tv").await;
    let id = start["id"].as_str().unwrap().to_owned();

    // Another process on the same database, whose config lacks the provider.
    let other = Home::new();
    other.write_config("");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(home.db())
        .arg("--config")
        .arg(other.config())
        .env_remove("OAUTHD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Stopped by PID when the test ends, whether it passes or not.
    let _without = KillOnDrop(cmd.spawn().unwrap());
    // Long enough for it to start, look at pending flows and reach the flow's first poll.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, body) = with.get(&format!("/v1/device/peer/{id}"), &key).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("pending")),
        "{body}"
    );

    let page = peer
        .verify_device(start["user_code"].as_str().unwrap(), true)
        .await;
    assert!(page.contains("Sign-in Success"), "{page}");
    let (status, body) = with
        .wait_device(&key, "peer", &id, Duration::from_secs(20))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("connected")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_finishes_a_device_flow_the_cli_started_and_left() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut cli = KillOnDrop(
        Command::new(BIN)
            .args(["connect", "peer", "--device", "--account", "tv", "--db"])
            .arg(home.db())
            .arg("--config")
            .arg(home.config())
            .env_remove("OAUTHD_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = cli.0.stdout.take().unwrap();
    let code = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("and enter the code: ").map(str::to_owned))
        .expect("the CLI shows a code");
    // Ctrl-C: the CLI is gone before the user approves.
    common::signal(cli.0.id(), "INT");
    let _ = cli.0.wait();

    let page = peer.verify_device(&code, true).await;
    assert!(page.contains("Sign-in Success"), "{page}");
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut last = (0, serde_json::Value::Null);
    while Instant::now() < deadline {
        last = d.get("/v1/connections/peer/tv", &key).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last.0, 200,
        "the daemon never finished the flow: {}",
        last.1
    );
    assert_eq!(
        peer.grants("urn:ietf:params:oauth:grant-type:device_code")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_requests_need_no_body_where_every_field_is_optional_and_refuse_unknown_query_parameters(
) {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let resp = d
        .http
        .post(format!("{}/v1/connect/peer", d.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    connect(&d, &peer, &key, "alice").await;
    for (method, path) in [
        ("GET", "/v1/connections/peer/alice/token?minttl=5"),
        ("GET", "/v1/connections?provider=peer"),
        ("DELETE", "/v1/connections/peer/alice?forse=true"),
        ("POST", "/v1/states?namespace=x"),
        // A letter of the path percent-encoded is the same route to the router.
        ("GET", "/v1/connection%73?provider=peer"),
        ("GET", "/v1/connections/peer/alice/t%6Fken?minttl=5"),
    ] {
        let resp = d
            .http
            .request(method.parse().unwrap(), format!("{}{path}", d.url))
            .bearer_auth(&key)
            .json(&json!({"namespace": "app"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method} {path}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            problem["code"], "unknown_parameter",
            "{method} {path}: {problem}"
        );
    }
    // The connection is still there: the misspelt delete did nothing.
    let (status, _) = d
        .get("/v1/connections/peer/alice/token?min_ttl=5", &key)
        .await;
    assert_eq!(status, 200);
    // A path no route serves is no endpoint, whatever its query: 404, not a 400 about
    // what "this endpoint" takes.
    for path in ["/v1/x?a=1", "/v1/connections/peer/alice/tokens?min_ttl=5"] {
        let resp = d.get_raw(path, Some(&key)).await;
        assert_eq!(resp.status(), 404, "{path}");
        common::assert_code(resp, "not_found").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_is_found_before_anyone_is_sent_to_the_provider() {
    let peer = Peer::start(60);
    let home = Home::new();
    let wrong = peer
        .provider_toml("peer")
        .replace(common::peer::CLIENT_SECRET, "not-the-secret");
    home.write_config(&wrong);
    let key = home.create_key("app", &[]);
    let d = home.start();
    let out = home.cli(&["check", "--listen", d.url.trim_start_matches("http://")]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL") && report.contains("refused the client id or secret"),
        "{report}"
    );
    // Said once, not the advice of every other path nested inside the check's own.
    assert!(!report.contains("`oauthd check` tries them"), "{report}");

    // The page's provider card says so too.
    let cookie = d.sign_in(&home.login_link(&d)).await;
    let overview = d.ui_overview(&cookie).await;
    assert_eq!(
        overview["providers"][0]["credentials"]["status"], "refused",
        "{overview}"
    );

    // A user who connects anyway is told what is wrong, with no "start again" that can
    // only fail again.
    let authorize = d.start_connect(&key, "peer", "alice").await;
    let callback = peer.approve(&authorize).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("client_secret"), "{page}");
    assert!(!page.contains("Start again"), "{page}");
    // So is an app starting a device flow (it used to read only "client authentication
    // failed").
    let (status, problem) = d
        .post("/v1/device/peer", &key, json!({"account": "tv"}))
        .await;
    assert_eq!(status, 502, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("client_secret"),
        "{problem}"
    );
    d.signal_and_wait("TERM");

    // With the right secret, check says the credentials were accepted.
    home.write_config(&peer.provider_toml("peer"));
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("client id and secret were accepted"),
        "{report}"
    );
}

/// A refresh refused for a wrong client secret backs off; the operator fixes the secret
/// and restarts, and used to get `503 … failed recently` until the old backoff ran out
/// (up to 10 minutes). A backoff recorded before the start is not waited out: the first
/// call tries again.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_fixing_the_client_secret_refreshes_at_once() {
    let peer = Peer::start(2);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, page) = common::peer::connect(&d, &peer, &key, "alice").await;
    assert_eq!(status, 200, "{page}");
    d.signal_and_wait("TERM");

    let wrong = peer
        .provider_toml("peer")
        .replace(common::peer::CLIENT_SECRET, "not-the-secret");
    home.write_config(&wrong);
    let d = home.start();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let path = "/v1/connections/peer/alice/token";
    for said in ["client_secret", "failed recently"] {
        let (status, body) = d.get(path, &key).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["detail"].as_str().unwrap_or("").contains(said),
            "{body}"
        );
    }
    // The backoff's answer says when the next try is, as its Retry-After does.
    let resp = d.get_raw(path, Some(&key)).await;
    let wait = resp.headers()["retry-after"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&format!("no refresh is tried before {wait} s from now")),
        "{detail}"
    );
    assert!(
        detail.contains("`oauthd connections refresh peer alice` tries at once"),
        "{detail}"
    );
    d.signal_and_wait("TERM");

    // The same with a backoff of ten minutes stored and a lease left by a process that
    // died with it, running 15 s more: the first call waits for it until its
    // provider_timeout (it waited 20 s whatever that was) and gives up, saying when to ask
    // again; a later call takes it over once it ran out. The first call's wait used up the
    // one try (and so did a takeover's wait for a lease that had run out already).
    let mut shell = common::SqliteShell::open(&home.db());
    let now = chrono::Utc::now().timestamp_millis();
    let (ends, retry_at) = (now + 15_000, now + 600_000);
    let changed = shell.query(&format!(
        "UPDATE connections SET lease_until = {ends}, retry_at = {retry_at}; SELECT changes();"
    ));
    assert_eq!(changed, "1");
    assert!(shell.close().success());
    home.write_config(&format!(
        "provider_timeout_seconds = 3\n{}",
        peer.provider_toml("peer")
    ));
    let d = home.start();
    let asked = std::time::Instant::now();
    let resp = d.get_raw(path, Some(&key)).await;
    let waited = asked.elapsed();
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("its lease ends at"),
        "{body}"
    );
    assert!(
        waited < Duration::from_secs(12),
        "answered after {waited:?}, past provider_timeout_seconds = 3"
    );
    assert!(
        (2..=10).contains(&retry_after),
        "Retry-After {retry_after} for a lease with about 10 s left"
    );
    let mut answered = None;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(retry_after.min(3))).await;
        let (status, body) = d.get(path, &key).await;
        if status == 200 {
            answered = Some(body);
            break;
        }
        assert_eq!(status, 503, "{body}");
    }
    assert!(answered.is_some(), "the lease was never taken over");
    d.signal_and_wait("TERM");
}

/// A provider that was down is back, but the refreshes' backoff (up to 10 minutes) keeps
/// the apps' token calls answering 503: `oauthd connections refresh` tries at once, and the
/// serving oauthd hands out the new token.
#[tokio::test(flavor = "multi_thread")]
async fn connections_refresh_tries_at_once_past_the_backoff() {
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mock = MockServer::start().await;
    let down = Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount_as_scoped(&mock)
        .await;
    let home = Home::new();
    home.write_config(&format!(
        "provider_timeout_seconds = 2\n[providers.mock]\nauthorization_url = \"{uri}/authorize\"\ntoken_url = \"{uri}/token\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        uri = mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let expired = json!({"access_token": "at-old", "refresh_token": "rt-old",
                         "expires_at": "2000-01-01T00:00:00Z"});
    let (status, body) = d.put("/v1/connections/mock/alice", &key, expired).await;
    assert_eq!(status, 201, "{body}");
    let path_ = "/v1/connections/mock/alice/token";
    assert_eq!(d.get(path_, &key).await.0, 503);
    drop(down);
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-new", "refresh_token": "rt-new", "token_type": "Bearer",
            "expires_in": 3600})))
        .mount(&mock)
        .await;
    // The provider is back; the serving oauthd waits out its backoff.
    let (status, body) = d.get(path_, &key).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("failed recently"),
        "{body}"
    );

    let out = home.cli(&["connections", "refresh", "mock", "alice"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("Refreshed mock/alice: its access token expires at "),
        "{said}"
    );
    let mut token = serde_json::Value::Null;
    for _ in 0..30 {
        let (status, body) = d.get(path_, &key).await;
        if status == 200 {
            token = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(token["access_token"], "at-new", "{token}");

    // A provider slower than a caller's wait (provider_timeout_seconds): the command waits
    // for the refresh it began, and says how it went: stored, then refused.
    let slow = Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=rt-new"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "access_token": "at-slow", "refresh_token": "rt-slow", "token_type": "Bearer",
                    "expires_in": 3600}))
                .set_delay(Duration::from_secs(4)),
        )
        .with_priority(1)
        .mount_as_scoped(&mock)
        .await;
    let out = home.cli(&["connections", "refresh", "mock", "alice"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("Refreshed mock/alice"), "{said}");
    let mut served = serde_json::Value::Null;
    for _ in 0..30 {
        served = d.get(path_, &key).await.1;
        if served["access_token"] == "at-slow" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served["access_token"], "at-slow", "{served}");
    drop(slow);
    let _refused = Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=rt-slow"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": "server_error", "error_description": "try later"}))
                .set_delay(Duration::from_secs(4)),
        )
        .with_priority(1)
        .mount_as_scoped(&mock)
        .await;
    let out = home.cli(&["connections", "refresh", "mock", "alice"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(said.contains("refreshing mock/alice failed: "), "{said}");
    assert!(!said.contains("goes on waiting"), "{said}");

    // Nothing to refresh with: said, exit 1, nothing changed.
    let bare = json!({"access_token": "at-bare"});
    assert_eq!(d.put("/v1/connections/mock/bob", &key, bare).await.0, 201);
    let out = home.cli(&["connections", "refresh", "mock", "bob"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no refresh token"),
        "{out:?}"
    );
    // No such connection: said first, with no "Refreshing…" before it.
    let out = home.cli(&["connections", "refresh", "mock", "carol"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no connection mock/carol"), "{said}");
    assert!(!said.contains("Refreshing"), "{said}");
    // And with a provider that is not configured, that too.
    let out = home.cli(&["connections", "refresh", "nosuch", "carol"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no provider \"nosuch\" is configured"),
        "{said}"
    );
    assert!(!said.contains("Refreshing"), "{said}");
    // And a name no connection can have.
    let out = home.cli(&["connections", "refresh", "mock", "bad name"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("account"), "{said}");
    assert!(!said.contains("Refreshing"), "{said}");
}

/// A mistyped issuer (its discovery answers 404) is said in the log at start: it used to
/// show only as connect flows and refreshes answering 503, to be tried again, for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_whose_endpoints_cannot_be_found_is_said_at_start() {
    let peer = Peer::start(60);
    let home = Home::new();
    let typo = format!("issuer = \"{}/oidc\"", peer.issuer);
    home.write_config(
        &peer
            .provider_toml("peer")
            .replace(&format!("issuer = \"{}\"", peer.issuer), &typo),
    );
    let d = home.start();
    let said = "provider peer: its endpoints could not be found at start";
    assert!(
        common::eventually(Duration::from_secs(10), || home.log_text().contains(said)).await,
        "{}",
        home.log_text()
    );
    d.signal_and_wait("TERM");
}

/// `check` goes on past a provider it cannot build (a secret file that is not there): that
/// provider fails, the others and the store are still checked.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_provider_it_cannot_build_and_checks_the_rest() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&format!(
        "{}\n[providers.gone]\npreset = \"spotify\"\nclient_id = \"c\"\n\
         client_secret_file = \"/etc/oauthd-test-absent/no-such-secret\"\n",
        peer.provider_toml("peer")
    ));
    home.create_key("app", &[]);
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    // The server does not start with it: the config line says so.
    assert!(
        report.contains("FAIL  config: 2 provider(s)")
            && report.contains("oauthd does not start with it"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  provider gone") && report.contains("no-such-secret"),
        "{report}"
    );
    assert!(
        report.contains("provider peer") && report.contains("client id and secret were accepted"),
        "{report}"
    );
    assert!(report.contains("passes integrity_check"), "{report}");
}

/// A client secret handed over as a systemd credential (`LoadCredential=`, read from
/// `/run/credentials/<unit>/…`) exists only while the unit runs. `check` run beside a
/// stopped unit failed the provider and the config ("oauthd does not start with it"),
/// though the unit's oauthd starts with it. It now says the secret is not checked, and
/// checks the rest of that provider.
#[tokio::test(flavor = "multi_thread")]
async fn check_of_a_stopped_unit_s_credential_warns_and_checks_the_rest() {
    let peer = Peer::start(60);
    let home = Home::new();
    let secret = "/run/credentials/oauthd-test-absent.service/peer";
    home.write_config(&peer.provider_toml("peer").replace(
        &format!("client_secret = \"{}\"", common::peer::CLIENT_SECRET),
        &format!("client_secret_file = \"{secret}\""),
    ));
    home.create_key("app", &[]);
    // systemd's unit directories, as SYSTEMD_UNIT_PATH names them to systemd too.
    let units = home.dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let check = |units: &std::path::Path| {
        let out = home
            .cli_command(&["check"])
            .env("SYSTEMD_UNIT_PATH", units)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // No such unit here (a mistyped name, no systemd): the start would fail, and so does
    // the check, as for any missing file.
    let (status, report) = check(&units);
    assert!(
        !status.success() && report.contains("FAIL  provider peer") && report.contains(secret),
        "{report}"
    );
    std::fs::write(units.join("oauthd-test-absent.service"), "[Service]\n").unwrap();
    let (status, report) = check(&units);
    assert!(
        report.contains("ok    config: 1 provider(s)") && !report.contains("FAIL  provider"),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warn  provider peer: ")
                && l.contains(secret)
                && l.contains("only while its unit runs")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok    provider peer: token endpoint ")
                && l.contains("the client secret is not checked")),
        "{report}"
    );
    assert!(status.success(), "{report}");
    // A path that climbs out of the unit's directory is no credential of it.
    let climbing = "/run/credentials/oauthd-test-absent.service/../../../etc/oauthd-test-absent";
    home.write_config(
        &std::fs::read_to_string(home.config())
            .unwrap()
            .replace(secret, climbing),
    );
    let (status, report) = check(&units);
    assert!(
        !status.success() && report.contains("FAIL  provider peer"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn last_refresh_is_never_until_a_refresh_happens() {
    let peer = Peer::start(2);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    connect(&d, &peer, &key, "alice").await;
    let (_, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert!(conn["last_refresh_at"].is_null(), "{conn}");
    // Two-second tokens: past half their life the token API refreshes first.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 200);
    assert_eq!(peer.grants("refresh_token").await, 1);
    let (_, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert!(conn["last_refresh_at"].is_string(), "{conn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_setting_from_the_environment_follows_one_rule_trimmed_and_empty_is_unset() {
    let home = Home::new();
    // An empty OAUTHD_KEY (a compose file's `OAUTHD_KEY=`) means unset: the key file beside
    // the database is used, as without it.
    let d = home.start_with_env(&[
        ("OAUTHD_KEY", ""),
        ("OAUTHD_ADMIN_TOKEN", "  correct-horse-battery-0123456789\n"),
    ]);
    assert!(home.log_text().contains("created vault key file"));
    // A token pasted with spaces or a newline around it is the token.
    let resp = d
        .post_form(
            "/admin/login",
            &[("token", "correct-horse-battery-0123456789")],
            None,
        )
        .await;
    assert_eq!(resp.status(), 303);
    d.signal_and_wait("TERM");

    // A *_FILE that cannot be read stops oauthd, naming the variable and the path.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(home.db())
        .env("OAUTHD_METRICS_TOKEN_FILE", "/nonexistent/metrics-token")
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OAUTHD_METRICS_TOKEN_FILE") && err.contains("/nonexistent/metrics-token"),
        "{err}"
    );
    // Named once (it was named twice: "OAUTHD_METRICS_TOKEN: OAUTHD_METRICS_TOKEN_FILE: …").
    assert!(!err.contains("OAUTHD_METRICS_TOKEN:"), "{err}");
    // A *_FILE naming an empty file (a credential not filled in yet) stops every command
    // too: taken as unset, it left `/metrics` open, the sign-in form off, or the store on
    // a new SQLite file, without a word.
    let empty = home.dir.path().join("empty-secret");
    std::fs::write(&empty, " \n").unwrap();
    for (var, store) in [
        ("OAUTHD_METRICS_TOKEN_FILE", "sqlite"),
        ("OAUTHD_ADMIN_TOKEN_FILE", "sqlite"),
        ("OAUTHD_STORE_FILE", "sqlite"),
        // Read only for a Redis store (nothing listens there: the file stops it first).
        ("OAUTHD_REDIS_PASSWORD_FILE", "redis://127.0.0.1:9/0"),
    ] {
        for command in ["check", "serve"] {
            let mut cmd = std::process::Command::new(BIN);
            cmd.args([command, "--listen", "127.0.0.1:0", "--db"])
                .arg(home.db());
            if store != "sqlite" {
                cmd.args(["--store", store]);
            }
            let out = cmd
                .env(var, &empty)
                .env_remove("OAUTHD_CONFIG")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{var} {command}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("{var}: {} is empty", empty.display())),
                "{var} {command}: {err}"
            );
        }
    }
    // A value and a file for the same setting: the value is used, as it always was, and
    // the log says the file is ignored (the operator may think it is used).
    // `NAME` set to `value` and `NAME_FILE` naming `file`: the value is used, and the log
    // says the file is ignored, without the value.
    let both_set = |name: &str, value: &str, file: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .args(["keys", "list", "--db"])
            .arg(home.db())
            .env(name, value)
            .env(format!("{name}_FILE"), file)
            .env_remove("OAUTHD_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains(&format!(
                "{name} and {name}_FILE are both set: {name} is used"
            )),
            "{err}"
        );
        assert!(!err.contains(value), "a secret in the message: {err}");
    };
    let token_file = home.dir.path().join("metrics-token");
    std::fs::write(&token_file, "from-the-file-0123456789\n").unwrap();
    both_set(
        "OAUTHD_METRICS_TOKEN",
        "from-the-variable-0123456789",
        &token_file,
    );
    // The vault key follows the same rule (it used to be silent).
    let mut key_file = home.db().as_os_str().to_owned();
    key_file.push(".key");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    both_set("OAUTHD_KEY", key_text.trim(), key_file.as_ref());
}

/// A database file others may read (a restored copy, one made with `touch`) is warned of
/// at start and by `check`, as the key file is: it holds the API keys' hashes, account
/// names and sealed tokens.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_others_may_read_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    home.start().signal_and_wait("TERM");
    std::fs::set_permissions(home.db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = format!(
        "database {} is readable by others (mode 644)",
        home.db().display()
    );
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains(&format!("warn  store: {said}")), "{report}");
    home.start().signal_and_wait("TERM");
    assert!(home.log_text().contains(&said), "{}", home.log_text());
}

/// What opening a sign-in link answers (200: it works, 401: it does not).
async fn link_status(link: String) -> u16 {
    common::no_redirects()
        .get(link)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A new sign-in link from `oauthd admin link` ends the ones before: each start that finds
/// nobody signed in prints one too, and a crash loop used to leave a live 24-hour
/// credential in the log for every start.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_sign_in_link_ends_the_ones_before() {
    let home = Home::new();
    let d = home.start();
    let first = home.login_link(&d);
    let second = home.login_link(&d);
    assert_eq!(
        link_status(first).await,
        401,
        "the earlier link still works"
    );
    assert_eq!(link_status(second.clone()).await, 200);
    d.sign_in(&second).await;
}

/// A link `oauthd admin link` made while oauthd was stopped (nobody signed in yet) stopped
/// working at the next start, whose own link replaced it: the operator who followed the
/// README's order (make the link, start, open it) got `401`. A start now ends only the
/// links earlier starts printed; the command's link ends them all, and so does a sign-in
/// with any link.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_made_while_stopped_works_after_the_start() {
    let home = Home::new();
    let out = home.cli(&["keys", "create", "--create", "--name", "app"]);
    assert!(out.status.success(), "{out:?}");
    let out = home.cli(&["admin", "link"]);
    assert!(out.status.success(), "{out:?}");
    let made = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let d = home.start();
    let printed = d
        .printed_line("http://")
        .await
        .expect("the start printed no sign-in link");
    let at_d = |link: &str| {
        let token = link.split_once("/admin/login").map_or("", |(_, t)| t);
        format!("{}/admin/login{token}", d.url)
    };
    assert_eq!(
        link_status(at_d(&made)).await,
        200,
        "the start ended the command's link"
    );
    assert_eq!(link_status(at_d(&printed)).await, 200);
    // Signed in with one, the other (in the journal) no longer works.
    d.sign_in(&at_d(&made)).await;
    assert_eq!(link_status(at_d(&printed)).await, 401);
}

/// The access lines (target `oauthd::access`) in a home's log.
fn access_lines(home: &Home) -> Vec<String> {
    home.log_text()
        .lines()
        .filter(|l| l.contains(" oauthd::access] "))
        .map(str::to_owned)
        .collect()
}

/// Sends `n` requests with a wrong key (401 each) as fast as one connection goes; how long
/// that took.
async fn refused_burst(d: &Daemon, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let res = d.get_raw("/v1/connections", Some("wrong-key")).await;
        assert_eq!(res.status(), 401);
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_writes_at_most_its_lines_a_second_and_sums_up_what_it_left_out() {
    let info = [("RUST_LOG", "info")];
    let home = Home::new();
    home.write_config("access_log_per_second = 5\n[limits]\nfailed_auth_per_minute = 1000\n");
    let d = home.start_with_env(&info);
    let took = refused_burst(&d, 40).await;
    // The second the burst ended in is summed up by the ticker, with no request after it.
    let summed_up = || left_out(&home, "401");
    let deadline = Instant::now() + Duration::from_secs(10);
    while summed_up().iter().sum::<u64>() + (refused_lines(&home) as u64) < 40
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.signal_and_wait("TERM").success());
    let (written, left_out) = (refused_lines(&home) as u64, summed_up());
    // Every answer is either written or counted, and the seconds the burst spanned wrote
    // five lines each at most.
    assert_eq!(
        written + left_out.iter().sum::<u64>(),
        40,
        "{written} {left_out:?}"
    );
    let seconds = took.as_secs() + 2;
    assert!(
        written <= 5 * seconds,
        "{written} lines in at most {seconds} s"
    );
    assert!(!left_out.is_empty());

    // 0: no limit.
    let home = Home::new();
    home.write_config("access_log_per_second = 0\n[limits]\nfailed_auth_per_minute = 1000\n");
    let d = home.start_with_env(&info);
    refused_burst(&d, 40).await;
    // A made-up method and a long path with a quote in it, as a client may send them.
    let addr = d.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let path = format!("/nope\"x{}", "a".repeat(600));
    let req = format!("FROBNICATE {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(d.signal_and_wait("TERM").success());
    assert_eq!(refused_lines(&home), 40);
    assert!(!home.log_text().contains("left out"));
    let odd = access_lines(&home)
        .into_iter()
        .find(|l| l.contains("\"OTHER /nope"))
        .expect("the made-up method's line");
    let cut = format!("\"OTHER /nope%22x{}...(+95 bytes)\" 4", "a".repeat(505));
    assert!(odd.contains(&cut), "{odd}");
}

/// How many access lines each summary line in a home's log says were left out, all of
/// the class `label` (a status, or `unparsed`), at most 5 a second.
fn left_out(home: &Home, label: &str) -> Vec<u64> {
    access_lines(home)
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" oauthd::access] ")?;
            let (n, rest) = rest.split_once(" access lines left out in one second (")?;
            assert!(
                rest.starts_with(&format!("{label}: "))
                    && rest.ends_with(
                        "): at most 5 of each class (1xx-3xx, 4xx, 5xx, unparsed) are \
                             written a second (access_log_per_second)"
                    ),
                "{l}"
            );
            n.parse::<u64>().ok()
        })
        .collect()
}

/// An empty `RUST_LOG` (a compose file's `RUST_LOG: ${RUST_LOG:-}`) counts as unset, as an
/// empty `OAUTHD_*` variable does: read as it is, it left every line out, warnings too.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_rust_log_logs_as_an_unset_one() {
    let home = Home::new();
    let d = home.start_with_env(&[("RUST_LOG", ""), ("OAUTHD_NO_SUCH_SETTING", "1")]);
    assert!(d.signal_and_wait("TERM").success());
    let log = home.log_text();
    assert!(
        log.contains(" INFO ") && log.contains("listening on"),
        "{log}"
    );
    assert!(
        log.contains(" WARN ") && log.contains("OAUTHD_NO_SUCH_SETTING"),
        "{log}"
    );
}

/// Requests actix-http cannot parse (answered 400 before any of oauthd's code runs) are
/// access lines within the access log's budget: it wrote an `ERROR` line for each, so
/// anyone who reached the port could write the journal past its rate limit, which drops
/// oauthd's own warnings with them.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_access_lines_within_the_budget_not_errors() {
    let home = Home::new();
    home.write_config("access_log_per_second = 5\n");
    let d = home.start_with_env(&[("RUST_LOG", "info")]);
    let addr = d.url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    for _ in 0..60 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }
    let took = started.elapsed();
    // A refused request right after them is still written: they have a class of their own,
    // and cost a sender nothing (no request, no rate limit).
    assert_eq!(
        d.get_raw("/v1/connections", Some("wrong-key"))
            .await
            .status(),
        401
    );
    let malformed = |home: &Home| {
        access_lines(home)
            .iter()
            .filter(|l| {
                l.contains("] - \"-\" - connection ended before a request reached oauthd: request parse error")
            })
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while malformed(&home) + left_out(&home, "unparsed").iter().sum::<u64>() < 60
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.signal_and_wait("TERM").success());
    let (written, left) = (malformed(&home), left_out(&home, "unparsed"));
    assert_eq!(written + left.iter().sum::<u64>(), 60, "{written} {left:?}");
    let seconds = took.as_secs() + 2;
    assert!(written <= 5 * seconds, "{written} lines in {seconds} s");
    let log = home.log_text();
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(refused_lines(&home), 1, "{log}");
}

/// Access lines for `GET /v1/connections` answered 401.
fn refused_lines(home: &Home) -> usize {
    access_lines(home)
        .iter()
        .filter(|l| l.contains("\"GET /v1/connections\" 401 "))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_writes_failed_answers_by_default_every_answer_with_all_and_none_when_off() {
    // At the log level oauthd runs at unless told otherwise (the tests' daemons log debug).
    let info = [("RUST_LOG", "info")];
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start_with_env(&info);
    d.create_state(&key, json!({"namespace": "oauth:x"})).await;
    // Refused (400: a query parameter the operation does not take); the query is not logged.
    let refused = d
        .get_raw("/v1/connections?code=SECRETQUERY", Some(&key))
        .await;
    assert_eq!(refused.status(), 400);
    let refused_bytes = refused.bytes().await.unwrap().len();
    assert!(d.signal_and_wait("TERM").success());
    let lines = access_lines(&home);
    assert_eq!(lines.len(), 1, "only the 400 at info: {lines:?}");
    let want = format!("] 127.0.0.1 \"GET /v1/connections\" 400 {refused_bytes} ");
    assert!(lines[0].contains(&want), "{lines:?}");
    assert!(lines[0].ends_with("ms"), "{lines:?}");
    assert!(!home.log_text().contains("SECRETQUERY"));

    // "all": every answer, the client named by a trusted proxy, the body's bytes counted.
    let home = Home::new();
    home.write_config("access_log = \"all\"\n[limits]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let key = home.create_key("app", &[]);
    let d = home.start_with_env(&info);
    let created = d
        .http
        .post(format!("{}/v1/states", d.url))
        .bearer_auth(&key)
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({"namespace": "oauth:x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created_bytes = created.bytes().await.unwrap().len();
    assert!(d.signal_and_wait("TERM").success());
    let lines = access_lines(&home);
    let want = format!("] 203.0.113.9 \"POST /v1/states\" 201 {created_bytes} ");
    assert!(lines.iter().any(|l| l.contains(&want)), "{lines:?}");

    // By default the others are logged at debug.
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    d.create_state(&key, json!({"namespace": "oauth:x"})).await;
    assert!(d.signal_and_wait("TERM").success());
    let lines = access_lines(&home);
    let at_debug = |l: &String| l.contains(" DEBUG ") && l.contains("\"POST /v1/states\" 201 ");
    assert!(lines.iter().any(at_debug), "{lines:?}");

    // "off": none, even at debug.
    let home = Home::new();
    home.write_config("access_log = \"off\"\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    d.create_state(&key, json!({"namespace": "oauth:x"})).await;
    assert_eq!(
        d.get_raw("/v1/connections", Some("wrong-key"))
            .await
            .status(),
        401
    );
    assert!(d.signal_and_wait("TERM").success());
    assert_eq!(access_lines(&home), Vec::<String>::new());
    assert!(home.log_text().contains("SIGTERM received"), "it did log");

    // A value it does not know stops it at start, naming the key.
    home.write_config("access_log = \"verbose\"\n");
    let out = home.serve_once();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("access_log"), "{said}");
}

/// A relative or mistyped `--db` starts on a new, empty database. The start warns where it
/// made it, and a key refused there says the database holds no key at all, which points at
/// `--db` rather than at the key; once the database has a key, refusals say no more.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_refused_by_a_database_without_keys_points_at_the_database() {
    let home = Home::new();
    let d = home.start();
    let log = home.log_text();
    assert!(
        log.contains("WARN") && log.contains("created a new, empty database at"),
        "{log}"
    );
    let made_elsewhere = format!("oauthd_{}", "k".repeat(43));
    let (status, body) = d.get("/v1/connections", &made_elsewhere).await;
    assert_eq!(status, 401, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("holds no active API key at all") && detail.contains("--db"),
        "{detail}"
    );
    let key = home.create_key("app", &[]);
    let (status, body) = d.get("/v1/connections", &made_elsewhere).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["detail"], "the API key is unknown or revoked");
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.signal_and_wait("TERM");
    // Mistyped beside it: the warning names the database that is there.
    let typo = home.dir.path().join("oauhtd.db");
    let mut serving = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&typo)
        .env("RUST_LOG", "warn")
        .env_remove("OAUTHD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serving.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("created a new, empty database") {
                let _ = tx.send(line);
            }
        }
    });
    let warned = rx.recv_timeout(Duration::from_secs(20));
    common::signal(serving.id(), "KILL");
    let _ = serving.wait();
    let warned = warned.expect("no warning of the new database");
    assert!(
        warned.contains(&format!(
            "; oauthd's database {} lies beside it: is --db mistyped?",
            home.db().display()
        )),
        "{warned}"
    );
}

contract![
    an_instance_with_another_vault_key_is_refused_while_one_serves,
    of_two_started_together_with_other_keys_one_serves,
    an_instance_starts_right_after_a_rotation_the_other_has_seen,
    a_rekey_that_an_instance_cannot_follow_changes_nothing,
];

/// A new vault key file (0600) named `name` in `home`, holding `text`.
fn key_file_with(home: &Home, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = home.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn keygen() -> String {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Two oauthd started at the same moment on one store with keys that cannot open each
/// other's data: each found nobody when it checked, and both used to serve. Now the later
/// sees the earlier once both have told, and stops (exit 2); never do both serve, nor
/// both stop. (Each started serving too, now and then, until the store stamped the later
/// telling after the earlier whatever the clock each had read before the write lock.)
async fn of_two_started_together_with_other_keys_one_serves(home: Home) {
    home.start().signal_and_wait("TERM");
    let other = key_file_with(&home, "other.key", &keygen());
    let spawn = |key: Option<&std::path::Path>| {
        let mut cmd = home.cli_command(&["serve", "--listen", "127.0.0.1:0"]);
        if let Some(key) = key {
            cmd.env("OAUTHD_KEY_FILE", key);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut both = [spawn(None), spawn(Some(&other))];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut exited = Vec::new();
    while exited.is_empty() && Instant::now() < deadline {
        for (i, child) in both.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().unwrap() {
                exited.push((i, status));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The other one goes on serving: give a second exit the time to show.
    std::thread::sleep(Duration::from_secs(2));
    for (i, child) in both.iter_mut().enumerate() {
        if !exited.iter().any(|(j, _)| *j == i) {
            if let Some(status) = child.try_wait().unwrap() {
                exited.push((i, status));
            }
        }
    }
    let mut stderr = String::new();
    for child in &mut both {
        let _ = child.kill();
        let _ = child.wait();
        if let Some(mut err) = child.stderr.take() {
            use std::io::Read;
            let _ = err.read_to_string(&mut stderr);
        }
    }
    // One stops, the other serves on.
    assert!(!exited.is_empty(), "both serve\n{stderr}");
    assert_eq!(exited.len(), 1, "both stopped\n{stderr}");
    assert_eq!(exited[0].1.code(), Some(2), "{stderr}");
    assert!(stderr.contains("seals with vault key"), "{stderr}");
}

/// A rotation (`rekey` with the new key first in the key file, then `rekey --prune`) seen
/// by a serving oauthd within a second: another started on the same key file right after
/// is not refused for the pruned key the first one told of before.
async fn an_instance_starts_right_after_a_rotation_the_other_has_seen(home: Home) {
    let a = home.start();
    let old = std::fs::read_to_string(home.key_file()).unwrap();
    std::fs::write(home.key_file(), format!("{}{old}", keygen())).unwrap();
    for args in [&["rekey"][..], &["rekey", "--prune"]] {
        let out = home.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    assert!(!std::fs::read_to_string(home.key_file())
        .unwrap()
        .contains(old.trim()));
    let b = home.start();
    b.signal_and_wait("TERM");
    a.signal_and_wait("TERM");
}

/// Hosts sharing one Redis go by Redis's clock for each other's notes: one whose clock
/// runs two minutes ahead used to take the serving one's note (holding 60 s by that one's
/// clock) for ended, and started with another key.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_host_whose_clock_runs_ahead_still_sees_the_one_serving() {
    let home = Home::redis();
    let a = home.start();
    let other = key_file_with(&home, "other.key", &keygen());
    let refused = common::run_until_exit(
        home.cli_command(&["serve", "--listen", "127.0.0.1:0"])
            .env("OAUTHD_KEY_FILE", &other)
            .env("LD_PRELOAD", common::libfaketime())
            .env("FAKETIME", "+120")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdin(Stdio::null()),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("seals with vault key"), "{err}");
    a.signal_and_wait("TERM");
}

/// An instance that starts with another key while Redis has lost the serving one's note
/// (a restart without persistence, a flush) is not refused: nothing tells it of the other.
/// From the next look on, the two say as an error that their data is split; nothing said
/// so before.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_an_instance_started_while_the_notes_were_lost_is_said_as_an_error() {
    let home = Home::redis();
    let a = home.start();
    assert_eq!(
        home.redis_server().command("DEL oauthd:vault").as_deref(),
        Some(":1")
    );
    let other = key_file_with(&home, "other.key", &keygen());
    let b = home.start_with_env(&[("OAUTHD_KEY_FILE", other.to_str().unwrap())]);
    let said = "or one started while the other's note of its keys was not in the store";
    assert!(
        common::eventually(Duration::from_secs(10), || home.log_text().contains(said)).await,
        "{}",
        home.log_text()
    );
    // Both say so (the one that lost its note tells it again at its next look).
    let lacks = |path: &std::path::Path| {
        format!("which the key loaded from {} does not have", path.display())
    };
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let log = home.log_text();
            log.contains(&lacks(&home.key_file())) && log.contains(&lacks(&other))
        })
        .await,
        "{}",
        home.log_text()
    );
    assert!(home.log_text().contains("ERROR"));
    b.signal_and_wait("TERM");
    a.signal_and_wait("TERM");
}

/// `home` with a notification target (the receiver returned), served by `start`, a second
/// and a half on: its first looks at the store are done.
async fn served_with_a_receiver(
    home: &Home,
    start: impl FnOnce(&Home) -> common::Daemon,
) -> (common::receiver::Receiver, common::Daemon) {
    let hooks = common::receiver::Receiver::start(None);
    home.write_config(&format!("[[notify]]\nurl = \"{}\"\n", hooks.url("/hook")));
    let d = start(home);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (hooks, d)
}

/// Redis restarted without its data under a serving oauthd (here a FLUSHALL): everything
/// it held is gone, and the instances used to go on saying nothing. Each finds the id the
/// store kept for itself gone and says the store lost what it held, and what to look at,
/// in the log and (it was in the log only) to the notification targets: `store.data_lost`.
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_store_that_lost_its_data_under_oauthd_is_said_as_an_error() {
    let home = Home::redis();
    let (hooks, d) = served_with_a_receiver(&home, Home::start).await;
    let said = "lost what it held";
    assert!(!home.log_text().contains(said), "{}", home.log_text());
    assert_eq!(
        home.redis_server().command("FLUSHALL").as_deref(),
        Some("+OK")
    );
    assert!(
        common::eventually(Duration::from_secs(10), || home.log_text().contains(said)).await,
        "{}",
        home.log_text()
    );
    assert!(home.log_text().contains("oauthd connections list"));
    let told = hooks
        .wait_for("store.data_lost", 1, Duration::from_secs(10))
        .await;
    assert_eq!(told.len(), 1, "{told:?}");
    let store = told[0]["json"]["data"]["store"]
        .as_str()
        .unwrap_or_default();
    assert!(store.starts_with("Redis "), "{told:?}");
    d.signal_and_wait("TERM");
}

/// The same after Redis was down for longer than oauthd's notes last (here 35 s) and came
/// back empty: nothing was said, since the note's absence was taken for its end. The id
/// the store holds for itself, which never ends, is what oauthd looks at now.
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_store_back_empty_after_a_long_outage_is_said_as_an_error() {
    let home = Home::redis();
    let (hooks, d) = served_with_a_receiver(&home, Home::start).await;
    {
        let mut redis = home.redis_server();
        redis.kill();
        redis.wipe();
    }
    tokio::time::sleep(Duration::from_secs(35)).await;
    home.redis_server().restart();
    let told = hooks
        .wait_for("store.data_lost", 1, Duration::from_secs(10))
        .await;
    assert_eq!(told.len(), 1, "{}", home.log_text());
    assert!(home.log_text().contains("lost what it held"));
    d.signal_and_wait("TERM");
}

/// A `public_url` that does not reach oauthd (a wrong port, a proxy that does not pass
/// the path on) went unnoticed until a provider sent a browser back to it: `check` asks it
/// for oauthd's health answer while an oauthd serves the store.
#[tokio::test(flavor = "multi_thread")]
async fn check_asks_whether_public_url_reaches_oauthd() {
    let home = Home::new();
    let report = |home: &Home| String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    home.write_config("public_url = \"http://127.0.0.1:9\"\n");
    home.create_key("app", &[]);
    let said = report(&home);
    assert!(
        said.contains("skip  public_url: http://127.0.0.1:9/: no oauthd serves this store now"),
        "{said}"
    );
    let d = home.start();
    let said = report(&home);
    assert!(
        said.lines().any(|l| l.starts_with(
            "warn  public_url: http://127.0.0.1:9/healthz did not answer from this host"
        )),
        "{said}"
    );
    home.write_config(&format!("public_url = \"{}\"\n", d.url));
    let said = report(&home);
    assert!(
        said.contains(&format!(
            "ok    public_url: {}/ reaches an oauthd from this host",
            d.url
        )),
        "{said}"
    );
    d.signal_and_wait("TERM");
}

/// A second `oauthd serve` on one database (supported: they share it) started without a
/// word of the first, so one left running by mistake went unnoticed. A start says so, once
/// every instance still serving has told again (20 s): one killed just before (a crash,
/// then a restart) is not counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_beside_another_oauthd_on_the_store_says_so() {
    let home = Home::new();
    home.start().kill9();
    let first = home.start();
    let said = "other oauthd(s) serve this store too";
    tokio::time::sleep(Duration::from_secs(23)).await;
    assert!(!home.log_text().contains(said), "{}", home.log_text());
    let second = home.start();
    let began = Instant::now();
    while !home.log_text().contains(said) && began.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = home.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(said)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(" INFO ")
            && lines[0].contains("1 other oauthd(s) serve this store too, the first since "),
        "{log}"
    );
    second.signal_and_wait("TERM");
    first.signal_and_wait("TERM");
}

/// Instances on one Redis judge the times the others stored by their own clocks: a host
/// whose clock was two minutes behind Redis' (and the other hosts') handed out tokens up to
/// two minutes past their expiry, and nothing said so. A start says it now at WARN, and
/// `oauthd check` too; a host whose clock agrees is told so by `check`.
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_host_clock_off_the_stores_is_said() {
    let home = Home::redis_with(common::redis::RedisServer::start_with_clock_shift());
    let checked = |home: &Home| String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    let report = checked(&home);
    assert!(
        report.contains("ok    clock: agrees with the store's within"),
        "{report}"
    );
    home.redis_server().shift_clock(120_000);
    let report = checked(&home);
    assert!(
        report
            .contains("warn  clock: this host's clock is 120 s behind the clock of Redis redis://"),
        "{report}"
    );
    let d = home.start();
    let said = "s behind the clock of Redis redis://";
    let began = Instant::now();
    while !home.log_text().contains(said) && began.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = home.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains(said) && l.contains("past the expiry")),
        "{log}"
    );
    d.signal_and_wait("TERM");
}

/// A wall clock stepped a minute and a half ahead (NTP on a board without a clock, a
/// suspended machine) ends the note an oauthd keeps of its vault keys by its time: that
/// was said as the store losing what it held, at ERROR and as `store.data_lost`, with
/// nothing lost. The note is judged by both clocks now.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stepped_ahead_is_not_taken_for_a_store_that_lost_its_data() {
    let home = Home::new();
    let clock = home.dir.path().join("clock");
    let (hooks, d) = served_with_a_receiver(&home, |h| h.start_on_a_virtual_clock(&clock)).await;
    std::fs::write(&clock, "+90").unwrap();
    // The clock did step, as oauthd saw it: without this the checks below would pass on
    // a clock that never moved.
    assert!(
        common::eventually(Duration::from_secs(10), || {
            home.log_text()
                .contains("the system clock stepped forward by 9")
        })
        .await,
        "{}",
        home.log_text()
    );
    // The next looks (one a second) find the note ended, and tell it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = home.log_text();
    assert!(!log.contains("lost what it held"), "{log}");
    assert!(hooks.of_type("store.data_lost").await.is_empty());
    d.signal_and_wait("TERM");
}

/// The key lines of a key file, without comments.
fn key_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Two instances on one store, each reading its own copy of the key file (as on two hosts
/// sharing a Redis). `rekey` with one copy used to put the new key first in it: the
/// instance reading that copy sealed with it at its next reload, and states it made
/// answered 503 `vault_error` on the other, even when rekey then stopped. Now the new key
/// only opens until every serving instance has told it has it; one that does not
/// within 5 s stops the rotation (exit 2) and the file is put back as it was, so both
/// still open each other's data. The documented way for copies works: the same new key
/// added as the last line of each, then `rekey --to <id>` with each.
async fn a_rekey_that_an_instance_cannot_follow_changes_nothing(home: Home) {
    let key = home.create_key("app", &[]);
    let a = home.start();
    let first = home.key_file();
    let copy = key_file_with(&home, "copy.key", &std::fs::read_to_string(&first).unwrap());
    let b = home.start_with_env(&[("OAUTHD_KEY_FILE", copy.to_str().unwrap())]);
    let before = std::fs::read(&first).unwrap();
    let out = home.cli(&["rekey"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has not loaded vault key")
            && err.contains("Nothing changed")
            && err.contains("or its key from OAUTHD_KEY, which it cannot re-read"),
        "{err}"
    );
    // As it was, comments and all (it was written anew, its first lines rekey's own).
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "the key file was written"
    );
    // A has reloaded its key file by now, whatever it holds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = a
        .create_state(&key, json!({"namespace": "oauth:app", "data": {"v": 1}}))
        .await;
    let (status, body) = b.consume(&key, &state, "oauth:app").await;
    assert_eq!(status, 200, "{body}");

    // One new key, the last line of both copies; then each copy rekeyed to it.
    let made = Command::new(BIN).arg("keygen").output().unwrap();
    let line = String::from_utf8(made.stdout).unwrap();
    let said = String::from_utf8_lossy(&made.stderr);
    let id = said
        .trim()
        .strip_prefix("key id ")
        .expect("keygen names the key's id");
    for path in [&first, &copy] {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("{text}{line}")).unwrap();
    }
    for path in [&first, &copy] {
        let out = home
            .cli_command(&["rekey", "--to", id])
            .env("OAUTHD_KEY_FILE", path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(key_lines(path)[0], line.trim());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = b
        .create_state(&key, json!({"namespace": "oauth:app", "data": {"v": 2}}))
        .await;
    let (status, body) = a.consume(&key, &state, "oauth:app").await;
    assert_eq!(status, 200, "{body}");
    assert!(!home.log_text().contains("ERROR"), "{}", home.log_text());
    b.signal_and_wait("TERM");
    a.signal_and_wait("TERM");
}

/// A second oauthd started on the same store with another vault key, while the first
/// serves, is refused (exit 2): what each sealed would not open in the other. It used to
/// start, silently when nothing was sealed yet, and states one created answered 503
/// `vault_error` on the other.
async fn an_instance_with_another_vault_key_is_refused_while_one_serves(home: Home) {
    let a = home.start();
    let other_text = keygen();
    let other = key_file_with(&home, "other.key", &other_text);
    let refused = common::run_until_exit(
        home.cli_command(&["serve", "--listen", "127.0.0.1:0"])
            .env("OAUTHD_KEY_FILE", &other)
            .stdin(Stdio::null()),
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another oauthd serving this store") && err.contains("seals with vault key"),
        "{err}"
    );
    assert!(
        !err.contains(other_text.trim()),
        "the key in the message: {err}"
    );
    // `check` says so too, and that the first one's key is fine.
    let report = |out: std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let checked = report(
        home.cli_command(&["check"])
            .env("OAUTHD_KEY_FILE", &other)
            .output()
            .unwrap(),
    );
    assert!(
        checked
            .contains("FAIL  instances: of the 1 oauthd serving this store, some seal with key(s)"),
        "{checked}"
    );
    // Two serving with the same key: that key is named once.
    let second = home.start();
    let checked = report(
        home.cli_command(&["check"])
            .env("OAUTHD_KEY_FILE", &other)
            .output()
            .unwrap(),
    );
    let lacking = checked
        .split_once("of the 2 oauthd serving this store, some seal with key(s) ")
        .and_then(|(_, rest)| rest.split_once(" lacks: "))
        .and_then(|(_, rest)| rest.split_once(" (a start"))
        .map(|(ids, _)| ids.to_owned())
        .unwrap_or_else(|| panic!("{checked}"));
    assert!(!lacking.contains(','), "{checked}");
    second.signal_and_wait("TERM");
    let checked = report(home.cli(&["check"]));
    assert!(
        checked.contains("ok    instances: 1 oauthd serving this store (one killed without a clean stop counts for up to a minute), each sealing with a key the key file has"),
        "{checked}"
    );
    // Nor does `rekey` rotate a key file the serving one does not use: it would re-seal
    // the tokens under a key that one cannot open.
    let rekeyed = home
        .cli_command(&["rekey"])
        .env("OAUTHD_KEY_FILE", &other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&rekeyed.stderr);
    assert_eq!(rekeyed.status.code(), Some(2), "{err}");
    assert!(err.contains("seals with vault key"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);

    // With the first one's key as well (but sealing with the other), it starts, and says
    // the first cannot open what it seals.
    let first_text = std::fs::read_to_string(home.key_file()).unwrap();
    let both = key_file_with(&home, "both.key", &format!("{other_text}{first_text}"));
    let b = home.start_with_env(&[("OAUTHD_KEY_FILE", both.to_str().unwrap())]);
    assert!(
        home.log_text()
            .contains("another oauthd serving this store does not have vault key"),
        "{}",
        home.log_text()
    );
    // While both serve, each says as an error that the other cannot open what it seals.
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let log = home.log_text();
            log.contains("what this one seals does not open there")
                && log.contains("what it seals does not open here")
        })
        .await,
        "{}",
        home.log_text()
    );
    b.signal_and_wait("TERM");
    a.signal_and_wait("TERM");
    // Stopped, the first takes its keys back: the other key alone starts.
    let c = home.start_with_env(&[("OAUTHD_KEY_FILE", other.to_str().unwrap())]);
    c.signal_and_wait("TERM");
}

/// `rekey` waits up to 5 s for every serving instance to load its new key. Ctrl-C in that
/// wait used to end it there, leaving the new key in the key file; now the key is taken out
/// again (exit 130). And two rekeys at once both said their key now sealed, where only
/// one did: the second is refused while the first runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rekey_interrupted_or_run_twice_at_once_changes_nothing() {
    let home = Home::new();
    let a = home.start();
    let first = home.key_file();
    // An instance that reads a copy never loads the new key: rekey waits the whole 5 s.
    let copy = key_file_with(&home, "copy.key", &std::fs::read_to_string(&first).unwrap());
    let b = home.start_with_env(&[("OAUTHD_KEY_FILE", copy.to_str().unwrap())]);
    let before = key_lines(&first);
    let waiting = home
        .cli_command(&["rekey"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while key_lines(&first).len() == before.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        key_lines(&first).len(),
        before.len() + 1,
        "no key was added"
    );
    let second = home.cli(&["rekey"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("another `oauthd rekey` is rotating"), "{err}");

    common::interrupt(waiting);
    assert_eq!(
        key_lines(&first),
        before,
        "the new key stayed in the key file"
    );

    // With every instance on the same key file, a rekey goes through (the lock is gone).
    b.signal_and_wait("TERM");
    let out = home.cli(&["rekey"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(key_lines(&first).len(), before.len() + 1);
    a.signal_and_wait("TERM");
}

/// Overwrites `len` bytes at `offset` of the stopped database with bytes no page holds.
/// Damages the whole root page `query` names (a table's or an index's, 4 KiB pages).
fn damage_root_page(home: &Home, query: &str) {
    let page: i64 = rusqlite::Connection::open(home.db())
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap();
    damage(home, (page as u64 - 1) * 4096, 4096);
}

fn damage(home: &Home, offset: u64, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(home.db())
        .unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&vec![0xA5; len]).unwrap();
}

/// `check` on a database whose integrity check fails said only SQLite's verdict ("wrong #
/// of entries in index …"): it says what to do, as the start does for a damaged database.
#[test]
fn check_says_what_to_do_with_a_database_that_fails_its_integrity_check() {
    let home = Home::new();
    home.create_key("app", &[]);
    home.create_key("other", &[]);
    damage_root_page(
        &home,
        "SELECT rootpage FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'api_keys' ORDER BY name LIMIT 1",
    );
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with("FAIL  store: ")
            && l.contains("is damaged")
            && l.contains("oauthd restore")
            && l.contains(".recover")),
        "{report}"
    );
}

/// A database damaged where the start reads it is said to be damaged, with what to do,
/// and ends the start with exit 2 (a unit's `RestartPreventExitStatus=2` then stops trying):
/// it was exit 1 with "is the file and its directory writable by this user?", and systemd
/// restarted oauthd every 5 s.
#[test]
fn a_damaged_database_stops_the_start_and_says_so() {
    let home = Home::new();
    home.create_key("app", &[]);
    // The file's header kept, the schema's page after it damaged.
    damage(&home, 100, 4096 - 100);
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is damaged") && err.contains("oauthd restore"),
        "{err}"
    );
}

/// A database damaged where the start does not read (here the page of the table that
/// keeps expired states' tombstones) is found by the first request that reads it: 503, an
/// ERROR that says what to do, and `/readyz` 503 from then on, where it answered 200 (its
/// own read passed by the damage) and each request logged a WARN "database disk image is
/// malformed".
#[tokio::test(flavor = "multi_thread")]
async fn a_database_found_damaged_while_serving_is_said_and_not_ready() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    damage_root_page(
        &home,
        "SELECT rootpage FROM sqlite_schema WHERE name = 'expired_states'",
    );
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    assert_eq!(d.consume(&key, &state, "oauth:app").await.0, 200);
    let (status, body) = d.consume(&key, &state, "oauth:app").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("damaged"),
        "{body}"
    );
    let (status, body) = d.get("/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    let log = home.log_text();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("damaged")
            && l.contains("oauthd restore")),
        "{log}"
    );
    d.signal_and_wait("TERM");
}

/// The database's `-wal` file deleted while oauthd serves (an `rm` of what looks like a
/// leftover): writes went on being acknowledged into the deleted file, and all of them
/// were gone at the next start (states consumed since could be consumed again, refresh
/// tokens went back). Writes and `/readyz` answer 503 now, the log says why, and with the
/// file put back (here the same file, kept by a hard link) oauthd carries on by itself,
/// nothing lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_deleted_under_oauthd_stops_its_writes() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let before = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    let wal = home.dir.path().join("oauthd.db-wal");
    let kept = home.dir.path().join("kept-wal");
    std::fs::hard_link(&wal, &kept).unwrap();
    std::fs::remove_file(&wal).unwrap();
    let (status, body) = d.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = d
        .post("/v1/states", &key, json!({"namespace": "oauth:app"}))
        .await;
    assert_eq!(status, 503, "{body}");
    // Said to the caller as it is (it was "the storage did not answer"), as the README
    // says, naming no file.
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("was deleted or replaced while oauthd had it open")
            && !detail.contains(&home.dir.path().display().to_string()),
        "{body}"
    );
    let log = home.log_text();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("oauthd.db-wal was deleted or replaced while oauthd had it open")),
        "{log}"
    );

    std::fs::hard_link(&kept, &wal).unwrap();
    let (status, body) = d.readyz_until(200).await;
    assert_eq!(status, 200, "{body}");
    let after = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    d.signal_and_wait("TERM");
    let d = home.start();
    assert_eq!(d.consume(&key, &before, "oauth:app").await.0, 200);
    assert_eq!(d.consume(&key, &after, "oauth:app").await.0, 200);
    d.signal_and_wait("TERM");
}

/// A copy put in place by `mv` over a running oauthd's database: the ERROR offered "start
/// it again on the files as they are now", which replays the replaced database's `-wal`
/// into the new file and damages it. It says to move the `-wal` and `-shm` aside first (or
/// to let `oauthd restore` do it). Done so, a start on the copy is refused as a backup's
/// (it would run beside its database wherever it lies) and says how to restore it, after
/// which it starts whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_replaced_under_oauthd_says_to_move_the_old_wal_aside() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let kept = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    let copy = home.dir.path().join("copy.db");
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let later = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    std::fs::rename(&copy, home.db()).unwrap();
    let (status, body) = d.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    let log = home.log_text();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("after moving")
            && l.contains("oauthd.db-wal")
            && l.contains("oauthd.db-shm")
            && l.contains("`oauthd restore` puts a copy in place that way")),
        "{log}"
    );
    d.signal_and_wait("TERM");
    for name in ["oauthd.db-wal", "oauthd.db-shm"] {
        let file = home.dir.path().join(name);
        if file.exists() {
            std::fs::rename(&file, home.dir.path().join(format!("{name}.aside"))).unwrap();
        }
    }
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a copy `oauthd backup` made of"), "{err}");
    std::fs::rename(home.db(), &copy).unwrap();
    let out = home.cli(&["restore", "--create", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let d = home.start();
    assert_eq!(d.consume(&key, &kept, "oauth:app").await.0, 200);
    assert_eq!(d.consume(&key, &later, "oauth:app").await.0, 404);
    d.signal_and_wait("TERM");
}

/// `rm oauthd.db` under a running oauthd: what it holds is then only in the file it still
/// has open, lost when it stops (the log said "put the files back", which an `rm` makes
/// impossible, or restart, which started on an empty database). The ERROR says how to copy
/// it out first, and following it word for word keeps every state and key.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_deleted_under_oauthd_can_be_copied_out_before_it_stops() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let kept = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    std::fs::remove_file(home.db()).unwrap();
    let (status, body) = d.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    // Said within the writer's next look at its files (a read that found the path empty
    // may answer 503 first).
    let said = |l: &str| l.contains(" ERROR ") && l.contains("was deleted or replaced");
    common::eventually(Duration::from_secs(5), || home.log_text().lines().any(said)).await;
    let log = home.log_text();
    // The text between "`PREFIX" and the next backtick of the ERROR line.
    let quoted = |prefix: &str| -> String {
        let line = log
            .lines()
            .find(|l| l.contains(" ERROR ") && l.contains("was deleted or replaced"))
            .unwrap_or_else(|| panic!("no ERROR line: {log}"));
        let from = line
            .find(&format!("`{prefix}"))
            .unwrap_or_else(|| panic!("no `{prefix}… in: {line}"))
            + 1;
        line[from..from + line[from..].find('`').unwrap()].to_owned()
    };
    let copy_out = quoted("cp /proc/");
    let out = Command::new("sh").args(["-c", &copy_out]).output().unwrap();
    assert!(out.status.success(), "{copy_out}: {out:?}");
    let restore = quoted("oauthd restore ");
    d.signal_and_wait("TERM");
    // Run as a shell runs what was pasted, with this build as `oauthd`.
    let pasted = format!("'{BIN}'{}", &restore["oauthd".len()..]);
    let out = Command::new("sh").args(["-c", &pasted]).output().unwrap();
    assert!(out.status.success(), "{restore}: {out:?}");
    let d = home.start();
    assert_eq!(d.consume(&key, &kept, "oauth:app").await.0, 200);
    d.signal_and_wait("TERM");
}

/// The database's directory moved away while oauthd runs (an `mv data data.old`): the log
/// said the file was deleted or replaced and gave rescue commands that wrote into the
/// directory that was gone. It now says the directory is gone and to move it back, which
/// oauthd carries on from by itself, and copies out, if wanted, where the directory was.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_whose_directory_moved_away_says_to_move_it_back() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let kept = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    let dir = home.dir.path().to_owned();
    let moved = dir.with_extension("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let (status, body) = d.readyz_until(503).await;
    // The log is in the directory, moved with it.
    let log = || std::fs::read_to_string(moved.join("oauthd.log")).unwrap_or_default();
    let said = |l: &str| l.contains(" ERROR ") && l.contains("its directory");
    common::eventually(Duration::from_secs(5), || log().lines().any(said)).await;
    let text = log();
    let line = text
        .lines()
        .find(|l| said(l))
        .unwrap_or_default()
        .to_owned();
    std::fs::rename(&moved, &dir).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        line.contains(&format!("its directory {} is gone", dir.display()))
            && line.contains(&format!("move it back to {}", dir.display()))
            && !line.contains("deleted or replaced"),
        "{line}"
    );
    let parent = dir.parent().unwrap().display().to_string();
    let copy_to = format!(" {parent}/oauthd.db.rescued-");
    assert!(line.contains(&copy_to), "{line}");
    // Moved back: oauthd carries on by itself, nothing lost.
    let (status, body) = d.readyz_until(200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(d.consume(&key, &kept, "oauth:app").await.0, 200);
    d.signal_and_wait("TERM");
}

/// A `-wal` file with no database beside it (the database deleted or moved without it):
/// a start made a new database there, and SQLite emptied the `-wal` as a stale one of it,
/// its data gone. It is refused (exit 2, nothing changed).
#[test]
fn a_start_on_a_wal_file_without_its_database_is_refused() {
    let home = Home::new();
    let wal = home.dir.path().join("oauthd.db-wal");
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&wal, &bytes).unwrap();
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("does not exist, but") && err.contains("oauthd restore"),
        "{err}"
    );
    assert!(!home.db().exists(), "{err}");
    assert_eq!(std::fs::read(&wal).unwrap(), bytes);
    // The same through a link whose database is gone: SQLite keeps the -wal beside the
    // file the link leads to.
    let home = Home::new();
    let data = home.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(data.join("real.db"), home.db()).unwrap();
    let wal = data.join("real.db-wal");
    std::fs::write(&wal, &bytes).unwrap();
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(std::fs::read(&wal).unwrap(), bytes);
}

/// The longest a stop waits, by default: a refresh the provider is slow to answer is
/// waited for until its lease ends (`provider_answer_wait_seconds` +
/// `provider_timeout_seconds` + 5 s), and the
/// shipped files that stop oauthd (systemd's unit, the compose files, the README's
/// `docker run`) must wait longer, or they kill it half-way and lose a rotated refresh
/// token (Docker's own default is 10 s).
#[test]
fn the_shipped_service_and_container_files_wait_out_a_stop() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let example = read("oauthd.example.toml");
    // A setting's value in the example, set or commented out with its default.
    let setting = |key: &str| -> u64 {
        example
            .lines()
            .find_map(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.strip_prefix(&format!("{key} = "))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in the example config"))
    };
    let longest = setting("provider_answer_wait_seconds") + setting("provider_timeout_seconds") + 5;
    // The number after `prefix` on the first line holding it, and whether one was found.
    let seconds_after = |text: &str, prefix: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
    };
    for (file, prefix) in [
        ("dist/oauthd.service", "TimeoutStopSec="),
        ("dist/container/compose.yaml", "stop_grace_period: "),
        ("dist/container/compose.redis.yaml", "stop_grace_period: "),
        ("README.md", "docker run -d --name oauthd --stop-timeout "),
    ] {
        let text = read(file);
        let found = seconds_after(&text, prefix);
        assert!(
            found.is_some_and(|s| s > longest),
            "{file}: {prefix}{found:?} (a stop may take {longest} s)"
        );
    }
}

/// Below a path (`public_url = "…/oauthd"`), a reverse proxy may strip the path
/// (`proxy_pass http://127.0.0.1:6288/;`, which decodes a subject's `%2F` on the way) or
/// pass it as the browser sent it (`proxy_pass http://127.0.0.1:6288;`): oauthd serves
/// both. A path that only begins like the prefix is not taken for it.
#[tokio::test(flavor = "multi_thread")]
async fn paths_below_public_urls_path_are_served_with_it_or_without_it() {
    let home = Home::new();
    home.write_config("public_url = \"https://home.example/oauthd\"\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let subject = "/v1/namespaces/s/subjects/a%2Fb/states";
    for path in [
        "/healthz",
        "/oauthd/healthz",
        subject,
        &format!("/oauthd{subject}"),
    ] {
        let (status, body) = d.get(path, &key).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = d.get("/oauthdx/healthz", &key).await;
    assert_eq!(status, 404);
    // The page below the prefix: its assets are where its links say.
    let page = d
        .http
        .get(format!("{}/oauthd/", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap_or_default();
    assert!(html.contains("/oauthd/static/app.js"), "{html}");
    let asset = d
        .http
        .get(format!("{}/oauthd/static/app.js", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    // The API's description names the prefix: a client made from it calls below it (the
    // host's /v1/… answers elsewhere).
    let (status, doc) = d.get("/oauthd/openapi.json", "").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["servers"][0]["url"], "/oauthd", "{}", doc["servers"]);
}

/// A clock stepped while oauthd ran (NTP fixing a clock that ran ahead, a restored
/// snapshot) changed how long states live and when tokens and retries are due, and the
/// log said nothing of it. Each step of more than a few seconds is said, with its size.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_step_is_said_in_the_log() {
    let home = Home::new();
    let clock = home.dir.path().join("clock");
    let _d = home.start_on_a_virtual_clock(&clock);
    std::fs::write(&clock, "-259200").unwrap();
    let said = |log: &str| -> Option<i64> {
        let line = log
            .lines()
            .find(|l| l.contains("the system clock stepped back by"))?;
        let secs = line.split("stepped back by ").nth(1)?.split(' ').next()?;
        secs.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while said(&home.log_text()).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = home.log_text();
    let secs = said(&log).unwrap_or_else(|| panic!("no step said: {log}"));
    assert!((259_190..=259_210).contains(&secs), "{log}");
    assert!(log.contains(" WARN "), "{log}");
}

/// A SQLite database whose tokens were stored ahead of the clock oauthd starts on (the clock
/// went back while it was stopped: a board that kept its shutdown time) is said at start,
/// and its tokens are refreshed rather than handed out on their stored expiry.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_stored_ahead_of_the_clock_at_start_are_said_and_not_trusted() {
    let home = Home::new();
    home.write_config(
        "[providers.mock]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"cid\"\nclient_secret = \"s\"\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let imported =
        json!({"access_token": "stored-ahead", "refresh_token": "r", "expires_in": 3600});
    assert_eq!(
        d.put("/v1/connections/mock/alice", &key, imported).await.0,
        201
    );
    d.signal_and_wait("TERM");
    let clock = home.dir.path().join("clock");
    std::fs::write(&clock, "-259200").unwrap();
    let d = home.start_via_shell(&format!(
        "export LD_PRELOAD='{}' FAKETIME_TIMESTAMP_FILE='{}' FAKETIME_NO_CACHE=1 \
         FAKETIME_DONT_FAKE_MONOTONIC=1; exec \"$@\"",
        common::libfaketime(),
        clock.display()
    ));
    let log = home.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("the database holds tokens stored at")),
        "{log}"
    );
    // Refreshed, not handed out: the provider cannot be reached, so no token.
    let (status, body) = d.get("/v1/connections/mock/alice/token", &key).await;
    assert_eq!(status, 503, "{body}");
}

/// Run by a `Type=notify` unit (`dist/oauthd.service`), oauthd tells systemd `READY=1`
/// once it answers, and `STOPPING=1` when a stop begins, on the socket systemd names
/// (a path, or `@name` in the abstract namespace): a unit ordered after oauthd (an app)
/// started when oauthd's process began, and its first calls were refused.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_is_told_when_oauthd_answers_and_when_it_stops() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/oauthd.service");
    assert!(std::fs::read_to_string(unit)
        .unwrap()
        .contains("\nType=notify\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let abstract_name = format!("oauthd-test-{}", std::process::id());
    let sockets = [
        (
            UnixDatagram::bind(&path).unwrap(),
            path.to_str().unwrap().to_owned(),
        ),
        (
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&abstract_name).unwrap())
                .unwrap(),
            format!("@{abstract_name}"),
        ),
    ];
    // The stop says how long it may take: a refresh's lease (the answer's wait +
    // provider_timeout_seconds + 5 s) and a second, then 5 s for notification deliveries
    // under way, which systemd waits for past the unit's TimeoutStopSec (90 s).
    let configs = [
        ("", 86_000_000),
        ("provider_answer_wait_seconds = 300\n", 326_000_000),
    ];
    for ((socket, named), (config, usec)) in sockets.into_iter().zip(configs) {
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let home = Home::new();
        home.write_config(config);
        let d = home.start_with_env(&[("NOTIFY_SOCKET", named.as_str())]);
        let mut said = [0u8; 64];
        let n = socket.recv(&mut said).expect("READY=1");
        assert_eq!(&said[..n], b"READY=1", "{named}");
        assert_eq!(d.get_raw("/healthz", None).await.status(), 200);
        d.signal_and_wait("TERM");
        let n = socket.recv(&mut said).expect("STOPPING=1");
        let stopping = format!("STOPPING=1\nEXTEND_TIMEOUT_USEC={usec}");
        assert_eq!(String::from_utf8_lossy(&said[..n]), stopping, "{named}");
    }
}

/// Run by hand, the soft open-file limit is often 1,024, and each client connection,
/// proxied call and idle connection to a provider's API holds a descriptor: past it, new
/// connections were refused with "Too many open files". `oauthd serve` raises its own to
/// 65,536 (`dist/oauthd.service`'s `LimitNOFILE`), or the hard limit when that is lower,
/// and says when the hard limit leaves it low.
#[test]
fn serve_raises_its_open_file_limit_as_far_as_the_hard_limit_allows() {
    let soft_limit = |pid: u32| -> String {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        line.split_whitespace().nth(3).unwrap().to_owned()
    };
    let home = Home::new();
    for (hard, raised, low) in [(8192, true, false), (2048, true, true), (1024, false, true)] {
        let d = home.start_via_shell(&format!(
            "ulimit -Sn 1024 && ulimit -Hn {hard} && exec \"$@\""
        ));
        assert_eq!(soft_limit(d.pid()), hard.to_string());
        d.signal_and_wait("TERM");
        let log = home.log_text();
        let said = format!("open-file limit raised from 1024 to {hard}");
        assert_eq!(log.contains(&said), raised, "{log}");
        let said = format!("the open-file limit is {hard}: each client connection");
        assert_eq!(log.contains(&said), low, "{log}");
    }
}

/// The start named the database but not the config file nor the vault key it ran with:
/// an operator with a unit and a shell that differ could not tell which were read.
#[test]
fn a_start_names_its_config_file_and_vault_key() {
    let home = Home::new();
    home.start().signal_and_wait("TERM");
    let log = home.log_text();
    let key = home.key_file().canonicalize().unwrap();
    assert!(
        log.contains("no config file (--config, OAUTHD_CONFIG)"),
        "{log}"
    );
    assert!(
        log.contains(&format!("vault key from {}", key.display())),
        "{log}"
    );
    home.write_config("");
    home.start().signal_and_wait("TERM");
    let config = home.config().canonicalize().unwrap();
    let log = home.log_text();
    assert!(
        log.contains(&format!("config file {}", config.display())),
        "{log}"
    );
}

/// The scrape has the process's own series that every Prometheus client exports and
/// dashboards chart (memory, CPU, descriptors against their limit, when the process
/// started): an operator watching for a leak or for the open-file limit had none of them.
#[tokio::test(flavor = "multi_thread")]
async fn the_scrape_has_the_process_series_dashboards_expect() {
    let home = Home::new();
    let d = home.start();
    // The CPU the process has used, as /proc says of it (clock ticks of 1/100 s), either
    // side of the scrape.
    let cpu_seconds = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields[i].parse::<f64>().unwrap();
        (ticks(11) + ticks(12)) / 100.0
    };
    let cpu_before = cpu_seconds();
    let metrics = d.metrics_text().await;
    let cpu_after = cpu_seconds();
    let value = |series: &str| {
        common::sample(&metrics, series).unwrap_or_else(|| panic!("no {series}: {metrics}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        now - 300.0 < started && started <= now + 1.0,
        "{started} vs {now}"
    );
    let (open, most) = (value("process_open_fds"), value("process_max_fds"));
    assert!(
        3.0 <= open && open < most && most >= 1024.0,
        "{open} of {most}"
    );
    // The limit the start raised the soft one to, as /proc says of the process.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{limits}"));
    assert_eq!(most, soft, "{limits}");
    assert!(value("process_resident_memory_bytes") > f64::from(1 << 20));
    assert!(value("process_virtual_memory_bytes") > value("process_resident_memory_bytes"));
    assert!(value("process_threads") >= 3.0);
    let cpu = value("process_cpu_seconds_total");
    // /proc counts in ticks, and lags the process's CPU clock by a few of them: what is
    // checked is that the series counts what /proc counts, not seconds rounded down to 0.
    assert!(
        cpu > 0.0 && cpu >= cpu_before * 0.5 && cpu <= cpu_after * 1.5 + 0.05,
        "{cpu} against /proc's {cpu_before}..{cpu_after}"
    );
    d.signal_and_wait("TERM");
}

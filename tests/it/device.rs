//! Device authorization grant (RFC 8628): against the real provider's device pages, and a
//! mock for what it never does (slow_down, Tidal's response shape).

use crate::common;

use common::peer::{serving, Peer};
use common::{Daemon, Home};
use serde_json::json;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

// Device flows' storage contract: each runs on SQLite and on Redis.
contract![
    approved_device_flow_connects_and_stops_polling_at_the_first_success,
    denied_device_flow_answers_403,
    unapproved_device_flow_expires_with_410,
    polling_resumes_after_a_restart_mid_flow,
    a_revoked_keys_device_flow_ends_without_redeeming_the_approval,
    a_device_flow_polls_on_after_the_clock_is_stepped_back,
];

/// peer/tv's token comes, and the provider says it is live (the grant was not revoked).
async fn assert_tv_token_is_live(d: &Daemon, key: &str, peer: &Peer) {
    let (status, token) = d.get("/v1/connections/peer/tv/token", key).await;
    assert_eq!(status, 200, "{token}");
    assert!(
        peer.is_active(token["access_token"].as_str().unwrap())
            .await,
        "the grant is dead"
    );
}

/// A device flow that reconnects peer/tv as another account at the provider (the device
/// that approved was signed in there as someone else) revokes the grant of the account it
/// was, as a browser's reconnect does: no row is left to revoke it from.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_reconnect_as_another_account_revokes_the_grant_it_replaced() {
    let home = Home::new();
    let (peer, key, d) = serving(&home, 3600, "");
    let mut tokens = Vec::new();
    let mut details = Vec::new();
    for user in ["alice", "carol"] {
        let start = d.start_device(&key, "peer", "tv").await;
        let code = start["user_code"].as_str().unwrap();
        peer.verify_device_as(user, code, true).await;
        let id = start["id"].as_str().unwrap();
        let (status, done) = wait_final(&d, &key, id, Duration::from_secs(20)).await;
        assert_eq!(
            (status, done["status"].as_str()),
            (200, Some("connected")),
            "{done}"
        );
        details.push(done["detail"].as_str().unwrap_or_default().to_owned());
        let (status, token) = d.get("/v1/connections/peer/tv/token", &key).await;
        assert_eq!(status, 200, "{token}");
        tokens.push(token["access_token"].as_str().unwrap().to_owned());
    }
    assert!(
        !peer.is_active(&tokens[0]).await,
        "alice's grant is still live at the provider"
    );
    assert!(peer.is_active(&tokens[1]).await, "carol's grant ended");
    let log = home.log_text();
    assert!(
        log.contains("device peer/tv: it was id \"alice\" at peer, and is now id \"carol\"")
            && log.contains("the account it was: its grant was revoked at peer"),
        "{log}"
    );
    // The flow's status says so (it said only "connected"), to an app without naming the
    // account it was.
    assert_eq!(details[0], "connected");
    let changed = "connected as another account at peer than it was";
    assert!(
        details[1].starts_with(changed) && !details[1].contains("alice"),
        "{}",
        details[1]
    );
    // And to the page, which "Connect with a code" shows beside Connected, naming it.
    let session = home.ui_session(&d).await;
    let (status, start) = d
        .ui_post(&session, "/ui/api/device/peer", json!({"account": "tv"}))
        .await;
    assert_eq!(status, 201, "{start}");
    peer.verify_device_as("alice", start["user_code"].as_str().unwrap(), true)
        .await;
    let path = format!("/ui/api/device/peer/{}", start["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let resp = d.ui_get(&path, &session.0).await;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        if status != 202 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "connected", "{done}");
    let detail = done["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("{changed} (it was id \"carol\")")),
        "{detail}"
    );
}

/// Polls oauthd's status endpoint until it is no longer 202, at most `limit`.
async fn wait_final(d: &Daemon, key: &str, id: &str, limit: Duration) -> (u16, serde_json::Value) {
    d.wait_device(key, "peer", id, limit).await
}

/// Waits up to `secs` for the flow `start` to end, and checks how it ended.
async fn expect_final(
    d: &Daemon,
    key: &str,
    start: &serde_json::Value,
    secs: u64,
    (status, word, error): (u16, &str, Option<&str>),
) {
    let id = start["id"].as_str().unwrap();
    let (got, body) = wait_final(d, key, id, Duration::from_secs(secs)).await;
    assert_eq!(
        (got, body["status"].as_str(), body["error"].as_str()),
        (status, Some(word), error),
        "{body}"
    );
    // Ended: the code the person typed is no longer said (nor kept).
    assert_eq!(body["user_code"], "", "{body}");
    assert!(body.get("verification_uri_complete").is_none(), "{body}");
}

async fn approved_device_flow_connects_and_stops_polling_at_the_first_success(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let start = d.start_device(&key, "peer", "tv").await;
    let id = start["id"].as_str().unwrap().to_owned();
    let user_code = start["user_code"].as_str().unwrap().to_owned();
    assert!(start["verification_uri"]
        .as_str()
        .unwrap()
        .starts_with(&peer.issuer));
    assert!(start["verification_uri_complete"]
        .as_str()
        .unwrap()
        .contains(&user_code));
    assert_eq!(
        start["interval"], 5,
        "the provider gives no interval: RFC 8628 says 5 s"
    );
    assert!(start["expires_at"].is_string());

    let (status, pending) = d.get(&format!("/v1/device/peer/{id}"), &key).await;
    assert_eq!((status, pending["status"].as_str()), (202, Some("pending")));

    let page = peer.verify_device(&user_code, true).await;
    assert!(page.contains("Sign-in Success"), "{page}");
    let (status, done) = wait_final(&d, &key, &id, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "connected");
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(done["connection"]["account"], "tv");
    assert_eq!(peer.grants(DEVICE_GRANT).await, 1);

    // No poll after success: a second one would have revoked the grant.
    let refused_before = peer.grant_errors(DEVICE_GRANT).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        peer.grant_errors(DEVICE_GRANT).await,
        refused_before,
        "oauthd polled after success"
    );
    assert_tv_token_is_live(&d, &key, &peer).await;
    let (status, _) = d.get("/v1/connections/peer/tv/token?min_ttl=0", &key).await;
    assert_eq!(status, 200);

    // The connection deleted since: the flow still says it connected, and that it is gone
    // (an app polling late learns both, not a 404 it would take for an unknown flow).
    assert!(home
        .cli(&["connections", "delete", "peer", "tv", "--force"])
        .status
        .success());
    let (status, ended) = d.get(&format!("/v1/device/peer/{id}"), &key).await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["status"], "connected");
    assert!(ended.get("connection").is_none(), "{ended}");
    assert_eq!(
        ended["detail"],
        "connected peer/tv, which has been deleted since"
    );
}

async fn denied_device_flow_answers_403(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let (_, start) = d.post("/v1/device/peer", &key, json!({})).await;
    peer.verify_device(start["user_code"].as_str().unwrap(), false)
        .await;
    expect_final(&d, &key, &start, 20, (403, "denied", Some("access_denied"))).await;
    assert_eq!(d.get("/v1/connections/peer/default", &key).await.0, 404);
    assert!(
        home.log_text().contains(&format!(
            "device flow {} (peer/default): denied: ",
            start["id"].as_str().unwrap_or_default()
        )),
        "{}",
        home.log_text()
    );
}

async fn unapproved_device_flow_expires_with_410(home: Home) {
    let peer = Peer::start_with(60, 3);
    let key = peer.configure(&home, "");
    let d = home.start();
    let (_, start) = d.post("/v1/device/peer", &key, json!({})).await;
    expect_final(
        &d,
        &key,
        &start,
        15,
        (410, "expired", Some("expired_token")),
    )
    .await;
}

/// A device flow an app started ends when its key is revoked, even once the person has
/// approved it: oauthd never redeems the approval, and stores nothing.
async fn a_revoked_keys_device_flow_ends_without_redeeming_the_approval(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let ops = home.create_key("ops", &[]);
    let start = d.start_device(&key, "peer", "tv").await;
    let id = start["id"].as_str().unwrap().to_owned();
    let revoked = home.cli(&["keys", "revoke", "app"]);
    assert!(revoked.status.success(), "{revoked:?}");
    // A new key of the same name is another key: the flow stays its old key's.
    home.create_key("app", &[]);
    peer.verify_device(start["user_code"].as_str().unwrap(), true)
        .await;
    let (status, body) = wait_final(&d, &ops, &id, Duration::from_secs(20)).await;
    assert_eq!(
        (status, body["status"].as_str(), body["error"].as_str()),
        (502, Some("failed"), Some("api_key_revoked")),
        "{body}"
    );
    assert_eq!(
        body["detail"], "the API key that started this flow was revoked",
        "{body}"
    );
    assert_eq!(
        peer.grants(DEVICE_GRANT).await,
        0,
        "the approval was redeemed"
    );
    assert_eq!(d.get("/v1/connections/peer/tv", &ops).await.0, 404);
    // The log says why, as the API does: the operator need not ask the API.
    let said = format!(
        "device flow {id} (peer/tv): failed: the API key that started this flow was revoked"
    );
    assert!(
        home.log_text()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(&said)),
        "{}",
        home.log_text()
    );
}

/// A clock stepped back while a device flow waited (NTP fixing a clock that ran ahead): its
/// next poll, counted on the later clock, lay as far off as the step, and an approved flow
/// stalled until a restart. A wait longer than any a poll sets is taken for a step: the
/// flow polls at once, and connects.
async fn a_device_flow_polls_on_after_the_clock_is_stepped_back(home: Home) {
    let peer = Peer::start(60);
    let key = peer.configure(&home, "");
    let clock = home.dir.path().join("clock");
    let d = home.start_on_a_virtual_clock(&clock);
    let start = d.start_device(&key, "peer", "tv").await;
    let id = start["id"].as_str().unwrap().to_owned();
    std::fs::write(&clock, "-259200").unwrap();
    peer.verify_device(start["user_code"].as_str().unwrap(), true)
        .await;
    let (status, body) = wait_final(&d, &key, &id, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{body}");
    assert_tv_token_is_live(&d, &key, &peer).await;
}

async fn polling_resumes_after_a_restart_mid_flow(home: Home) {
    let (peer, key, d) = serving(&home, 60, "");
    let (_, start) = d
        .post("/v1/device/peer", &key, json!({"account": "box"}))
        .await;
    let id = start["id"].as_str().unwrap().to_owned();
    d.kill9();
    peer.verify_device(start["user_code"].as_str().unwrap(), true)
        .await;
    let d = home.start();
    let (status, body) = wait_final(&d, &key, &id, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(peer.grants(DEVICE_GRANT).await, 1);
    assert!(home.log_text().contains(&format!("resuming flow {id}")));
    assert_eq!(d.get("/v1/connections/peer/box/token", &key).await.0, 200);
}

/// A provider that stalls while answering the poll that redeems an approved code (a
/// restart, a long pause) is waited for: given up on, its answer would be lost with the
/// tokens in it, and the next poll would find the code spent and fail the flow the user
/// approved.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_poll_outlasts_a_provider_that_stalls() {
    let peer = Peer::start(60);
    let (home, key) = peer.home_with_key("provider_timeout_seconds = 2\n");
    let d = home.start();
    let start = d.start_device(&key, "peer", "tv").await;
    // Right after a poll (the peer refuses it as pending), so the next is 5 s away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.grant_errors(DEVICE_GRANT).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer.grant_errors(DEVICE_GRANT).await, 1, "no poll came");
    peer.verify_device(start["user_code"].as_str().unwrap(), true)
        .await;
    let stalled = Instant::now();
    common::signal(peer.pid(), "STOP");
    // The next poll reaches the stalled provider and waits past provider_timeout_seconds.
    tokio::time::sleep(Duration::from_secs(9)).await;
    common::signal(peer.pid(), "CONT");
    assert!(
        stalled.elapsed() > Duration::from_secs(7),
        "the stall was too short"
    );
    expect_final(&d, &key, &start, 30, (200, "connected", None)).await;
    assert_eq!(peer.grants(DEVICE_GRANT).await, 1);
    assert_tv_token_is_live(&d, &key, &peer).await;
    d.signal_and_wait("TERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_connect_device_prints_the_code_and_exits_0_once_connected() {
    let peer = Peer::start(60);
    let (home, _key) = peer.home_with_key("");
    let mut child = std::process::Command::new(common::BIN)
        .args(["connect", "peer", "--device", "--account", "cli", "--db"])
        .arg(home.db())
        .arg("--config")
        .arg(home.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::Lines::of(child.stdout.take().unwrap());
    let code = lines.after("and enter the code: ");
    peer.verify_device(&code, true).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the CLI did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let rest = lines.rest();
    assert!(rest.iter().any(|l| l == "Connected peer/cli."), "{rest:?}");
    let out = home.cli(&["connections", "show", "peer", "cli"]);
    assert!(out.status.success());
}

/// `device_flow_for_apps = false`: an app's key cannot start a device flow (whose
/// provider page names no app and no account), and the provider is not even asked; the
/// operator's page still starts one.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_may_keep_its_device_flow_to_the_operator() {
    let mock = device_endpoint(60).await;
    let home = Home::new();
    home.write_config(&format!(
        "[providers.tv]\ndevice_authorization_url = \"{uri}/device\"\ntoken_url = \"{uri}/token\"\n\
         authorization_url = \"{uri}/authorize\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n\
         device_flow_for_apps = false\n",
        uri = mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d.post("/v1/device/tv", &key, json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("device_flow_not_allowed")),
        "{body}"
    );
    assert!(mock
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());
    let ui = home.ui_session(&d).await;
    let (status, started) = d.ui_post(&ui, "/ui/api/device/tv", json!({})).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["user_code"], "ABCDE", "{started}");
}

/// A mock provider whose device endpoint hands out code `dc-1` (user code ABCDE), to be
/// polled every second for `expires_in` seconds; each test mounts its token endpoint.
async fn device_endpoint(expires_in: u64) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "device_code": "dc-1", "user_code": "ABCDE", "verification_uri": "https://x.example",
            "expires_in": expires_in, "interval": 1
        })))
        .mount(&mock)
        .await;
    mock
}

/// A home whose provider `name` is `mock`'s device and token endpoints, with an app's key,
/// and oauthd serving it.
fn serving_mock(mock: &MockServer, name: &str) -> (Home, String, Daemon) {
    let (home, key) = mock_home(mock, name);
    let d = home.start();
    (home, key, d)
}

/// `serving_mock`'s home and key, with no oauthd serving it.
fn mock_home(mock: &MockServer, name: &str) -> (Home, String) {
    let home = Home::new();
    home.write_config(&format!(
        "[providers.{name}]\ndevice_authorization_url = \"{uri}/device\"\ntoken_url = \"{uri}/token\"\n\
         authorization_url = \"{uri}/authorize\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n",
        uri = mock.uri()
    ));
    let key = home.create_key("app", &[]);
    (home, key)
}

/// Has `mock`'s token endpoint answer `authorization_pending` (the person not done yet)
/// to every poll no other answer is mounted for.
async fn pending_until_approved(mock: &MockServer) {
    let pending =
        ResponseTemplate::new(400).set_body_json(json!({"error": "authorization_pending"}));
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(pending)
        .mount(mock)
        .await;
}

/// A provider whose device endpoint answers like Tidal and whose token endpoint says
/// `slow_down` once, then `authorization_pending`.
async fn mock_provider() -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "deviceCode": "dc-1", "userCode": "ABCDE", "verificationUri": "link.tidal.com",
            "verificationUriComplete": "link.tidal.com/ABCDE", "expiresIn": 120, "interval": 1
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "slow_down"})))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "authorization_pending"})),
        )
        .mount(&mock)
        .await;
    mock
}

/// A token endpoint that fails on the way (503, 500, 429, with an OAuth error in the body
/// or without) is polled ever more slowly: the wait doubles after each failed poll (RFC
/// 8628 3.5), so a provider in trouble is not hammered under the operator's client_id. The
/// first poll that gets through ends the backoff: the flow is polled at the provider's
/// interval again, and apps were shown that interval all along. (A 503 or 500 whose body
/// named an error, `temporarily_unavailable` or `server_error`, used to end the flow as
/// refused, the person's approval lost.)
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_endpoint_is_polled_ever_more_slowly_until_it_answers() {
    let mock = device_endpoint(120).await;
    // The token endpoint fails with 503 and 500 (each naming an error) and 429, then
    // works again.
    let pending =
        ResponseTemplate::new(400).set_body_json(json!({"error": "authorization_pending"}));
    let unavailable =
        ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"}));
    let failed = ResponseTemplate::new(500).set_body_json(json!({"error": "server_error"}));
    for (answer, times) in [
        (unavailable, Some(1)),
        (failed, Some(1)),
        (ResponseTemplate::new(429), Some(1)),
        (pending, None),
    ] {
        let mock_answer = Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(answer);
        match times {
            Some(n) => mock_answer.up_to_n_times(n).mount(&mock).await,
            None => mock_answer.mount(&mock).await,
        }
    }
    let (home, key, d) = serving_mock(&mock, "slow");
    let (status, start) = d.post("/v1/device/slow", &key, json!({})).await;
    assert_eq!(status, 201, "{start}");
    assert_eq!(start["interval"], 1);
    let status_path = format!("/v1/device/slow/{}", start["id"].as_str().unwrap());
    // After the 503 (at 1 s) and the 500 (2 s later): waits of 2, then 4 s.
    let grown = common::eventually(Duration::from_secs(15), || {
        home.log_text().contains("trying again in 4 s")
    })
    .await;
    assert!(grown, "{}", home.log_text());
    let (_, flow) = d.get(&status_path, &key).await;
    assert_eq!(flow["status"], "pending", "{flow}");
    assert_eq!(
        flow["interval"], 1,
        "apps keep the provider's interval: {flow}"
    );
    // The third failure waits 8 s; the poll after it gets through, and from then on the
    // flow is polled every second again: three more polls come within 8 s, where a
    // backoff that stayed would have made one.
    let recovered = common::eventually(Duration::from_secs(20), || {
        home.log_text()
            .contains("the token endpoint answers again; polling every 1 s")
    })
    .await;
    assert!(recovered, "{}", home.log_text());
    let polls = || async {
        let requests = mock.received_requests().await.unwrap_or_default();
        requests.iter().filter(|r| r.url.path() == "/token").count()
    };
    let after_recovery = polls().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while polls().await < after_recovery + 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        polls().await >= after_recovery + 3,
        "{} polls since the recovery:\n{}",
        polls().await - after_recovery,
        home.log_text()
    );
}

/// A device flow declined at a provider that answers errors with 200 (GitHub:
/// `authorization_pending`, then `access_denied`), or with Microsoft's
/// `authorization_declined`: pending while pending, then denied (403) at once, not polled
/// on as a failing endpoint until the code expires.
#[tokio::test(flavor = "multi_thread")]
async fn declines_answered_with_200_or_as_authorization_declined_deny_the_flow() {
    for (status, declined) in [(200, "access_denied"), (400, "authorization_declined")] {
        let mock = device_endpoint(600).await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(json!({"error": "authorization_pending"})),
            )
            .up_to_n_times(2)
            .mount(&mock)
            .await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"error": declined})))
            .mount(&mock)
            .await;
        let (home, key, d) = serving_mock(&mock, "gh");
        let (code, start) = d.post("/v1/device/gh", &key, json!({})).await;
        assert_eq!(code, 201, "{start}");
        let status_path = format!("/v1/device/gh/{}", start["id"].as_str().unwrap());
        let deadline = Instant::now() + Duration::from_secs(15);
        let (answer, flow) = loop {
            let (answer, flow) = d.get(&status_path, &key).await;
            if answer != 202 || Instant::now() > deadline {
                break (answer, flow);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (answer, flow["status"].as_str()),
            (403, Some("denied")),
            "{declined}: {flow}"
        );
        let log = home.log_text();
        assert!(
            !log.contains("malformed token response"),
            "{declined}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_down_adds_five_seconds_and_tidal_shapes_are_normalised() {
    let mock = mock_provider().await;
    let home = Home::new();
    home.write_config(&format!(
        "[providers.tidal]\npreset = \"tidal\"\ndevice_authorization_url = \"{uri}/device\"\ntoken_url = \"{uri}/token\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n",
        uri = mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, start) = d.post("/v1/device/tidal", &key, json!({})).await;
    assert_eq!(status, 201, "{start}");
    assert_eq!(start["user_code"], "ABCDE");
    assert_eq!(start["verification_uri"], "https://link.tidal.com");
    assert_eq!(
        start["verification_uri_complete"],
        "https://link.tidal.com/ABCDE"
    );
    assert_eq!(start["interval"], 1);

    let deadline = Instant::now() + Duration::from_secs(15);
    let polls = loop {
        let polls: Vec<_> = mock
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/token")
            .collect();
        if polls.len() >= 3 || Instant::now() > deadline {
            break polls;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(polls.len() >= 3, "only {} polls", polls.len());
    assert!(String::from_utf8_lossy(&polls[0].body).contains("device_code=dc-1"));
    // The flow keeps the slower pace: 1 s + 5 s between polls after slow_down.
    let (_, status) = d
        .get(
            &format!("/v1/device/tidal/{}", start["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(status["status"], "pending");
    assert_eq!(status["interval"], 6, "slow_down did not grow the interval");
    assert!(home.log_text().contains("slow_down; polling every 6 s"));
}

/// A stop (SIGTERM) that comes while a poll is under way waits for it: the provider may be
/// redeeming the device code at that moment, and its tokens are stored before oauthd exits,
/// never dropped with the flow left to be polled again with a spent code.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_waits_for_the_device_poll_under_way_and_stores_its_tokens() {
    let mock = device_endpoint(120).await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
                    "refresh_token": "rt-1"
                }))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&mock)
        .await;
    let (home, key, d) = serving_mock(&mock, "slow");
    let (status, start) = d
        .post("/v1/device/slow", &key, json!({"account": "tv"}))
        .await;
    assert_eq!(status, 201, "{start}");
    let id = start["id"].as_str().unwrap().to_owned();
    let token_calls = || async {
        let requests = mock.received_requests().await.unwrap_or_default();
        requests.iter().filter(|r| r.url.path() == "/token").count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while token_calls().await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(token_calls().await, 1, "no poll under way");
    let exit = tokio::task::spawn_blocking(move || d.signal_and_wait("TERM"))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // Stored before the exit: the connection is there with no oauthd running.
    let out = home.cli(&["connections", "show", "slow", "tv"]);
    assert!(out.status.success(), "{out:?}\n{}", home.log_text());
    // And the flow ended with it: a new start polls nothing again.
    let d = home.start();
    let (status, body) = d.get(&format!("/v1/device/slow/{id}"), &key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "connected", "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(token_calls().await, 1, "the spent code was polled again");
}

/// A connection deleted while a device flow for it waits for approval: the flow ends
/// (`failed`, `connection_deleted`), and an approval afterwards brings nothing back. It used
/// to stay pending, and whoever had its code (shown on a screen, or left by a terminal
/// stopped with Ctrl-C) connected the deleted account again, as their own account.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_connections_device_flow_waiting_for_approval_ends_with_it() {
    let mock = device_endpoint(120).await;
    let tokens = ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1"
    }));
    // The first flow is approved at once; every later poll finds the person not done.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(tokens.clone())
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    pending_until_approved(&mock).await;
    let (home, key, d) = serving_mock(&mock, "tvp");
    let start = |account: &'static str| {
        let d = &d;
        let key = &key;
        async move {
            let (status, start) = d
                .post("/v1/device/tvp", key, json!({"account": account}))
                .await;
            assert_eq!(status, 201, "{start}");
            start
        }
    };
    let ended = |start: serde_json::Value| {
        let d = &d;
        let key = &key;
        async move {
            let id = start["id"].as_str().unwrap().to_owned();
            let (status, body) = d
                .wait_device(key, "tvp", &id, Duration::from_secs(10))
                .await;
            (status, body["status"].clone(), body["error"].clone())
        }
    };
    let connected = (200, json!("connected"), serde_json::Value::Null);
    let first = start("tv").await;
    assert_eq!(ended(first).await, connected);
    let second = start("tv").await;
    // Another account's flow is left alone.
    let other = start("radio").await;
    let resp = d.delete("/v1/connections/tvp/tv", &key).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        ended(second).await,
        (502, json!("failed"), json!("connection_deleted"))
    );
    // The person approves now: nothing polls the ended flow, nothing is connected.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(tokens)
        .with_priority(1)
        .mount(&mock)
        .await;
    assert_eq!(ended(other).await, connected);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = d.get("/v1/connections/tvp/tv", &key).await;
    assert_eq!(status, 404, "{body}\n{}", home.log_text());
}

/// A delete while a poll of the account's pending flow is out at the provider, and the
/// person approves meanwhile: the delete does not wait for that poll (it waited up to a
/// poll's lease, 80 s by default, longer than clients wait), and the tokens the poll
/// brings back are not stored: the delete answered 204 and the connection came back.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_waits_for_no_poll_and_what_the_poll_brings_is_not_kept() {
    let mock = device_endpoint(120).await;
    let tokens = |n: u8| {
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": format!("rt-{n}")
        }))
    };
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(tokens(1))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    // Every later poll: the person approves while it is out, and its answer takes 8 s.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(tokens(2).set_delay(Duration::from_secs(8)))
        .mount(&mock)
        .await;
    let (home, key, d) = serving_mock(&mock, "tvp");
    let start = || async {
        let (status, start) = d
            .post("/v1/device/tvp", &key, json!({"account": "tv"}))
            .await;
        assert_eq!(status, 201, "{start}");
        start["id"].as_str().unwrap().to_owned()
    };
    let first = start().await;
    let (status, _) = d
        .wait_device(&key, "tvp", &first, Duration::from_secs(10))
        .await;
    assert_eq!(status, 200);
    let polls = || async {
        let requests = mock.received_requests().await.unwrap_or_default();
        requests.iter().filter(|r| r.url.path() == "/token").count()
    };
    let second = start().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while polls().await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(polls().await, 2, "no poll under way");
    // Answered long before the poll's answer comes.
    let deleted = d
        .http
        .delete(format!("{}/v1/connections/tvp/tv", d.url))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(6))
        .send()
        .await
        .expect("the delete waited for the poll");
    assert_eq!(deleted.status(), 204);
    let (status, flow) = d.get(&format!("/v1/device/tvp/{second}"), &key).await;
    assert_eq!(
        (status, flow["error"].as_str()),
        (502, Some("connection_deleted")),
        "{flow}"
    );
    let came = common::eventually(Duration::from_secs(20), || {
        home.log_text()
            .contains("after it had ended (failed); they were not stored")
    })
    .await;
    assert!(came, "{}", home.log_text());
    let (status, body) = d.get("/v1/connections/tvp/tv", &key).await;
    assert_eq!(status, 404, "{body}");
}

/// `oauthd connect --device` prints what the provider sent with control characters
/// escaped: a user code or address holding terminal escapes (clear the screen, hidden
/// text, a link disguised as another) would act on the operator's terminal.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_a_providers_device_texts_without_terminal_escapes() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "device_code": "dc-1", "user_code": "AB\u{1b}[2JCD",
            "verification_uri": "https://x.example/\u{1b}]8;;https://evil.example\u{7}go",
            "verification_uri_complete": "https://x.example/\u{1b}[8mABCD",
            "expires_in": 60, "interval": 1
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "access_denied"})))
        .mount(&mock)
        .await;
    let home = Home::new();
    home.write_config(&format!(
        "[providers.tv]\ndevice_authorization_url = \"{uri}/device\"\ntoken_url = \"{uri}/token\"\n\
         authorization_url = \"{uri}/authorize\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n",
        uri = mock.uri()
    ));
    home.create_key("app", &[]); // makes the database
    let out = home.cli(&["connect", "tv", "--device"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("and enter the code: AB"), "{stdout}");
    assert!(
        !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
        "a control character reached the terminal: {stdout:?}"
    );
    assert!(stdout.contains("\\u{1b}[2JCD"), "{stdout}");
}

/// `oauthd connect --device` stopped (Ctrl-C, SIGTERM) while a poll's answer was on its
/// way ended at once: the provider had redeemed the device code for tokens nobody stored,
/// and the flow was left to be polled again with a spent code. The poll under way ends
/// and stores its tokens first now.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_device_flow_stopped_by_a_signal_stores_what_a_poll_got() {
    use common::relay::Fault;
    let peer = Peer::start(60);
    let (relay, provider) = peer.behind_relay("peer").await;
    let home = Home::new();
    home.write_config(&provider);
    assert!(home.start().signal_and_wait("TERM").success());
    let mut cli = home
        .cli_command(&["connect", "peer", "--device", "--account", "tv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::of(cli.stdout.take().unwrap());
    let code = lines.after("and enter the code: ").trim().to_owned();
    let page = peer.verify_device(&code, true).await;
    assert!(page.contains("Sign-in Success"), "{page}");
    // The next poll (within the 5 s interval) redeems the code; its answer is held.
    relay.arm(DEVICE_GRANT_FORM, Fault::Hold(Duration::from_secs(8)));
    // Once the poll is under way (a fixed wait could signal before it began).
    assert!(relay.struck(Duration::from_secs(20)).await, "no poll came");
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::signal(cli.id(), "TERM");
    let rest = lines.rest();
    let out = common::exit_of(cli);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {said} {rest:?}", out.status);
    assert!(rest.iter().any(|l| l == "Connected peer/tv."), "{rest:?}");
    assert!(
        said.contains("stopping once what the provider is asked now"),
        "{said}"
    );
    assert_eq!(peer.grants(DEVICE_GRANT).await, 1);
    // Stored, and the grant is live.
    let key = home.create_key("app", &[]);
    let d = home.start();
    assert_tv_token_is_live(&d, &key, &peer).await;
}

/// `oauthd connect --device` stopped before the person approved, with no oauthd serving
/// the store: said as such. It said that "a running oauthd goes on polling the flow",
/// with none running.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_device_flow_stopped_with_no_oauthd_serving_says_so() {
    let mock = device_endpoint(120).await;
    pending_until_approved(&mock).await;
    let (home, _key) = mock_home(&mock, "tvp");
    let mut cli = home
        .cli_command(&["connect", "tvp", "--device", "--account", "tv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::of(cli.stdout.take().unwrap());
    lines.after("and enter the code: ");
    common::signal(cli.id(), "TERM");
    let out = common::exit_of(cli);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert!(
        said.contains("the tokens an approved code is redeemed for would be lost")
            && said.contains("no oauthd serves this store now: one started on it before the flow expires polls it"),
        "{said}"
    );
}

/// The device grant's type as a poll's form sends it.
const DEVICE_GRANT_FORM: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code";

//! Notifications: events from the real flows (the test provider, a real SQLite file or
//! redis-server) delivered to a real receiver that verifies every signature with the
//! Standard Webhooks reference library from PyPI; at least once, through a receiver that
//! is down or failing, a `kill -9` of oauthd, and two instances on one Redis.

use crate::common;

use common::peer::{connect, Peer};
use common::receiver::{new_secret, Receiver};
use common::{Daemon, Home};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// A `[[notify]]` table for `receiver`, signed with `secret` (written beside the config).
fn target_toml(home: &Home, name: &str, receiver: &Receiver, secret: &str, extra: &str) -> String {
    let file = home.dir.path().join(format!("{name}.secret"));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    format!(
        "[[notify]]\nname = \"{name}\"\nurl = \"{}\"\nsecret_file = \"{}\"\n{extra}\n",
        receiver.url("/hooks/oauthd"),
        file.display()
    )
}

/// Provider gh, for connections imported with `import_gh` (nothing is asked of it).
const GH_TOML: &str =
    "[providers.gh]\npreset = \"github\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";

/// What the page's notifications section reads (`GET /ui/api/events`).
async fn page_events(d: &common::Daemon, session: &str) -> Value {
    d.ui_get("/ui/api/events", session)
        .await
        .json()
        .await
        .unwrap()
}

/// Imports gh/`account` for each account, with the CLI: one `connection.connected` each.
fn import_gh(home: &Home, accounts: impl IntoIterator<Item = String>) {
    let lines: String = accounts
        .into_iter()
        .map(|a| {
            format!("{{\"provider\":\"gh\",\"account\":\"{a}\",\"access_token\":\"tok-{a}\"}}\n")
        })
        .collect();
    let file = home.dir.path().join("tokens.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// Fast retries, and a failing refresh is told at once.
const EVENTS_TOML: &str =
    "[events]\nrefresh_failing_after_seconds = 0\nretry_min_seconds = 1\nretry_max_seconds = 2\n";

/// A connection the provider gave no refresh token, once its access token expired, stayed
/// `active` (its `expires_at` past) and nothing was told until an app asked for its token,
/// which an app that stopped for good never does. The background refresher's next round
/// now marks it `needs_reauth` and tells the targets, with no call made.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_a_refresh_token_is_told_as_expired_without_a_call() {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    home.write_config(&format!(
        "refresh_check_seconds = 1\n{}{EVENTS_TOML}{GH_TOML}",
        target_toml(&home, "app", &hooks, &secret, "")
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d
        .put(
            "/v1/connections/gh/alice",
            &key,
            json!({"access_token": "tok-short-lived", "expires_in": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, row) = d.get("/v1/connections/gh/alice", &key).await;
    assert_eq!(row["status"], "active", "{row}");
    let told = hooks.wait_for("connection.needs_reauth", 1, WAIT).await;
    assert_eq!(told.len(), 1, "{told:?}");
    let data = &told[0]["json"]["data"];
    assert_eq!(
        (&data["provider"], &data["account"]),
        (&json!("gh"), &json!("alice"))
    );
    assert!(
        data["error"].as_str().unwrap().contains("no refresh token"),
        "{data}"
    );
    let (_, row) = d.get("/v1/connections/gh/alice", &key).await;
    assert_eq!(row["status"], "needs_reauth", "{row}");
    assert_verified(&told, &["tok-short-lived"]);
    d.signal_and_wait("TERM");
}

/// Every delivery verified with the reference library, none carries a token.
fn assert_verified(deliveries: &[Value], tokens: &[&str]) {
    for d in deliveries {
        assert_eq!(d["verified"], true, "signature did not verify: {d}");
        for t in tokens {
            assert!(!d["body"].as_str().unwrap().contains(t), "a token in {d}");
        }
    }
}

/// Connect, lose the grant at the provider, reconnect, delete: each event exactly once,
/// at its moment, signed; the phone target gets only what it asked for, as sentences.
async fn connection_events_fire_once_each_from_the_real_flows(home: Home) {
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let phone = Receiver::start(None);
    let peer = Peer::start(2);
    let mut toml = target_toml(&home, "app", &hooks, &secret, "");
    toml.push_str(&format!(
        "[[notify]]\nname = \"phone\"\nurl = \"{}\"\nformat = \"text\"\nevents = [\"connection.needs_reauth\", \"connection.recovered\"]\n{EVENTS_TOML}",
        phone.url("/homelab")
    ));
    let key = peer.configure(&home, &toml);
    let d = home.start();

    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let connected = hooks.wait_for("connection.connected", 1, WAIT).await;
    assert_eq!(connected.len(), 1, "{connected:?}");
    let data = &connected[0]["json"]["data"];
    assert_eq!(
        (&data["provider"], &data["account"], &data["via"]),
        (&json!("peer"), &json!("alice"), &json!("connect"))
    );
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    let access = token["access_token"].as_str().unwrap().to_owned();

    // The user revokes access at the provider; the next refresh is refused for good.
    peer.revoke(&access).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 409);
    let reauth = hooks.wait_for("connection.needs_reauth", 1, WAIT).await;
    assert_eq!(reauth.len(), 1);
    let data = &reauth[0]["json"]["data"];
    assert!(
        data["error"].as_str().unwrap().contains("invalid_grant"),
        "{data}"
    );
    assert!(
        data["reconnect_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/?reconnect=peer&account=alice", d.url)),
        "{data}"
    );
    // Asking again does not tell again.
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 409);

    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    let recovered = hooks.wait_for("connection.recovered", 1, WAIT).await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["json"]["data"]["after"], "needs_reauth");
    // The reconnect's two events are sent side by side: either may arrive first.
    assert_eq!(
        hooks.wait_for("connection.connected", 2, WAIT).await.len(),
        2
    );

    let resp = d.delete("/v1/connections/peer/alice", &key).await;
    assert_eq!(resp.status(), 204);
    let deleted = hooks.wait_for("connection.deleted", 1, WAIT).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["json"]["data"]["revocation"], "revoked");

    // Events of one change are sent side by side: count them, in the order of the changes.
    let all = hooks.received().await;
    let kinds: Vec<&str> = all
        .iter()
        .map(|r| r["json"]["type"].as_str().unwrap())
        .collect();
    let position = |kind: &str| kinds.iter().rposition(|k| *k == kind).unwrap();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(position("connection.needs_reauth") < position("connection.recovered"));
    assert!(position("connection.recovered") < position("connection.deleted"));
    assert_verified(&all, &[&access]);
    let ids: HashSet<_> = all.iter().map(|r| r["webhook_id"].clone()).collect();
    assert_eq!(ids.len(), all.len(), "webhook-ids are per event");

    // The phone: two sentences, the urgent one with the reconnect link to open.
    let texts = phone.wait_for_all(2, WAIT).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().all(|t| t["content_type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain")));
    let first = texts[0]["body"].as_str().unwrap();
    assert!(
        first.contains("peer/alice must be connected again"),
        "{first}"
    );
    assert_eq!(texts[0]["priority"], "high");
    assert!(texts[0]["click"]
        .as_str()
        .unwrap()
        .contains("reconnect=peer"));
    assert!(texts[1]["body"].as_str().unwrap().contains("works again"));

    assert_eq!(
        d.metric("oauthd_events_total{type=\"connection.connected\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        d.metric_reaches(
            "oauthd_deliveries_total{result=\"delivered\",target=\"app\"}",
            5.0,
            WAIT
        )
        .await,
        Some(5.0)
    );
    assert_eq!(
        d.metric_reaches("oauthd_outbox_pending", 0.0, WAIT).await,
        Some(0.0)
    );
}

/// A device flow that completes and one that is declined.
async fn device_flow_events_tell_how_the_flow_ended(home: Home) {
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let peer = Peer::start(600);
    let toml = target_toml(
        &home,
        "app",
        &hooks,
        &secret,
        "events = [\"device_flow.*\"]",
    );
    let key = peer.configure(&home, &toml);
    let d = home.start();
    for (account, approve) in [("tv", true), ("radio", false)] {
        let started = d.start_device(&key, "peer", account).await;
        peer.verify_device(started["user_code"].as_str().unwrap(), approve)
            .await;
        let id = started["id"].as_str().unwrap();
        let (status, body) = d.wait_device(&key, "peer", id, WAIT).await;
        let ended = if approve {
            (200, "connected")
        } else {
            (403, "denied")
        };
        assert_eq!((status, body["status"].as_str().unwrap()), ended, "{body}");
    }
    let done = hooks.wait_for("device_flow.completed", 1, WAIT).await;
    let failed = hooks.wait_for("device_flow.failed", 1, WAIT).await;
    assert_eq!((done.len(), failed.len()), (1, 1));
    assert_eq!(done[0]["json"]["data"]["account"], "tv");
    assert_eq!(failed[0]["json"]["data"]["account"], "radio");
    assert_eq!(failed[0]["json"]["data"]["status"], "denied");
    assert_eq!(failed[0]["json"]["data"]["error"], "access_denied");
    // The target asked for device flows only: no connection.connected.
    assert_eq!(hooks.received().await.len(), 2);
    assert_verified(&hooks.received().await, &[]);
}

/// Deliveries survive `kill -9` of oauthd right after the change: the event was committed
/// with it, the receiver was down, and the restarted oauthd delivers it (even when the kill
/// came mid-attempt: a restart on SQLite, the only process working on it, takes over the
/// unfinished claim at once; on Redis a dead instance's claim ends with its lease, which
/// the store contract tests).
#[tokio::test(flavor = "multi_thread")]
async fn a_needs_reauth_survives_kill_9_and_is_delivered_after_restart() {
    let home = Home::new();
    let secret = new_secret();
    let mut hooks = Receiver::start(Some(&secret));
    let peer = Peer::start(2);
    let toml = target_toml(&home, "app", &hooks, &secret, "") + EVENTS_TOML;
    let key = peer.configure(&home, &toml);
    let d = home.start();
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    assert_eq!(
        hooks.wait_for("connection.connected", 1, WAIT).await.len(),
        1
    );
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    peer.revoke(token["access_token"].as_str().unwrap()).await;
    hooks.stop();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 409);
    d.kill9();

    hooks.restart();
    let d = home.start();
    let reauth = hooks.wait_for("connection.needs_reauth", 1, WAIT).await;
    assert_eq!(reauth.len(), 1, "{:?}", hooks.received().await);
    assert_verified(&reauth, &[]);
    assert!(d.signal_and_wait("TERM").success());
}

/// A receiver that is down, then answers 500, then 200: the same event with the same
/// `webhook-id` until it gets through; `events list` shows where it stands.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_gets_the_same_webhook_id_until_it_accepts() {
    let home = Home::new();
    let secret = new_secret();
    let mut hooks = Receiver::start(Some(&secret));
    home.write_config(&(target_toml(&home, "app", &hooks, &secret, "") + EVENTS_TOML));
    let key = home.create_key("app", &[]);
    let d = home.start();
    hooks.stop();
    let (status, sent) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["targets"], json!(["app"]));
    let event_id = sent["event_id"].as_str().unwrap().to_owned();

    // Down: attempts fail and are listed as failing.
    assert!(
        common::eventually(WAIT, || {
            let out = home.cli(&["events", "list", "--failed", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            list.as_array().is_some_and(|l| {
                l.iter().any(|d| {
                    d["event_id"] == event_id.as_str()
                        && d["status"] == "pending"
                        && d["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("connect"))
                })
            })
        })
        .await
    );
    hooks.restart();
    hooks.fail_next(1, 500).await;
    let got = hooks.wait_for("notify.test", 2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got.iter()
            .map(|g| g["answered"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [500, 200]
    );
    assert!(got.iter().all(|g| g["webhook_id"] == event_id.as_str()));
    assert_verified(&got, &[]);

    // Marked delivered once the receiver's answer is back, a moment after it counted it.
    let first_row = |home: &Home| {
        let out = home.cli(&["events", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("events list: {e}: {}", String::from_utf8_lossy(&out.stderr))
        });
        list[0].clone()
    };
    common::eventually(WAIT, || first_row(&home)["status"] == "delivered").await;
    let row = &first_row(&home);
    assert_eq!(row["status"], "delivered", "{row}");
    assert!(row["attempts"].as_u64().unwrap() >= 3, "{row}");
    // The table does not show the last failure as where a delivered event stands.
    let table = String::from_utf8_lossy(&home.cli(&["events", "list"]).stdout).into_owned();
    let line = table
        .lines()
        .find(|l| l.contains(row["id"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains(" delivered ") && line.ends_with("earlier attempt: HTTP 500"),
        "{line}"
    );
    assert!(
        d.metric("oauthd_deliveries_total{result=\"failed\",target=\"app\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    // A second test at once is refused; without a key, 401.
    let (status, problem) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (429, Some("too_many_tests"))
    );
    // The page's button has a budget of its own: apps sending tests did not keep it
    // refused (it shared theirs).
    let ui = home.ui_session(&d).await;
    let (status, sent) = d.ui_post(&ui, "/ui/api/notify/test", json!({})).await;
    assert_eq!(status, 202, "{sent}");
    let (status, problem) = d.ui_post(&ui, "/ui/api/notify/test", json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (429, Some("too_many_tests"))
    );
    assert_eq!(d.post("/v1/notify/test", "", json!({})).await.0, 401);
    // The test takes no options: a field, or a body that is not JSON, is refused.
    let (status, problem) = d
        .post("/v1/notify/test", &key, json!({"target": "app"}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("unknown_field"))
    );
    let test_with = |content_type: &'static str, body: &'static str| {
        d.http
            .post(format!("{}/v1/notify/test", d.url))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_eq!(
        test_with("text/plain", "hello").await.unwrap().status(),
        415
    );
    // No body at all under any content type (`curl -X POST -d ''` declares a form) is
    // the empty object: not refused (here, past the test's rate limit: 429).
    let form = "application/x-www-form-urlencoded";
    assert_eq!(test_with(form, "").await.unwrap().status(), 429);
    // A tenant's key (limited to some accounts or namespaces) may not ring the operator's
    // targets.
    let out = home.cli(&["keys", "create", "--name", "tenant", "--account", "acme.*"]);
    let tenant = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (status, problem) = d.post("/v1/notify/test", &tenant, json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("notify_not_allowed"))
    );
}

/// A delivery given up on is dead, counted, and sent again by `oauthd events retry`.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_delivery_is_sent_again_by_events_retry() {
    let (home, hooks, key, d) = daemon_with_app_target(
        "[events]\nretry_for_seconds = 3\nretry_min_seconds = 1\nretry_max_seconds = 1\n",
    )
    .await;
    hooks.fail_next(1000, 500).await;
    let (status, sent) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    let row = failed_row_once(&home, |r| r["status"] == "dead").await;
    assert_eq!(row["event_id"], sent["event_id"]);
    assert_eq!(row["last_error"], "HTTP 500");
    let attempts = hooks.of_type("notify.test").await.len();
    assert!(attempts >= 3, "{attempts} attempts in the 3 s window");
    assert_eq!(
        d.metric_reaches(
            "oauthd_deliveries_total{result=\"dead\",target=\"app\"}",
            1.0,
            WAIT
        )
        .await,
        Some(1.0)
    );
    // The receiver is fixed; retrying by hand sends it at once.
    hooks.fail_next(0, 500).await;
    let id = row["id"].as_str().unwrap();
    let out = home.cli(&["events", "retry", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = hooks.wait_for("notify.test", attempts + 1, WAIT).await;
    assert_eq!(got.last().unwrap()["answered"], 200);
    assert!(
        common::eventually(WAIT, || {
            let out = home.cli(&["events", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            list[0]["status"] == "delivered"
        })
        .await
    );
    // Delivered now: a retry from a listing that is out of date does not send it twice;
    // --again does, when the receiver lost it.
    let out = home.cli(&["events", "retry", id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("delivered already") && err.contains("--again"),
        "{err}"
    );
    let out = home.cli(&["events", "retry", "--again", id]);
    assert!(out.status.success(), "{out:?}");
    let got = hooks.wait_for("notify.test", attempts + 2, WAIT).await;
    assert_eq!(got.len(), attempts + 2, "sent again with --again");
    let out = home.cli(&["events", "retry", "dlv_nope"]);
    assert_eq!(out.status.code(), Some(1));
    // The event's id (a receiver's webhook-id) is not a delivery's: said so.
    let out = home.cli(&["events", "retry", sent["event_id"].as_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is an event's id") && err.contains("dlv_") && !err.contains("  "),
        "{err}"
    );

    // A receiver down past retry_for_seconds leaves dead deliveries: all of them are sent
    // again with one command (they used to take one `events retry ID` each).
    hooks.fail_next(1000, 500).await;
    for n in 0..2 {
        if n > 0 {
            // One test notification each 5 s.
            tokio::time::sleep(Duration::from_millis(5100)).await;
        }
        let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
        assert_eq!(status, 202);
    }
    let dead = |home: &Home| {
        let out = home.cli(&["events", "list", "--failed", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list.as_array()
            .map_or(0, |l| l.iter().filter(|r| r["status"] == "dead").count())
    };
    assert!(common::eventually(Duration::from_secs(15), || dead(&home) == 2).await);
    // Listed as `retry --dead` takes them.
    let out = home.cli(&["events", "list", "--dead", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let statuses: Vec<&Value> = listed
        .as_array()
        .map_or(vec![], |l| l.iter().map(|r| &r["status"]).collect());
    assert_eq!(statuses, [&json!("dead"), &json!("dead")], "{out:?}");
    hooks.fail_next(0, 500).await;
    let out = home.cli(&["events", "retry", "--dead", "--target", "app"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2 dead deliveries to app are due now; the running oauthd sends them"),
        "{said}"
    );
    assert!(common::eventually(WAIT, || dead(&home) == 0).await);
    let out = home.cli(&["events", "retry"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = home.cli(&["events", "retry", "--dead", "--again"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = home.cli(&["events", "retry", "--dead", "--target", "nosuch"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("No [[notify]] target is named nosuch"),
        "{said}"
    );
    // Nothing dead: said so (it was "0 dead deliveries are due now; …").
    assert!(
        said.contains("No dead delivery to nosuch to retry.") && !said.contains("due now"),
        "{said}"
    );
    // With no oauthd serving the database, a retry said "the running oauthd sends it", and
    // nothing was sent: it says that none serves it.
    d.signal_and_wait("TERM");
    let out = home.cli(&["events", "retry", "--again", id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "is due now; but no oauthd serves this store now: it is sent once one is started on it"
        ),
        "{said}"
    );
}

/// A daemon with one signed target, `app`, at a receiver of its own, `events` as its
/// `[events]` table, and a key to send test events with.
async fn daemon_with_app_target(events: &str) -> (Home, Receiver, String, common::Daemon) {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    home.write_config(&(target_toml(&home, "app", &hooks, &secret, "") + events));
    let key = home.create_key("app", &[]);
    let d = home.start();
    (home, hooks, key, d)
}

/// The first row of `events list --failed --json`, once `done` holds for it.
async fn failed_row_once(home: &Home, done: impl Fn(&Value) -> bool) -> Value {
    let row = |home: &Home| {
        let out = home.cli(&["events", "list", "--failed", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list[0].clone()
    };
    let found = common::eventually(WAIT, || done(&row(home))).await;
    let last = row(home);
    assert!(found, "not reached; last seen: {last}");
    last
}

fn millis_of(row: &Value, field: &str) -> i64 {
    let text = row[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {row}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{field}: {e}"))
        .timestamp_millis()
}

/// A receiver answering `410 Gone` says its endpoint is gone for good: the delivery is
/// dead after that one attempt, not retried for a day.
#[tokio::test(flavor = "multi_thread")]
async fn a_gone_receiver_ends_the_delivery_at_once() {
    let (home, hooks, key, d) = daemon_with_app_target(EVENTS_TOML).await;
    hooks.fail_next(1000, 410).await;
    let (status, sent) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202, "{sent}");
    let row = failed_row_once(&home, |r| r["status"] == "dead").await;
    assert_eq!(row["event_id"], sent["event_id"]);
    assert_eq!(row["attempts"], 1, "{row}");
    assert!(
        row["last_error"].as_str().unwrap().starts_with("HTTP 410"),
        "{row}"
    );
    // retry_min is 1 s: a retry would have come by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hooks.of_type("notify.test").await.len(), 1);
    assert_eq!(
        d.metric("oauthd_deliveries_total{result=\"dead\",target=\"app\"}")
            .await,
        Some(1.0)
    );
}

/// A target that answered `410 Gone` gets nothing more, on every instance, while its URL
/// is the one that answered: later deliveries end as dead unsent. A test event, and a
/// delivery retried by hand, are sent all the same (how an operator finds it back), and a
/// 2xx from the target ends its gone state.
#[tokio::test(flavor = "multi_thread")]
async fn a_gone_target_gets_nothing_until_it_is_tried_again_by_hand() {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let provider = GH_TOML;
    home.write_config(&format!(
        "{}{provider}{EVENTS_TOML}",
        target_toml(&home, "app", &hooks, &secret, "")
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let session = d.sign_in(&home.login_link(&d)).await;
    let import = |account: &str| import_gh(&home, [account.to_owned()]);
    let rows = || -> Vec<Value> {
        let out = home.cli(&["events", "list", "--json", "--target", "app"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let finished = |n: usize| async move {
        let done = common::eventually(WAIT, || {
            let all = rows();
            all.len() == n && all.iter().all(|r| r["status"] != "pending")
        })
        .await;
        let all = rows();
        assert!(done, "{all:?}");
        all
    };
    let gone_since =
        || async { page_events(&d, &session).await["targets"][0]["gone_since"].clone() };

    hooks.fail_next(1, 410).await;
    import("a1");
    let all = finished(1).await;
    assert_eq!(all[0]["status"], "dead");
    assert!(gone_since().await.is_string(), "not recorded as gone");
    // The next one is not sent: it ends at once, and says why.
    import("a2");
    let all = finished(2).await;
    assert_eq!(all[0]["status"], "dead", "{all:?}");
    let why = all[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("not sent: the target answered 410 Gone at "),
        "{why}"
    );
    assert_eq!(hooks.of_type("connection.connected").await.len(), 1);
    // Retried by hand: sent, delivered, and the target is no longer gone.
    let id = all[0]["id"].as_str().unwrap().to_owned();
    let out = home.cli(&["events", "retry", &id]);
    assert!(out.status.success(), "{out:?}");
    let all = finished(2).await;
    assert_eq!(all[0]["status"], "delivered", "{all:?}");
    assert_eq!(gone_since().await, Value::Null);
    import("a3");
    assert_eq!(finished(3).await[0]["status"], "delivered");

    // Gone again; a test event still goes out, and its 2xx ends the gone state too.
    hooks.fail_next(1, 410).await;
    import("a4");
    assert_eq!(finished(4).await[0]["status"], "dead");
    assert!(gone_since().await.is_string());
    let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    assert_eq!(hooks.wait_for("notify.test", 1, WAIT).await.len(), 1);
    assert_eq!(finished(5).await[0]["status"], "delivered");
    assert_eq!(gone_since().await, Value::Null);
    import("a5");
    assert_eq!(finished(6).await[0]["status"], "delivered");
    assert_eq!(hooks.of_type("connection.connected").await.len(), 5);
}

/// A failed answer's `Retry-After` is honoured: the next attempt does not come sooner,
/// though the backoff alone would have sent it after a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_receivers_retry_after_holds_the_next_attempt_back() {
    let (_home, hooks, key, d) =
        daemon_with_app_target("[events]\nretry_min_seconds = 1\nretry_max_seconds = 60\n").await;
    hooks.fail_next_asking(1, 503, Some("4")).await;
    let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    let got = hooks.wait_for("notify.test", 2, WAIT).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got.iter()
            .map(|g| g["answered"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [503, 200]
    );
    let gap = got[1]["at"].as_f64().unwrap() - got[0]["at"].as_f64().unwrap();
    assert!(
        gap >= 3_900.0,
        "the second attempt came {gap} ms after the first"
    );
    assert_verified(&got, &[]);
}

/// A `Retry-After` that reaches past the delivery's retry window ends it, rather than
/// bringing the last attempt in sooner than the receiver asked (it was tried at the
/// deadline, and refused again).
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_past_the_window_ends_the_delivery_rather_than_coming_sooner() {
    let (home, hooks, key, d) = daemon_with_app_target(
        "[events]\nretry_for_seconds = 4\nretry_min_seconds = 1\nretry_max_seconds = 60\n",
    )
    .await;
    hooks.fail_next_asking(1000, 503, Some("30")).await;
    let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    let dead = failed_row_once(&home, |r| r["status"] == "dead").await;
    assert_eq!(dead["attempts"], 1, "{dead}");
    assert!(
        dead["last_error"].as_str().is_some_and(|e| e.contains(
            "its Retry-After asks for a wait past the end of the delivery's retry window"
        )),
        "{dead}"
    );
    // Nothing more came, though the window has ended.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = hooks
        .wait_for("notify.test", 2, Duration::from_millis(100))
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
}

/// oauthd with one text target, `silent`, at `port` on this machine, and an API key.
fn home_with_target_at(port: u16) -> (Home, String, common::Daemon) {
    let home = Home::new();
    home.write_config(&format!(
        "[[notify]]\nname = \"silent\"\nurl = \"http://127.0.0.1:{port}/h\"\nformat = \"text\"\n"
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    (home, key, d)
}

/// A stop gives back a delivery whose target has not answered within 5 s, due at once,
/// rather than leaving it claimed until the claim's lease ends (30 s; on SQLite, until the
/// next start): another instance, or the next start, sends it without waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_gives_back_a_delivery_whose_target_has_not_answered() {
    // Takes the connection (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (home, key, d) = home_with_target_at(port);
    let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    let row = |home: &Home| {
        let out = home.cli(&["events", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list[0].clone()
    };
    assert!(
        common::eventually(WAIT, || row(&home)["attempts"] == 1).await,
        "{}",
        row(&home)
    );
    let asked = std::time::Instant::now();
    d.signal_and_wait("TERM");
    let took = asked.elapsed();
    let stopped_at = chrono::Utc::now().timestamp_millis();
    // The attempt's 5 s, and the rest of the stop.
    assert!(took < Duration::from_secs(12), "the stop took {took:?}");
    let r = row(&home);
    assert_eq!(r["status"], "pending", "{r}");
    assert!(
        r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("oauthd stopped before the target answered")),
        "{r}"
    );
    assert!(millis_of(&r, "next_attempt_at") <= stopped_at, "{r}");
    assert!(
        home.log_text()
            .contains("was under way as oauthd stopped: it is due again now"),
        "{}",
        home.log_text()
    );
    drop(silent);
}

/// A second oauthd started on the same SQLite file leaves the first's attempts under way
/// alone: its start made every claimed delivery due again, and sent it beside the first's
/// attempt (twice, and past the target's room).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_oauthd_on_the_file_leaves_the_firsts_attempts_alone() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Takes each connection, holds it, and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let taken = std::sync::Arc::new(AtomicUsize::new(0));
    {
        let taken = taken.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in silent.incoming().flatten().take(10) {
                taken.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
    }
    let (home, key, a) = home_with_target_at(port);
    let (status, _) = a.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    assert!(common::eventually(WAIT, || taken.load(Ordering::SeqCst) == 1).await);
    let b = home.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        1,
        "sent again beside the first attempt"
    );
    assert!(
        home.log_text().contains(
            "1 delivery attempt(s) claimed and not finished are left to their claims' end"
        ),
        "{}",
        home.log_text()
    );
    let out = home.cli(&["events", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(millis_of(&list[0], "next_attempt_at") > now, "{list}");
    drop(b);
    drop(a);
}

/// A delivery retried by hand backs off from `retry_min` again, not from where its
/// earlier attempts had taken the wait (which the deadline would have capped).
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_by_hand_starts_the_backoff_afresh() {
    let (home, hooks, key, d) = daemon_with_app_target(
        "[events]\nretry_for_seconds = 6\nretry_min_seconds = 2\nretry_max_seconds = 600\n",
    )
    .await;
    hooks.fail_next(1000, 500).await;
    let (status, _) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(status, 202);
    let dead = failed_row_once(&home, |r| r["status"] == "dead").await;
    let before = dead["attempts"].as_u64().unwrap();
    assert!(before >= 2, "{dead}");
    let out = home.cli(&["events", "retry", dead["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // The retry's first attempt fails; its row, before the next attempt is claimed, says
    // when that one is due.
    let row = failed_row_once(&home, |r| {
        r["attempts"].as_u64() == Some(before + 1)
            && r["status"] == "pending"
            && r["next_attempt_at"].is_string()
            && r["last_attempt_at"].is_string()
            && millis_of(r, "next_attempt_at") - millis_of(r, "last_attempt_at") < 30_000
    })
    .await;
    let wait = millis_of(&row, "next_attempt_at") - millis_of(&row, "last_attempt_at");
    // retry_min (2 s), less its jitter, plus the attempt's own time; the attempts before
    // the retry would have made it 2 s doubled at least twice, up to the deadline 6 s on.
    assert!(
        wait <= 3_000,
        "next attempt {wait} ms after the last: {row}"
    );
    drop(d);
}

/// Refreshes that fail for a while are told once; the next success tells the recovery,
/// and a target that opted in hears of every refresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_refresh_is_told_once_and_its_recovery_too() {
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-1", "token_type": "Bearer", "expires_in": 1,
            "refresh_token": "rt-1"})))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-2", "token_type": "Bearer", "expires_in": 3600})))
        .mount(&mock)
        .await;
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let chatty = Receiver::start(None);
    let toml = format!(
        "{}[[notify]]\nname = \"chatty\"\nurl = \"{}\"\nevents = [\"connection.refreshed\"]\n{EVENTS_TOML}\
         [providers.mock]\nauthorization_url = \"{uri}/authorize\"\ntoken_url = \"{uri}/token\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        target_toml(&home, "app", &hooks, &secret, ""),
        chatty.url("/all"),
        uri = mock.uri()
    );
    home.write_config(&toml);
    let key = home.create_key("app", &[]);
    let d = home.start();
    common::connect_with_code(&d, &key, "mock", "alice", "c1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, problem) = d.get("/v1/connections/mock/alice/token", &key).await;
    assert_eq!(status, 503, "{problem}");
    let failing = hooks.wait_for("connection.refresh_failing", 1, WAIT).await;
    assert_eq!(failing.len(), 1);
    let data = &failing[0]["json"]["data"];
    assert_eq!(data["failures"], 1);
    assert!(data["retry_at"].is_string(), "{data}");
    // The first retry comes after the broker's backoff (5 s).
    let mut token = (0, Value::Null);
    for _ in 0..40 {
        token = d.get("/v1/connections/mock/alice/token", &key).await;
        if token.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(token.0, 200, "{}", token.1);
    let recovered = hooks.wait_for("connection.recovered", 1, WAIT).await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["json"]["data"]["after"], "refresh_failing");
    assert_eq!(hooks.of_type("connection.refresh_failing").await.len(), 1);
    assert!(hooks.of_type("connection.refreshed").await.is_empty());
    let refreshed = chatty.wait_for("connection.refreshed", 1, WAIT).await;
    assert_eq!(refreshed.len(), 1);
    assert_eq!(
        chatty.received().await.len(),
        1,
        "chatty asked for refreshes only"
    );
    assert_verified(&hooks.received().await, &["at-1", "at-2", "rt-1"]);
}

/// `connection.connected` says which account at the provider was connected, and which
/// other connections are that account too (a browser still signed in at the provider
/// connects it again, whatever the name): the app need not ask.
#[tokio::test(flavor = "multi_thread")]
async fn a_connect_names_the_provider_account_and_the_connections_that_are_it_too() {
    const MANY: u32 = 300_000;
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let peer = Peer::start(3600);
    let key = peer.configure(&home, &target_toml(&home, "app", &hooks, &secret, ""));
    let d = home.start();
    // Another provider's many connections (a large install): the lookup reads the peer's
    // only, in time to be told.
    let db = rusqlite::Connection::open(home.db()).unwrap();
    db.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MANY})
         INSERT INTO connections (provider, account, status, token_type, access_token,
                                  refresh_token, created_at, updated_at, account_sub)
         SELECT 'other', 'user-' || i, 'active', 'Bearer', randomblob(60), randomblob(60),
                1, 1, 'alice' FROM n"
    ))
    .unwrap();
    drop(db);
    let browser = Peer::browser();
    for account in ["alice", "bob"] {
        let authorize = d.start_connect(&key, "peer", account).await;
        let callback = peer.approve_in(&browser, &authorize).await;
        assert_eq!(d.browser_get(&callback).await.0, 200, "{account}");
    }
    let connected = hooks.wait_for("connection.connected", 2, WAIT).await;
    let data = |account: &str| {
        connected
            .iter()
            .map(|e| e["json"]["data"].clone())
            .find(|d| d["account"] == account)
            .unwrap_or_default()
    };
    let (alice, bob) = (data("alice"), data("bob"));
    assert_eq!(alice["provider_account"]["sub"], "alice", "{alice}");
    assert!(alice.get("same_account_as").is_none(), "{alice}");
    assert_eq!(bob["provider_account"]["sub"], "alice", "{bob}");
    assert_eq!(bob["same_account_as"], json!(["alice"]), "{bob}");
    assert!(bob.get("replaced_provider_account").is_none(), "{bob}");

    // bob reconnected from a browser signed in at the provider as carol: the connection,
    // and the apps that read it, are carol's now. Said on the page, in the event and in
    // the log.
    let authorize = d.start_connect(&key, "peer", "bob").await;
    let callback = peer.approve_as("carol", &authorize).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<strong>Changed</strong>"), "{page}");
    // The grant bob was, alice's, is alice's connection's too: kept, and alice's name is
    // not said to a person an app sent.
    assert!(
        page.contains("The account it was: its grant was kept, since another connection is that account at peer too: at most providers they share one grant"),
        "{page}"
    );
    assert!(
        !page.contains(">alice<"),
        "an app's flow named the account it was: {page}"
    );
    let connected = hooks.wait_for("connection.connected", 3, WAIT).await;
    let again = connected
        .iter()
        .map(|e| e["json"]["data"].clone())
        .find(|d| d["provider_account"]["sub"] == "carol")
        .unwrap_or_default();
    assert_eq!(again["account"], "bob", "{again}");
    assert_eq!(
        again["replaced_provider_account"]["sub"], "alice",
        "{again}"
    );
    assert!(
        home.log_text().contains("connect peer/bob: it was "),
        "{}",
        home.log_text()
    );
    let (status, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{token}");
    assert!(
        peer.is_active(token["access_token"].as_str().unwrap_or_default())
            .await,
        "alice's grant ended with bob's reconnect"
    );
}

/// An app importing tokens over a connection whose grant the provider refuses, again and
/// again, tells the operator once that it needs them, and never that it works again
/// (imported tokens prove nothing); the first refresh that succeeds says it is over.
#[tokio::test(flavor = "multi_thread")]
async fn imports_over_a_refused_grant_tell_needs_reauth_once_and_recover_only_on_a_refresh() {
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "refresh token revoked"})))
        .mount(&mock)
        .await;
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let phone = Receiver::start(None);
    let toml = format!(
        "{}[[notify]]\nname = \"phone\"\nurl = \"{}\"\nformat = \"text\"\nevents = [\"connection.needs_reauth\", \"connection.recovered\"]\n{EVENTS_TOML}\
         [providers.mock]\nauthorization_url = \"{uri}/authorize\"\ntoken_url = \"{uri}/token\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        target_toml(&home, "app", &hooks, &secret, ""),
        phone.url("/homelab"),
        uri = mock.uri()
    );
    home.write_config(&toml);
    let key = home.create_key("app", &[]);
    let d = home.start();
    let expired = |i: usize| {
        json!({"access_token": format!("at-made-up-{i}"), "refresh_token": format!("rt-made-up-{i}"),
               "expires_at": "2000-01-01T00:00:00Z"})
    };
    for i in 0..4 {
        let (status, body) = d.put("/v1/connections/mock/alice", &key, expired(i)).await;
        assert!(status == 200 || status == 201, "{status} {body}");
        let (status, problem) = d.get("/v1/connections/mock/alice/token", &key).await;
        assert_eq!((status, &problem["code"]), (409, &json!("needs_reauth")));
        if i == 0 {
            assert_eq!(
                hooks
                    .wait_for("connection.needs_reauth", 1, WAIT)
                    .await
                    .len(),
                1
            );
        }
    }
    // Everything the loop wrote is delivered by now: the imports' four `connected`.
    assert_eq!(
        hooks.wait_for("connection.connected", 4, WAIT).await.len(),
        4
    );
    assert_eq!(hooks.of_type("connection.needs_reauth").await.len(), 1);
    assert!(hooks.of_type("connection.recovered").await.is_empty());
    assert!(
        home.log_text()
            .contains("connection.needs_reauth was sent before and nothing has worked since"),
        "{}",
        home.log_text()
    );

    // The provider down meanwhile: a failing run is news of its own, told once.
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(2)
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    assert!(
        d.put("/v1/connections/mock/alice", &key, expired(8))
            .await
            .0
            < 300
    );
    assert_eq!(d.get("/v1/connections/mock/alice/token", &key).await.0, 503);
    assert_eq!(
        hooks
            .wait_for("connection.refresh_failing", 1, WAIT)
            .await
            .len(),
        1
    );

    // Tokens that work: the refresh succeeds, and that is the recovery of both.
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-real", "token_type": "Bearer", "expires_in": 3600})))
        .with_priority(1)
        .mount(&mock)
        .await;
    assert!(
        d.put("/v1/connections/mock/alice", &key, expired(9))
            .await
            .0
            < 300
    );
    let (status, token) = d.get("/v1/connections/mock/alice/token", &key).await;
    assert_eq!((status, &token["access_token"]), (200, &json!("at-real")));
    let recovered = hooks.wait_for("connection.recovered", 1, WAIT).await;
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["json"]["data"]["after"], "needs_reauth");
    assert_eq!(
        recovered[0]["json"]["data"]["told"],
        json!(["refresh_failing", "needs_reauth"])
    );
    // The phone: the one urgent message, and the one that ends it.
    assert_eq!(phone.wait_for_all(2, WAIT).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        phone.received().await.len(),
        2,
        "{:?}",
        phone.received().await
    );
    assert_verified(
        &hooks.received().await,
        &["at-made-up", "rt-made-up", "at-real"],
    );
}

/// Two instances on one Redis: each event is delivered by one of them, once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_deliver_each_event_once() {
    let a = Home::redis();
    let b = Home::sharing(&a);
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let peer = Peer::start(600);
    let toml = target_toml(&a, "app", &hooks, &secret, "") + EVENTS_TOML;
    let key = peer.configure(&a, &toml);
    b.write_config(&std::fs::read_to_string(a.config()).unwrap());
    let (da, db) = (a.start(), b.start());
    for (i, d) in [&da, &db, &da, &db].into_iter().enumerate() {
        assert_eq!(connect(d, &peer, &key, &format!("user{i}")).await.0, 200);
    }
    for d in [&da, &db] {
        assert_eq!(d.post("/v1/notify/test", &key, json!({})).await.0, 202);
    }
    let connected = hooks.wait_for("connection.connected", 4, WAIT).await;
    let tests = hooks.wait_for("notify.test", 2, WAIT).await;
    assert_eq!((connected.len(), tests.len()), (4, 2));
    // Give a duplicate time to show up, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = hooks.received().await;
    let ids: Vec<_> = all.iter().map(|r| r["webhook_id"].clone()).collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert_eq!(unique.len(), 6, "an event was delivered twice: {ids:?}");
    assert_verified(&all, &[]);
}

/// A target oauthd cannot use stops the start with the entry named (exit code 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_target_is_refused_at_start() {
    let cases = [
        (
            "[[notify]]\nurl = \"http://192.168.1.10/hook\"\n",
            "notify[0].url",
        ),
        (
            "[[notify]]\nurl = \"https://x.example/h\"\nevents = [\"connection.lost\"]\n",
            "notify[0].events",
        ),
        (
            "[[notify]]\nurl = \"https://x.example/h\"\nsecret_file = \"/nonexistent/s\"\n",
            "notify[0].secret_file",
        ),
        (
            "[[notify]]\nurl = \"https://x.example/h\"\nformat = \"xml\"\n",
            "format",
        ),
    ];
    for (toml, named) in cases {
        let home = Home::new();
        home.write_config(toml);
        let out = home.serve_once();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(named), "{toml}: {err}");
        assert!(!home.db().exists(), "a config error left a database behind");
    }
    // A push URL may carry a token: an error never repeats it.
    let home = Home::new();
    home.write_config("[[notify]]\nurl = \"http://gotify.lan/message?token=SeCrEtToKeN\"\n");
    let out = home.serve_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gotify.lan") && !err.contains("SeCrEtToKeN"),
        "{err}"
    );
    // A secret that is not whsec_ base64 is refused without being repeated.
    let home = Home::new();
    let file = home.dir.path().join("s");
    std::fs::write(&file, "hunter2-not-a-webhook-secret").unwrap();
    home.write_config(&format!(
        "[[notify]]\nurl = \"https://x.example/h\"\nsecret_file = \"{}\"\n",
        file.display()
    ));
    let out = home.serve_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("whsec_") && !err.contains("hunter2"), "{err}");
}

/// A JSON webhook target without a `secret_file` goes out unsigned: the start warns and
/// `oauthd check` says so, for that target only (push formats are not signed anyway).
#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_webhook_target_is_warned_about() {
    let home = Home::new();
    let secret = home.dir.path().join("hook.secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    home.write_config(&format!(
        "[[notify]]\nname = \"plain\"\nurl = \"https://hooks.example/a\"\n\
         [[notify]]\nname = \"phone\"\nurl = \"https://ntfy.example/t\"\nformat = \"text\"\n\
         [[notify]]\nname = \"signed\"\nurl = \"https://hooks.example/b\"\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    home.create_key("app", &[]);
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let warned: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("warn") && l.contains("unsigned"))
        .collect();
    assert_eq!(warned.len(), 1, "{report}");
    assert!(warned[0].contains("notify plain:"), "{report}");
    let d: Daemon = home.start();
    drop(d);
    let log = home.log_text();
    assert!(
        log.contains("notify plain: JSON deliveries without a secret_file go out unsigned"),
        "{log}"
    );
    assert!(
        !log.contains("notify phone: JSON") && !log.contains("notify signed: JSON"),
        "{log}"
    );
    // Each target at the start, its format as the config spells it.
    for said in [
        "notify phone: ntfy.example (format text)",
        "notify signed: hooks.example (format json, signed)",
    ] {
        assert!(log.contains(said), "{log}");
    }
}

/// Without a target, a test event has nowhere to go: 409.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_event_without_targets_is_a_conflict() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d: Daemon = home.start();
    let (status, problem) = d.post("/v1/notify/test", &key, json!({})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("no_notify_targets"))
    );
}

contract![
    connection_events_fire_once_each_from_the_real_flows,
    device_flow_events_tell_how_the_flow_ended,
];

/// The page lists each target and sends a test notification from its button.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_targets_and_sends_a_test_notification() {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    home.write_config(&(target_toml(&home, "app", &hooks, &secret, "") + EVENTS_TOML));
    let d = home.start();
    let b = common::browser::Browser::start("notify").await;
    b.client.goto(&format!("{}/", d.url)).await.unwrap();
    b.sign_in(&home.login_link(&d)).await;
    let row = b
        .wait_for("tr[data-target='app']")
        .await
        .text()
        .await
        .unwrap();
    assert!(row.contains("127.0.0.1") && row.contains("signed"), "{row}");
    b.click("#notify-test").await;
    b.wait_text("#notice", "Test notification sent to app")
        .await;
    let got = hooks.wait_for("notify.test", 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_verified(&got, &[]);
    b.screenshot("01-test-sent.png").await;
    // The page's API refuses the test without the session's CSRF token, and lists what
    // was sent.
    let session = d.sign_in(&home.login_link(&d)).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/ui/api/notify/test", d.url))
        .header("Cookie", format!("oauthd_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let events: Value = d
        .ui_get("/ui/api/events", &session)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["deliveries"][0]["type"], "notify.test", "{events}");
    assert_eq!(events["targets"][0]["name"], "app");
    b.close().await;
}

/// The page shows each target's last delivery however many the other targets had since
/// (it took them from the 50 newest of all), and `events list --target` lists one target's.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_targets_last_delivery_shows_behind_a_busy_ones() {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let provider = GH_TOML;
    let quiet = "events = [\"connection.deleted\"]";
    home.write_config(&format!(
        "{}{}{provider}{EVENTS_TOML}",
        target_toml(&home, "quiet", &hooks, &secret, quiet),
        target_toml(&home, "busy", &hooks, &secret, "")
    ));
    home.create_key("app", &[]);
    let import = |accounts: std::ops::Range<usize>| {
        import_gh(&home, accounts.map(|n| format!("a{n:02}")));
    };
    // Connected (busy only), deleted (both), then 60 more connected (busy only).
    import(0..1);
    let out = home.cli(&["connections", "delete", "gh", "a00"]);
    assert!(out.status.success(), "{out:?}");
    import(1..61);
    let d = home.start();
    assert_eq!(hooks.wait_for_all(63, WAIT).await.len(), 63);
    let session = d.sign_in(&home.login_link(&d)).await;
    let page = || page_events(&d, &session);
    let target = |events: &Value, name: &str| -> Value {
        let all = events["targets"].as_array().cloned().unwrap_or_default();
        all.into_iter()
            .find(|t| t["name"] == name)
            .unwrap_or(Value::Null)
    };
    // Each delivery is recorded just after its receiver's answer.
    let mut events = page().await;
    for _ in 0..50 {
        if target(&events, "busy")["last_delivered"]["type"] == "connection.connected"
            && events["pending"] == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = page().await;
    }
    assert_eq!(events["pending"], 0, "{events}");
    let quiet = target(&events, "quiet");
    assert_eq!(
        quiet["last_delivered"]["type"], "connection.deleted",
        "{quiet}"
    );
    assert_eq!(quiet["last_failure"], Value::Null, "{quiet}");
    assert_eq!(
        target(&events, "busy")["last_delivered"]["type"],
        "connection.connected"
    );

    let listed = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["events", "list", "--json"];
        all.extend_from_slice(args);
        let out = home.cli(&all);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    let only = listed(&["--target", "quiet"]);
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["type"], "connection.deleted");
    assert_eq!(only[0]["target"], "quiet");
    let busy = listed(&["--target", "busy", "--delivered", "--limit", "5"]);
    assert_eq!(busy.len(), 5);
    assert!(busy
        .iter()
        .all(|r| r["target"] == "busy" && r["status"] == "delivered"));
    let out = home.cli(&["events", "list", "--target", "nobody"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("No deliveries to nobody")
            && said.contains(
                "No [[notify]] target is named nobody in the config (they are: quiet, busy)"
            ),
        "{said}"
    );
    // Nothing to list prints no table: the output is empty, what is said goes to stderr.
    assert!(out.stdout.is_empty(), "{out:?}");
    drop(d);
}

/// A `connection.connected` delivery for target "ghost": written by the CLI (an import of
/// gh/me) with a config that has that target besides `rest`; the config then has only
/// `rest` (with `EVENTS_TOML`).
fn leave_a_delivery_for_ghost(home: &Home, rest: &str) {
    let ghost = "[[notify]]\nname = \"ghost\"\nurl = \"https://ghost.example/h\"\n";
    home.write_config(&format!("{ghost}{rest}{EVENTS_TOML}"));
    home.create_key("app", &[]);
    let file = home.dir.path().join("tokens.jsonl");
    std::fs::write(
        &file,
        "{\"provider\":\"gh\",\"account\":\"me\",\"access_token\":\"tok-GHOST\"}\n",
    )
    .unwrap();
    let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home.write_config(&format!("{rest}{EVENTS_TOML}"));
}

/// A delivery for a target this instance does not have (written by a process with another
/// config: a rollout, a rename) is kept and retried, not given up on.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_for_a_target_not_configured_here_is_kept_and_retried() {
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let provider = GH_TOML;
    let app = target_toml(&home, "app", &hooks, &secret, "");
    leave_a_delivery_for_ghost(&home, &format!("{app}{provider}"));
    let _d = home.start();
    let connected = hooks.wait_for("connection.connected", 1, WAIT).await;
    assert_eq!(connected.len(), 1);
    assert_verified(&connected, &["tok-GHOST"]);
    let ghost_row = |home: &Home| {
        let out = home.cli(&["events", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list.as_array()
            .and_then(|l| l.iter().find(|d| d["target"] == "ghost").cloned())
    };
    assert!(
        common::eventually(WAIT, || ghost_row(&home).is_some_and(|r| r["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ghost"))))
        .await
    );
    assert_eq!(ghost_row(&home).unwrap()["status"], "pending");
    // The log says what helps: not `oauthd events retry`, which cannot send to a target
    // that is not configured.
    let log = home.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("to ghost: no target named"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("removed or renamed in the config?")
            && line.contains("put the target back in the config to have it sent")
            && !line.contains("sends it now"),
        "{line}"
    );
}

/// With every target removed from the config, deliveries left for them are still worked
/// on (retried until their deadline, then dead, then pruned), not left pending forever.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_left_for_removed_targets_are_worked_on_with_no_target_left() {
    let home = Home::new();
    let provider = GH_TOML;
    leave_a_delivery_for_ghost(&home, provider);
    let _d = home.start();
    let ghost_error = |home: &Home| {
        let out = home.cli(&["events", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list.as_array()
            .and_then(|l| l.iter().find(|d| d["target"] == "ghost").cloned())
            .and_then(|d| d["last_error"].as_str().map(str::to_owned))
    };
    assert!(
        common::eventually(WAIT, || ghost_error(&home)
            .is_some_and(|e| e.contains("no target named \"ghost\"")))
        .await,
        "{:?}",
        ghost_error(&home)
    );
}

/// Attempts share a pool, two at most per target: with sixteen in all, eight targets that
/// hang (a host that stopped answering) filled it, and a working target's deliveries
/// waited for their 15 s timeout. The pool now holds two for every target.
#[tokio::test(flavor = "multi_thread")]
async fn many_hanging_targets_do_not_hold_up_a_working_one() {
    // Accepted by the kernel, never answered: each attempt hangs until its timeout.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hanging.local_addr().unwrap().port();
    let home = Home::new();
    let secret = new_secret();
    let hooks = Receiver::start(Some(&secret));
    let mut toml = String::new();
    for n in 0..9 {
        toml.push_str(&format!(
            "[[notify]]\nname = \"hangs{n}\"\nurl = \"http://127.0.0.1:{port}/h{n}\"\n"
        ));
    }
    // Last, so that its deliveries come last in each event's batch.
    toml.push_str(&target_toml(&home, "works", &hooks, &secret, ""));
    home.write_config(&toml);
    let key = home.create_key("app", &[]);
    let d = home.start();
    // A test event may be sent every 5 s: the second comes while the first's attempts to
    // the hanging targets still wait for their 15 s timeout.
    for sent in 1..=2 {
        let asked = std::time::Instant::now();
        let (status, body) = d.post("/v1/notify/test", &key, json!({})).await;
        assert_eq!(status, 202, "{body}");
        let got = hooks
            .wait_for("notify.test", sent, Duration::from_secs(6))
            .await;
        assert_eq!(
            got.len(),
            sent,
            "test event {sent} waited for the hanging targets' timeouts"
        );
        tokio::time::sleep(Duration::from_millis(5_200).saturating_sub(asked.elapsed())).await;
    }
    drop(hanging);
}

/// `oauthd copy` left the deliveries not yet made behind ("not copied: 1 notifications not
/// yet delivered"), in a store not to be served again: a receiver that was down while the
/// operator moved to a new file (or to Redis) never heard of what happened before. They
/// are copied, and the oauthd serving the copy sends them, with their event ids.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_carries_the_deliveries_not_yet_made() {
    let secret = new_secret();
    let mut receiver = Receiver::start(Some(&secret));
    let home = Home::new();
    let moved = Home::new();
    let config = format!(
        "{GH_TOML}{}",
        target_toml(&home, "app", &receiver, &secret, "")
    );
    home.write_config(&config);
    moved.write_config(&config);
    receiver.stop();
    home.create_key("app", &[]);
    import_gh(&home, ["me".to_owned()]);
    let out = home.cli(&["events", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let event_id = listed[0]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(event_id.starts_with("msg_"), "{listed}");
    let out = home.cli(&["copy", "--to", moved.db().to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(
            "  notifications not yet delivered: 1 (the oauthd serving the copy sends them)"
        ) && !said.contains("not copied"),
        "{said}"
    );
    receiver.restart();
    let d = moved.start();
    let got = receiver.wait_for("connection.connected", 1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    // The same event (a receiver that keeps webhook-ids tells it from a new one), once.
    assert_eq!(got[0]["webhook_id"], event_id.as_str(), "{got:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().await.len(), 1);
    // Retried in the store copied from, it would be sent by nothing: refused, saying where
    // it went.
    let out = home.cli(&["events", "retry", "--dead"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no oauthd serves it") && err.contains("went along with it"),
        "{err}"
    );
    d.signal_and_wait("TERM");
}

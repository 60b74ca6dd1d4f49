//! The state API over real HTTP against the real binary. The tests listed in `contract!`
//! are the storage contract: each runs on a real SQLite file and on a real redis-server.

use crate::common;

use common::{count_rows, eventually, Home, SqliteShell};
use serde_json::json;
use std::time::Duration;

const NS: &str = "oauth:spotify";

contract![
    created_state_consumes_once_with_its_data,
    data_comes_back_as_it_was_sent,
    default_ttl_is_sixty_minutes_and_data_is_optional,
    second_consume_of_same_state_gets_404,
    state_presented_under_another_namespace_gets_404_and_stays_usable,
    state_past_its_ttl_gets_410_even_before_the_sweeper_runs,
    requests_without_a_valid_key_get_401,
    bad_input_gets_a_4xx_problem_never_a_5xx,
    hundred_concurrent_consumes_of_one_state_give_exactly_one_200,
    acknowledged_states_survive_kill_9_and_consume_once_after_restart,
    database_and_log_never_hold_a_state_or_key_in_clear,
    cached_keys_are_rechecked_new_keys_work_at_once_revoked_ones_stop_within_the_cache_age,
    health_and_readiness_need_no_key,
    sighup_is_ignored_and_said_so,
    sigterm_and_sigint_stop_cleanly_with_exit_0_and_lose_nothing,
    expired_states_answer_410_during_the_grace_window_and_404_after,
    a_namespace_holds_at_most_max_states_live_states,
    all_namespaces_together_hold_at_most_max_total_states,
    one_key_holds_at_most_max_states_per_key_live_states,
    a_store_four_fifths_full_is_pointed_out_at_start_and_by_check,
    metrics_count_states_outcomes_and_requests_behind_an_optional_token,
];

/// A flood cannot fill the disk: past `max_states` live states a namespace refuses creates
/// with 429 until states are consumed or expire; other namespaces are unaffected.
async fn a_namespace_holds_at_most_max_states_live_states(home: Home) {
    home.write_config(
        "[states]\nmax_states = 3\nsweep_interval_seconds = 1\n[states.namespaces.\"2fa:*\"]\nmax_states = 1\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(d.create_state(&key, json!({"namespace": NS})).await);
    }
    let problem = d.create_refused(&key, NS, 429).await;
    assert_eq!(problem["code"], "too_many_states", "{problem}");
    // Another namespace has its own budget; a pattern can set a smaller one.
    d.create_state(&key, json!({"namespace": "oauth:other"}))
        .await;
    d.create_state(&key, json!({"namespace": "2fa:email"}))
        .await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": "2fa:email"}))
            .await
            .0,
        429
    );
    // Consuming frees a place at once...
    assert_eq!(d.consume(&key, &live[0], NS).await.0, 200);
    let short = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        429
    );
    // ...and so does expiry, at once: an expired state never counts, swept or not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        201
    );
    assert_eq!(d.consume(&key, &short, NS).await.0, 410);
    assert_eq!(d.consume(&key, &live[1], NS).await.0, 200);
}

/// One key spreading its creates over many namespaces, each under its own cap, still
/// cannot fill the disk: past `max_total_states` live states in all namespaces together
/// creates answer 429 `store_full`, until a state anywhere is consumed or expires. The
/// refusals are logged, but not each one. The operator's connect flow still starts: the
/// operator has room past the cap (it answered `store_full` too, so apps that filled the
/// store stopped every account being connected); a flow an app starts does not.
async fn all_namespaces_together_hold_at_most_max_total_states(home: Home) {
    home.write_config(
        "[states]\nmax_states = 10\nmax_total_states = 3\n\
         [providers.mock]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"cid\"\n\
         client_secret = \"c-secret\"\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let first = d.create_state(&key, json!({"namespace": "flood:0"})).await;
    d.create_state(&key, json!({"namespace": "flood:1"})).await;
    let short = d
        .create_state(&key, json!({"namespace": "flood:2", "ttl_seconds": 1}))
        .await;
    for n in 3..8 {
        let problem = d.create_refused(&key, &format!("flood:{n}"), 429).await;
        assert_eq!(problem["code"], "store_full", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("states.max_total_states"), "{problem}");
    }
    // A consume in any namespace makes room at once...
    assert_eq!(d.consume(&key, &first, "flood:0").await.0, 200);
    d.create_state(&key, json!({"namespace": "flood:3"})).await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": "flood:4"}))
            .await
            .0,
        429
    );
    // ...and so does an expiry, swept or not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.create_state(&key, json!({"namespace": "flood:4"})).await;
    assert_eq!(d.consume(&key, &short, "flood:2").await.0, 410);
    let log = home.log_text();
    let lines = log.matches("the store is full").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for 6 refusals:\n{log}"
    );
    // Full again (flood:1, :3 and :4): an app's create is refused, and so is a connect flow
    // an app starts; one the operator starts on the page goes ahead.
    let problem = d.create_refused(&key, "flood:5", 429).await;
    assert_eq!(problem["code"], "store_full", "{problem}");
    let (status, body) = d
        .post("/v1/connect/mock", &key, json!({"account": "a"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("store_full")),
        "{body}"
    );
    let ui = home.ui_session(&d).await;
    let (status, body) = d
        .ui_post(&ui, "/ui/api/connect/mock", json!({"account": "a"}))
        .await;
    assert_eq!(status, 201, "{body}");
}

/// A key limited to namespace patterns (`oauth:*`) could make up namespaces, each with a
/// cap of its own, and fill the store for every other app (their sessions and codes
/// refused `store_full` for a day). Past `max_states_per_key` live states in all
/// namespaces together the key's creates answer 429 `too_many_key_states`; other keys
/// create as before; the key's consumes, revokes and expiries give room back at once, and
/// a replace at the cap goes ahead (it adds nothing).
async fn one_key_holds_at_most_max_states_per_key_live_states(home: Home) {
    home.write_config("[states]\nmax_states_per_key = 4\nmax_total_states = 10\n");
    let music = home.create_key("music", &["oauth:*"]);
    let web = home.create_key("web", &["session"]);
    let d = home.start();
    let first = d
        .create_state(&music, json!({"namespace": "oauth:x0"}))
        .await;
    d.create_state(&music, json!({"namespace": "oauth:x1", "subject": "alice"}))
        .await;
    let short = d
        .create_state(&music, json!({"namespace": "oauth:x2", "ttl_seconds": 1}))
        .await;
    d.create_state(&music, json!({"namespace": "oauth:x3", "subject": "bob"}))
        .await;
    let refused = |n: u32| {
        let (d, music) = (&d, &music);
        async move {
            let resp = d
                .http
                .post(format!("{}/v1/states", d.url))
                .bearer_auth(music)
                .json(&json!({"namespace": format!("oauth:x{n}")}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp.headers().get("retry-after").cloned();
            let problem: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(
                (status, problem["code"].as_str()),
                (429, Some("too_many_key_states")),
                "oauth:x{n}: {problem}"
            );
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("states.max_states_per_key"), "{problem}");
            assert!(retry.is_some(), "no Retry-After");
        }
    };
    for n in 4..7 {
        refused(n).await;
    }
    // Another app's key is not held back by this one's states.
    d.create_state(&web, json!({"namespace": "session", "subject": "alice"}))
        .await;
    // A replace at the cap takes the subject's state's place.
    d.create_state(
        &music,
        json!({"namespace": "oauth:x3", "subject": "bob", "replace": true}),
    )
    .await;
    refused(7).await;
    // A consume makes room at once...
    assert_eq!(d.consume(&music, &first, "oauth:x0").await.0, 200);
    d.create_state(&music, json!({"namespace": "oauth:x4"}))
        .await;
    refused(8).await;
    // ...so does a revoke ("sign out everywhere")...
    let resp = d
        .delete("/v1/namespaces/oauth:x1/subjects/alice/states", &music)
        .await;
    assert_eq!(resp.status(), 200);
    d.create_state(&music, json!({"namespace": "oauth:x5"}))
        .await;
    refused(9).await;
    // ...and an expiry, swept or not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.create_state(&music, json!({"namespace": "oauth:x6"}))
        .await;
    refused(10).await;
    assert_eq!(d.consume(&music, &short, "oauth:x2").await.0, 410);
    let log = home.log_text();
    assert!(
        log.contains("API key music holds its most live states (4, states.max_states_per_key)"),
        "{log}"
    );
}

/// The operator hears of a store nearing `max_total_states` before creates are refused:
/// from 80 % on, each start logs a warning and `oauthd check` prints one.
async fn a_store_four_fifths_full_is_pointed_out_at_start_and_by_check(home: Home) {
    home.write_config("[states]\nmax_total_states = 5\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    for n in 0..3 {
        d.create_state(&key, json!({"namespace": format!("ns{n}")}))
            .await;
    }
    let report = String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("3 live, at most 5")),
        "{report}"
    );
    d.create_state(&key, json!({"namespace": "ns3"})).await;
    let report = String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    let warned = "4 live states, 80% of states.max_total_states (5)";
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warn") && l.contains(warned)),
        "{report}"
    );
    assert_eq!(d.signal_and_wait("TERM").code(), Some(0));
    assert!(
        !home.log_text().contains(warned),
        "warned before the restart"
    );
    let d = home.start();
    assert!(home.log_text().contains(warned), "{}", home.log_text());
    drop(d);
}

/// The store's totals are counted afresh at each start: a count left wrong (by an oauthd
/// from before the totals on the same file, or by hand) cannot refuse creates for good.
#[tokio::test(flavor = "multi_thread")]
async fn the_stores_totals_are_counted_afresh_at_each_start() {
    let home = Home::new();
    home.write_config("[states]\nmax_total_states = 5\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.signal_and_wait("TERM").code(), Some(0));
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    conn.execute_batch(
        "UPDATE namespace_counts SET live = 1000 WHERE namespace IN ('*states', '*tombstones')",
    )
    .unwrap();
    drop(conn);
    let d = home.start();
    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(d.signal_and_wait("TERM").code(), Some(0));
    let db = home.db();
    assert_eq!(common::stored_total(&db, "*states"), 2);
    assert_eq!(
        common::stored_total(&db, "*tombstones"),
        count_rows(&db, "expired_states")
    );
}

/// A key's count of live states left too high (its states deleted from the file by hand,
/// or a database recovered with `sqlite3 .recover`) would refuse that key's creates for
/// good: each start counts the keys' states afresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_keys_count_left_wrong_is_counted_afresh_at_the_next_start() {
    let home = Home::new();
    home.write_config("[states]\nmax_states_per_key = 2\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    d.create_state(&key, json!({"namespace": "a"})).await;
    d.create_state(&key, json!({"namespace": "b"})).await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": "c"}))
            .await
            .0,
        429
    );
    d.signal_and_wait("TERM");
    deleted_by_hand(&home, "DELETE FROM states WHERE created_by IS NOT NULL");
    let d = home.start();
    d.create_state(&key, json!({"namespace": "c"})).await;
    d.create_state(&key, json!({"namespace": "d"})).await;
    refused(&d, &key, json!({"namespace": "e"}), "too_many_key_states").await;
}

/// Runs `sql` on the stopped oauthd's database with `sqlite3`, as an operator would.
fn deleted_by_hand(home: &Home, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .arg(home.db())
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The create `body` is refused `429` with `code`.
async fn refused(d: &common::Daemon, key: &str, body: serde_json::Value, code: &str) {
    let (status, answer) = d.post("/v1/states", key, body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (429, Some(code)),
        "{answer}"
    );
}

/// The same for a namespace's count: each start counts the namespaces' states afresh (a
/// count left too high refused the namespace's creates until repaired by hand).
#[tokio::test(flavor = "multi_thread")]
async fn a_namespaces_count_left_wrong_is_counted_afresh_at_the_next_start() {
    let home = Home::new();
    home.write_config("[states.namespaces.\"a\"]\nmax_states = 2\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    d.create_state(&key, json!({"namespace": "a"})).await;
    d.create_state(&key, json!({"namespace": "a"})).await;
    d.create_state(&key, json!({"namespace": "b"})).await;
    d.signal_and_wait("TERM");
    deleted_by_hand(&home, "DELETE FROM states WHERE namespace = 'a'");
    let d = home.start();
    d.create_state(&key, json!({"namespace": "a"})).await;
    d.create_state(&key, json!({"namespace": "a"})).await;
    refused(&d, &key, json!({"namespace": "a"}), "too_many_states").await;
    d.signal_and_wait("TERM");
    // Each namespace's count is its rows: "b" kept its one.
    let db = home.db();
    assert_eq!(common::stored_total(&db, "a"), 2);
    assert_eq!(common::stored_total(&db, "b"), 1);
}

/// Namespaces are the apps' to make up: one left without live states keeps no row of
/// counts behind once the sweeper came by (a key creating and consuming in ever new
/// namespaces would grow the file for good), and rows such namespaces kept before go at
/// the next start.
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_without_live_states_leaves_no_count_behind() {
    let home = Home::new();
    home.write_config("[states]\nsweep_interval_seconds = 1\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let kept = d
        .create_state(&key, json!({"namespace": "oauth:kept"}))
        .await;
    for n in 0..20 {
        let ns = format!("oauth:made-up-{n}");
        let state = d.create_state(&key, json!({"namespace": ns})).await;
        assert_eq!(d.consume(&key, &state, &ns).await.0, 200);
    }
    let db = home.db();
    // The two totals, the one namespace that holds a state, and the key that made it.
    let rows = || count_rows(&db, "namespace_counts");
    assert!(
        eventually(Duration::from_secs(10), || rows() == 4).await,
        "{} rows",
        rows()
    );
    assert_eq!(common::stored_total(&db, "oauth:kept"), 1);
    assert_eq!(d.signal_and_wait("TERM").code(), Some(0));

    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("INSERT INTO namespace_counts VALUES ('oauth:left-by-before', 0)")
        .unwrap();
    drop(conn);
    let d = home.start();
    assert_eq!(d.consume(&key, &kept, "oauth:kept").await.0, 200);
    assert!(
        eventually(Duration::from_secs(10), || rows() == 2).await,
        "only the totals: {} rows",
        rows()
    );
    drop(d);
}

/// The grace window: an expired state answers 410 (so the app can say "start again")
/// until `expired_grace_seconds` after expiry, then 404 like any unknown value.
async fn expired_states_answer_410_during_the_grace_window_and_404_after(home: Home) {
    home.write_config("[states]\nsweep_interval_seconds = 1\nexpired_grace_seconds = 2\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let early = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    let late = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = d.consume(&key, &early, NS).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("state_expired"))
    );
    // 1 s of life + 2 s of grace: unknown from then on, swept or not.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, body) = d.consume(&key, &late, NS).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("state_not_found"))
    );
}

async fn created_state_consumes_once_with_its_data(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d
        .post(
            "/v1/states",
            &key,
            json!({"namespace": NS, "ttl_seconds": 3600, "data": {"verifier": "v1", "return_to": "/x", "f": [-1.666645458591923e94, 0.30000000000000004]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let state = body["state"].as_str().unwrap();
    assert_eq!(state.len(), 43);
    assert!(state
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(body["namespace"], NS);
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 3600);

    let (status, body) = d.consume(&key, state, NS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"verifier": "v1", "return_to": "/x", "f": [-1.666645458591923e94, 0.30000000000000004]})
    );
    assert_eq!(body["namespace"], NS);
    assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
}

/// `data` comes back as it was sent, whitespace between its tokens aside: it used to be
/// parsed and written again, which sorted its members, spelt `1E2` as `100.0` and rounded
/// integers past 64 bits (an app comparing or signing what it stored broke).
async fn data_comes_back_as_it_was_sent(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let sent = r#"{ "z": [1E2, -0.0, 123456789012345678901234567890],
        "a": "tab\t and \" quote, spaces  inside", "\u00e9": {"y": null, "x": true} }"#;
    let kept = r#"{"z":[1E2,-0.0,123456789012345678901234567890],"a":"tab\t and \" quote, spaces  inside","\u00e9":{"y":null,"x":true}}"#;
    let post = |path: &str, body: String| {
        let request = d
            .http
            .post(format!("{}{path}", d.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = request.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = post(
        "/v1/states",
        format!(r#"{{"namespace": "{NS}", "data": {sent}}}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key_body = json!({"state": created["state"], "namespace": NS}).to_string();
    for path in ["/v1/states/verify", "/v1/states/consume"] {
        let (status, body) = post(path, key_body.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!(r#""data":{kept}"#)),
            "{path}: {body}"
        );
    }
}

async fn default_ttl_is_sixty_minutes_and_data_is_optional(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_eq!(status, 201, "{body}");
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 3600);
    let (status, body) = d.consume(&key, body["state"].as_str().unwrap(), NS).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::Value::Null);
}

async fn second_consume_of_same_state_gets_404(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &state, NS).await.0, 200);
    let (status, body) = d.consume(&key, &state, NS).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "state_not_found");
    // A well-formed value that was never issued is just as unknown.
    let (status, _) = d.consume(&key, &"A".repeat(43), NS).await;
    assert_eq!(status, 404);
}

async fn state_presented_under_another_namespace_gets_404_and_stays_usable(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d.create_state(&key, json!({"namespace": NS})).await;
    let (status, body) = d.consume(&key, &state, "oauth:tidal").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "state_not_found");
    // Documented: a state presented under the wrong namespace is left as it was.
    assert_eq!(d.consume(&key, &state, NS).await.0, 200);
}

async fn state_past_its_ttl_gets_410_even_before_the_sweeper_runs(home: Home) {
    home.write_config("[states]\nsweep_interval_seconds = 3600\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    if home.shared().is_none() {
        assert_eq!(
            count_rows(&home.db(), "states"),
            1,
            "the sweeper must not have run"
        );
    }
    let (status, body) = d.consume(&key, &state, NS).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "state_expired");
    // Said as what it is: it expired a moment ago (the words were "expired long ago").
    let (status, body) = d.consume(&key, &state, NS).await;
    assert_eq!(status, 404, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("answers 410 once, then this"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_removes_expired_rows_and_keeps_410_during_grace() {
    let home = Home::new();
    home.write_config("[states]\nsweep_interval_seconds = 1\nexpired_grace_seconds = 3600\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let expiring = d
        .create_state(
            &key,
            json!({"namespace": NS, "ttl_seconds": 1, "data": {"secret": "gone-after-sweep"}}),
        )
        .await;
    let live = d.create_state(&key, json!({"namespace": NS})).await;
    let db = home.db();
    let swept = eventually(Duration::from_secs(10), || {
        count_rows(&db, "states") == 1 && count_rows(&db, "expired_states") == 1
    })
    .await;
    assert!(swept, "the sweeper did not move the expired state aside");
    // The sweeper logs once its batch has committed: a moment after the rows moved.
    let logged = eventually(Duration::from_secs(5), || {
        home.log_text()
            .contains("sweeper: removed 1 expired state(s)")
    })
    .await;
    assert!(logged, "{}", home.log_text());
    // Data is gone with the sweep; the grace tombstone still answers 410.
    assert_eq!(d.consume(&key, &expiring, NS).await.0, 410);
    assert_eq!(d.consume(&key, &live, NS).await.0, 200);
    let text = d.metrics_text().await;
    for series in [
        format!("oauthd_states_swept_total{{namespace=\"{NS}\"}}"),
        format!("oauthd_state_consumes_total{{namespace=\"{NS}\",outcome=\"expired\"}}"),
        format!("oauthd_state_consumes_total{{namespace=\"{NS}\",outcome=\"ok\"}}"),
    ] {
        assert_eq!(
            common::sample(&text, &series),
            Some(1.0),
            "{series}\n{text}"
        );
    }
}

/// Apps may invent namespaces freely; the metrics label at most 200 of them and count the
/// rest as `_other`, so a scrape stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_label_at_most_two_hundred_namespaces() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    for i in 0..205 {
        d.create_state(&key, json!({"namespace": format!("app:n{i}")}))
            .await;
    }
    let text = d.metrics_text().await;
    let labelled = text
        .lines()
        .filter(|l| l.starts_with("oauthd_states_created_total{namespace=\"app:n"))
        .count();
    assert_eq!(labelled, 200, "{text}");
    assert_eq!(
        common::sample(&text, "oauthd_states_created_total{namespace=\"_other\"}"),
        Some(5.0),
        "{text}"
    );
}

/// A state swept only after its grace window (a backlog left while oauthd was down) gets no
/// tombstone: it answers 404 either way, and a tombstone written only to be purged in the
/// same batch tripled a backlog's writes. One swept within the window still gets its 410.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_swept_after_its_grace_window_gets_no_tombstone() {
    let home = Home::new();
    home.write_config("[states]\nsweep_interval_seconds = 1\nexpired_grace_seconds = 3600\n");
    let key = home.create_key("app", &[]);
    let db = home.db();
    // Three states that expired in 1970, and a count of every tombstone written.
    rusqlite::Connection::open(&db)
        .expect("open db")
        .execute_batch(
            "CREATE TABLE tombstones_written (n INTEGER NOT NULL);
             INSERT INTO tombstones_written VALUES (0);
             CREATE TRIGGER count_tombstones AFTER INSERT ON expired_states
             BEGIN UPDATE tombstones_written SET n = n + 1; END;
             INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
             SELECT randomblob(32), 'oauth:left', NULL, 0, 1 FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)",
        )
        .expect("set up");
    let d = home.start();
    let recent = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    let swept = eventually(Duration::from_secs(10), || count_rows(&db, "states") == 0).await;
    assert!(swept, "the sweeper did not remove the expired states");
    let written: i64 = rusqlite::Connection::open(&db)
        .expect("open db")
        .query_row("SELECT n FROM tombstones_written", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        written, 1,
        "only the state within its grace window gets a tombstone"
    );
    assert_eq!(count_rows(&db, "expired_states"), 1);
    assert_eq!(d.consume(&key, &recent, NS).await.0, 410);
    assert!(home.log_text().contains("forgot 3 past the grace window"));
}

/// A stop does not wait for the sweeper to work off its backlog (at the default pace a
/// million expired states held a SIGTERM for most of a minute): it ends between two
/// batches, and the next start sweeps on.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_does_not_wait_for_the_sweep_backlog() {
    let home = Home::new();
    // 100 a batch, 100 a second: the 20,000 expired states below are 200 s of sweeping.
    home.write_config(
        "[states]\nsweep_interval_seconds = 1\nsweep_batch = 100\n\
         sweep_per_second = 100\nsweep_min_per_second = 100\n",
    );
    home.create_key("app", &[]);
    let db = home.db();
    rusqlite::Connection::open(&db)
        .expect("open db")
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
             SELECT randomblob(32), 'oauth:left', NULL, 0, 1 FROM n",
        )
        .expect("fill expired states");
    let d = home.start();
    let sweeping = eventually(Duration::from_secs(10), || {
        count_rows(&db, "states") < 20_000
    })
    .await;
    assert!(sweeping, "the sweeper did not start");
    // `signal_and_wait` gives up after 30 s: the rest of the backlog would take minutes.
    let status = d.signal_and_wait("TERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let left = count_rows(&db, "states");
    assert!(left > 19_000, "the stop waited for the sweep: {left} left");
    assert!(home.log_text().contains("stopped"));
    let _d = home.start();
    let resumed = eventually(Duration::from_secs(10), || count_rows(&db, "states") < left).await;
    assert!(resumed, "the next start did not sweep on");
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_forgets_states_past_the_grace_window() {
    let home = Home::new();
    home.write_config("[states]\nsweep_interval_seconds = 1\nexpired_grace_seconds = 0\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": NS, "ttl_seconds": 1}))
        .await;
    let db = home.db();
    let gone = eventually(Duration::from_secs(10), || {
        count_rows(&db, "states") == 0 && count_rows(&db, "expired_states") == 0
    })
    .await;
    assert!(gone, "expired rows were not removed");
    assert_eq!(d.consume(&key, &state, NS).await.0, 404);
}

async fn requests_without_a_valid_key_get_401(home: Home) {
    // No key cache: revocation must show on the very next request.
    home.write_config("api_key_cache_seconds = 0\n");
    let key = home.create_key("app", &[]);
    let scoped = home.create_key("scoped", &["2fa:*"]);
    let d = home.start();
    let body = json!({"namespace": NS});
    let url = format!("{}/v1/states", d.url);

    let resp = d.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    common::assert_code(resp, "missing_api_key").await;

    let resp = d
        .http
        .post(&url)
        .header("authorization", "Basic YTpi")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let (status, problem) = d
        .post("/v1/states", "oauthd_not-a-real-key", body.clone())
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_api_key"))
    );

    // Scoped key: fine inside its namespaces, 401 outside.
    assert_eq!(
        d.post("/v1/states", &scoped, json!({"namespace": "2fa:email"}))
            .await
            .0,
        201
    );
    let (status, problem) = d.post("/v1/states", &scoped, body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("namespace_not_allowed"))
    );
    let state = d.create_state(&key, body.clone()).await;
    assert_eq!(d.consume(&scoped, &state, NS).await.0, 401);
    assert_eq!(
        d.consume(&key, &state, NS).await.0,
        200,
        "a refused consume must not burn the state"
    );

    // Revoked from the CLI while the server runs: refused on the next request.
    assert_eq!(d.post("/v1/states", &key, body.clone()).await.0, 201);
    let out = home.cli(&["keys", "revoke", "app"]);
    assert!(out.status.success(), "{out:?}");
    let (status, problem) = d.post("/v1/states", &key, body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
}

async fn bad_input_gets_a_4xx_problem_never_a_5xx(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d.create_state(&key, json!({"namespace": NS})).await;
    let huge = "x".repeat(1024 * 1024);
    let long_state = "s".repeat(10_000);
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    // (path, content type, body, expected status, expected code)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "/v1/states",
            "application/json",
            "{".into(),
            400,
            "malformed_json",
        ),
        // No body is an empty object (README: a request without a body works where
        // every field is optional); here the namespace is missing.
        (
            "/v1/states",
            "application/json",
            "".into(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            "[1,2]".into(),
            400,
            "malformed_json",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"a\",\"data\":{deep}}}"),
            400,
            "malformed_json",
        ),
        // A member named twice: parsers differ on which one counts (a proxy in front
        // reading the first would check another namespace than the one used).
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"namespace\":\"other\"}}"),
            400,
            "malformed_json",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"data\":{{\"a\":[{{\"b\":1,\"b\":2}}]}}}}"),
            400,
            "malformed_json",
        ),
        (
            "/v1/states",
            "text/plain",
            json!({"namespace": NS}).to_string(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/states",
            "application/x-www-form-urlencoded",
            "namespace=a".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/states",
            "application/json",
            json!({}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": 5}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": ""}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": "x'; DROP TABLE states;--"}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": "名前"}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": "a".repeat(129)}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl_seconds": 0}).to_string(),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl_seconds": -5}).to_string(),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl_seconds": 1.5}).to_string(),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl_seconds": "60"}).to_string(),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl_seconds": 86401}).to_string(),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"ttl_seconds\":1e300}}"),
            400,
            "invalid_ttl",
        ),
        // No whole number, though a double rounds them to one.
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"ttl_seconds\":0.9999999999999999999}}"),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"ttl_seconds\":86400.000000000000001}}"),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"secret\":\"1\",\"max_attempts\":3.0000000000000000001}}"),
            400,
            "invalid_max_attempts",
        ),
        (
            "/v1/states",
            "application/json",
            format!("{{\"namespace\":\"{NS}\",\"ttl_seconds\":99999999999999999999999}}"),
            400,
            "invalid_ttl",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "ttl": 60}).to_string(),
            400,
            "unknown_field",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "data": "x".repeat(20_000)}).to_string(),
            413,
            "data_too_large",
        ),
        (
            "/v1/states",
            "application/json",
            json!({"namespace": NS, "data": huge}).to_string(),
            413,
            "body_too_large",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS, "state": 42}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS, "state": long_state}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS, "state": "ü".repeat(43)}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS, "state": "' OR 1=1 --"}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"namespace": NS, "state": format!("{}=", &state[..42])}).to_string(),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"state": state}).to_string(),
            400,
            "invalid_namespace",
        ),
        (
            "/v1/states/consume",
            "application/json",
            json!({"state": state, "namespace": NS, "extra": 1}).to_string(),
            400,
            "unknown_field",
        ),
    ];
    for (path, ctype, body, want_status, want_code) in cases {
        let shown: String = body.chars().take(60).collect();
        let resp = d
            .http
            .post(format!("{}{path}", d.url))
            .bearer_auth(&key)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path} {shown}"
        );
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            (status, problem["code"].as_str()),
            (want_status, Some(want_code)),
            "{path} {shown}: {problem}"
        );
        assert_eq!(problem["status"], status);
    }
    // A field it does not take is named with the fields it does (a typo is found at once).
    let (status, problem) = d
        .post("/v1/states", &key, json!({"namespace": NS, "ttl": 60}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        problem["detail"],
        "unknown field \"ttl\"; this endpoint takes: namespace, ttl_seconds, data, subject, secret, max_attempts, replace, sliding, max_lifetime_seconds"
    );
    let (_, problem) = d
        .post(
            "/v1/states/consume",
            &key,
            json!({"state": state, "namespace": NS, "extra": 1}),
        )
        .await;
    assert_eq!(
        problem["detail"],
        "unknown field \"extra\"; this endpoint takes: state, namespace"
    );
    // Valid JSON past what oauthd reads is said so, not "not valid JSON".
    for (body, said) in [
        (
            format!("{{\"namespace\":\"{NS}\",\"data\":1e999}}"),
            "a number past what a double holds (about 1.8e308); send it as a string",
        ),
        (
            format!("{{\"namespace\":\"a\",\"data\":{deep}}}"),
            "arrays and objects nested more than 127 deep",
        ),
    ] {
        let resp = d
            .http
            .post(format!("{}/v1/states", d.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem: serde_json::Value = resp.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            problem["code"] == "malformed_json"
                && detail.starts_with("the body is JSON oauthd does not take: ")
                && detail.contains(said),
            "{problem}"
        );
    }
    // None of that disturbed the state it was issued next to.
    assert_eq!(d.consume(&key, &state, NS).await.0, 200);
    let resp = d.get_raw("/v1/states", Some(&key)).await;
    assert_eq!(resp.status(), 405);
    let resp = d.get_raw("/nowhere", None).await;
    assert_eq!(resp.status(), 404);

    // Request line and headers have hard limits too, on every route (public ones included).
    let long_query = format!("state={}", "a".repeat(9000));
    for path in ["/v1/states", "/callback/peer", "/healthz"] {
        let resp = d.get_raw(&format!("{path}?{long_query}"), Some(&key)).await;
        assert_eq!(resp.status(), 414, "{path}");
        common::assert_code(resp, "uri_too_long").await;
    }
    let resp = d
        .http
        .post(format!("{}/v1/states", d.url))
        .bearer_auth(&key)
        .header("x-padding", "p".repeat(20_000))
        .json(&json!({"namespace": NS}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    common::assert_code(resp, "headers_too_large").await;
    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..150 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_static("1"),
        );
    }
    // On a connection of its own: actix-web's HTTP/1 decoder answers a head it cannot take
    // on a connection that served a request before without `connection: close`, and
    // closes it; a pooled client sent its next request there and got a reset.
    let alone = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = alone
        .get(format!("{}/healthz", d.url))
        .headers(many)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    // Just under the limits is fine.
    let resp = d
        .http
        .get(format!("{}/healthz?{}", d.url, "a".repeat(7000)))
        .header("x-padding", "p".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A chunked body cut short is said in words (it was "payload reached EOF before
    // completing: None").
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = d.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/states HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{{\"namesp"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 400")
            && out.contains("\"bad_body\"")
            && out.contains("it ended before its end")
            && !out.contains("None"),
        "{out}"
    );
}

async fn hundred_concurrent_consumes_of_one_state_give_exactly_one_200(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    for round in 0..3 {
        let state = d
            .create_state(&key, json!({"namespace": NS, "data": {"round": round}}))
            .await;
        let won = common::consume_race(&[&d], &key, &state, NS, 100).await;
        assert_eq!(won["data"]["round"], round);
    }
}

async fn acknowledged_states_survive_kill_9_and_consume_once_after_restart(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut states = Vec::new();
    for i in 0..200 {
        states.push((
            i,
            d.create_state(&key, json!({"namespace": NS, "data": {"i": i}}))
                .await,
        ));
    }
    // Concurrent creates too: acknowledged means committed, whatever the grouping.
    let more = futures::future::join_all((200..400).map(|i| {
        let d = &d;
        let key = &key;
        async move {
            (
                i,
                d.create_state(key, json!({"namespace": NS, "data": {"i": i}}))
                    .await,
            )
        }
    }))
    .await;
    states.extend(more);
    d.kill9();
    let d = home.start();
    for (i, state) in &states {
        let (status, body) = d.consume(&key, state, NS).await;
        assert_eq!(status, 200, "state {i} lost after kill -9");
        assert_eq!(body["data"]["i"], *i);
        assert_eq!(d.consume(&key, state, NS).await.0, 404);
    }
}

async fn database_and_log_never_hold_a_state_or_key_in_clear(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut issued = Vec::new();
    // What apps keep with a state (a PKCE verifier, a session's details) is sealed too:
    // a long run of one byte, which no sealed value or page of the file holds by chance.
    let verifier = "V".repeat(64);
    for i in 0..50 {
        let data = json!({"code_verifier": verifier, "i": i});
        issued.push(
            d.create_state(&key, json!({"namespace": NS, "data": data}))
                .await,
        );
    }
    // Exercise every outcome so their log lines are written too.
    let (status, consumed) = d.consume(&key, &issued[0], NS).await;
    assert_eq!(status, 200, "{consumed}");
    let id = consumed["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(d.consume(&key, &issued[0], NS).await.0, 404);
    assert_eq!(d.consume(&key, &issued[1], "other").await.0, 404);
    d.signal_and_wait("TERM");
    let db = home.stored_bytes();
    assert!(
        contains(&db, NS.as_bytes()),
        "the backend's files were not read"
    );
    let log = home.log_text();
    // By the id the API gives (the value's first characters are only its creation time).
    assert!(
        log.contains(&format!("state id {id}")),
        "the log should name the state by its id: {log}"
    );
    assert!(
        !log.contains(&issued[0][..8]),
        "the log names the state by its value"
    );
    for state in &issued {
        assert!(
            !contains(&db, state.as_bytes()),
            "state in the database file"
        );
        assert!(!log.contains(state.as_str()), "state in the log");
        // Not even a long piece of one.
        assert!(
            !log.contains(&state[..12]),
            "more than 8 characters of a state in the log"
        );
    }
    assert!(
        !contains(&db, key.as_bytes()),
        "API key in the database file"
    );
    assert!(!log.contains(&key), "API key in the log");
    assert!(
        !contains(&db, &verifier.as_bytes()[..16]),
        "a state's data in the database file"
    );
    assert!(!log.contains(&verifier[..16]), "a state's data in the log");
}

async fn cached_keys_are_rechecked_new_keys_work_at_once_revoked_ones_stop_within_the_cache_age(
    home: Home,
) {
    home.write_config("api_key_cache_seconds = 1\n");
    let d = home.start();
    // Created while the server runs: usable immediately (misses are never cached).
    let key = home.create_key("late", &[]);
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        201
    );
    assert!(home.cli(&["keys", "revoke", "late"]).status.success());
    let revoked_at = std::time::Instant::now();
    let mut status = 201;
    while status == 201 && revoked_at.elapsed() < Duration::from_secs(5) {
        status = d.post("/v1/states", &key, json!({"namespace": NS})).await.0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 401, "revoked key still accepted after 5 s");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        revoked_at.elapsed()
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn health_and_readiness_need_no_key(home: Home) {
    let d = home.start();
    let resp = d.get_raw("/healthz", None).await;
    assert_eq!(resp.status(), 200);
    let resp = d.get_raw("/readyz", None).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    // HEAD, as uptime checks and `wget --spider` send it, is answered as the GET without
    // its body, on the paths one checks; not on the callback, whose GET consumes a state.
    for path in ["/healthz", "/readyz", "/", "/metrics", "/openapi.json"] {
        let get = d.get_raw(path, None).await;
        assert_eq!(get.status(), 200, "GET {path}");
        let length = get.bytes().await.unwrap().len();
        let head = d
            .http
            .head(format!("{}{path}", d.url))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        if path != "/metrics" {
            assert_eq!(
                common::header(&head, "content-length"),
                length.to_string(),
                "HEAD {path}"
            );
        }
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
    let put = d
        .http
        .put(format!("{}/healthz", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(common::header(&put, "allow"), "GET, HEAD");
    let head = d
        .http
        .head(format!("{}/callback/peer", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 405);
    assert_eq!(common::header(&head, "allow"), "GET");

    // And on every other read: the API's with a key (a monitor checking its key and the
    // connections it serves), the page's, a confirm page a link previewer opens; they
    // answered 405.
    let key = home.create_key("monitor", &[]);
    let reads = [
        ("/v1/connections", Some(&key), 200),
        ("/v1/connections/nobody/none/token", Some(&key), 404),
        ("/v1/connections", None, 401),
        ("/ui/api/overview", None, 401),
        ("/ui/api/events", None, 401),
        ("/connect/nobody/confirm", None, 400),
    ];
    for (path, key, status) in reads {
        let get = d.get_raw(path, key.map(String::as_str)).await;
        assert_eq!(get.status(), status, "GET {path}");
        let length = get.bytes().await.unwrap().len();
        let mut head = d.http.head(format!("{}{path}", d.url));
        if let Some(key) = key {
            head = head.bearer_auth(key);
        }
        let head = head.send().await.unwrap();
        assert_eq!(head.status(), status, "HEAD {path}");
        assert_eq!(
            common::header(&head, "content-length"),
            length.to_string(),
            "HEAD {path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
    // Signed in, the page's reads answer HEAD as GET too (it asked for a CSRF token).
    let (session, _) = home.ui_session(&d).await;
    for path in ["/ui/api/overview", "/ui/api/events"] {
        let get = d.ui_get(path, &session).await;
        assert_eq!(get.status(), 200, "GET {path}");
        let head = d
            .http
            .head(format!("{}{path}", d.url))
            .header("cookie", format!("oauthd_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
    }
    let post = d
        .send_json(reqwest::Method::POST, "/v1/connections", &key, json!({}))
        .await;
    assert_eq!(post.status(), 405);
    assert_eq!(common::header(&post, "allow"), "GET, HEAD");
}

/// SIGHUP (sent by habit to reload a daemon) is logged and ignored: oauthd keeps serving
/// (it killed it at once, as a clean exit systemd does not restart), and SIGTERM still
/// stops it cleanly.
async fn sighup_is_ignored_and_said_so(home: Home) {
    let d = home.start();
    // Two, one after the other (signals sent together may arrive as one).
    for n in 1..=2 {
        common::signal(d.pid(), "HUP");
        let said = common::eventually(Duration::from_secs(5), || {
            home.log_text()
                .matches("SIGHUP received and ignored")
                .count()
                == n
        })
        .await;
        assert!(said, "{}", home.log_text());
    }
    assert_eq!(d.get_raw("/healthz", None).await.status(), 200);
    assert_eq!(d.signal_and_wait("TERM").code(), Some(0));
}

async fn sigterm_and_sigint_stop_cleanly_with_exit_0_and_lose_nothing(home: Home) {
    let key = home.create_key("app", &[]);
    for sig in ["TERM", "INT"] {
        let d = home.start();
        // Requests in flight while the signal arrives either complete or are refused,
        // never half-done: every acknowledged state is there after the restart.
        let d_ref = &d;
        let key_ref = &key;
        let creating = futures::future::join_all((0..50).map(|i| async move {
            let r = d_ref
                .http
                .post(format!("{}/v1/states", d_ref.url))
                .bearer_auth(key_ref)
                .json(&json!({"namespace": NS, "data": {"i": i}}))
                .send()
                .await;
            match r {
                Ok(resp) if resp.status() == 201 => {
                    let body: serde_json::Value = resp.json().await.unwrap();
                    Some(body["state"].as_str().unwrap().to_owned())
                }
                Ok(resp) => panic!("unexpected status {}", resp.status()),
                Err(_) => None,
            }
        }));
        let pid = d.pid();
        let signalling = async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            common::signal(pid, sig);
        };
        let (acked, _) = tokio::join!(creating, signalling);
        let status = d.wait_exit();
        assert_eq!(status.code(), Some(0), "SIG{sig}: {status:?}");
        let acked: Vec<String> = acked.into_iter().flatten().collect();
        let d = home.start();
        for state in &acked {
            assert_eq!(
                d.consume(&key, state, NS).await.0,
                200,
                "SIG{sig}: acknowledged state lost"
            );
        }
        d.signal_and_wait("TERM");
    }
    assert!(home.log_text().contains("SIGINT received"));
    assert!(home.log_text().contains("SIGTERM received"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_process_gives_503_and_recovers_by_itself() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let before = d.create_state(&key, json!({"namespace": NS})).await;

    // Another process, the sqlite3 shell an operator might leave open, takes the write lock.
    let mut locker = SqliteShell::open(&home.db());
    assert_eq!(
        locker.query("BEGIN IMMEDIATE; SELECT 'locked';"),
        "locked",
        "sqlite3 did not take the lock"
    );
    let problem = d.create_refused(&key, NS, 503).await;
    assert_eq!(problem["code"], "storage_unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("locked"),
        "{problem}"
    );
    // Reads still answer while writes wait (WAL).
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    // A load balancer or an uptime check sees it (it used to read ready), within its
    // check's timeout (3 s here: the answer waited for the busy timeout, 5 s and more),
    // and the log says what holds the lock, once.
    let resp = d
        .http
        .get(format!("{}/readyz", d.url))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .expect("/readyz answered within 3 s");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(status, 503, "ready while writes cannot be made: {body}");
    assert!(
        body["detail"].as_str().unwrap().contains("locked"),
        "{body}"
    );
    // So does a scrape, which answers (only a storage error counter moved, with the
    // probes that asked).
    assert_eq!(d.metric("oauthd_storage_ready").await, Some(0.0));
    // Naming who has the file open (one of them holds the lock), looked for apart from
    // the writer.
    let holder = format!("the file is held open by pid {} \"sqlite3\"", locker.pid());
    common::eventually(Duration::from_secs(5), || home.log_text().contains(&holder)).await;
    assert!(home.log_text().contains(&holder), "{}", home.log_text());
    let said = "another process holds its write lock";
    assert_eq!(
        home.log_text().matches(said).count(),
        1,
        "{}",
        home.log_text()
    );
    // The terminal's commands read on (they failed as "cannot migrate database to schema
    // version 1: database is locked"), and `check` says what holds the writes (it said ok).
    let out = home.cli(&["keys", "list"]);
    assert!(out.status.success(), "{out:?}");
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL  store: ") && l.contains(said) && l.contains(&holder)),
        "{report}"
    );

    assert_eq!(locker.query("ROLLBACK; SELECT 'free';"), "free");
    assert!(locker.close().success());
    let (status, body) = d.get("/readyz", "").await;
    assert_eq!(status, 200, "not ready once the lock is free: {body}");
    assert_eq!(d.metric("oauthd_storage_ready").await, Some(1.0));
    // No restart: the next write goes through, and nothing acknowledged was lost.
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &before, NS).await.0, 200);
    assert_eq!(d.consume(&key, &after, NS).await.0, 200);
}

async fn metrics_count_states_outcomes_and_requests_behind_an_optional_token(home: Home) {
    let key = home.create_key("app", &[]);
    let token = "metrics-token-0123456789";
    let d = home.start_with_env(&[("OAUTHD_METRICS_TOKEN", token)]);
    let a = d.create_state(&key, json!({"namespace": NS})).await;
    d.create_state(&key, json!({"namespace": "2fa:email"}))
        .await;
    let b = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &a, NS).await.0, 200);
    assert_eq!(d.consume(&key, &a, NS).await.0, 404);
    assert_eq!(d.consume(&key, &b, "other").await.0, 404);
    for i in 0..5 {
        d.get_raw(&format!("/probe/{i}"), None).await;
    }
    // Routes with `{segment}` patterns, answered and refused, and one outside /v1.
    let token_path = "/v1/connections/nobody/none/token";
    assert_eq!(d.get_raw(token_path, Some(&key)).await.status(), 404);
    assert_eq!(d.get_raw(token_path, None).await.status(), 401);
    assert_eq!(d.get_raw("/v1/states", Some(&key)).await.status(), 405);
    assert_eq!(d.get_raw("/healthz", None).await.status(), 200);

    let url = format!("{}/metrics", d.url);
    assert_eq!(d.http.get(&url).send().await.unwrap().status(), 401);
    let text = common::text(d.http.get(&url).bearer_auth(token)).await;
    assert_eq!(
        common::sample(
            &text,
            "oauthd_states_created_total{namespace=\"oauth:spotify\"}"
        ),
        Some(2.0),
        "{text}"
    );
    // Counters without labels are there from the start, at 0, for alerts on their rate.
    assert_eq!(
        common::sample(&text, "oauthd_storage_errors_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        common::sample(
            &text,
            "oauthd_states_created_total{namespace=\"2fa:email\"}"
        ),
        Some(1.0)
    );
    assert!(
        text.contains(
            "oauthd_http_requests_total{endpoint=\"/v1/states\",method=\"POST\",status=\"201\"} 3"
        ),
        "{text}"
    );
    // Each once: consumes by the state's namespace (an unknown state: the one it was
    // presented for when that has a label, else `_unknown`, so that presenting invented
    // namespaces uses up no labels), and answers by route pattern.
    assert!(!text.contains("namespace=\"other\""), "{text}");
    let consumes =
        [(NS, "ok"), (NS, "unknown"), ("_unknown", "unknown")].map(|(namespace, outcome)| {
            format!(
                "oauthd_state_consumes_total{{namespace=\"{namespace}\",outcome=\"{outcome}\"}}"
            )
        });
    let answers = [
        ("/v1/connections/{provider}/{account}/token", "GET", "404"),
        ("/v1/connections/{provider}/{account}/token", "GET", "401"),
        ("/v1/states", "GET", "405"),
        ("/healthz", "GET", "200"),
    ]
    .map(|(endpoint, method, status)| {
        format!(
            "oauthd_http_requests_total{{endpoint=\"{endpoint}\",method=\"{method}\",status=\"{status}\"}}"
        )
    });
    for series in consumes.iter().chain(&answers) {
        assert_eq!(common::sample(&text, series), Some(1.0), "{series}\n{text}");
    }
    assert!(
        text.contains("oauthd_http_requests_duration_seconds_bucket"),
        "no latency histogram"
    );
    // Unknown paths are one label, not one per path.
    assert!(text.contains("endpoint=\"UNMATCHED\""), "{text}");
    assert!(!text.contains("/probe/"), "unmatched paths became labels");
}

/// An API key sent twice (a client and a proxy each adding the header), or otherwise than
/// as `Bearer`, was answered as if no key came ("send an API key as Authorization: Bearer
/// <key>"): the detail says what is wrong with the header. The code stays.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_header_that_is_no_bearer_key_is_said_as_such() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let bearer = format!("Bearer {key}");
    let cases: [(&[&str], &str); 5] = [
        (&[], "send an API key as Authorization: Bearer <key>"),
        (&[&bearer, &bearer], "more than one Authorization header"),
        (&[&key], "not of the Bearer scheme"),
        (&["Basic YXBwOnNlY3JldA=="], "not of the Bearer scheme"),
        (&["Bearer   "], "no key after Bearer"),
    ];
    for (headers, said) in cases {
        let mut request = d.http.get(format!("{}/v1/connections", d.url));
        for value in headers {
            request = request.header("authorization", *value);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{headers:?}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "missing_api_key", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(said), "{headers:?}: {problem}");
        assert!(!detail.contains(&key), "{problem}");
    }
    // A tab after the scheme separates it too (it was "not of the Bearer scheme").
    for value in [bearer.clone(), format!("Bearer\t{key}")] {
        let resp = d.http.get(format!("{}/v1/connections", d.url));
        let resp = resp.header("authorization", value).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_api_keys_are_rate_limited_without_locking_out_valid_ones() {
    let home = Home::new();
    home.write_config("[limits]\nfailed_auth_per_minute = 3\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        201
    );
    for _ in 0..3 {
        assert_eq!(
            d.post("/v1/states", "oauthd_wrong", json!({"namespace": NS}))
                .await
                .0,
            401
        );
    }
    let resp = d
        .http
        .post(format!("{}/v1/states", d.url))
        .bearer_auth("oauthd_wrong")
        .json(&json!({"namespace": NS}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = common::retry_after(&resp);
    assert!((1..=60).contains(&wait), "{wait}");
    // It says why: "too many requests" alone sent the app's owner looking for a load.
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the API key is unknown or revoked")
            && detail.contains("limits.failed_auth_per_minute"),
        "{problem}"
    );
    // The app with the right key, on the same address, carries on.
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        201
    );
    // So does an app whose key oauthd has not seen yet (nothing cached), and one that comes
    // back after the key cache forgot it: a valid key is never refused for others' errors.
    let other = home.create_key("other", &[]);
    assert_eq!(
        d.post("/v1/states", &other, json!({"namespace": NS}))
            .await
            .0,
        201
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
        201
    );
    // While wrong keys stay over the budget.
    assert_eq!(
        d.post("/v1/states", "oauthd_wrong", json!({"namespace": NS}))
            .await
            .0,
        429
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_routes_are_rate_limited_per_client_and_forwarded_for_is_trusted_only_from_proxies()
{
    let get = |d: &common::Daemon, xff: &str| {
        d.http
            .get(format!("{}/callback/none?state=x", d.url))
            .header("x-forwarded-for", xff.to_owned())
            .send()
    };
    // Not behind a trusted proxy: X-Forwarded-For is ignored, everyone is 127.0.0.1.
    let home = Home::new();
    home.write_config("[limits]\npublic_per_minute = 3\n");
    let d = home.start();
    for i in 0..3 {
        assert_ne!(get(&d, &format!("10.0.0.{i}")).await.unwrap().status(), 429);
    }
    let resp = get(&d, "10.0.0.9").await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(resp.text().await.unwrap().contains("Too many requests"));

    // Behind a trusted proxy: each forwarded client has its own budget.
    let home = Home::new();
    home.write_config("[limits]\npublic_per_minute = 3\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let d = home.start();
    for _ in 0..3 {
        assert_ne!(get(&d, "10.0.0.1").await.unwrap().status(), 429);
    }
    assert_eq!(get(&d, "10.0.0.1").await.unwrap().status(), 429);
    assert_ne!(get(&d, "10.0.0.2").await.unwrap().status(), 429);
}

/// An outage answers every write 503: said a few lines a second, not a line or two for
/// each (a journal past its rate limit drops oauthd's other lines with them). Here the
/// database is held locked by another process past the busy timeout while 100 writes come.
#[tokio::test(flavor = "multi_thread")]
async fn a_storage_outage_is_said_a_few_lines_a_second() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut locker = common::SqliteShell::open(&home.db());
    assert_eq!(locker.query("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
    let burst = (0..100).map(|_| d.post("/v1/states", &key, json!({"namespace": NS})));
    for (status, body) in futures::future::join_all(burst).await {
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(locker.query("ROLLBACK; SELECT 'free';"), "free");
    let log = home.log_text();
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for line in log.lines().filter(|l| l.contains(" WARN ")) {
        *per_second
            .entry(line.get(..21).unwrap_or(line))
            .or_default() += 1;
    }
    // The outage was said, and the 503s with it: a log that said nothing would pass the
    // bound below.
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("503 storage_unavailable")),
        "{log}"
    );
    assert!(
        per_second.values().all(|n| *n <= 25),
        "{per_second:?}\n{log}"
    );
    d.create_state(&key, json!({"namespace": NS})).await;
}

/// A full disk, made with a file-size limit on the running process (RLIMIT_FSIZE via
/// prlimit, as systemd's `LimitFSIZE=` sets; its SIGXFSZ ended oauthd without a word until
/// oauthd ignored it, and the test's shell did that for it): writes answer 503, nothing
/// acknowledged is lost, and lifting the limit is all it takes to recover.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gives_503_and_recovers_by_itself_when_space_returns() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(
            d.create_state(&key, json!({"namespace": NS, "data": {"i": i}}))
                .await,
        );
    }
    let prlimit = |limit: &str| {
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(d.pid().to_string())
            .arg(format!("--fsize={limit}"))
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success());
    };
    prlimit("1:unlimited");
    let mut refused = 0;
    for _ in 0..20 {
        let (status, body) = d
            .post(
                "/v1/states",
                &key,
                json!({"namespace": NS, "data": {"x": "y".repeat(4000)}}),
            )
            .await;
        assert!(status == 201 || status == 503, "{status} {body}");
        if status == 503 {
            assert_eq!(body["code"], "storage_unavailable", "{body}");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "no write failed with the file-size limit at 1 byte"
    );
    let resp = d
        .http
        .post(format!("{}/v1/states", d.url))
        .bearer_auth(&key)
        .json(&json!({"namespace": NS, "data": {"x": "y".repeat(4000)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    // Said as what it is: it was "the storage did not answer; oauthd's log says why".
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("the database reached oauthd's file-size limit")),
        "{body}"
    );
    // A load balancer sees it, steadily (it answered 200 now and then while writes
    // failed), and sees it end with no other write.
    for _ in 0..8 {
        let (status, body) = d.get("/readyz", "").await;
        assert_eq!(status, 503, "ready while writes fail: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = d.get_raw("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("oauthd_storage_disk_full 1")
            && metrics.contains("oauthd_storage_read_only 0"),
        "{metrics}"
    );

    prlimit("unlimited:unlimited");
    let (status, body) = d.readyz_until(200).await;
    assert_eq!(status, 200, "not ready once writes can succeed: {body}");
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    for (i, state) in before.iter().enumerate() {
        let (status, body) = d.consume(&key, state, NS).await;
        assert_eq!(
            status, 200,
            "state {i} acknowledged before the disk filled: {body}"
        );
        assert_eq!(body["data"]["i"], i);
    }
    assert_eq!(d.consume(&key, &after, NS).await.0, 200);
    // And after a restart: what was acknowledged is on disk, intact.
    d.signal_and_wait("TERM");
    let out = std::process::Command::new("sqlite3")
        .arg(home.db())
        .arg("PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// On Redis, a consume answered 503 because Redis stalled past the call's time (3 s) has
/// changed nothing when Redis comes back: the retry the 503 asks for takes the state. Redis
/// used to run the queued consume as it resumed, and the retry found nothing (404): the app
/// lost the flow's verifier.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_consume_answered_503_in_a_stall_took_nothing() {
    let home = Home::redis();
    let (key, d) = consumed_once(&home).await;
    a_stalled_consume_takes_nothing(&home, &d, &key).await;
    d.signal_and_wait("TERM");
}

/// The same, after Redis' clock stepped back (five minutes, as a host's clock set right
/// does) since oauthd read it: the deadline oauthd worked out from its reading lay minutes
/// ahead on Redis' clock, so the consume queued in the stall ran when Redis resumed, and
/// the retry found nothing (404). A script that finds Redis' clock before its call began
/// changes nothing, and is asked again on a fresh reading; one that finds it past the
/// deadline of a call that was not slow (the clock stepped ahead) too.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_clock_stepped_back_does_not_let_a_consume_answered_503_take_the_state() {
    let home = Home::redis_with(common::redis::RedisServer::start_with_clock_shift());
    home.write_config("api_key_cache_seconds = 60\n");
    let (key, d) = consumed_once(&home).await;
    home.redis_server().shift_clock(-300_000);
    a_stalled_consume_takes_nothing(&home, &d, &key).await;
    // Stepped ahead: a change that was not slow is not answered 503 (it was, as late).
    home.redis_server().shift_clock(10_000);
    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_eq!(status, 201, "{body}");
    d.signal_and_wait("TERM");
}

/// On Redis, a consume whose answer came back past the call's 3 s (Redis ran it at once,
/// and something held its answer: a slow command Redis ran next, oauthd's own process
/// paused) answers what it did, read from the script's receipt. It answered 503 having
/// taken the state, and the retry found nothing (404).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_consume_whose_answer_came_late_answers_what_it_did() {
    let fault = common::relay::Fault::Hold(Duration::from_secs(4));
    a_consume_whose_answer_is_lost_answers_what_it_did(fault, Meanwhile::Nothing).await;
}

/// The same when the connection broke after Redis ran the consume: its answer never came.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_consume_whose_connection_broke_after_it_ran_answers_what_it_did() {
    let fault = common::relay::Fault::Cut;
    a_consume_whose_answer_is_lost_answers_what_it_did(fault, Meanwhile::Nothing).await;
}

/// The same when, as its receipt is read, Redis is busy with a long script (answering
/// `BUSY` past its `busy-reply-threshold`): the read waits it out. It gave up at once, and
/// the consume answered 503 having taken the state.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_receipt_is_read_once_a_busy_redis_answers() {
    let fault = common::relay::Fault::Cut;
    let busy = Meanwhile::BusyRedis {
        after: Duration::from_millis(1900),
        for_ms: 800,
    };
    a_consume_whose_answer_is_lost_answers_what_it_did(fault, busy).await;
}

/// The same when oauthd's own process was paused (a stop, a VM's snapshot) for 7 s while
/// Redis' answer waited unread: it resumed past both its limits (the call's 3 s, and 6 s
/// for the whole), and answered 503 having taken the state, without reading the receipt.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_consume_across_a_pause_of_oauthd_answers_what_it_did() {
    let fault = common::relay::Fault::Hold(Duration::from_secs(1));
    let pause = Meanwhile::PauseOauthd {
        after: Duration::from_millis(400),
        for_: Duration::from_secs(7),
    };
    a_consume_whose_answer_is_lost_answers_what_it_did(fault, pause).await;
}

/// The same when Redis was killed as it answered, and is back 3.5 s on (its append-only
/// file synced at each write): the receipt is read until 3 s past the change's deadline.
/// The read's 3 s were counted from when the answer was lost, and ended before Redis was
/// back: 503, the state taken.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_consume_answered_as_redis_was_killed_is_read_from_its_receipt_when_it_is_back()
{
    // The connection broken 300 ms after the consume (its answer unsent), Redis killed
    // just after: oauthd tries to read the receipt from then on.
    let fault = common::relay::Fault::Cut;
    let killed = Meanwhile::RedisKilled {
        after: Duration::from_millis(350),
        down: Duration::from_millis(3200),
    };
    a_consume_whose_answer_is_lost_answers_what_it_did(fault, killed).await;
}

/// What happens beside a consume whose answer is lost.
#[cfg(feature = "redis")]
enum Meanwhile {
    Nothing,
    /// Redis killed `after` the consume, started again `down` later.
    RedisKilled {
        after: Duration,
        down: Duration,
    },
    /// A Lua script that keeps Redis busy `for_ms`, begun `after` the consume.
    BusyRedis {
        after: Duration,
        for_ms: u64,
    },
    /// oauthd stopped `after` the consume, for `for_`.
    PauseOauthd {
        after: Duration,
        for_: Duration,
    },
}

/// Only a change that wrote something leaves a receipt: a consume of an unknown state (a
/// flood of them is the cheapest thing to send) writes nothing to Redis; one used to be
/// written for every call.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_only_a_change_that_wrote_leaves_a_receipt() {
    let home = Home::redis();
    let (key, d) = consumed_once(&home).await;
    let receipts = || home.redis_server().command("KEYS oauthd:rc:*");
    // The create and the consume.
    assert_eq!(receipts().as_deref(), Some("*2"));
    let used = d.create_state(&key, json!({"namespace": NS})).await;
    let other = d
        .create_state(&key, json!({"namespace": "oauth:other"}))
        .await;
    assert_eq!(d.consume(&key, &used, NS).await.0, 200);
    assert_eq!(receipts().as_deref(), Some("*5"));
    // Consumed already, or of another namespace: nothing taken, nothing written.
    for state in [&used, &other, &used] {
        assert_eq!(d.consume(&key, state, NS).await.0, 404);
    }
    assert_eq!(receipts().as_deref(), Some("*5"));
    d.signal_and_wait("TERM");
}

#[cfg(feature = "redis")]
async fn a_consume_whose_answer_is_lost_answers_what_it_did(
    fault: common::relay::Fault,
    meanwhile: Meanwhile,
) {
    let server = common::redis::RedisServer::start();
    let port = server.port;
    // Past 100 ms a script makes Redis answer others BUSY (5 s unless told); each write is
    // on disk before Redis answers, as a kill must not lose the receipt.
    for setting in ["busy-reply-threshold 100", "appendfsync always"] {
        let set = server.command(&format!("CONFIG SET {setting}"));
        assert_eq!(set.as_deref(), Some("+OK"), "{setting}");
    }
    let relay = common::relay::Relay::start(port).await;
    let home = Home::redis_via(server, relay.url());
    let (key, d) = consumed_once(&home).await;
    let state = d
        .create_state(&key, json!({"namespace": NS, "data": {"v": 2}}))
        .await;
    relay.arm(NS, fault);
    let pid = d.pid();
    let home_ = &home;
    let beside = async move {
        match meanwhile {
            Meanwhile::Nothing => {}
            Meanwhile::RedisKilled { after, down } => {
                tokio::time::sleep(after).await;
                home_.redis_server().kill();
                tokio::time::sleep(down).await;
                home_.redis_server().restart();
            }
            Meanwhile::BusyRedis { after, for_ms } => {
                tokio::time::sleep(after).await;
                let script = format!(
                    "EVAL \"local function us() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end local s = us() while us() - s < {for_ms}000 do end return 1\" 0"
                );
                let ran = tokio::task::spawn_blocking(move || {
                    common::redis::RedisServer::command_at(port, &script)
                })
                .await
                .unwrap();
                assert_eq!(ran.as_deref(), Some(":1"));
            }
            Meanwhile::PauseOauthd { after, for_ } => {
                tokio::time::sleep(after).await;
                common::signal(pid, "STOP");
                tokio::time::sleep(for_).await;
                common::signal(pid, "CONT");
            }
        }
    };
    let ((status, body), ()) = tokio::join!(d.consume(&key, &state, NS), beside);
    assert_eq!(status, 200, "{fault:?}: {body}");
    assert_eq!(body["data"]["v"], 2);
    let (status, body) = d.consume(&key, &state, NS).await;
    assert_eq!(status, 404, "taken once: {body}");
    let log = std::fs::read_to_string(home.log()).unwrap_or_default();
    assert!(
        log.contains("the script's receipt says what it did"),
        "{log}"
    );
    assert!(!log.contains(&state), "the state value is never logged");
    d.signal_and_wait("TERM");
}

/// A key and oauthd serving `home`, after one consume, as an app makes them: Redis has the
/// script then, and runs it when it gets to it (a script it did not have would come back
/// NOSCRIPT, unrun), and oauthd has a reading of Redis' clock.
#[cfg(feature = "redis")]
async fn consumed_once(home: &Home) -> (String, common::Daemon) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let first = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &first, NS).await.0, 200);
    (key, d)
}

/// A consume made while Redis is stopped answers 503; once Redis has run what was queued
/// during the stall, the retry takes the state, with its data.
#[cfg(feature = "redis")]
async fn a_stalled_consume_takes_nothing(home: &Home, d: &common::Daemon, key: &str) {
    let state = d
        .create_state(key, json!({"namespace": NS, "data": {"v": 1}}))
        .await;
    let pid = home.redis_server().pid();
    common::signal(pid, "STOP");
    let (status, body) = d.consume(key, &state, NS).await;
    common::signal(pid, "CONT");
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = d.consume(key, &state, NS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["v"], 1);
}

/// A TTL past a namespace's maximum says where the operator raises it: the pattern's table
/// that set it (raising it in a table of the namespace's own would drop the pattern's other
/// limits), else one of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_past_the_maximum_says_where_the_operator_raises_it() {
    let home = Home::new();
    home.write_config(
        "[states.namespaces.\"2fa:*\"]\nmax_ttl_seconds = 300\nmax_states_per_subject = 3\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    for (namespace, ttl, table) in [
        (
            "as:refresh",
            2_592_000,
            "[states.namespaces.\"as:refresh\"]",
        ),
        ("2fa:login", 900, "[states.namespaces.\"2fa:*\"]"),
    ] {
        let (status, body) = d
            .post(
                "/v1/states",
                &key,
                json!({"namespace": namespace, "ttl_seconds": ttl}),
            )
            .await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_ttl")),
            "{body}"
        );
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("max_ttl_seconds in {table}")),
            "{body}"
        );
    }
}

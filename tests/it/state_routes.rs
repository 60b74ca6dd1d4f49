//! The state API's routes for sessions, 2FA challenges and reset links, over real HTTP
//! against the real binary, on SQLite and on a real redis-server (`contract!`).

use crate::common::{self, Daemon, Home};
use serde_json::{json, Value};

contract![
    a_two_factor_challenge_takes_its_code_and_counts_wrong_ones,
    sessions_are_verified_listed_and_revoked_per_subject,
    a_subjects_listing_comes_in_pages_bounded_in_states_and_bytes,
    state_options_are_checked_with_stable_codes,
    verify_sees_another_processs_consume_within_verify_cache_seconds,
    a_revoke_drops_from_verify_only_what_it_removed,
    a_revoked_key_is_refused_and_named_in_the_log,
    keys_list_says_when_each_key_was_last_used,
];

/// `keys list` says when each key was last used (to within a minute), so that after a
/// rotation the operator sees which keys no app uses any more; a key never presented has
/// no such time.
async fn keys_list_says_when_each_key_was_last_used(home: Home) {
    let key = home.create_key("player", &[]);
    home.create_key("idle", &[]);
    let d = home.start();
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    let listed = |home: &Home| -> Value {
        let out = home.cli(&["keys", "list", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("keys list --json")
    };
    let used_at = |keys: &Value, name: &str| -> Value {
        keys.as_array()
            .and_then(|keys| keys.iter().find(|k| k["name"] == name))
            .map(|k| k["last_used_at"].clone())
            .unwrap_or_default()
    };
    // Recorded off the request's path: bounded wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let keys = loop {
        let keys = listed(&home);
        if !used_at(&keys, "player").is_null() || std::time::Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let used = used_at(&keys, "player");
    let used = chrono::DateTime::parse_from_rfc3339(used.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("last_used_at of player: {e}: {keys}"));
    assert!(
        used >= before && used <= chrono::Utc::now(),
        "{used} not between {before} and now: {keys}"
    );
    assert!(used_at(&keys, "idle").is_null(), "{keys}");
    let table = String::from_utf8_lossy(&home.cli(&["keys", "list"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("LAST USED")),
        "{table}"
    );
    let player = table
        .lines()
        .find(|l| l.starts_with("player "))
        .unwrap_or_default();
    assert!(
        player.contains(&used.format("%Y-%m-%dT%H:%M").to_string()),
        "{table}"
    );
    let idle = table
        .lines()
        .find(|l| l.starts_with("idle "))
        .unwrap_or_default();
    assert!(idle.split_whitespace().nth(3) == Some("-"), "{table}");
    d.signal_and_wait("TERM");
}

/// A key revoked while an app still uses it (a rotation): refused as an unknown key is
/// (the caller is not told which), and the log names the key and the address, where it
/// said only `401` in the access line.
async fn a_revoked_key_is_refused_and_named_in_the_log(home: Home) {
    let key = home.create_key("player", &[]);
    let d = home.start();
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    assert!(home.cli(&["keys", "revoke", "player"]).status.success());
    // Within api_key_cache_seconds (1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = d.get("/v1/connections", &key).await;
        if status != 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "invalid_api_key", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("the API key is unknown or revoked")),
        "{body}"
    );
    let log = home.log_text();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("the revoked API key \"player\" was presented by 127.0.0.1")),
        "{log}"
    );
    d.signal_and_wait("TERM");
}

/// A subject with characters a path must escape.
const SUBJECT: &str = "alice/ü 100%";

fn escaped(subject: &str) -> String {
    url::form_urlencoded::byte_serialize(subject.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn created(d: &Daemon, key: &str, body: Value) -> Value {
    let (status, answer) = d.post("/v1/states", key, body).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

/// The 2FA walk-through: the code is required, wrong codes count down and are reported,
/// the right one consumes; 100 concurrent wrong codes use up exactly `max_attempts`.
async fn a_two_factor_challenge_takes_its_code_and_counts_wrong_ones(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let body = json!({"namespace": "2fa", "subject": "alice", "secret": "123456",
                      "ttl_seconds": 300, "data": {"user": 7}});
    let answer = created(&d, &key, body).await;
    let state = answer["state"].as_str().unwrap().to_owned();
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 8);
    assert_eq!(answer["subject"], "alice");
    let (status, problem) = d.consume(&key, &state, "2fa").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("secret_required"))
    );
    let attempt = |secret: &'static str| {
        let (d, key, state) = (&d, &key, &state);
        async move {
            d.post(
                "/v1/states/attempt",
                key,
                json!({"state": state, "namespace": "2fa", "secret": secret}),
            )
            .await
        }
    };
    let (status, problem) = attempt("000000").await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["code"], "wrong_secret");
    assert_eq!(problem["attempts_left"], 4);
    let (status, seen) = d
        .post(
            "/v1/states/verify",
            &key,
            json!({"state": state, "namespace": "2fa"}),
        )
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["attempts_left"], 4);
    assert_eq!(seen["id"], id.as_str());
    assert!(seen.get("state").is_none() && seen.get("secret").is_none());
    let (status, done) = attempt("123456").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"], json!({"user": 7}));
    assert_eq!(attempt("123456").await.0, 404);

    let body = json!({"namespace": "2fa", "secret": "9999", "max_attempts": 5});
    let state = created(&d, &key, body).await["state"]
        .as_str()
        .unwrap()
        .to_owned();
    let tries = (0..100).map(|i| {
        d.post(
            "/v1/states/attempt",
            &key,
            json!({"state": state, "namespace": "2fa", "secret": format!("{i}")}),
        )
    });
    let answers = futures::future::join_all(tries).await;
    let mut left: Vec<i64> = answers
        .iter()
        .filter(|(s, _)| *s == 403)
        .map(|(_, p)| p["attempts_left"].as_i64().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec![0, 1, 2, 3, 4]);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 404).count(), 95);

    // Past its TTL (not swept yet), a consume says it expired, as for any state: it said
    // `secret_required`, sending the app to `attempt` with a state already dead.
    let short = created(
        &d,
        &key,
        json!({"namespace": "2fa", "secret": "1", "ttl_seconds": 1}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (status, problem) = d
        .consume(&key, short["state"].as_str().unwrap(), "2fa")
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (410, Some("state_expired")),
        "{problem}"
    );
    // Once, as for any state: then it is unknown.
    let (status, problem) = d
        .consume(&key, short["state"].as_str().unwrap(), "2fa")
        .await;
    assert_eq!(status, 404, "{problem}");
}

/// Sessions: a sliding state verified (and touched) on every request, listed per user
/// without its value, signed out per device (by id), by value, and everywhere.
async fn sessions_are_verified_listed_and_revoked_per_subject(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    let session = |device: &str| {
        json!({"namespace": "session", "subject": SUBJECT, "ttl_seconds": 86400,
               "sliding": true, "max_lifetime_seconds": 30 * 86400, "data": {"device": device}})
    };
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for device in ["phone", "laptop", "tv"] {
        let answer = created(&d, &key, session(device)).await;
        ids.push(answer["id"].as_str().unwrap().to_owned());
        states.push(answer["state"].as_str().unwrap().to_owned());
    }
    let verify = json!({"state": states[0], "namespace": "session", "touch": true});
    let (status, seen) = d.post("/v1/states/verify", &key, verify).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["subject"], SUBJECT);
    assert_eq!(seen["data"], json!({"device": "phone"}));
    // A touch of a session created without `sliding` answers as a verify, its expiry
    // unmoved, and the log says so: no silent sign-out at the TTL.
    let fixed = created(
        &d,
        &key,
        json!({"namespace": "session", "subject": SUBJECT, "ttl_seconds": 600}),
    )
    .await;
    assert!(
        home.log_text()
            .lines()
            .all(|l| !l.contains("created without \"sliding\"")),
        "{}",
        home.log_text()
    );
    let touch = json!({"state": fixed["state"], "namespace": "session", "touch": true});
    let (status, seen) = d.post("/v1/states/verify", &key, touch).await;
    assert_eq!(
        (status, &seen["expires_at"]),
        (200, &fixed["expires_at"]),
        "{seen}"
    );
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || home.log_text().lines().any(
            |l| l.contains(" WARN ")
                && l.contains("a touch of a state in namespace session that was created without \"sliding\": true")
        ))
        .await,
        "{}",
        home.log_text()
    );
    assert_eq!(
        d.delete(
            &format!(
                "/v1/namespaces/session/states/{}",
                fixed["id"].as_str().unwrap_or_default()
            ),
            &key
        )
        .await
        .status(),
        204
    );

    let path = format!(
        "/v1/namespaces/session/subjects/{}/states",
        escaped(SUBJECT)
    );
    let (status, listed) = d.get(&path, &key).await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["states"].as_array().unwrap().clone();
    let listed_ids: Vec<&str> = listed.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        listed_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(listed[1]["data"], json!({"device": "laptop"}));
    let text = serde_json::to_string(&listed).unwrap();
    assert!(states.iter().all(|s| !text.contains(s.as_str())), "{text}");

    // Sign out one device by id, another by its value.
    let by_id = format!("/v1/namespaces/session/states/{}", ids[1]);
    assert_eq!(d.delete(&by_id, &key).await.status(), 204);
    let again = d.delete(&by_id, &key).await;
    assert_eq!(again.status(), 404);
    // Said as a revoke's answer: no 410 promised, which a revoke never gives.
    let again: Value = again.json().await.unwrap_or_default();
    assert_eq!(again["code"], "state_not_found", "{again}");
    let detail = again["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("no live state to revoke") && !detail.contains("answers 410 once"),
        "{again}"
    );
    let revoke = json!({"state": states[2], "namespace": "session"});
    let (status, _) = d.post("/v1/states/revoke", &key, revoke.clone()).await;
    assert_eq!(status, 204);
    assert_eq!(d.post("/v1/states/revoke", &key, revoke).await.0, 404);
    let (_, listed) = d.get(&path, &key).await;
    assert_eq!(listed["states"].as_array().unwrap().len(), 1);

    // Everywhere.
    created(&d, &key, session("watch")).await;
    let resp = d.delete(&path, &key).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revoked"], 2);
    let (_, listed) = d.get(&path, &key).await;
    assert_eq!(listed["states"], json!([]));
    let verify = json!({"state": states[0], "namespace": "session"});
    assert_eq!(d.post("/v1/states/verify", &key, verify).await.0, 404);

    // One active reset link per user: replace revokes the earlier one.
    let reset =
        json!({"namespace": "reset", "subject": "alice", "replace": true, "ttl_seconds": 900});
    let first = created(&d, &key, reset.clone()).await["state"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = created(&d, &key, reset).await["state"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(d.consume(&key, &first, "reset").await.0, 404);
    let verify = json!({"state": second, "namespace": "reset"});
    assert_eq!(d.post("/v1/states/verify", &key, verify).await.0, 200);
    assert_eq!(d.consume(&key, &second, "reset").await.0, 200);
}

/// A subject with many large states is listed in pages: one listing holds at most 1 MiB
/// of data beyond its first state (or `limit` states), and `next` leads to the rest, each
/// state once, oldest first. Without `next` the listing is complete.
async fn a_subjects_listing_comes_in_pages_bounded_in_states_and_bytes(home: Home) {
    let key = home.create_key("app", &[]);
    let d = home.start();
    // 80 states of about 16 KiB of data: 1.3 MB, sealed more.
    let mut ids = Vec::new();
    for n in 0..80 {
        let data = json!({"n": n, "blob": "x".repeat(16_000)});
        let body = json!({"namespace": "session", "subject": SUBJECT, "data": data});
        ids.push(
            created(&d, &key, body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let path = format!(
        "/v1/namespaces/session/subjects/{}/states",
        escaped(SUBJECT)
    );
    let walk = |first: String| {
        let (d, key) = (&d, &key);
        async move {
            let (mut listed, mut pages, mut sizes) = (Vec::new(), 0, Vec::new());
            let mut url = first;
            loop {
                let resp = d.get_raw(&url, Some(key)).await;
                assert_eq!(resp.status(), 200, "{url}");
                let text = resp.text().await.unwrap();
                sizes.push(text.len());
                let page: Value = serde_json::from_str(&text).unwrap();
                pages += 1;
                for s in page["states"].as_array().unwrap() {
                    listed.push(s["id"].as_str().unwrap().to_owned());
                }
                let Some(next) = page["next"].as_str() else {
                    break;
                };
                assert!(pages < 100, "pages never end");
                // The page's own query (its limit) and the cursor.
                let (base, query) = url.split_once('?').unwrap_or((&url, ""));
                let kept = query.split('&').find(|q| q.starts_with("limit="));
                url = match kept {
                    Some(limit) => format!("{base}?{limit}&after={next}"),
                    None => format!("{base}?after={next}"),
                };
            }
            (listed, pages, sizes)
        }
    };
    let (listed, pages, sizes) = walk(path.clone()).await;
    assert_eq!(listed, ids, "every state once, oldest first");
    assert!(pages >= 2, "{pages} pages of {sizes:?}");
    assert!(sizes.iter().all(|n| *n < 1_200_000), "{sizes:?}");
    let (listed, pages, _) = walk(format!("{path}?limit=7")).await;
    assert_eq!(listed, ids);
    assert_eq!(pages, 12, "80 states, 7 a page");

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("after=not-a-cursor", "invalid_after"),
        ("page=2", "unknown_parameter"),
        // Given twice, which one counts is a guess: the last counted, silently.
        ("limit=10&limit=5", "invalid_limit"),
    ] {
        let (status, problem) = d.get(&format!("{path}?{query}"), &key).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{query}: {problem}"
        );
    }
}

/// Every option is checked, and refusals are 4xx problems with stable codes; a key sees
/// only its namespaces on every new route.
async fn state_options_are_checked_with_stable_codes(home: Home) {
    home.write_config("[states.namespaces.\"2fa\"]\nsliding = false\nmax_attempts = 2\nmax_attempts_ceiling = 5\nmax_states_per_subject = 2\n[states.namespaces.\"short\"]\nmax_lifetime_seconds = 100\ndefault_ttl_seconds = 60\n");
    let key = home.create_key("app", &[]);
    let limited = home.create_key("limited", &["2fa"]);
    let d = home.start();
    let refused = [
        (json!({"namespace": "s", "subject": ""}), "invalid_subject"),
        (
            json!({"namespace": "s", "subject": "a".repeat(257)}),
            "invalid_subject",
        ),
        (json!({"namespace": "s", "subject": 5}), "invalid_subject"),
        // No URL names these (clients resolve them away): their states could be listed
        // or revoked by no app.
        (json!({"namespace": "s", "subject": "."}), "invalid_subject"),
        (
            json!({"namespace": "s", "subject": ".."}),
            "invalid_subject",
        ),
        (
            json!({"namespace": "s", "secret": "12\n34"}),
            "invalid_secret",
        ),
        (
            json!({"namespace": "s", "secret": "1", "max_attempts": 0}),
            "invalid_max_attempts",
        ),
        (
            json!({"namespace": "s", "secret": "1", "max_attempts": 101}),
            "invalid_max_attempts",
        ),
        (
            json!({"namespace": "s", "max_attempts": 3}),
            "invalid_max_attempts",
        ),
        (
            json!({"namespace": "s", "replace": true}),
            "subject_required",
        ),
        (
            json!({"namespace": "s", "replace": "yes", "subject": "a"}),
            "invalid_replace",
        ),
        (
            json!({"namespace": "s", "max_lifetime_seconds": 60}),
            "invalid_max_lifetime",
        ),
        (
            json!({"namespace": "s", "sliding": true, "ttl_seconds": 120, "max_lifetime_seconds": 60}),
            "invalid_max_lifetime",
        ),
        (
            json!({"namespace": "short", "sliding": true, "ttl_seconds": 200}),
            "invalid_max_lifetime",
        ),
        (
            json!({"namespace": "2fa", "sliding": true}),
            "sliding_not_allowed",
        ),
        // More tries than the namespace's ceiling allows (100 elsewhere).
        (
            json!({"namespace": "2fa", "secret": "1", "max_attempts": 6}),
            "invalid_max_attempts",
        ),
    ];
    for (body, code) in refused {
        let (status, problem) = d.post("/v1/states", &key, body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some(code)),
            "{body}: {problem}"
        );
        // A TTL past the namespace's longest lifetime: no range to quote, the TTL is
        // what to change.
        if body["namespace"] == "short" {
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("lives at most 100 s") && detail.contains("shorter ttl_seconds"),
                "{problem}"
            );
        }
        if body["namespace"] == "2fa" && code == "invalid_max_attempts" {
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("namespace 2fa allows at most 5 attempts (max_attempts_ceiling in [states.namespaces.\"2fa\"]"),
                "{problem}"
            );
        }
        // The setting that refused it, as the config spells it.
        if code == "sliding_not_allowed" {
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("sliding = false in [states.namespaces.\"2fa\"]"),
                "{problem}"
            );
        }
    }
    // Up to the ceiling a create gets the tries it asks for, past the namespace's default.
    for (namespace, tries) in [("2fa", 5), ("s", 100)] {
        let body = json!({"namespace": namespace, "secret": "1", "max_attempts": tries});
        created(&d, &key, body).await;
    }
    let state = created(&d, &key, json!({"namespace": "session", "subject": "bob"})).await;
    let state = state["state"].as_str().unwrap();
    let bad = [
        (
            "/v1/states/verify",
            json!({"state": state, "namespace": "session", "touch": 1}),
            400,
            "invalid_touch",
        ),
        (
            "/v1/states/verify",
            json!({"state": state, "namespace": "session", "x": 1}),
            400,
            "unknown_field",
        ),
        (
            "/v1/states/attempt",
            json!({"state": state, "namespace": "session"}),
            400,
            "invalid_secret",
        ),
        (
            "/v1/states/attempt",
            json!({"state": state, "namespace": "session", "secret": "1"}),
            409,
            "no_secret",
        ),
        (
            "/v1/states/revoke",
            json!({"state": "short", "namespace": "session"}),
            400,
            "invalid_state",
        ),
        (
            "/v1/states/verify",
            json!({"state": state, "namespace": "session"}),
            401,
            "namespace_not_allowed",
        ),
    ];
    for (i, (path, body, status, code)) in bad.into_iter().enumerate() {
        let who = if i == 5 { &limited } else { &key };
        let (got, problem) = d.post(path, who, body.clone()).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {problem}"
        );
    }
    let paths = [
        (
            "/v1/namespaces/session/subjects/bob/states",
            &limited,
            401,
            "namespace_not_allowed",
        ),
        (
            "/v1/namespaces/connect:x/subjects/bob/states",
            &key,
            400,
            "reserved_namespace",
        ),
        (
            "/v1/namespaces/bad%20ns/subjects/bob/states",
            &key,
            400,
            "invalid_namespace",
        ),
        (
            "/v1/namespaces/session/subjects/%0A/states",
            &key,
            400,
            "invalid_subject",
        ),
    ];
    for (path, who, status, code) in paths {
        let resp = d.delete(path, who).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
        common::assert_code(resp, code).await;
        let (got, problem) = d.get(path, who).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }
    // `.` and `..` escaped, sent as written (clients resolve them away): refused as the
    // create refuses them, not answered with an empty listing.
    for dots in ["%2E", "%2e%2E"] {
        for method in ["GET", "DELETE"] {
            let path = format!("/v1/namespaces/session/subjects/{dots}/states");
            let (status, out) = d.raw(method, &key, &path).await;
            assert!(
                status == 400 && out.contains("\"invalid_subject\""),
                "{method} {path}: {out}"
            );
        }
    }
    let resp = d
        .delete("/v1/namespaces/session/states/not-an-id", &key)
        .await;
    assert_eq!(resp.status(), 400);
    common::assert_code(resp, "invalid_id").await;
    let resp = d
        .get_raw("/v1/namespaces/session/states/x", Some(&key))
        .await;
    assert_eq!(resp.status(), 405);
    // The state survived all of that.
    assert_eq!(d.consume(&key, state, "session").await.0, 200);

    // The namespace's max_attempts is the default: two wrong codes end this one. A code
    // out of range (an empty form field, one with a control character, one too long) is
    // refused as the create refuses it, and spends no attempt: it used to spend them all.
    let guarded = created(&d, &key, json!({"namespace": "2fa", "secret": "1"})).await;
    for bad in ["", "1\u{0}2", &"9".repeat(129)] {
        let attempt = json!({"state": guarded["state"], "namespace": "2fa", "secret": bad});
        let (status, problem) = d.post("/v1/states/attempt", &key, attempt).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_secret")),
            "{problem}"
        );
    }
    let attempt = json!({"state": guarded["state"], "namespace": "2fa", "secret": "2"});
    let (status, problem) = d.post("/v1/states/attempt", &key, attempt.clone()).await;
    assert_eq!((status, problem["attempts_left"].as_u64()), (403, Some(1)));
    let (status, problem) = d.post("/v1/states/attempt", &key, attempt.clone()).await;
    assert_eq!((status, problem["attempts_left"].as_u64()), (403, Some(0)));
    assert_eq!(d.post("/v1/states/attempt", &key, attempt).await.0, 404);

    // Two live states per subject in "2fa": a third is refused, other subjects are not.
    // The refusal says when the first of them expires (a limit on codes sent an hour is
    // a namespace of markers, and the app tells its user when to ask again).
    created(
        &d,
        &key,
        json!({"namespace": "2fa", "subject": "u", "ttl_seconds": 40}),
    )
    .await;
    created(&d, &key, json!({"namespace": "2fa", "subject": "u"})).await;
    let resp = d
        .send_json(
            reqwest::Method::POST,
            "/v1/states",
            &key,
            json!({"namespace": "2fa", "subject": "u"}),
        )
        .await;
    let retry: Option<u64> = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    assert!(
        retry.is_some_and(|s| (30..=40).contains(&s)),
        "Retry-After {retry:?}"
    );
    let status = resp.status().as_u16();
    let problem: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(
        (status, problem["code"].as_str()),
        (429, Some("too_many_subject_states"))
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("max_states_per_subject in [states.namespaces.\"2fa\"]"),
        "{problem}"
    );
    created(&d, &key, json!({"namespace": "2fa", "subject": "v"})).await;
}

/// A namespace rule's new settings are checked at start, naming the key to fix.
#[test]
fn state_policy_settings_are_checked_at_start() {
    for (toml, named) in [
        (
            "[states.namespaces.\"2fa\"]\nmax_attempts = 0\n",
            "states.namespaces.\"2fa\".max_attempts",
        ),
        ("[states]\nmax_attempts = 101\n", "states.max_attempts"),
        (
            "[states]\nmax_lifetime_seconds = 0\n",
            "states.max_lifetime_seconds",
        ),
        (
            "[states]\nmax_states_per_subject = 0\n",
            "states.max_states_per_subject",
        ),
        (
            "[states]\nmax_total_states = 0\n",
            "states.max_total_states",
        ),
        ("[states.namespaces.\"s\"]\nsliding = \"yes\"\n", "sliding"),
    ] {
        let home = Home::new();
        home.write_config(toml);
        let out = home.serve_once();
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{toml}: {err}");
    }
}

/// Verify answers from memory: a consume in this process is seen at once; one in another
/// process on the same store within `verify_cache_seconds` (on SQLite at the writer's next
/// look for other processes' commits, every quarter to half second, and while nothing else
/// writes a state read once answers from memory past that bound); 0 reads the store every
/// time.
async fn verify_sees_another_processs_consume_within_verify_cache_seconds(home: Home) {
    home.write_config("[states]\nverify_cache_seconds = 3\n");
    let key = home.create_key("app", &[]);
    // The second process starts later: its start-up writes would drop a's cache meanwhile.
    let a = home.start();
    let verify = |state: &str| json!({"state": state, "namespace": "session"});
    let here = created(&a, &key, json!({"namespace": "session"})).await;
    let here = here["state"].as_str().unwrap();
    assert_eq!(a.post("/v1/states/verify", &key, verify(here)).await.0, 200);
    assert_eq!(a.consume(&key, here, "session").await.0, 200);
    assert_eq!(a.post("/v1/states/verify", &key, verify(here)).await.0, 404);

    let there = created(&a, &key, json!({"namespace": "session"})).await;
    let there = there["state"].as_str().unwrap();
    let hits = r#"oauthd_cache_reads_total{cache="verify",result="hit"}"#;
    assert_eq!(
        a.post("/v1/states/verify", &key, verify(there)).await.0,
        200
    );
    // SQLite's writer watches for other processes' commits; Redis has no such watch.
    let watched = home.shared().is_none();
    if watched {
        let hits_before = a.metric(hits).await.unwrap_or(0.0);
        // Past the bound, and nobody else wrote: still answered from memory.
        tokio::time::sleep(std::time::Duration::from_millis(4000)).await;
        assert_eq!(
            a.post("/v1/states/verify", &key, verify(there)).await.0,
            200
        );
        assert_eq!(
            a.metric(hits).await,
            Some(hits_before + 1.0),
            "not from memory"
        );
    }

    let b = home.start();
    // Read again into a's memory (b's start-up writes may have dropped it there).
    assert_eq!(
        a.post("/v1/states/verify", &key, verify(there)).await.0,
        200
    );
    assert_eq!(b.consume(&key, there, "session").await.0, 200);
    let consumed_at = std::time::Instant::now();
    if !watched {
        // Still in memory: the consume happened in another process.
        let status = a.post("/v1/states/verify", &key, verify(there)).await.0;
        assert_eq!(status, 200);
    }
    let mut status = 200;
    while status == 200 && consumed_at.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = a.post("/v1/states/verify", &key, verify(there)).await.0;
    }
    assert_eq!(status, 404);
    let seen_after = consumed_at.elapsed();
    let bound = std::time::Duration::from_millis(if watched { 1500 } else { 4500 });
    assert!(
        seen_after < bound,
        "another process's consume was seen only after {seen_after:?}"
    );
    drop((a, b));

    home.write_config("[states]\nverify_cache_seconds = 0\n");
    let (a, b) = (home.start(), home.start());
    let state = created(&a, &key, json!({"namespace": "session"})).await;
    let state = state["state"].as_str().unwrap();
    assert_eq!(
        a.post("/v1/states/verify", &key, verify(state)).await.0,
        200
    );
    assert_eq!(b.consume(&key, state, "session").await.0, 200);
    assert_eq!(
        a.post("/v1/states/verify", &key, verify(state)).await.0,
        404,
        "0 reads the store"
    );
}

/// A revoke (by id, by subject, or a create that replaces a subject's states) drops from
/// verify's memory the states it removed, and only those: another app's revokes, over and
/// over, must not empty everyone's cache, and a revoked state never verifies from memory.
async fn a_revoke_drops_from_verify_only_what_it_removed(home: Home) {
    home.write_config("[states]\nverify_cache_seconds = 30\n");
    let a = home.create_key("a", &["session"]);
    let b = home.create_key("b", &["other"]);
    let d = home.start();
    let state = created(&d, &a, json!({"namespace": "session", "subject": "alice"})).await;
    let verify = json!({"state": state["state"], "namespace": "session"});
    assert_eq!(d.post("/v1/states/verify", &a, verify.clone()).await.0, 200);
    let hits = r#"oauthd_cache_reads_total{cache="verify",result="hit"}"#;
    let hit = || async {
        let before = d.metric(hits).await.unwrap_or(0.0);
        assert_eq!(d.post("/v1/states/verify", &a, verify.clone()).await.0, 200);
        d.metric(hits).await.unwrap_or(0.0) > before
    };
    assert!(hit().await, "held after its first verify");
    let nobody = "/v1/namespaces/other/states/00000000-0000-8000-8000-000000000000";
    assert_eq!(d.delete(nobody, &b).await.status(), 404);
    let subject = "/v1/namespaces/other/subjects/nobody/states";
    assert_eq!(d.delete(subject, &b).await.status(), 200);
    assert!(hit().await, "a revoke of nothing emptied the cache");
    // B's own states, replaced, revoked by id and by subject.
    let bob = json!({"namespace": "other", "subject": "bob"});
    created(&d, &b, bob.clone()).await;
    let replacing = json!({"namespace": "other", "subject": "bob", "replace": true});
    let other = created(&d, &b, replacing).await;
    assert!(
        hit().await,
        "a replace of another subject emptied the cache"
    );
    created(&d, &b, bob).await;
    let id = other["id"].as_str().unwrap();
    let path = format!("/v1/namespaces/other/states/{id}");
    assert_eq!(d.delete(&path, &b).await.status(), 204);
    assert!(hit().await, "a revoke of another state emptied the cache");
    let bobs = "/v1/namespaces/other/subjects/bob/states";
    assert_eq!(d.delete(bobs, &b).await.status(), 200);
    assert!(hit().await, "a subject's revoke emptied the cache");
    // A's own state, revoked by id: gone from memory too.
    let id = state["id"].as_str().unwrap();
    let path = format!("/v1/namespaces/session/states/{id}");
    assert_eq!(d.delete(&path, &a).await.status(), 204);
    assert_eq!(d.post("/v1/states/verify", &a, verify.clone()).await.0, 404);
    // And by a replace of its subject, and by its subject's revoke.
    for replace in [true, false] {
        let state = created(&d, &a, json!({"namespace": "session", "subject": "alice"})).await;
        let verify = json!({"state": state["state"], "namespace": "session"});
        assert_eq!(d.post("/v1/states/verify", &a, verify.clone()).await.0, 200);
        if replace {
            let again = json!({"namespace": "session", "subject": "alice", "replace": true});
            created(&d, &a, again).await;
        } else {
            let alices = "/v1/namespaces/session/subjects/alice/states";
            assert_eq!(d.delete(alices, &a).await.status(), 200);
        }
        assert_eq!(
            d.post("/v1/states/verify", &a, verify).await.0,
            404,
            "verified from memory after {}",
            if replace {
                "a replace"
            } else {
                "a subject's revoke"
            }
        );
    }
}

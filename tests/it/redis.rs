//! Scale-out: several oauthd processes on one real redis-server behave as one. (The storage
//! contract itself — the same tests on SQLite and Redis — lives in state_api.rs and
//! broker.rs.)

#[cfg(feature = "redis")]
use crate::common;

use std::process::Command;

/// A build without the `redis` feature names the feature when given a Redis URL.
/// scripts/test builds that binary (default features) before the test run.
#[test]
fn without_the_feature_a_redis_url_fails_at_start_naming_the_feature() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oauthd-without-redis");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test builds it with `cargo build` (default features)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--store", "redis://127.0.0.1:6379/0", "keys", "list"],
        vec!["--store", "redis://127.0.0.1:6379/0"],
    ] {
        let out = Command::new(&bin)
            .args(&args)
            .arg("--db")
            .arg(dir.path().join("x.db"))
            .env_remove("OAUTHD_STORE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("feature `redis`"), "{err}");
        assert!(err.contains("--features redis"), "{err}");
    }
    assert!(
        !dir.path().join("x.db").exists(),
        "no SQLite file as a fallback"
    );
}

#[cfg(feature = "redis")]
mod shared {
    use super::common::peer::Peer;
    use super::common::redis::RedisServer;
    use super::common::{Daemon, Home, BIN};
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    /// With a Redis store no key file is made, and every command needed OAUTHD_KEY_FILE in
    /// its environment (`connections list` refused without it). The config file names it
    /// now (`key_file`, relative to the config's directory), for the daemon and every
    /// command; the variable still wins.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_config_names_the_key_file_for_every_command() {
        let home = Home::redis();
        let without_variable = |args: &[&str]| {
            home.cli_command(args)
                .env_remove("OAUTHD_KEY_FILE")
                .output()
                .unwrap()
        };
        let out = without_variable(&["connections", "list"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("`key_file` in the config file"),
            "{out:?}"
        );
        let key_file = home.key_file();
        let beside = home.config().parent().unwrap().join("vault.key");
        std::fs::copy(&key_file, &beside).unwrap();
        home.write_config("key_file = \"vault.key\"\n");
        let out = without_variable(&["keys", "create", "--name", "app"]);
        assert!(out.status.success(), "{out:?}");
        let out = without_variable(&["connections", "list"]);
        assert!(out.status.success(), "{out:?}");
        let out = without_variable(&["check"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains(&format!("{}", beside.display())),
            "{report}"
        );
        // The variable wins over the file: a missing file named there is refused.
        let out = home
            .cli_command(&["connections", "list"])
            .env("OAUTHD_KEY_FILE", home.dir.path().join("nowhere.key"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }

    const NS: &str = "oauth:app";

    /// Two instances (own directories and logs) on one Redis, one key file; an API key.
    fn pair(config: &str) -> (Home, Home, String) {
        let a = Home::redis();
        let b = Home::sharing(&a);
        a.write_config(config);
        b.write_config(config);
        let key = a.create_key("app", &[]);
        (a, b, key)
    }

    /// A start on a Redis store that holds nothing said nothing (a new SQLite database is
    /// said where it is made): also where the data sat under another prefix, as a copy made
    /// with `--to-prefix` does, and apps got 401 for keys the operator could see there.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_start_on_an_empty_redis_store_says_so() {
        let home = Home::redis();
        home.start().signal_and_wait("TERM");
        let said = "holds no API keys, connections or states under the key prefix \"oauthd:\": right on a first start; if oauthd served this Redis before, it used another database number or `redis_prefix`";
        let log = home.log_text();
        assert_eq!(log.matches(said).count(), 1, "{log}");
        home.create_key("app", &[]);
        home.start().signal_and_wait("TERM");
        let log = home.log_text();
        assert_eq!(log.matches(said).count(), 1, "{log}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_state_created_on_one_instance_is_consumed_on_the_other_exactly_once() {
        let (ha, hb, key) = pair("");
        let (a, b) = (ha.start(), hb.start());
        let state = a
            .create_state(&key, json!({"namespace": NS, "data": {"v": 1}}))
            .await;
        let (status, body) = b.consume(&key, &state, NS).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["v"], 1);
        assert_eq!(a.consume(&key, &state, NS).await.0, 404);
        assert_eq!(b.consume(&key, &state, NS).await.0, 404);

        // A key created through instance B's CLI works on A at once.
        let late = hb.create_key("late", &[]);
        assert_eq!(
            a.post("/v1/states", &late, json!({"namespace": NS}))
                .await
                .0,
            201
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hundred_concurrent_consumes_spread_over_two_instances_give_one_success() {
        let (ha, hb, key) = pair("");
        let (a, b) = (ha.start(), hb.start());
        for round in 0..3 {
            let state = a
                .create_state(&key, json!({"namespace": NS, "data": {"round": round}}))
                .await;
            let won = super::common::consume_race(&[&a, &b], &key, &state, NS, 100).await;
            assert_eq!(won["data"]["round"], round);
        }
    }

    /// Behind a load balancer both instances have the same public URL; the provider's
    /// redirect may reach either.
    async fn connect_across(peer: &Peer, a: &Daemon, b: &Daemon, key: &str, lb: &str) {
        let (status, body) = a
            .post("/v1/connect/peer", key, json!({"account": "alice"}))
            .await;
        assert_eq!(status, 201, "{body}");
        // The person's browser reaches one of them through the balancer.
        let to_provider = a.confirm(body["authorize_url"].as_str().unwrap()).await;
        let callback = peer.approve(&to_provider).await;
        let on_b = callback
            .strip_prefix(lb)
            .map(|rest| format!("{}{rest}", b.url))
            .unwrap_or_else(|| panic!("{callback} is not under {lb}"));
        let (status, page, _) = b.browser_get(&on_b).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Connected"), "{page}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_connect_flow_started_on_one_instance_completes_on_the_other_and_refreshes_once() {
        let peer = Peer::start(3);
        let lb = "http://127.0.0.1:7";
        let config = format!("public_url = \"{lb}\"\n{}", peer.provider_toml("peer"));
        let (ha, hb, key) = pair(&config);
        let (a, b) = (ha.start(), hb.start());
        connect_across(&peer, &a, &b, &key, lb).await;
        assert_eq!(peer.grants("authorization_code").await, 1);
        // A sees the connection B stored (and can open its sealed tokens).
        let (status, body) = a
            .get("/v1/connections/peer/alice/token?min_ttl=0", &key)
            .await;
        assert_eq!(status, 200, "{body}");
        let old = body["access_token"].as_str().unwrap().to_owned();

        tokio::time::sleep(Duration::from_millis(3200)).await;
        let new =
            super::common::peer::twenty_token_calls_refresh_once(&peer, &[&a, &b], &key).await;
        assert_ne!(new, old);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_down_gives_503_and_not_ready_then_recovers_without_a_restart() {
        let (ha, hb, key) = pair(
            "api_key_cache_seconds = 0\n[providers.down]\nauthorization_url = \"http://127.0.0.1:9/auth\"\n\
             token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"x\"\nclient_auth = \"none\"\n",
        );
        let (a, b) = (ha.start(), hb.start());
        let kept = a.create_state(&key, json!({"namespace": NS})).await;
        ha.redis_server().kill();

        // What failed is the operator's to read, in the log: callers (apps, and anyone who
        // can reach /readyz or a callback) are told only that Redis is unreachable, not why.
        let said_why = |text: &str| text.contains("os error") || text.contains("refused");
        for d in [&a, &b] {
            let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "storage_unavailable");
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.contains("Redis is unreachable; oauthd's log says why"),
                "{body}"
            );
            assert!(!said_why(detail), "{body}");
            let resp = d.get_raw("/readyz", None).await;
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            let text = resp.text().await.unwrap();
            assert!(
                text.contains("storage_unavailable") && !said_why(&text),
                "{text}"
            );
            let (status, page, _) = d
                .browser_get(&format!(
                    "{}/callback/down?state={}&code=c",
                    d.url,
                    "s".repeat(43)
                ))
                .await;
            assert_eq!(status, 503, "{page}");
            assert!(page.contains("oauthd") && !said_why(&page), "{page}");
        }
        for h in [&ha, &hb] {
            assert!(
                h.log_text().contains("Redis is unreachable ("),
                "{}",
                h.log_text()
            );
        }

        ha.redis_server().restart();
        // Same processes: each recovers by itself.
        for d in [&a, &b] {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut ready = false;
            while !ready && std::time::Instant::now() < deadline {
                let resp = d.http.get(format!("{}/readyz", d.url)).send().await;
                ready = resp.is_ok_and(|r| r.status() == 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(ready, "{} not ready again after Redis came back", d.url);
            assert_eq!(
                d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
                201
            );
        }
        // Acknowledged before the outage, kept by the append-only file.
        assert_eq!(b.consume(&key, &kept, NS).await.0, 200);
        assert!(
            ha.log_text().contains("storage"),
            "the outage was not logged"
        );
    }

    /// A Redis that lost its data (restarted without persistence, flushed) holds no API
    /// key any more: a key that worked a moment ago is refused with the hint that the
    /// store holds none, as on a fresh database, within the ten seconds a key seen vouches
    /// for the store.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_burst_of_faults_is_summed_up_in_the_log_when_it_ends() {
        let home = Home::redis();
        home.write_config("api_key_cache_seconds = 60\n");
        let key = home.create_key("app", &[]);
        let d = home.start();
        d.create_state(&key, json!({"namespace": NS})).await;
        home.redis_server().kill();
        // The first call after Redis went finds the connection broken and waits to read
        // its receipt: it is let through first, so that the burst is one second's.
        let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
        assert_eq!(status, 503, "{body}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1050 - u64::from(now.subsec_millis()))).await;
        const BURST: usize = 40;
        let burst = (0..BURST).map(|_| d.post("/v1/states", &key, json!({"namespace": NS})));
        for (status, body) in futures::future::join_all(burst).await {
            assert_eq!(status, 503, "{body}");
        }
        // No request follows: the count of lines left out is written all the same, and
        // with the lines written it makes the whole burst.
        let told = |log: &str| -> usize {
            let written = log.matches("503 storage_unavailable").count();
            let left_out: usize = log
                .lines()
                .filter_map(|l| {
                    l.split(" more 5xx answers were left out")
                        .next()
                        .filter(|_| l.contains("more 5xx answers"))
                })
                .filter_map(|head| head.rsplit(' ').next()?.parse::<usize>().ok())
                .sum();
            written + left_out
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while told(&home.log_text()) < BURST + 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = home.log_text();
        assert!(log.contains("more 5xx answers were left out"), "{log}");
        assert_eq!(told(&log), BURST + 1, "{log}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_refused_by_a_redis_that_lost_its_data_gets_the_no_keys_hint() {
        let (ha, _hb, key) = pair("api_key_cache_seconds = 0\n");
        let d = ha.start();
        assert_eq!(
            d.post("/v1/states", &key, json!({"namespace": NS})).await.0,
            201
        );
        assert_eq!(
            ha.redis_server().command("FLUSHALL").as_deref(),
            Some("+OK")
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (status, problem) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
        assert_eq!(status, 401, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        // What loses keys on Redis, not a database path.
        assert!(
            detail.contains("holds no active API key at all")
                && detail.contains("this Redis lost them")
                && !detail.contains("--db"),
            "{problem}"
        );
    }

    #[test]
    fn start_warns_when_redis_does_not_persist_and_check_reports_it() {
        let home = Home::redis_with(RedisServer::start_with(false));
        let out = home.cli(&["check"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("ok    store: Redis redis://127.0.0.1:")
                && report.contains("warn  store: Redis runs without the append-only file"),
            "{report}"
        );
        assert!(report.contains("appendonly"), "{report}");
        let d = home.start();
        drop(d);
        assert!(
            home.log_text().contains("without the append-only file"),
            "{}",
            home.log_text()
        );

        let durable = Home::redis();
        let d = durable.start();
        drop(d);
        assert!(
            !durable.log_text().contains("append-only"),
            "{}",
            durable.log_text()
        );
        let out = durable.cli(&["check"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}");
        assert!(report.contains("ok    store: Redis"), "{report}");
        assert!(!report.contains("warn  store"), "{report}");

        // Redis's own defaults: a sync once a second, and (on many managed services) a
        // policy that evicts keys at maxmemory.
        for set in [
            "CONFIG SET appendfsync everysec",
            "CONFIG SET maxmemory-policy volatile-lru",
            "CONFIG SET maxmemory 1gb",
        ] {
            assert_eq!(
                durable.redis_server().command(set).as_deref(),
                Some("+OK"),
                "{set}"
            );
        }
        let out = durable.cli(&["check"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("warn  store: Redis syncs its append-only file once a second")
                && report.contains("appendfsync always"),
            "{report}"
        );
        assert!(
            report.contains("warn  store: Redis evicts keys when it reaches maxmemory")
                && report.contains("maxmemory-policy noeviction"),
            "{report}"
        );
        let d = durable.start();
        drop(d);
        assert!(
            durable.log_text().contains("maxmemory-policy volatile-lru"),
            "{}",
            durable.log_text()
        );
    }

    #[test]
    fn a_redis_store_needs_an_explicit_shared_vault_key() {
        let home = Home::redis();
        let url = home.shared().unwrap().url.clone();
        // Without OAUTHD_KEY(_FILE): exit 2 and what stderr said.
        let without_key = |args: &[&str]| {
            let out = Command::new(BIN)
                .args(["--store", &url])
                .args(args)
                .env_remove("OAUTHD_KEY")
                .env_remove("OAUTHD_KEY_FILE")
                .current_dir(home.dir.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            err
        };
        let err = without_key(&["--listen", "127.0.0.1:0"]);
        assert!(
            err.contains("same vault key") && err.contains("OAUTHD_KEY_FILE"),
            "{err}"
        );
        assert!(!home.dir.path().join("oauthd.db.key").exists());
        // A command is pointed at the key the instances use, not told to make a new one.
        let err = without_key(&["connections", "list"]);
        assert!(
            err.contains("to the key file the instances serving this store use"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_redis_at_start_fails_with_a_clear_message() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["--store", &format!("redis://:pw-secret@127.0.0.1:{port}/0")])
            .args(["keys", "list"])
            .env("OAUTHD_KEY_FILE", dir.path().join("none"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("cannot reach Redis at redis://127.0.0.1:{port}/0")),
            "{err}"
        );
        assert!(!err.contains("pw-secret"), "password in the message: {err}");
    }

    /// A `rediss://` URL given for a Redis without TLS gets no answer, which said nothing
    /// of TLS: it now says what the `s` asks for.
    #[test]
    fn a_tls_url_for_a_plain_redis_is_named_as_such() {
        let server = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["--store", &format!("rediss://127.0.0.1:{}/0", server.port)])
            .args(["events", "list"])
            .env("OAUTHD_KEY_FILE", dir.path().join("none"))
            .env_remove("OAUTHD_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            err.contains(&format!(
                "cannot reach Redis at rediss://127.0.0.1:{}/0: no answer (a rediss:// URL speaks TLS",
                server.port
            )),
            "{err}"
        );
    }

    /// An address where another service answers (a web server, at a port mixed up) is told
    /// as such, with the configuration's exit code 2, not as a parser's bytes.
    #[test]
    fn another_service_at_the_redis_address_is_named_as_such() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten().take(10) {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["--store", &format!("redis://127.0.0.1:{port}/0")])
            .args(["keys", "list"])
            .env("OAUTHD_KEY_FILE", dir.path().join("none"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "redis://127.0.0.1:{port}/0 answered, but not as Redis does"
            )) && !err.contains("Unexpected"),
            "{err}"
        );
    }

    /// A Redis that asks for a password: none given and a wrong one are told apart, and
    /// the message names the variable (never the password).
    #[test]
    fn a_missing_or_wrong_redis_password_is_named_as_such() {
        let server = RedisServer::start();
        let password = "the-redis-password-0123";
        assert_eq!(
            server
                .command(&format!("CONFIG SET requirepass {password}"))
                .as_deref(),
            Some("+OK")
        );
        let dir = tempfile::tempdir().unwrap();
        let keys_list_at = |url: &str, env: &[(&str, &str)]| {
            let mut cmd = Command::new(BIN);
            cmd.args(["--store", url, "keys", "list"])
                .env("OAUTHD_KEY_FILE", dir.path().join("none"));
            for name in common::OAUTHD_VARIABLES {
                if name != "OAUTHD_KEY_FILE" {
                    cmd.env_remove(name);
                }
            }
            let out = cmd.envs(env.iter().copied()).output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let keys_list = |env: &[(&str, &str)]| keys_list_at(&server.url(), env);
        // Each a configuration error (exit 2: the systemd unit does not restart for it),
        // said as such.
        let (code, err) = keys_list(&[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("asks for a password and none was given")
                && err.contains("OAUTHD_REDIS_PASSWORD"),
            "{err}"
        );
        let (code, err) = keys_list(&[("OAUTHD_REDIS_PASSWORD", "not-the-password-99")]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("refused the password"), "{err}");
        assert!(
            !err.contains("not-the-password"),
            "password in the message: {err}"
        );
        let no_such_db = server.url().replace("/0", "/99");
        let (code, err) = keys_list_at(&no_such_db, &[("OAUTHD_REDIS_PASSWORD", password)]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("has no such database"), "{err}");
        // A user without INFO: named, with the permissions oauthd needs.
        let acl = "ACL SETUSER lim on >limited-password-77 ~oauthd:* +@read +@write";
        let authed = format!("AUTH {password}");
        assert_eq!(server.command_after(&authed, acl).as_deref(), Some("+OK"));
        let limited = server
            .url()
            .replace("redis://", "redis://lim:limited-password-77@");
        let (code, err) = keys_list_at(&limited, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("may not run a command oauthd needs") && err.contains("+info"),
            "{err}"
        );
        // With what the README used to give, TIME was missing: the start stopped with
        // exit 1 at the first use ("NoPerm … 'time'"), to be restarted for good. It is
        // tried at the start now; the README's user works.
        let without_time =
            "ACL SETUSER lim reset on >limited-password-77 ~oauthd:* +@read +@write +@keyspace +@scripting +info";
        assert_eq!(
            server.command_after(&authed, without_time).as_deref(),
            Some("+OK")
        );
        let (code, err) = keys_list_at(&limited, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("'time'") && err.contains("+time"), "{err}");
        let without_select =
            "ACL SETUSER lim reset on >limited-password-77 ~oauthd:* +@read +@write +@keyspace +@scripting +info +time";
        assert_eq!(
            server.command_after(&authed, without_select).as_deref(),
            Some("+OK")
        );
        let (code, err) = keys_list_at(&limited, &[]);
        assert_eq!(code, Some(0), "{err}");
        // On a database other than 0 the user needs SELECT: named as a permission (exit 2),
        // not as Redis unreachable (exit 1, restarted for good by the unit).
        let limited_db1 = limited.replace("/0", "/1");
        let (code, err) = keys_list_at(&limited_db1, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("may not run a command oauthd needs") && err.contains("+select"),
            "{err}"
        );
        let readme =
            "ACL SETUSER lim reset on >limited-password-77 ~oauthd:* +@read +@write +@keyspace +@scripting +info +time +select";
        assert_eq!(
            server.command_after(&authed, readme).as_deref(),
            Some("+OK")
        );
        let (code, err) = keys_list_at(&limited_db1, &[]);
        assert_eq!(code, Some(0), "{err}");
        let (code, err) = keys_list(&[("OAUTHD_REDIS_PASSWORD", password)]);
        assert_eq!(code, Some(0), "{err}");
        // A password given to a Redis that has none: named as such, not as a wrong one.
        assert_eq!(
            server
                .command_after(&authed, "CONFIG SET requirepass \"\"")
                .as_deref(),
            Some("+OK")
        );
        let (code, err) = keys_list(&[("OAUTHD_REDIS_PASSWORD", password)]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("has no password") && err.contains("unset OAUTHD_REDIS_PASSWORD"),
            "{err}"
        );
        // A user named with a wrong password is told so, whatever the default user needs.
        let wrong = server
            .url()
            .replace("redis://", "redis://lim:not-the-password-88@");
        let (code, err) = keys_list_at(&wrong, &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("refused the password"), "{err}");
    }

    /// A start with another key than the one the store's tokens were sealed with names the
    /// Redis store and the key its instances share, not a database and its key file.
    #[tokio::test(flavor = "multi_thread")]
    async fn another_vault_key_is_refused_naming_the_store_and_the_shared_key() {
        let home = Home::redis();
        home.write_config(
            "[providers.mock]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
             token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"cid\"\nclient_secret = \"s\"\n",
        );
        let key = home.create_key("app", &[]);
        let d = home.start();
        let (status, body) = d
            .put(
                "/v1/connections/mock/alice",
                &key,
                json!({"access_token": "at-1"}),
            )
            .await;
        assert!(status < 300, "{status} {body}");
        d.signal_and_wait("TERM");
        let other = Command::new(BIN).arg("keygen").output().unwrap();
        std::fs::write(home.key_file(), other.stdout).unwrap();
        let out = home.cli(&["connections", "list"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("oauthd: Redis redis://")
                && err.contains("holds tokens sealed with vault key(s)")
                && err.contains("every instance serving this store uses")
                && !err.contains("database"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn instances_with_different_prefixes_share_a_redis_without_seeing_each_other() {
        let a = Home::redis();
        let b = Home::sharing(&a);
        b.write_config("redis_prefix = \"other:\"\n");
        let (ka, kb) = (a.create_key("app", &[]), b.create_key("app", &[]));
        let (da, db) = (a.start(), b.start());
        let state = da.create_state(&ka, json!({"namespace": NS})).await;
        assert_eq!(
            db.post("/v1/states", &ka, json!({"namespace": NS})).await.0,
            401
        );
        assert_eq!(db.consume(&kb, &state, NS).await.0, 404);
        assert_eq!(da.consume(&ka, &state, NS).await.0, 200);
        let keys = a.redis_server().command("DBSIZE").unwrap();
        assert_ne!(keys, ":0");
    }

    /// A reconnect that Redis refused (its password changed while oauthd's connection was
    /// cut) stayed the client library's answer to every later call once the password was
    /// put back: every request answered 503 until oauthd was restarted. The connection is
    /// now made afresh, and requests are answered again within seconds.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_reconnect_mends_once_redis_takes_the_password_again() {
        let server = RedisServer::start();
        let password = "pw-in-url-0123";
        assert_eq!(
            server
                .command(&format!("CONFIG SET requirepass {password}"))
                .as_deref(),
            Some("+OK")
        );
        let url = server
            .url()
            .replace("redis://", &format!("redis://:{password}@"));
        let home = Home::redis_via(server, url);
        let key = home.create_key("app", &[]);
        let d = home.start();
        let kept = d.create_state(&key, json!({"namespace": NS})).await;
        let as_admin = |with: &str, cmd: &str| {
            home.redis_server()
                .command_after(&format!("AUTH {with}"), cmd)
        };
        assert_eq!(
            as_admin(password, "CONFIG SET requirepass another-one").as_deref(),
            Some("+OK")
        );
        let killed = as_admin("another-one", "CLIENT KILL TYPE normal").unwrap_or_default();
        assert!(killed.starts_with(':') && killed != ":0", "{killed}");
        let mut refused = None;
        for _ in 0..50 {
            let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
            if status == 503 {
                refused = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = refused.expect("no 503 while Redis refused the password");
        assert_eq!(refused["code"], "storage_unavailable", "{refused}");
        // Said as such, to callers and on /readyz (not only "did not answer"), without the
        // password or where it goes; the log says what to set.
        let said = "Redis refused oauthd's password, or asks for one it was not given";
        let mut last = refused.clone();
        for _ in 0..50 {
            if last["detail"].as_str().unwrap_or_default().contains(said) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = d.post("/v1/states", &key, json!({"namespace": NS})).await.1;
        }
        assert!(
            last["detail"].as_str().unwrap_or_default().contains(said),
            "{last}\n{}",
            home.log_text()
        );
        let ready = d.get_raw("/readyz", None).await;
        assert_eq!(ready.status(), 503);
        let text = ready.text().await.unwrap();
        assert!(
            text.contains(said) && !text.contains("another-one") && !text.contains(password),
            "{text}"
        );
        assert!(
            home.log_text().contains("refused the password"),
            "{}",
            home.log_text()
        );
        assert_eq!(
            as_admin("another-one", &format!("CONFIG SET requirepass {password}")).as_deref(),
            Some("+OK")
        );
        let mut answered = None;
        for _ in 0..100 {
            let (status, _) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
            if status == 201 {
                answered = Some(());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            answered.is_some(),
            "still refused 10 s after Redis took the password again"
        );
        assert_eq!(d.consume(&key, &kept, NS).await.0, 200);
        assert_eq!(d.get("/readyz", "").await.0, 200);
    }

    /// The lines of `h`'s log that hold `said`.
    fn log_lines(h: &Home, said: &str) -> Vec<String> {
        h.log_text()
            .lines()
            .filter(|l| l.contains(said))
            .map(str::to_owned)
            .collect()
    }

    /// Instances on one Redis with providers configured otherwise (one lacks a provider,
    /// one has another client id) answered apps differently, and nothing said so. Each
    /// now tells the others a digest of each provider's settings (never its secret) and
    /// warns of what differs, on both sides; alike instances stay quiet. `[[notify]]`
    /// targets alike (b's is named otherwise): deliveries wait for whichever instance
    /// takes them, and one without the target retried them until they died, unsaid.
    #[tokio::test(flavor = "multi_thread")]
    async fn instances_with_providers_configured_otherwise_warn_of_it() {
        let provider = |name: &str, client_id: &str| {
            format!(
                "[providers.{name}]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
                 token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"{client_id}\"\n\
                 client_secret = \"s-{client_id}\"\n"
            )
        };
        let a = Home::redis();
        let b = Home::sharing(&a);
        let c = Home::sharing(&a);
        let target = |name: &str| {
            format!("[[notify]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/hook\"\n")
        };
        a.write_config(&(provider("mail", "cid") + &provider("music", "m1") + &target("app")));
        b.write_config(
            &(provider("mail", "other-cid") + &provider("photos", "p1") + &target("app2")),
        );
        // Alike but for the client secret, which is not compared.
        c.write_config(
            &(provider("mail", "cid") + &provider("music", "m1") + &target("app"))
                .replace("s-cid", "s-new"),
        );
        let _da = a.start();
        let _dc = c.start();
        let _db = b.start();
        let warned =
            |h: &Home| log_lines(h, "its providers are configured otherwise than this one's");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while (warned(&a).is_empty() || warned(&b).len() < 2 || warned(&c).is_empty())
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (wa, wb, wc) = (warned(&a), warned(&b), warned(&c));
        // a and c: warned of b only, once.
        for w in [&wa, &wc] {
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("it has no provider music"), "{w:?}");
            assert!(
                w[0].contains("it has provider photos, which this one does not"),
                "{w:?}"
            );
            assert!(
                w[0].contains("provider mail has another client id"),
                "{w:?}"
            );
            assert!(
                w[0].contains("its [[notify]] targets are configured otherwise than this one's: it has no [[notify]] target app; it has [[notify]] target app2, which this one does not"),
                "{w:?}"
            );
        }
        // b: warned of a and of c.
        assert_eq!(wb.len(), 2, "{wb:?}");
        for w in &wb {
            assert!(w.contains("it has no provider photos"), "{w}");
            assert!(
                w.contains("it has provider music, which this one does not"),
                "{w}"
            );
        }
        for h in [&a, &b, &c] {
            let log = h.log_text();
            assert!(!log.contains("s-cid") && !log.contains("s-new"), "{log}");
        }
    }

    /// Instances whose `[[notify]]` target of one name sends to the same host but with
    /// another secret, format or path: each delivery is rendered and signed by whichever
    /// instance takes it, so a receiver got one event in two formats, and a share of the
    /// deliveries failed its signature check, with nothing said. Each instance now tells
    /// a digest of how each target sends (the secret and the path only through an HMAC
    /// keyed with the secret), and warns of what differs; a target alike is not named.
    #[tokio::test(flavor = "multi_thread")]
    async fn instances_whose_targets_send_otherwise_warn_of_it() {
        let a = Home::redis();
        let b = Home::sharing(&a);
        let secret_file = |h: &Home, secret: &str| {
            let file = h.dir.path().join("hook.secret");
            std::fs::write(&file, format!("{secret}\n")).unwrap();
            file
        };
        let (secret_a, secret_b) = (
            common::receiver::new_secret(),
            common::receiver::new_secret(),
        );
        let targets = |secret: &std::path::Path, path: &str, push_format: &str| {
            format!(
                "[[notify]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9{path}\"\nsecret_file = \"{}\"\n\
                 [[notify]]\nname = \"push\"\nurl = \"http://127.0.0.1:9/topic\"\nformat = \"{push_format}\"\n\
                 [[notify]]\nname = \"same\"\nurl = \"http://127.0.0.1:9/same\"\nformat = \"text\"\n",
                secret.display()
            )
        };
        a.write_config(&targets(&secret_file(&a, &secret_a), "/hook", "text"));
        b.write_config(&targets(&secret_file(&b, &secret_b), "/hook", "gotify"));
        let da = a.start();
        let db = b.start();
        let warned = |h: &Home| log_lines(h, "its [[notify]] targets are configured otherwise");
        common::eventually(Duration::from_secs(15), || {
            !warned(&a).is_empty() && !warned(&b).is_empty()
        })
        .await;
        for h in [&a, &b] {
            let w = warned(h);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].contains(
                    "[[notify]] target hook, push has another secret_file, format or events there"
                ),
                "{w:?}"
            );
            assert!(
                !w[0].contains(", same") && !w[0].contains("target same"),
                "{w:?}"
            );
            let log = h.log_text();
            for secret in [&secret_a, &secret_b] {
                assert!(!log.contains(secret.trim_start_matches("whsec_")), "{log}");
            }
        }
        // Stopped: they no longer count as serving.
        da.signal_and_wait("TERM");
        db.signal_and_wait("TERM");
        // The same secret, but another path: said too (the path is compared for a signed
        // target); alike otherwise, nothing is said.
        let c = Home::sharing(&a);
        let d = Home::sharing(&a);
        c.write_config(&targets(&secret_file(&c, &secret_a), "/hook", "text"));
        d.write_config(&targets(&secret_file(&d, &secret_a), "/other-hook", "text"));
        let e = Home::sharing(&a);
        e.write_config(&targets(&secret_file(&e, &secret_a), "/hook", "text"));
        let _dc = c.start();
        let _dd = d.start();
        let _de = e.start();
        common::eventually(Duration::from_secs(15), || {
            !warned(&c).is_empty() && !warned(&e).is_empty() && warned(&d).len() >= 2
        })
        .await;
        // c and e of d only; d of both.
        for (h, n) in [(&c, 1), (&e, 1), (&d, 2)] {
            let w = warned(h);
            assert_eq!(w.len(), n, "{w:?}");
            for w in &w {
                assert!(
                    w.contains("[[notify]] target hook has another secret_file, format or events there, or (signed) another URL path or query"),
                    "{w}"
                );
            }
        }
    }

    /// A failover behind oauthd's address (a virtual IP, a DNS name, a proxy that follows
    /// the primary): oauthd's open connection still reached the old primary, now a replica
    /// of the new one, which answered every write `READONLY`, so every write and /readyz
    /// answered 503 until a restart. The connection is made afresh and writes go to the new
    /// primary within seconds, with what the old one held.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failover_behind_oauthds_address_is_followed_without_a_restart() {
        let primary = RedisServer::start();
        let standby = RedisServer::start();
        let relay = super::common::relay::Relay::start(primary.port).await;
        let follow = format!("REPLICAOF 127.0.0.1 {}", primary.port);
        assert_eq!(standby.command(&follow).as_deref(), Some("+OK"));
        let home = Home::redis_via(primary, relay.url());
        let key = home.create_key("app", &[]);
        let d = home.start();
        let kept = d.create_state(&key, json!({"namespace": NS})).await;
        // Everything written so far is on the standby before it takes over.
        let synced = home
            .redis_server()
            .command_after("SET oauthd-test-sync 1", "WAIT 1 30000");
        assert_eq!(synced.as_deref(), Some(":1"));
        assert_eq!(standby.command("REPLICAOF NO ONE").as_deref(), Some("+OK"));
        relay.retarget(standby.port);
        let demote = format!("REPLICAOF 127.0.0.1 {}", standby.port);
        assert_eq!(home.redis_server().command(&demote).as_deref(), Some("+OK"));
        let mut answered = None;
        for _ in 0..100 {
            let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
            if status == 201 {
                answered = Some(body);
                break;
            }
            assert_eq!(status, 503, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            answered.is_some(),
            "writes still refused 10 s after the failover"
        );
        assert_eq!(d.consume(&key, &kept, NS).await.0, 200);
        assert_eq!(d.get("/readyz", "").await.0, 200);
        assert_eq!(
            home.redis_server().command("ROLE").as_deref(),
            Some("*5"),
            "the old primary is a replica (ROLE answers 5 items)"
        );
        let log = home.log_text();
        assert!(log.contains("read-only replica"), "{log}");
    }

    /// Redis at maxmemory (noeviction) refuses writes: 503 with a clear reason, reads and
    /// consumes still work, and raising the limit is all it takes.
    #[tokio::test(flavor = "multi_thread")]
    async fn redis_out_of_memory_gives_503_and_recovers_when_memory_is_raised() {
        let (ha, _hb, key) = pair("");
        let d = ha.start();
        let kept = d.create_state(&key, json!({"namespace": NS})).await;
        let set = |cmd: &str| assert_eq!(ha.redis_server().command(cmd).as_deref(), Some("+OK"));
        set("CONFIG SET maxmemory-policy noeviction");
        // A few KiB short of the limit, a small write still lands where a state does not:
        // not ready there either (it said ready, and a refresh's save then failed).
        let used =
            "EVAL \"return tonumber(redis.call('INFO', 'memory'):match('used_memory:(%d+)'))\" 0";
        let used: u64 = ha
            .redis_server()
            .command(used)
            .and_then(|reply| reply.strip_prefix(':')?.parse().ok())
            .expect("used_memory");
        set(&format!("CONFIG SET maxmemory {}", used + 30_000));
        let (status, body) = d.get("/readyz", "").await;
        assert_eq!(status, 503, "ready a few KiB short of maxmemory: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("maxmemory"),
            "{body}"
        );
        set("CONFIG SET maxmemory 1");
        let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("out of memory"),
            "{body}"
        );
        // A load balancer sees it.
        let (status, body) = d.get("/readyz", "").await;
        assert_eq!(status, 503, "ready while Redis refuses writes: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("out of memory"),
            "{body}"
        );
        // Taking a state frees memory, so Redis allows it even now.
        assert_eq!(d.consume(&key, &kept, NS).await.0, 200);
        set("CONFIG SET maxmemory 0");
        assert_eq!(d.get("/readyz", "").await.0, 200);
        let again = d.create_state(&key, json!({"namespace": NS})).await;
        assert_eq!(d.consume(&key, &again, NS).await.0, 200);
    }

    /// Each insert took every expired member out of its namespace's set of states and of
    /// the set of all states in one script: after a quiet hour in which a million states
    /// expired, the next insert held Redis (which runs one script at a time) for as long
    /// as that took, and every other call with it. An insert now takes out a thousand of
    /// each set's, more than it adds, so a backlog drains over the next inserts.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_insert_takes_out_a_bounded_number_of_expired_members() {
        let (ha, _hb, key) = pair("");
        let d = ha.start();
        let fill = |set: &str| {
            let script =
                "for i = 1, 5000 do redis.call('ZADD', KEYS[1], 1000 + i, 'gone' .. i) end \
                          return redis.call('ZCARD', KEYS[1])";
            let reply = ha
                .redis_server()
                .command(&format!("EVAL \"{script}\" 1 {set}"));
            assert_eq!(reply.as_deref(), Some(":5000"));
        };
        let live = format!("oauthd:n:{NS}");
        fill(&live);
        fill("oauthd:all");
        let card = |set: &str| ha.redis_server().command(&format!("ZCARD {set}"));
        for left in [4001, 3002] {
            d.create_state(&key, json!({"namespace": NS})).await;
            assert_eq!(card(&live).as_deref(), Some(format!(":{left}").as_str()));
            assert_eq!(
                card("oauthd:all").as_deref(),
                Some(format!(":{left}").as_str())
            );
        }
    }
}

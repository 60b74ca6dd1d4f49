//! `oauthd copy --to STORE`: one store's API keys, connections and live states into
//! another, as stored (sealed), both ways between SQLite and Redis.

use crate::common::{self, Home};
use serde_json::json;
use std::process::Output;

const NS: &str = "oauth:app";

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A SQLite file copied into another, the vault key file beside the copy made from the
/// source's: served from the copy, the key, the state and its data are there; the
/// destination is refused when it holds data, and so is the source itself. The new file is
/// not taken for a first start on a wrong path (it was: "created a new, empty database").
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_file_copied_into_a_new_one_serves_with_the_key_copied_beside_it() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": NS, "data": {"return_to": "/x"}}))
        .await;
    d.signal_and_wait("TERM");
    let moved = Home::new();
    let to = moved.db();
    // Another key where the copy's must go: refused before anything is copied.
    std::fs::write(moved.key_file(), "not the key\n").unwrap();
    let out = home.cli(&["copy", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains("holds another vault key"),
        "{}",
        said(&out)
    );
    assert!(!to.exists(), "a database was made");
    std::fs::remove_file(moved.key_file()).unwrap();
    let out = home.cli(&["copy", "--to", to.to_str().unwrap()]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    // The copy's new file is not a first start on a database path gone wrong.
    assert!(!text.contains("created a new, empty database"), "{text}");
    assert!(text.contains("  API keys: 1\n"), "{text}");
    assert!(text.contains("  live states: 1"), "{text}");
    assert!(
        text.contains(&format!(
            "the vault key is copied to {}",
            moved.key_file().display()
        )),
        "{text}"
    );
    assert_eq!(
        std::fs::read(moved.key_file()).unwrap(),
        std::fs::read(home.key_file()).unwrap()
    );
    let copy = moved.start();
    let (status, body) = copy.consume(&key, &state, NS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["return_to"], "/x", "{body}");
    copy.signal_and_wait("TERM");
    // The store copied from started beside the copy without a word (a unit restarted
    // before its config named the copy): refused, as are refreshes; `check` says so.
    let copied_to = format!("was copied to database {}", moved.db().display());
    let (code, why) = home.refused_start();
    assert_eq!(code, Some(2), "{why}");
    assert!(
        why.contains(&copied_to) && why.contains("oauthd copy --forget-copy"),
        "{why}"
    );
    let out = home.cli(&["connections", "refresh", "gh"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains(&copied_to), "{}", said(&out));
    let out = home.cli(&["check"]);
    assert!(said(&out).contains(&copied_to), "{}", said(&out));
    // Nor is it copied again (a second store with the same refresh tokens, the mark naming
    // the second only).
    let again = Home::new();
    let out = home.cli(&["copy", "--to", again.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains("another copy made of it would use them"),
        "{}",
        said(&out)
    );
    assert!(!again.db().exists());
    // A backup of it keeps the mark; restored, it says so.
    let backup = home.dir.path().join("backup.db");
    assert!(home
        .cli(&["backup", backup.to_str().unwrap()])
        .status
        .success());
    let restored = Home::new();
    let out = restored.cli(&["restore", "--create", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("It holds the mark `oauthd copy` leaves in the store it copies from (copied to database"),
        "{}",
        said(&out)
    );
    // Not while the copy is served (the walkthrough took the mark out beside two serving
    // instances, and the two stores then used the same refresh tokens): refused.
    let served = moved.start();
    let out = home.cli(&["copy", "--forget-copy"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("the copy, database {}", moved.db().display()))
            && said(&out).contains("is served by 1 oauthd"),
        "{}",
        said(&out)
    );
    served.signal_and_wait("TERM");
    // Taken out on purpose: served again.
    let out = home.cli(&["copy", "--forget-copy"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("took out the mark of the copy"),
        "{}",
        said(&out)
    );
    home.start().signal_and_wait("TERM"); // Into a store that holds data: refused, nothing changed.
    let out = home.cli(&["copy", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains("holds oauthd data already (API keys: 1"),
        "{}",
        said(&out)
    );
    let out = home.cli(&["copy", "--to", home.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains("names the store it copies from"),
        "{}",
        said(&out)
    );
}

/// A copy into an empty file made beforehand (`touch`) with a loose mode makes it private,
/// as a file it makes is: it kept mode 666, and the -wal and -shm files took it.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_into_an_empty_file_makes_it_private() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    home.create_key("app", &[]);
    home.start().signal_and_wait("TERM");
    let moved = Home::new();
    let to = moved.db();
    std::fs::write(&to, "").unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = home.cli(&["copy", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));
    let mode = std::fs::metadata(&to).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    // A device of no length (a copy of /dev/null, made where root may) is no empty file:
    // its mode stays (run as root with --db /dev/null, the whole machine's would change).
    let null = moved.dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status();
    if made.is_ok_and(|s| s.success()) {
        std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = home.cli(&["copy", "--to", null.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", said(&out));
        let mode = std::fs::metadata(&null).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666, "{mode:o}");
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::redis::RedisServer;
    use std::time::Duration;

    /// The way out of one SQLite file: its store copied into a Redis is served there by an
    /// oauthd given the vault key file the copy names. The connected account's token is
    /// there and, once expired (the provider's tokens last 2 s), refreshed with the copied
    /// refresh token; the app's key and its state with data are there. A copy while oauthd
    /// serves the source is refused, and so is a second copy into the Redis.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_sqlite_store_copied_into_redis_is_served_there() {
        let peer = common::peer::Peer::start(2);
        let (home, key) = peer.home_with_key("");
        let d = home.start();
        let (status, page) = common::peer::connect(&d, &peer, &key, "alice").await;
        assert_eq!(status, 200, "{page}");
        let state = d
            .create_state(&key, json!({"namespace": NS, "data": {"n": 1}}))
            .await;
        let server = RedisServer::start();
        let url = server.url();
        let out = home.cli(&["copy", "--to", &url]);
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(
            said(&out).contains("is served by 1 oauthd")
                && said(&out).contains("stop every oauthd serving it first"),
            "{}",
            said(&out)
        );
        // When to try again after a kill: when the serving oauthd's last word runs out.
        let again = said(&out)
            .split_once("if none serves, run this again after ")
            .and_then(|(_, rest)| rest.split(')').next().map(str::to_owned))
            .unwrap_or_else(|| panic!("{}", said(&out)));
        let at = chrono::DateTime::parse_from_rfc3339(&again).expect("a time");
        let ahead = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
        assert!((1..=61_000).contains(&ahead), "{again}: {ahead} ms ahead");
        assert_eq!(server.command("DBSIZE").as_deref(), Some(":0"));
        d.signal_and_wait("TERM");

        let out = home.cli(&["copy", "--to", &url]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("  API keys: 1\n") && text.contains("  connections: 1"),
            "{text}"
        );
        assert!(text.contains("  live states: 1"), "{text}");
        let key_file = std::fs::canonicalize(home.key_file()).unwrap();
        assert!(
            text.contains(&format!("OAUTHD_KEY_FILE={}", key_file.display())),
            "{text}"
        );

        let (code, why) = home.refused_start();
        assert_eq!(code, Some(2), "{why}");
        assert!(why.contains("was copied to Redis redis://"), "{why}");
        let on_redis = Home::redis_via(server, url.clone());
        std::fs::copy(home.key_file(), on_redis.key_file()).unwrap();
        std::fs::copy(home.config(), on_redis.config()).unwrap();
        let r = on_redis.start();
        let (status, body) = r.consume(&key, &state, NS).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["n"], 1, "{body}");
        let (status, first) = r.get("/v1/connections/peer/alice/token", &key).await;
        assert_eq!(status, 200, "{first}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (status, second) = r.get("/v1/connections/peer/alice/token", &key).await;
        assert_eq!(status, 200, "{second}");
        assert_ne!(first["access_token"], second["access_token"]);
        r.signal_and_wait("TERM");

        // Copied again: refused while the source holds the mark, and into a Redis that
        // holds data once it does not.
        let out = home.cli(&["copy", "--to", &url]);
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(
            said(&out).contains("another copy made of it"),
            "{}",
            said(&out)
        );
        assert!(home.cli(&["copy", "--forget-copy"]).status.success());
        let out = home.cli(&["copy", "--to", &url]);
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(
            said(&out).contains("holds oauthd data already"),
            "{}",
            said(&out)
        );
    }

    /// Notifications not yet delivered go along into Redis, in batches (one script for a
    /// day's backlog held Redis past a command's time), the dead ones are said as left
    /// behind, and the oauthd serving the copy lists them as pending.
    #[tokio::test(flavor = "multi_thread")]
    async fn notifications_not_yet_delivered_are_copied_into_redis() {
        let home = Home::new();
        home.write_config(
            "[providers.gh]\npreset = \"github\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [[notify]]\nname = \"app\"\nurl = \"http://127.0.0.1:9/hook\"\n",
        );
        home.create_key("app", &[]);
        let lines: String = (0..1200)
            .map(|i| {
                format!("{{\"provider\":\"gh\",\"account\":\"a{i}\",\"access_token\":\"t{i}\"}}\n")
            })
            .collect();
        let file = home.dir.path().join("tokens.jsonl");
        std::fs::write(&file, lines).unwrap();
        let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", said(&out));
        let server = RedisServer::start();
        let url = server.url();
        let out = home.cli(&["copy", "--to", &url]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(
                "  notifications not yet delivered: 1200 (the oauthd serving the copy sends them)"
            ),
            "{text}"
        );
        let on_redis = Home::redis_via(server, url);
        std::fs::copy(home.key_file(), on_redis.key_file()).unwrap();
        std::fs::copy(home.config(), on_redis.config()).unwrap();
        let out = on_redis.cli(&["events", "list", "--json", "--limit", "10000"]);
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pending = listed
            .as_array()
            .map_or(0, |l| l.iter().filter(|d| d["status"] == "pending").count());
        assert_eq!(pending, 1200, "{}", said(&out));
    }

    /// Copied under a prefix of its own, the copy's start command named the Redis URL only:
    /// oauthd started so served an empty store under the default prefix, without a word.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_copy_under_another_prefix_says_how_to_serve_it() {
        let home = Home::new();
        home.start().signal_and_wait("TERM");
        home.create_key("app", &[]);
        let server = RedisServer::start();
        let prefix = "o'x\\:";
        let out = home.cli(&["copy", "--to", &server.url(), "--to-prefix", prefix]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        let start = format!("Start oauthd on the copy (--store {} and `", server.url());
        let line = text
            .split_once(&start)
            .and_then(|(_, rest)| rest.split_once("` in the config file,"))
            .map(|(line, _)| line)
            .unwrap_or_else(|| panic!("{text}"));
        // As written, a line of the config file that names the prefix.
        let table: toml::Table = toml::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(table["redis_prefix"].as_str(), Some(prefix), "{line}");
    }

    /// And back: a Redis store copied into a new SQLite file, served from it with the
    /// shared vault key. The active key works there, the revoked one is not copied, the
    /// state's data is there.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_redis_store_copied_into_a_new_sqlite_file_is_served_from_it() {
        let home = Home::redis();
        let key = home.create_key("app", &[]);
        let old = home.create_key("old", &[]);
        assert!(home.cli(&["keys", "revoke", "old"]).status.success());
        let d = home.start();
        let state = d
            .create_state(&key, json!({"namespace": NS, "data": {"n": 2}}))
            .await;
        d.signal_and_wait("TERM");
        // A prefix nested in the store's own, on the same Redis: its keys are the store's.
        let url = home.shared().unwrap().url.clone();
        let out = home.cli(&["copy", "--to", &url, "--to-prefix", "oauthd:new:"]);
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(
            said(&out).contains("names the store it copies from"),
            "{}",
            said(&out)
        );
        let sqlite = Home::new();
        let out = home.cli(&["copy", "--to", sqlite.db().to_str().unwrap()]);
        let text = said(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("  API keys: 1 (not the 1 revoked)"), "{text}");
        assert!(text.contains("  live states: 1"), "{text}");
        assert!(text.contains("OAUTHD_KEY_FILE="), "{text}");
        let (code, why) = home.refused_start();
        assert_eq!(code, Some(2), "{why}");
        assert!(why.contains("was copied to "), "{why}");
        let shared = home.key_file();
        let served = sqlite.start_with_env(&[("OAUTHD_KEY_FILE", shared.to_str().unwrap())]);
        let (status, body) = served.consume(&key, &state, NS).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["n"], 2, "{body}");
        assert_eq!(
            served
                .post("/v1/states", &old, json!({"namespace": NS}))
                .await
                .0,
            401
        );
        served.signal_and_wait("TERM");
    }
}

/// A copy cut short by a signal (Ctrl-C, a stop) says so and what it leaves behind, as one
/// cut short by an error does: it ended without a word, and the part copied looked like a
/// store to `check` and to `serve`. A signal ignored when it began (`nohup`) stays
/// ignored: the copy goes on to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_cut_short_by_a_signal_says_what_it_leaves_behind() {
    let home = Home::new();
    home.create_key("app", &[]);
    home.start().signal_and_wait("TERM"); // makes the vault key file
    rusqlite::Connection::open(home.db())
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
             SELECT randomblob(32), 'oauth:app', NULL, 0, 99999999999999 FROM n",
        )
        .unwrap();
    // A copy into `to`, run through `sh` with `trap` (ignores as `nohup` does), signalled
    // with `signal` once under way (the destination holds the API key; 20,000 states take
    // seconds more): its output.
    let copy_signalled = |to: std::path::PathBuf, trap: &'static str, signal: &'static str| {
        let copy = home.cli_command(&["copy", "--to", to.to_str().unwrap()]);
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{trap} exec \"$0\" \"$@\""))
            .arg(copy.get_program())
            .args(copy.get_args())
            .envs(copy.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("OAUTHD_CONFIG");
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        async move {
            let began = common::eventually(std::time::Duration::from_secs(30), || {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                rusqlite::Connection::open_with_flags(&to, flags)
                    .and_then(|c| {
                        c.query_row("SELECT count(*) FROM api_keys", [], |r| r.get::<_, i64>(0))
                    })
                    .is_ok_and(|n| n == 1)
            })
            .await;
            assert!(began, "the copy did not begin");
            common::signal(child.id(), signal);
            child.wait_with_output().unwrap()
        }
    };
    let (cut, whole) = (Home::new(), Home::new());
    let out = copy_signalled(cut.db(), "", "INT").await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted by SIGINT"), "{text}");
    assert!(
        text.contains("now holds part of the copy: empty it before trying again (delete"),
        "{text}"
    );
    let out = copy_signalled(whole.db(), "trap '' HUP;", "HUP").await;
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("  live states: 20000"), "{text}");
}

/// A copy run with a vault key that does not open the source's tokens (a key made for the
/// new store before the move, `OAUTHD_KEY_FILE` naming it) went ahead, said to serve the
/// copy with that key, which could not, and marked the source as copied, which could then
/// not be served either. Refused now, nothing copied or marked, naming the key file beside
/// the database that opens them.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_run_with_a_key_that_does_not_open_the_sources_tokens_is_refused() {
    let home = Home::new();
    home.write_config(
        "[providers.gh]\nauthorization_url = \"https://gh.example/authorize\"\n\
         token_url = \"https://gh.example/token\"\nclient_id = \"cid\"\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let token = json!({"access_token": "at-1"});
    let (status, body) = d.put("/v1/connections/gh/me", &key, token).await;
    assert_eq!(status, 201, "{body}");
    d.signal_and_wait("TERM");
    let new_key = home.dir.path().join("new.key");
    let made = std::process::Command::new(common::BIN)
        .arg("keygen")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::write(&new_key, &made.stdout).unwrap();
    let moved = Home::new();
    let to = moved.db();
    let text = refused_copy(&home, &to, &new_key);
    assert!(
        text.contains("holds tokens or live states' data sealed with vault key(s)")
            && text.contains(&home.key_file().display().to_string()),
        "{text}"
    );
    // Run with the key that opens them, the copy goes ahead: the source was not marked.
    let out = home.cli(&["copy", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("  connections: 1"), "{}", said(&out));

    // A store with no connection, only a live state whose data is sealed: the same.
    let states_only = Home::new();
    let key = states_only.create_key("app", &[]);
    let d = states_only.start();
    d.create_state(&key, json!({"namespace": NS, "data": {"return_to": "/x"}}))
        .await;
    d.signal_and_wait("TERM");
    let moved = Home::new();
    let text = refused_copy(&states_only, &moved.db(), &new_key);
    assert!(text.contains("sealed with vault key(s)"), "{text}");
}

/// `home`'s store copied to `to` with `OAUTHD_KEY_FILE=key`: refused (exit 2), nothing
/// made at `to`; what it said.
fn refused_copy(home: &Home, to: &std::path::Path, key: &std::path::Path) -> String {
    let out = home
        .cli_command(&["copy", "--to", to.to_str().unwrap()])
        .env("OAUTHD_KEY_FILE", key)
        .output()
        .unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("Nothing was copied."), "{text}");
    assert!(!to.exists(), "a database was made");
    text
}

//! Upgrades with data: a database at every earlier schema version, holding a state, an API
//! key, a connection with sealed tokens, a browser session and (from version 3) a pending
//! device flow, is opened by the current binary, and every row is still usable.

use crate::common;

use common::Home;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The schema files, in order, as the binary applies them.
const SCHEMA: &[&str] = &[
    include_str!("../../sql/0001_init.sql"),
    include_str!("../../sql/0002_broker.sql"),
    include_str!("../../sql/0003_device.sql"),
    include_str!("../../sql/0004_namespace_counts.sql"),
];

const STATE: &str = "migrationstatevalue0123456789abcdefghijklmn";
const API_KEY: &str = "oauthd_migrationkeyvalue0123456789abcdefghijklmn";
const SESSION: &str = "migrationsessionvalue0123456789abcdefghijkl";

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// A new vault key file beside the home's database, as the server would make it.
fn new_key_file(home: &Home) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key_file = home.dir.path().join("oauthd.db.key");
    let out = std::process::Command::new(common::BIN)
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(&key_file, &out.stdout).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    key_file
}

/// A database at `version` (1-based: how many schema files were applied), with rows.
fn old_database(db: &Path, key_file: &Path, version: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    for sql in &SCHEMA[..version] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", version as i64)
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    conn.execute(
        "INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
         VALUES (?1, 'oauth:old', '{\"v\":1}', ?2, ?3)",
        rusqlite::params![sha256(STATE), now, now + 3_600_000],
    )
    .unwrap();
    // A second state nobody touches: the store's count of all states must include it.
    conn.execute(
        "INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
         VALUES (?1, 'oauth:untouched', NULL, ?2, ?3)",
        rusqlite::params![sha256("untouched"), now, now + 3_600_000],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO api_keys (id, name, key_hash, namespaces, created_at)
         VALUES ('11111111-1111-1111-1111-111111111111', 'old-app', ?1, NULL, ?2)",
        rusqlite::params![sha256(API_KEY), now],
    )
    .unwrap();
    if version < 2 {
        return;
    }
    let vault_text = std::fs::read_to_string(key_file).unwrap();
    let vault = oauthd::vault::Vault::from_text(&vault_text).unwrap();
    let access = vault
        .seal(
            "connection:peer/old:access_token",
            b"old-access-token-value",
        )
        .unwrap();
    let refresh = vault
        .seal(
            "connection:peer/old:refresh_token",
            b"old-refresh-token-value",
        )
        .unwrap();
    conn.execute(
        "INSERT INTO connections (provider, account, status, scopes, token_type, access_token,
            refresh_token, access_expires_at, created_at, updated_at, last_refresh_at)
         VALUES ('peer', 'old', 'active', 'openid', 'Bearer', ?1, ?2, ?3, ?4, ?4, ?4)",
        rusqlite::params![access, refresh, now + 3_600_000, now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO admin_secrets (secret_hash, kind, expires_at) VALUES (?1, 'session', ?2)",
        rusqlite::params![sha256(SESSION), now + 3_600_000],
    )
    .unwrap();
    if version < 3 {
        return;
    }
    let code = vault
        .seal(
            "device:22222222-2222-2222-2222-222222222222:device_code",
            b"old-device-code",
        )
        .unwrap();
    conn.execute(
        "INSERT INTO device_flows (id, provider, account, device_code, user_code,
            verification_uri, interval_ms, expires_at, status, next_poll_at, created_at,
            updated_at)
         VALUES ('22222222-2222-2222-2222-222222222222', 'peer', 'tv', ?1, 'ABCD-EFGH',
            'https://peer.example/device', 5000, ?2, 'pending', ?2, ?3, ?3)",
        rusqlite::params![code, now + 600_000, now],
    )
    .unwrap();
}

/// A home whose database is at the last schema version these tests make (older than the
/// binary's), with `old_database`'s rows; and that version.
fn home_at_the_last_old_version() -> (Home, usize) {
    let home = Home::new();
    let key_file = new_key_file(&home);
    let old = SCHEMA.len();
    old_database(&home.db(), &key_file, old);
    (home, old)
}

/// Consumes the state `old_database` made. Data stored in clear (before sealing) is read
/// once the start's look at stored data has found it; until then it is a 503 to retry, and
/// the state stays (under a loaded machine the consume came first and was refused as
/// altered, or answered that 503).
async fn consume_the_old_state(d: &common::Daemon) -> (u16, serde_json::Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = d.consume(API_KEY, STATE, "oauth:old").await;
        let early = status == 503
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the start's look at such data has not finished"));
        if !early || std::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_earlier_schema_version_upgrades_with_its_rows_usable() {
    // Nothing answers at the provider: the device flow's polls fail quietly, and the token
    // API must answer from the stored (fresh) token without asking anyone.
    let provider = "[providers.peer]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
    for version in 1..=SCHEMA.len() {
        let home = Home::new();
        home.write_config(provider);
        let key_file = new_key_file(&home);
        old_database(&home.db(), &key_file, version);

        let d = home.start();
        let (status, body) = consume_the_old_state(&d).await;
        assert_eq!(status, 200, "v{version}: {body}; log:\n{}", home.log_text());
        assert_eq!(body["data"], json!({"v": 1}), "v{version}");
        let (status, body) = d
            .post("/v1/states", API_KEY, json!({"namespace": "oauth:new"}))
            .await;
        assert_eq!(status, 201, "v{version}: {body}");
        if version >= 2 {
            let (status, token) = d.get("/v1/connections/peer/old/token", API_KEY).await;
            assert_eq!(status, 200, "v{version}: {token}");
            assert_eq!(token["access_token"], "old-access-token-value");
            let (status, conn) = d.get("/v1/connections/peer/old", API_KEY).await;
            assert_eq!(status, 200, "v{version}: {conn}");
            assert_eq!(d.ui_get("/ui/api/overview", SESSION).await.status(), 200);
        }
        if version >= 3 {
            let (status, flow) = d
                .get(
                    "/v1/device/peer/22222222-2222-2222-2222-222222222222",
                    API_KEY,
                )
                .await;
            assert_eq!(status, 202, "v{version}: {flow}");
            assert_eq!(flow["user_code"], "ABCD-EFGH");
        }
        d.signal_and_wait("TERM");
        let conn = rusqlite::Connection::open(home.db()).unwrap();
        let upgraded: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert!(upgraded > version as i64, "v{version} was not upgraded");
        // Said in one line (a line for each version made a first start 15 lines long).
        let said = format!("upgraded its schema from version {version} to {upgraded}");
        let log = home.log_text();
        assert_eq!(log.matches(&said).count(), 1, "v{version}: {log}");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(
            common::stored_total(&home.db(), "*states"),
            common::count_rows(&home.db(), "states"),
            "v{version}: the store's count of live states"
        );
    }
}

/// States an earlier version issued (stored under the value's whole SHA-256, before keys
/// began with the creation time) work on every operation after the upgrade: made here,
/// then their keys rewritten to the old form while oauthd is stopped.
#[tokio::test(flavor = "multi_thread")]
async fn states_stored_under_the_old_key_keep_working() {
    let home = Home::new();
    home.write_config("[states.namespaces.\"session\"]\nsliding = true\n");
    let key = home.create_key("app", &[]);
    let d = home.start();
    let mut made = Vec::new();
    for (ns, body) in [
        (
            "session",
            json!({"namespace": "session", "sliding": true, "max_lifetime_seconds": 7200}),
        ),
        ("2fa", json!({"namespace": "2fa", "secret": "123456"})),
        ("reset", json!({"namespace": "reset"})),
        ("oauth", json!({"namespace": "oauth"})),
    ] {
        made.push((ns, d.create_state(&key, body).await));
    }
    drop(d);
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    for (ns, state) in &made {
        let changed = conn
            .execute(
                "UPDATE states SET key_hash = ?1 WHERE namespace = ?2",
                rusqlite::params![sha256(state), ns],
            )
            .unwrap();
        assert_eq!(changed, 1, "{ns}");
    }
    drop(conn);

    let d = home.start();
    let state = |ns: &str| made.iter().find(|(n, _)| *n == ns).unwrap().1.clone();
    for touch in [false, true] {
        let (status, body) = d
            .post(
                "/v1/states/verify",
                &key,
                json!({"state": state("session"), "namespace": "session", "touch": touch}),
            )
            .await;
        assert_eq!(status, 200, "verify touch={touch}: {body}");
    }
    let attempt = |code: &'static str| {
        let (d, key, state) = (&d, &key, state("2fa"));
        async move {
            d.post(
                "/v1/states/attempt",
                key,
                json!({"state": state, "namespace": "2fa", "secret": code}),
            )
            .await
        }
    };
    let (status, body) = attempt("000000").await;
    assert_eq!(
        (status, body["attempts_left"].as_i64()),
        (403, Some(4)),
        "{body}"
    );
    assert_eq!(attempt("123456").await.0, 200);
    let (status, _) = d
        .post(
            "/v1/states/revoke",
            &key,
            json!({"state": state("reset"), "namespace": "reset"}),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(d.consume(&key, &state("oauth"), "oauth").await.0, 200);
    // Each exactly once.
    assert_eq!(d.consume(&key, &state("oauth"), "oauth").await.0, 404);
    assert_eq!(attempt("123456").await.0, 404);
    assert_eq!(d.consume(&key, &state("reset"), "reset").await.0, 404);
}

/// Only `oauthd serve` upgrades the schema: a newer binary's `check`, run before the
/// upgrade, says what its start would do and changes nothing, and its other commands
/// refuse the older database (exit 2, saying why) instead of upgrading it under the oauthd
/// that serves it, which would then refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn only_serve_upgrades_an_older_schema() {
    let (home, old) = home_at_the_last_old_version();
    let version = || -> i64 {
        rusqlite::Connection::open(home.db())
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    };

    let checked = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(
        report.contains(&format!(
            "warn  store: {} has schema version {old}; this oauthd upgrades it to ",
            home.db().display(),
        )) && report.contains("when `oauthd serve` starts"),
        "{report}"
    );
    assert_eq!(version(), old as i64, "check upgraded the schema");
    for command in [
        &["keys", "list"][..],
        &["events", "list"],
        &["connections", "list"],
        // It creates a missing database; an older one it leaves to serve, as the rest do.
        &["keys", "create", "--name", "late", "--create"],
    ] {
        let out = home.cli(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(
            err.contains("upgrades it when `oauthd serve` starts"),
            "{command:?}: {err}"
        );
        assert_eq!(version(), old as i64, "{command:?} upgraded the schema");
    }

    let d = home.start();
    assert!(version() > old as i64);
    let out = home.cli(&["keys", "list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("old-app"));
    drop(d);
}

/// A first start killed while it made the database (a power cut, an OOM kill, a stop that
/// came early): killed between the switch to WAL mode and its tables, it left a file that
/// every later start refused for good (`in WAL mode but holds no tables`, exit 2, which
/// systemd does not restart), and killed between two schema versions, one the terminal
/// commands refused as an older schema. Each of a first start's syncs is made the moment
/// of a SIGKILL in turn (strace injects it); the next start must make the database.
#[test]
fn a_first_start_killed_at_any_of_its_syncs_leaves_what_the_next_start_takes() {
    use std::os::unix::process::ExitStatusExt;
    let mut killed = 0;
    let mut ran_whole = false;
    for n in 1..=100 {
        let home = Home::new();
        let first = std::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=fsync,fdatasync",
                "-e",
            ])
            .arg(format!("inject=fsync,fdatasync:signal=KILL:when={n}"))
            .arg(common::BIN)
            .args(["keys", "create", "--create", "--name", "first", "--db"])
            .arg(home.db())
            .env("RUST_LOG", "warn")
            .output()
            .expect("strace (scripts/test installs it)");
        if first.status.success() {
            // Past the start's last sync: nothing was killed.
            ran_whole = true;
            break;
        }
        let signal = first
            .status
            .signal()
            .or(first.status.code().map(|c| c - 128));
        assert_eq!(signal, Some(9), "sync {n}: {first:?}");
        killed += 1;
        let again = home.cli(&["keys", "create", "--create", "--name", "second"]);
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(again.status.success(), "killed at sync {n}: {err}");
        let listed = home.cli(&["keys", "list"]);
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains("second"),
            "killed at sync {n}: {listed:?}"
        );
        let versions = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
            .unwrap()
            .count();
        assert_eq!(
            user_version(&home.db()),
            versions as i64,
            "killed at sync {n}"
        );
    }
    assert!(
        ran_whole && killed >= 3,
        "{killed} kills, whole run: {ran_whole}"
    );
}

/// The key a first `keys create --create` prints was, on the database it had just made,
/// only in the -wal until the command ended: killed as it printed it, and the file then
/// moved without its -wal, the database opened with its tables and without the key, and
/// said nothing. The key is in the database file before it is printed.
#[test]
fn the_key_a_first_keys_create_prints_is_in_the_database_file() {
    use std::os::unix::process::ExitStatusExt;
    let home = Home::new();
    let printed = home.dir.path().join("printed");
    // Killed at its first write to standard output (strace -P: the file it goes to).
    let first = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-P"])
        .arg(&printed)
        .args(["-e", "trace=write", "-e", "inject=write:signal=KILL:when=1"])
        .arg(common::BIN)
        .args(["keys", "create", "--create", "--name", "first", "--db"])
        .arg(home.db())
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&printed).unwrap())
        .output()
        .expect("strace (scripts/test installs it)");
    let signal = first
        .status
        .signal()
        .or(first.status.code().map(|c| c - 128));
    assert_eq!(signal, Some(9), "{first:?}");
    assert_eq!(
        std::fs::read(&printed).unwrap(),
        b"",
        "printed before the kill"
    );
    // The database file alone, as a move without the -wal leaves it.
    let alone = rusqlite::Connection::open_with_flags(
        format!("file:{}?immutable=1", home.db().display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let keys: i64 = alone
        .query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 1);
}

/// A new oauthd started while an older one still serves the database (a rolling upgrade
/// on one host): it upgraded the schema under the older one, and each then misread what
/// the other wrote (the older one's states' data taken for altered, 503 `vault_error`).
/// Now the upgrade waits while another oauthd has the file open: the start is refused
/// (exit 1, so that systemd tries again), naming it, and changes nothing; once that one
/// is gone, the start upgrades.
#[tokio::test(flavor = "multi_thread")]
async fn serve_does_not_upgrade_a_schema_under_an_older_oauthd_serving_it() {
    let (home, old) = home_at_the_last_old_version();
    // The older oauthd: a process whose program is named oauthd, holding the file open.
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v sqlite3"])
        .output()
        .unwrap();
    let sqlite3 = String::from_utf8(found.stdout).unwrap();
    let program = home.dir.path().join("oauthd-0.0.9");
    std::fs::copy(sqlite3.trim(), &program).unwrap();
    let mut older = common::SqliteShell::open_as(&home.db(), &program);
    assert_eq!(older.query("SELECT count(*) FROM api_keys;"), "1");

    let (code, err) = home.refused_start();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "has schema version {old}, which this oauthd upgrades to"
        )) && err.contains(&format!(
            "another oauthd, of another program file than this one, has it open by pid {} \"oauthd-0.0.9\"",
            older.pid()
        )),
        "{err}"
    );
    assert_eq!(user_version(&home.db()), old as i64, "upgraded under it");

    assert!(older.close().success());
    let d = home.start();
    assert!(user_version(&home.db()) > old as i64);
    let (status, body) = consume_the_old_state(&d).await;
    assert_eq!(status, 200, "{body}");
    drop(d);
}

/// Two instances on one database upgraded together (`systemctl restart` of both after
/// the package's upgrade): each found the other holding the file open and refused to
/// upgrade it, and both exited. Another start of the same binary file is not an older
/// oauthd: here an `sqlite3` shell holds the write lock, so that the first start waits in
/// its upgrade with the file open while the second opens it; then it lets go, and both
/// must serve.
#[test]
fn two_starts_of_the_same_binary_upgrade_an_older_schema_together() {
    let (home, old) = home_at_the_last_old_version();
    // In WAL mode, as an older oauthd left it.
    rusqlite::Connection::open(home.db())
        .unwrap()
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let mut locker = common::SqliteShell::open(&home.db());
    assert_eq!(locker.query("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
    std::thread::scope(|scope| {
        let first = scope.spawn(|| home.start());
        // The first waits for the lock in its upgrade (for up to 5 s) by now.
        std::thread::sleep(std::time::Duration::from_millis(1000));
        let second = scope.spawn(|| home.start());
        std::thread::sleep(std::time::Duration::from_millis(1000));
        assert_eq!(locker.query("ROLLBACK; SELECT 'free';"), "free");
        let (first, second) = (first.join().unwrap(), second.join().unwrap());
        assert!(user_version(&home.db()) > old as i64);
        assert!(
            !home.log_text().contains("another oauthd"),
            "{}",
            home.log_text()
        );
        drop((first, second));
    });
}

/// An SQLite file of another application's given as `--db` (a path mix-up): every command
/// refuses it (exit 2, naming what it holds) and leaves it as it was. It used to get
/// oauthd's tables beside its own and be switched to WAL mode for good, by `check` too.
#[tokio::test(flavor = "multi_thread")]
async fn another_applications_database_is_refused_and_left_as_it_was() {
    // Another application's tables (one named `states`, as Home Assistant's recorder has),
    // with no schema version or one of its own.
    for version in [0, 3] {
        let home = Home::new();
        home.write_config("");
        let conn = rusqlite::Connection::open(home.db()).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE states (state_id INTEGER PRIMARY KEY, state TEXT)",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", version).unwrap();
        drop(conn);
        let before = std::fs::read(home.db()).unwrap();

        let served = home.serve_once();
        let checked = home.cli(&["check"]);
        let report = String::from_utf8_lossy(&checked.stdout).into_owned();
        assert_eq!(checked.status.code(), Some(1), "{checked:?}");
        assert!(report.contains("FAIL  store: "), "{report}");
        for (out, said) in [
            (
                &served,
                String::from_utf8_lossy(&served.stderr).into_owned(),
            ),
            (&checked, report.clone()),
        ] {
            assert!(
                said.contains("is an SQLite database, but not oauthd's")
                    && said.contains("\"users\""),
                "{out:?}"
            );
        }
        assert_eq!(served.status.code(), Some(2), "{served:?}");
        for command in [
            &["keys", "list"][..],
            &["keys", "create", "--name", "app", "--create"],
        ] {
            let out = home.cli(command);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
            assert!(err.contains("but not oauthd's"), "{command:?}: {err}");
        }
        assert_eq!(
            std::fs::read(home.db()).unwrap(),
            before,
            "the file was changed (schema version {version})"
        );
        let mode: String = rusqlite::Connection::open(home.db())
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "switched to WAL");
    }
}

/// `sqlite3 from .dump | sqlite3 to`: a copy as an operator makes one (the dump does not
/// carry SQLite's `user_version`).
fn restore_dump(from: &Path, to: &Path) {
    let dump = std::process::Command::new("sqlite3")
        .arg(from)
        .arg(".dump")
        .output()
        .expect("sqlite3 (Debian package sqlite3, installed by scripts/test)");
    assert!(dump.status.success(), "{dump:?}");
    let conn = rusqlite::Connection::open(to).unwrap();
    conn.execute_batch(&String::from_utf8(dump.stdout).unwrap())
        .unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0, "the dump carried the schema version");
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// A database restored from `sqlite3 .dump` holds oauthd's tables at schema version 0. It
/// used to be refused as another application's; now it is taken for the version whose
/// schema it holds exactly (marked so by the first command that writes, with a warning),
/// upgraded by `serve` if older, and refused, unchanged, when its schema is not one oauthd
/// made.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_restored_from_a_dump_is_taken_for_the_version_it_holds() {
    // Today's schema, with a key and a state holding sealed data.
    let first = Home::new();
    let d = first.start();
    let key = first.create_key("app", &[]);
    let state = d
        .create_state(&key, json!({"namespace": "oauth:app", "data": {"v": 1}}))
        .await;
    d.signal_and_wait("TERM");
    let home = Home::new();
    restore_dump(&first.db(), &home.db());
    std::fs::copy(first.key_file(), home.key_file()).unwrap();
    let listed = home.cli(&["keys", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("app"));
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("did not say so"),
        "{listed:?}"
    );
    let d = home.start();
    let (status, body) = d.consume(&key, &state, "oauth:app").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!({"v": 1}));
    d.signal_and_wait("TERM");
    assert!(user_version(&home.db()) > 0);

    // An older schema: left to `serve` to upgrade, as any older database is.
    let scratch = Home::new();
    let key_file = new_key_file(&scratch);
    old_database(&scratch.db(), &key_file, SCHEMA.len());
    let home = Home::new();
    restore_dump(&scratch.db(), &home.db());
    std::fs::copy(&key_file, home.key_file()).unwrap();
    let out = home.cli(&["keys", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("has schema version {}", SCHEMA.len())),
        "{err}"
    );
    assert_eq!(user_version(&home.db()), 0, "a refused command marked it");
    let d = home.start();
    let (status, body) = consume_the_old_state(&d).await;
    assert_eq!(status, 200, "{body}");
    d.signal_and_wait("TERM");
    assert!(user_version(&home.db()) > SCHEMA.len() as i64);

    // A schema no version makes (an index dropped by hand): refused, left as it was.
    let home = Home::new();
    home.write_config("");
    restore_dump(&first.db(), &home.db());
    rusqlite::Connection::open(home.db())
        .unwrap()
        .execute_batch("DROP INDEX device_flows_expires_at")
        .unwrap();
    let before = std::fs::read(home.db()).unwrap();
    for out in [home.cli(&["keys", "list"]), home.serve_once()] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("holds oauthd's tables but no schema version"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(home.db()).unwrap(), before);
}

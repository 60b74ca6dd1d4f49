//! `oauthd backup` and `oauthd restore`: whole copies of the SQLite database, made while
//! oauthd serves, put back with it stopped.

use crate::common;

use common::Home;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NS: &str = "oauth:app";

/// Runs, as given, the shell commands a message holds in backquotes right after `after`
/// (with this build of oauthd for `oauthd`); they must succeed.
fn run_the_commands_given(message: &str, after: &str) {
    let given = message
        .split(after)
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no commands given: {message}"));
    let run = Command::new("sh")
        .args([
            "-c",
            &given.replace("oauthd restore", &format!("'{}' restore", common::BIN)),
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{given}: {run:?}");
}

fn rows(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// A copy made while oauthd serves holds what was acknowledged before it (mode 600, no
/// instance's presence), and is restored over a database an oauthd killed mid-run left
/// with its `-wal` file: that file used to be played over a copied-in backup at the next
/// start, undoing the restore. A restore while an oauthd serves is refused, changing
/// nothing; the replaced files are kept beside the database. A key revoked since the copy
/// is active again: the restore names it, with the command that revokes it again (it said
/// only that such keys might be, and `keys list` does not tell them). A key made since is
/// gone, and named too (its app's calls turned 401 without a word).
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_made_while_serving_restores_over_what_a_killed_oauthd_left() {
    let home = Home::new();
    let d = home.start();
    let key = home.create_key("app", &[]);
    home.create_key("acme", &[]);
    let before = d
        .create_state(&key, json!({"namespace": NS, "data": {"v": 1}}))
        .await;
    let copy = home.dir.path().join("copy.db");
    // Named by a path that walks out and back: the command to restore it names it plainly.
    std::fs::create_dir(home.dir.path().join("other")).unwrap();
    let winding = home.dir.path().join("other/../copy.db");
    let out = home.cli(&["backup", winding.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    let plain = std::fs::canonicalize(&copy).unwrap();
    assert!(
        said.contains(&format!(" {}` puts it back", plain.display())),
        "{said}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(rows(&copy, "PRAGMA user_version") > 0);
    assert_eq!(
        rows(&copy, "SELECT count(*) FROM meta WHERE name LIKE 'vault:%'"),
        0
    );
    assert_eq!(rows(&copy, "SELECT count(*) FROM states"), 1);
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    assert!(home.cli(&["keys", "revoke", "acme"]).status.success());
    home.create_key("script-2", &[]);

    let refused = home.cli(&["restore", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("a process has"), "{err}");
    assert_eq!(rows(&home.db(), "SELECT count(*) FROM states"), 2);

    d.kill9();
    let wal = home.dir.path().join("oauthd.db-wal");
    assert!(wal.exists(), "no -wal file left to replay");
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains(&format!(
            "the API key(s) acme were revoked since and are active again: revoke them again (`oauthd keys revoke --db {} acme`)",
            home.db().display()
        )),
        "{said}"
    );
    assert!(
        !said.contains(" app "),
        "a key not revoked was named: {said}"
    );
    assert!(
        said.contains("the API key(s) script-2 were made since and are gone: their apps get 401"),
        "{said}"
    );
    let aside: Vec<String> = std::fs::read_dir(home.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("oauthd.db.replaced-"))
        .collect();
    assert!(aside.iter().any(|n| n.ends_with("-wal")), "{aside:?}");

    let d = home.start();
    let (status, body) = d.consume(&key, &before, NS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["v"], 1);
    assert_eq!(d.consume(&key, &after, NS).await.0, 404);
    d.signal_and_wait("TERM");
}

/// A copy leaves the web page's sign-ins out, and a restore puts none back: a session
/// signed out after the copy was made, and a sign-in link used since, were good again
/// after the restore (for the days they had left).
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_brings_back_no_session_signed_out_or_link_used_since_the_copy() {
    let home = Home::new();
    let d = home.start();
    let (session, csrf) = home.ui_session(&d).await;
    let link = home.login_link(&d);
    let copy = home.dir.path().join("copy.db");
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rows(&copy, "SELECT count(*) FROM admin_secrets"), 0);
    // What a copy made before sign-ins were left out held: the session and the link.
    let held: Vec<(Vec<u8>, String, i64)> = rusqlite::Connection::open(home.db())
        .unwrap()
        .prepare("SELECT secret_hash, kind, expires_at FROM admin_secrets")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");

    // Signed out, and the link used, after the copy was made.
    let out = d
        .post_form("/admin/logout", &[("csrf", csrf.as_str())], Some(&session))
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(d.ui_get("/ui/api/overview", &session).await.status(), 401);
    let second = d.sign_in(&link).await;
    d.signal_and_wait("TERM");

    // Such a copy is restored without them.
    let old_copy = home.dir.path().join("old-copy.db");
    std::fs::copy(&copy, &old_copy).unwrap();
    let conn = rusqlite::Connection::open(&old_copy).unwrap();
    for (hash, kind, expires_at) in &held {
        conn.execute(
            "INSERT INTO admin_secrets (secret_hash, kind, expires_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![hash, kind, expires_at],
        )
        .unwrap();
    }
    drop(conn);
    let out = home.cli(&["restore", old_copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("sign-ins are not restored"), "{said}");
    let d = home.start();
    for signed_in in [&session, &second] {
        assert_eq!(d.ui_get("/ui/api/overview", signed_in).await.status(), 401);
    }
    let token = common::query_param(&link, "token");
    let resp = d.post_form("/admin/login", &[("link", &token)], None).await;
    assert_eq!(resp.status(), 401);
    d.signal_and_wait("TERM");
}

/// A copy restored on a new machine (`--create`), where no key file is yet: the restore
/// says so at once (the start then refuses without it), naming the key file kept beside
/// the copy under its name, and does not speak of undoing what changed since the copy,
/// with nothing there before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_on_a_new_machine_says_the_key_file_is_missing() {
    let old = Home::new();
    let copy = old.backed_up();
    // The key file kept with it, under its name: the restore points at it.
    let mut kept = copy.clone().into_os_string();
    kept.push(".key");
    std::fs::write(&kept, "a key line\n").unwrap();
    let new = Home::new();
    let out = new.cli(&["restore", "--create", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    let key_file = new.dir.path().join("oauthd.db.key");
    let kept = std::fs::canonicalize(&kept).unwrap();
    assert!(
        said.contains(&format!(
            "There is no key file at {}: put the one kept with the copy there before oauthd starts (it does not start without it): {}, it seems.",
            key_file.display(),
            kept.display()
        )),
        "{said}"
    );
    assert!(!said.contains("is undone"), "{said}");
    // The oauthd the copy came from may still serve: starting this one would refresh its
    // connections and cost it its grants at a provider that rotates refresh tokens.
    assert!(
        said.contains("Start oauthd on it only if the oauthd it was copied from serves no more"),
        "{said}"
    );
    assert!(said.contains("`oauthd check --db FILE`"), "{said}");
}

/// A restore where only a `-wal` file was left (its database deleted): those files are
/// moved aside and named as what they are, not as a database it replaced, with nothing
/// said undone (there was nothing to undo).
#[test]
fn a_restore_over_a_wal_file_without_its_database_names_it_so() {
    let old = Home::new();
    let copy = old.backed_up();
    let new = Home::new();
    std::fs::write(new.dir.path().join("oauthd.db-wal"), [7u8; 4096]).unwrap();
    let out = new.cli(&["restore", "--create", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains(
            "There was no database, but files of one deleted or moved without them: they are kept as "
        ) && said.contains(".replaced-")
            && !said.contains("-shm"),
        "{said}"
    );
    assert!(!said.contains("The database it replaced"), "{said}");
    assert!(!said.contains("is undone"), "{said}");
    let aside = std::fs::read_dir(new.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("oauthd.db.replaced-") && n.ends_with("-wal"));
    assert!(aside.is_some(), "{said}");
}

/// Under a steady stream of writes the copy still finishes (SQLite's online backup, which
/// the README gave, starts over at each write by another process and never did), whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_finishes_under_steady_writes() {
    let home = Home::new();
    let d = std::sync::Arc::new(home.start());
    let key = home.create_key("app", &[]);
    for _ in 0..200 {
        d.create_state(&key, json!({"namespace": NS})).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (d, key, stop) = (d.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && made < 20_000 {
                    d.create_state(&key, json!({"namespace": NS})).await;
                    made += 1;
                }
                made
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copy = home.dir.path().join("copy.db");
    let out = tokio::task::spawn_blocking({
        let mut cmd = home.cli_command(&["backup", copy.to_str().unwrap()]);
        move || common::run_until_exit(&mut cmd)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut made = 0;
    for w in writers {
        made += w.await.unwrap();
    }
    assert!(out.status.success(), "{out:?}");
    assert!(made > 0, "no writes ran beside the backup");
    assert!(rows(&copy, "SELECT count(*) FROM states") >= 200);
    let check: String = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// What is not a whole copy of oauthd's database is refused (exit 2), and the database is
/// left as it was: an empty file (a copy cut short), another application's database, the
/// database itself; nor is a missing database backed up.
#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_a_copy_of_oauthds_database_is_refused() {
    let home = Home::new();
    let d = home.start();
    home.create_key("app", &[]);
    d.signal_and_wait("TERM");
    let before = std::fs::read(home.db()).unwrap();
    let empty = home.dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let other = home.dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        .unwrap();
    for (from, said) in [
        (&empty, "is empty"),
        (&other, "is not a copy of oauthd's database"),
        (&home.db(), "is the database itself"),
        (&home.dir.path().join("missing.db"), "no such file"),
    ] {
        let out = home.cli(&["restore", from.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{from:?}: {err}");
        assert!(err.contains(said), "{from:?}: {err}");
    }
    assert_eq!(std::fs::read(home.db()).unwrap(), before);
    let nowhere = Home::new();
    let out = nowhere.cli(&["backup", home.dir.path().join("x.db").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no database at"), "{err}");
    // A copy into a directory that is not there names the directory (exit 2: the path
    // given is wrong, as for every command).
    let missing = home.dir.path().join("backups");
    let out = home.cli(&["backup", missing.join("x.db").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "its directory {} does not exist",
            missing.display()
        )),
        "{err}"
    );
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    let out = Command::new(common::BIN)
        .args(["restore", "--create", "--db"])
        .arg(missing.join("oauthd.db"))
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // A copy damaged past its first pages (its header reads, its tables do not) is named
    // as damaged, exit 2, with nothing made; it was "…/.oauthd.db.restoring-PID-…/oauthd.db:
    // copying: database disk image is malformed", exit 1, naming a directory already gone.
    // So is a damaged database given to `backup`.
    let damaged = home.dir.path().join("damaged.db");
    let mut bytes = std::fs::read(&copy).unwrap();
    assert!(bytes.len() > 4 * 4096, "{} bytes", bytes.len());
    bytes[3 * 4096..4 * 4096].fill(0xde);
    std::fs::write(&damaged, &bytes).unwrap();
    let elsewhere = home.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // `oauthd ARGS`, refused with exit 2 and nothing made: what it said.
    let refused = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(common::BIN)
            .args(args)
            .env_remove("OAUTHD_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        err
    };
    let err = refused(&[
        "restore".as_ref(),
        "--create".as_ref(),
        "--db".as_ref(),
        elsewhere.join("oauthd.db").as_os_str(),
        damaged.as_os_str(),
    ]);
    assert!(
        err.contains(&format!(
            "{} is damaged (database disk image is malformed)",
            damaged.display()
        )) && err.contains("Restore another copy")
            && !err.contains("restoring-"),
        "{err}"
    );
    let err = refused(&[
        "backup".as_ref(),
        "--db".as_ref(),
        damaged.as_os_str(),
        elsewhere.join("copy.db").as_os_str(),
    ]);
    assert!(
        err.contains(&format!("{} is damaged", damaged.display()))
            && err.contains("Restore the last copy"),
        "{err}"
    );
}

/// An existing but empty database file (a copy of a running oauthd's database made
/// without its `-wal` file, a backup cut short) used to pass as a new database: `check`
/// said all was well and made oauthd's schema in it, listings showed nothing. Now every
/// command but `serve` and `keys create --create` refuses it (exit 2) and `check` warns,
/// all leaving it as it is; `serve` warns that it starts on it as on a new database.
/// And `check` fails a database path whose directory is not there, where `serve` stops.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_database_file_is_not_taken_for_oauthds_data() {
    let home = Home::new();
    std::fs::write(home.db(), b"").unwrap();
    for args in [&["keys", "list"][..], &["events", "list"], &["rekey"]] {
        let out = home.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("is empty (no tables)"), "{args:?}: {err}");
    }
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("warn  store: database"), "{report}");
    assert!(report.contains("is empty (no tables)"), "{report}");
    assert_eq!(std::fs::read(home.db()).unwrap(), b"", "made the schema");
    let d = home.start();
    assert!(
        home.log_text().contains("was there but empty"),
        "{}",
        home.log_text()
    );
    d.signal_and_wait("TERM");

    let nowhere = Home::new();
    let out = Command::new(common::BIN)
        .args(["check", "--db"])
        .arg(nowhere.dir.path().join("missing-dir/oauthd.db"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("no directory for one"), "{report}");
}

/// A database moved (or copied) after oauthd was killed, without its `-wal` file, lacks
/// what is in the `-wal` file left behind (all of oauthd's data, for one never
/// checkpointed). oauthd started on it as on a new database, with a warning, and every
/// app's key was refused. Now the start is refused (exit 2) naming the `-wal` file, with
/// nothing changed; moved back beside it, everything is there.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_moved_without_its_wal_file_is_refused_not_started_afresh() {
    let home = Home::new();
    home.write_config("");
    let d = home.start();
    let key = home.create_key("app", &[]);
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.kill9();
    let moved = Home::new();
    moved.write_config("");
    for name in ["oauthd.db", "oauthd.db.key"] {
        std::fs::rename(home.dir.path().join(name), moved.dir.path().join(name)).unwrap();
    }
    let before = std::fs::read(moved.db()).unwrap();
    let out = moved.serve_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // The start's mark went into the database file (with the schema): it says so.
    assert!(
        err.contains("was copied or moved without ")
            && err.contains("oauthd.db-wal while oauthd served it"),
        "{err}"
    );
    assert_eq!(std::fs::read(moved.db()).unwrap(), before, "changed it");
    assert!(
        !moved.dir.path().join("oauthd.db-wal").exists(),
        "made a -wal file of its own"
    );
    for name in ["oauthd.db", "oauthd.db.key"] {
        std::fs::rename(moved.dir.path().join(name), home.dir.path().join(name)).unwrap();
    }
    let d = home.start();
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.signal_and_wait("TERM");

    // Its -wal file lost, the older copy is taken as it is by the commands the refusal
    // gives, run as given (they named no copy to restore, which `restore` requires).
    let served = Home::new();
    served.write_config("");
    let d = served.start();
    served.create_key("app", &[]);
    d.kill9();
    let lost = Home::new();
    lost.write_config("");
    for name in ["oauthd.db", "oauthd.db.key"] {
        std::fs::copy(served.dir.path().join(name), lost.dir.path().join(name)).unwrap();
    }
    let out = lost.serve_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    run_the_commands_given(&err, "move it aside and restore it, `");
    let d = lost.start();
    assert_eq!(d.get("/healthz", "").await.0, 200);
    d.signal_and_wait("TERM");

    // One never checkpointed (all of it in the -wal) holds no tables: refused too.
    let bare = Home::new();
    bare.write_config("");
    let made = rusqlite::Connection::open(bare.db()).unwrap();
    made.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    drop(made);
    assert!(!bare.dir.path().join("oauthd.db-wal").exists());
    let out = bare.serve_once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is in WAL mode but holds no tables, and no"),
        "{err}"
    );
}

/// The files a backup kept aside in place of `path` (`<path>.replaced-…`).
fn kept_aside(path: &Path) -> Vec<PathBuf> {
    let name = format!("{}.replaced-", path.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.path())
        .collect()
}

/// Copies the database file alone (and its key file) from `from` into `to`.
fn copy_without_wal(from: &Home, to: &Home) {
    std::fs::copy(from.db(), to.db()).unwrap();
    let key = from.dir.path().join("oauthd.db.key");
    if key.exists() {
        std::fs::copy(&key, to.dir.path().join("oauthd.db.key")).unwrap();
    }
}

/// The names `keys list` gives, or its exit code and stderr.
fn key_names(home: &Home) -> Result<String, (Option<i32>, String)> {
    let out = home.cli(&["keys", "list"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// The database file copied without its `-wal` while oauthd serves holds what was there
/// at the last checkpoint: it opened as a whole database without a word (a state made
/// since was not in it, nor anything else oauthd wrote since), as did one copied after
/// oauthd was killed. Now it is refused (exit 2, nothing changed) naming the -wal file and `oauthd
/// backup`, and `restore` takes it as it is when asked (once its original is served no
/// more). Copied after a clean stop, or
/// after the killed oauthd's database was opened again in its place, it is whole and
/// opens as ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_copied_without_its_wal_while_served_is_refused_not_taken_as_whole() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    // Served before: the file holds what there was at that stop.
    home.start().signal_and_wait("TERM");
    let d = home.start();
    d.create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    let copy = Home::new();
    copy_without_wal(&home, &copy);
    let before = std::fs::read(copy.db()).unwrap();
    let (code, err) = key_names(&copy).expect_err("a copy without the -wal opened");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("was copied or moved without ")
            && err.contains("oauthd.db-wal while oauthd served it (pid ")
            && err.contains("oauthd backup"),
        "{err}"
    );
    assert_eq!(std::fs::read(copy.db()).unwrap(), before, "changed it");
    assert!(!copy.dir.path().join("oauthd.db-wal").exists());
    let (code, err) = copy.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("was copied or moved without "), "{err}");

    // Taken as it is, when asked, once its original is served no more (served beside it,
    // it would refresh the same connections): what it held then, and no mark.
    let aside = copy.dir.path().join("older.db");
    std::fs::rename(copy.db(), &aside).unwrap();
    let out = copy.cli(&["restore", "--create", aside.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("served now by oauthd (pid {})", d.pid()))
            && err.contains("taken while that was served")
            && !err.contains("with its -wal"),
        "{err}"
    );
    d.signal_and_wait("TERM");
    let out = copy.cli(&["restore", "--create", aside.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    key_names(&copy).expect("the restored copy opens");
    assert_eq!(common::count_rows(&copy.db(), "states"), 0);

    // After a clean stop the file is whole.
    let after_stop = Home::new();
    copy_without_wal(&home, &after_stop);
    key_names(&after_stop).expect("a copy after a clean stop opens");
    assert_eq!(common::count_rows(&after_stop.db(), "states"), 1);

    // Killed: the file alone lacks what was written since the start, and says so. Started
    // again in its place (its -wal beside it), the killed oauthd's mark goes, and after a
    // clean stop the file is whole.
    let d = home.start();
    home.create_key("made-before-the-kill", &[]);
    d.kill9();
    let after_kill = Home::new();
    copy_without_wal(&home, &after_kill);
    let (code, err) = key_names(&after_kill).expect_err("a copy after a kill opened");
    assert_eq!(code, Some(2), "{err}");
    let names = key_names(&home).expect("opens in its place");
    assert!(names.contains("made-before-the-kill"), "{names}");
    home.start().signal_and_wait("TERM");
    let restarted = Home::new();
    copy_without_wal(&home, &restarted);
    let names = key_names(&restarted).expect("no mark of the killed oauthd is left");
    assert!(names.contains("made-before-the-kill"), "{names}");
}

/// Copied whole, with its `-wal` and `-shm` files (`cp -a`, rsync, a file-level backup
/// tool), while oauthd serves it: the copy opened without a word (a command on it even
/// took the original's serving mark out of it), and served beside the original it
/// refreshed the same connections with the same refresh tokens, which ends them at a
/// provider that rotates them. Now a command and a start on the copy are refused (exit 2,
/// nothing changed) naming the original, its oauthd and `oauthd backup`; once that oauthd
/// stops, the copy opens with everything in it.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_copied_whole_while_served_is_refused_until_its_original_stops() {
    let home = Home::new();
    home.write_config("");
    let d = home.start();
    home.create_key("made-while-serving", &[]);
    let copy = Home::new();
    copy.write_config("");
    for name in [
        "oauthd.db",
        "oauthd.db-wal",
        "oauthd.db-shm",
        "oauthd.db.key",
    ] {
        std::fs::copy(home.dir.path().join(name), copy.dir.path().join(name)).unwrap();
    }
    let before = std::fs::read(copy.db()).unwrap();
    let (code, err) = key_names(&copy).expect_err("a copy of a served database opened");
    assert_eq!(code, Some(2), "{err}");
    let original = std::fs::canonicalize(home.db()).unwrap();
    assert!(
        err.contains(&format!(
            "is a copy of {}, which is served now by oauthd (pid {})",
            original.display(),
            d.pid()
        )) && err.contains("oauthd backup"),
        "{err}"
    );
    let (code, err) = copy.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a copy of "), "{err}");
    // A backup of it too: it merged the copy's -wal into it (the last connection to close
    // it does), and the copy was refused after as one copied without its -wal.
    let dest = copy.dir.path().join("copy-backup.db");
    let out = copy.cli(&["backup", dest.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a copy of "), "{err}");
    assert!(!dest.exists());
    assert!(copy.dir.path().join("oauthd.db-wal").exists());
    assert_eq!(std::fs::read(copy.db()).unwrap(), before, "changed it");
    // The original is not a copy of itself.
    let names = key_names(&home).expect("the original opens");
    assert!(names.contains("made-while-serving"), "{names}");
    // Served again by another process (a restart): still refused, naming who holds it.
    d.signal_and_wait("TERM");
    let d = home.start();
    let (code, err) = key_names(&copy).expect_err("a copy of a database served again opened");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "which is served now by pid {} \"oauthd\"",
            d.pid()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(copy.db()).unwrap(), before, "changed it");
    d.signal_and_wait("TERM");
    // Other programs reading the original (a backup tool, here `tail`, and a script whose
    // name starts with oauthd, as a process names itself) serve nothing.
    let script = home.dir.path().join("oauthd-reader");
    std::fs::write(
        &script,
        "#!/usr/bin/python3\nimport sys, time\nf = open(sys.argv[1], 'rb')\ntime.sleep(30)\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut tail = Command::new("tail");
    tail.arg("-f");
    let mut readers = [tail, Command::new(&script)].map(|mut cmd| {
        cmd.arg(home.db())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let names = key_names(&copy);
    for reader in &mut readers {
        common::signal(reader.id(), "KILL");
        let _ = reader.wait();
    }
    let names = names.expect("the copy opens once the original stopped");
    assert!(names.contains("made-while-serving"), "{names}");
}

/// `restore` took a database served now, or a copy of one taken whole (`cp -a`), and left
/// out the marks that tell such a copy: the database it made started beside the original,
/// refreshing the same connections. Both are refused now (exit 2, nothing made), naming the
/// original and its oauthd; once that oauthd stops, the copy restores.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_served_now_or_copied_whole_from_one_is_not_restored() {
    let home = Home::new();
    home.write_config("");
    let d = home.start();
    home.create_key("made-while-serving", &[]);
    let copy = Home::new();
    for name in ["oauthd.db", "oauthd.db-wal", "oauthd.db-shm"] {
        std::fs::copy(home.dir.path().join(name), copy.dir.path().join(name)).unwrap();
    }
    let original = std::fs::canonicalize(home.db()).unwrap();
    let served_by = format!("served now by oauthd (pid {})", d.pid());
    let new = Home::new();
    for (from, said) in [
        (
            copy.db(),
            format!(
                "is a copy of {}, taken with its -wal file while that was served",
                original.display()
            ),
        ),
        (home.db(), format!("{} is {served_by}", home.db().display())),
    ] {
        let out = new.cli(&["restore", "--create", from.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&said), "{err}");
        assert!(err.contains(&served_by), "{err}");
        assert!(err.contains("`oauthd backup`"), "{err}");
        assert!(!new.db().exists(), "{err}");
    }
    d.signal_and_wait("TERM");
    let out = new.cli(&["restore", "--create", copy.db().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(
        home.dir.path().join("oauthd.db.key"),
        new.dir.path().join("oauthd.db.key"),
    )
    .unwrap();
    let names = key_names(&new).expect("the restored copy opens");
    assert!(names.contains("made-while-serving"), "{names}");
}

/// A clean stop left the database file whole only when oauthd's connections were the last
/// to close it (SQLite merges the -wal then): with another program holding the file open,
/// an `sqlite3` shell or a monitoring script, the file alone still lacked what oauthd wrote
/// and held its serving mark, so a copy of it made after the stop was refused. The stop now
/// merges the -wal itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_leaves_the_file_whole_while_another_program_has_it_open() {
    let home = Home::new();
    let d = home.start();
    let mut shell = common::SqliteShell::open(&home.db());
    assert_eq!(shell.query("SELECT count(*) > 0 FROM meta;"), "1");
    home.create_key("made-before-the-stop", &[]);
    d.signal_and_wait("TERM");
    let copy = Home::new();
    copy_without_wal(&home, &copy);
    let names = key_names(&copy).expect("a copy after a clean stop opens");
    assert!(names.contains("made-before-the-stop"), "{names}");
    assert!(shell.close().success());
}

/// The stop's merge of the -wal waited (SQLite's FULL checkpoint, up to the 5 s busy
/// timeout) for a reader holding an older snapshot, and held off every writer meanwhile: a
/// second oauthd on the file answered `503` for writes. It waits on nobody now.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_holds_off_no_other_writer_while_a_reader_holds_the_file() {
    let home = Home::new();
    let d = home.start();
    let mut reader = common::SqliteShell::open(&home.db());
    assert_eq!(reader.query("BEGIN; SELECT count(*) > 0 FROM meta;"), "1");
    home.create_key("after-the-read", &[]);
    let writer = rusqlite::Connection::open(home.db()).unwrap();
    // Room for a commit's sync on a loaded disk; the hold-off this was written for lasted
    // the stop's busy timeout, 5 s.
    writer.busy_timeout(Duration::from_secs(1)).unwrap();
    common::signal(d.pid(), "TERM");
    let (mut tried, mut refused) = (0, Vec::new());
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        tried += 1;
        let probe = format!("probe-{tried}");
        if let Err(e) = writer.execute(
            "INSERT INTO meta (name, value) VALUES (?1, 'x')",
            [probe.as_str()],
        ) {
            refused.push(e.to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        refused.is_empty(),
        "{} of {tried}: {refused:?}",
        refused.len()
    );
    writer
        .execute("DELETE FROM meta WHERE name LIKE 'probe-%'", [])
        .unwrap();
    assert!(d.wait_exit().success());
    assert!(reader.close().success());
}

/// A restore puts back the refresh tokens of the copy's time. A provider that rotates them
/// (the test provider does, as SmartThings and Microsoft do) has replaced those refreshed
/// since and refuses the copy's: `restore` now names those connections, where it listed
/// only keys and states as undone. A token only sealed again since (`rekey`) is not named,
/// also when a prune took the copy's key out of the key file (it was, as a refresh).
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_names_the_connections_whose_refresh_token_changed_since_the_copy() {
    let peer = common::peer::Peer::start(2);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    let (status, page) = common::peer::connect(&d, &peer, &key, "alice").await;
    assert_eq!(status, 200, "{page}");
    let imported = json!({"access_token": "a", "refresh_token": "r", "expires_in": 3600});
    assert_eq!(
        d.put("/v1/connections/peer/bob", &key, imported).await.0,
        201
    );
    let copy = home.dir.path().join("copy.db");
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // A rekey seals every token again: bob's refresh token is stored otherwise, but is the
    // same token, and is not named.
    let out = home.cli(&["rekey"]);
    assert!(out.status.success(), "{out:?}");
    // alice's 2 s token is refreshed: the provider rotates its refresh token.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{body}");
    d.signal_and_wait("TERM");
    // A prune then takes the key the copy's tokens were sealed with out of the key file:
    // they are opened with the copy the prune kept, not taken for new tokens (bob was).
    let out = home.cli(&["rekey", "--prune"]);
    assert!(out.status.success(), "{out:?}");
    let key_file = home.dir.path().join("oauthd.db.key");
    let pruned = std::fs::read(&key_file).unwrap();

    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("1 connection(s) got a new refresh token since the copy was made (a refresh or a reconnect)")
            && said.contains("and have the copy's again: peer/alice."),
        "{said}"
    );
    assert!(
        said.contains("`oauthd rekey --prune` kept the key file"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        pruned,
        "the key file changed"
    );
    // As the restore says: the kept copy's keys go back (it holds the file's too).
    let kept = std::fs::read_dir(home.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("oauthd.db.key.before-prune-"))
        .expect("the copy the prune kept");
    std::fs::copy(kept, &key_file).unwrap();
    // Read without leaving files beside the restored copy (root's would keep the
    // service's user out).
    for suffix in ["-wal", "-shm"] {
        let beside = home.dir.path().join(format!("oauthd.db{suffix}"));
        assert!(!beside.exists(), "{beside:?}");
    }
    // As said: the copy's refresh token is refused.
    let d = home.start();
    let (status, body) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "needs_reauth", "{body}");
    d.signal_and_wait("TERM");
}

/// What a restore must not lose or leave behind: a `-wal` file beside a database file that
/// was deleted first (it used to stay, and the next start played it over the copy); a
/// database restored twice within a second (the first one's files used to be overwritten
/// by the second's); a missing database is made only with `--create`, owned as its
/// directory is (root restoring a service's database on a new machine). Nor does a backup
/// overwrite what is not a copy of oauthd's database: the key file, the `-wal` file.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeps_what_it_replaces_and_a_backup_overwrites_only_copies() {
    let home = Home::new();
    let d = home.start();
    let key = home.create_key("app", &[]);
    let kept = d.create_state(&key, json!({"namespace": NS})).await;
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    let first = home.dir.path().join("first.db");
    std::fs::copy(&copy, &first).unwrap();
    let later = d.create_state(&key, json!({"namespace": NS})).await;

    // Not over the key file, nor the -wal file, nor a directory (exit 2, as restore's
    // refusals).
    let key_text = std::fs::read(home.key_file()).unwrap();
    let wal = home.dir.path().join("oauthd.db-wal");
    for target in [home.key_file(), wal.clone(), home.dir.path().to_owned()] {
        let out = home.cli(&["backup", target.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target:?}: {err}");
    }
    assert_eq!(std::fs::read(home.key_file()).unwrap(), key_text);
    // A copy is replaced by a newer one.
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    assert_eq!(rows(&copy, "SELECT count(*) FROM states"), 2);
    assert_eq!(rows(&first, "SELECT count(*) FROM states"), 1);

    d.kill9();
    assert!(wal.exists());
    std::fs::remove_file(home.db()).unwrap();
    let out = home.cli(&["restore", first.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--create"), "{err}");
    let out = home.cli(&["restore", "--create", first.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !wal.exists(),
        "the -wal file stayed beside the restored copy"
    );
    // Twice in the same second: each keeps what it replaced.
    assert!(home
        .cli(&["restore", copy.to_str().unwrap()])
        .status
        .success());
    let stamps: std::collections::BTreeSet<String> = std::fs::read_dir(home.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            let stamp = n.strip_prefix("oauthd.db.replaced-")?;
            Some(
                stamp
                    .trim_end_matches("-wal")
                    .trim_end_matches("-shm")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(stamps.len(), 2, "{stamps:?}");
    // Reading the database it replaced (which had no -wal) to compare made no -wal or
    // -shm beside it.
    let aside = kept_aside(&home.db());
    let beside: Vec<&PathBuf> = aside
        .iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            ["-wal", "-shm"].iter().any(|end| {
                name.strip_suffix(end)
                    .is_some_and(|db| aside.iter().any(|k| k.to_string_lossy() == db))
            })
        })
        .collect();
    assert!(beside.is_empty(), "{aside:?}");
    let d = home.start();
    assert_eq!(d.consume(&key, &later, NS).await.0, 200);
    assert_eq!(d.consume(&key, &kept, NS).await.0, 200);
    d.signal_and_wait("TERM");

    // On a new machine, as root, for a service that runs as its own user.
    let dir = home.dir.path().join("service");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let db = dir.join("oauthd.db");
    let out = Command::new(common::BIN)
        .args(["restore", "--create", "--db"])
        .arg(&db)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), 65534);
}

/// A backup replaced any file holding oauthd's database, also the database itself: with
/// the two paths the wrong way round (`backup --db old-copy.db oauthd.db`) the stopped
/// database was replaced by the old copy, exit 0, and what was written since was gone. A
/// copy (it carries a backup's mark) is never put over a database without the mark now;
/// a copy of a database replaces an earlier copy, marked or made before copies were. And
/// a copy a command had opened since (`check` on it puts it in WAL mode) got -wal and -shm
/// files from the look at it, which stayed beside the new copy, so the night after the
/// backup refused the name as a database in use.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_replaces_an_earlier_copy_never_the_database() {
    let home = Home::new();
    let d = home.start();
    home.create_key("before-the-copy", &[]);
    let copy = home.dir.path().join("nightly.db");
    let backup = |from: &Path, to: &Path| {
        Command::new(common::BIN)
            .arg("backup")
            .arg("--db")
            .arg(from)
            .arg(to)
            .output()
            .unwrap()
    };
    assert!(backup(&home.db(), &copy).status.success());
    home.create_key("after-the-copy", &[]);
    d.signal_and_wait("TERM");

    let before = home.db_bytes();
    let out = backup(&copy, &home.db());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is oauthd's database, not a copy `oauthd backup` made"),
        "{err}"
    );
    assert_eq!(home.db_bytes(), before, "the database was replaced");
    let names = key_names(&home).expect("the database opens");
    assert!(names.contains("after-the-copy"), "{names}");

    // The copy looked at in WAL mode, then replaced night after night.
    let wal_mode = Command::new("sqlite3")
        .arg(&copy)
        .arg("PRAGMA journal_mode = WAL;")
        .output()
        .unwrap();
    assert!(wal_mode.status.success(), "{wal_mode:?}");
    for night in 0..2 {
        let out = backup(&home.db(), &copy);
        assert!(out.status.success(), "night {night}: {out:?}");
        for suffix in ["-wal", "-shm"] {
            let beside = home.dir.path().join(format!("nightly.db{suffix}"));
            assert!(!beside.exists(), "night {night}: {beside:?} was left");
        }
    }
    // A copy made before copies were marked is replaced by a copy of the database, and
    // kept aside: it cannot be told from the database itself.
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute("DELETE FROM meta WHERE name = 'backup_of'", [])
        .unwrap();
    let out = backup(&home.db(), &copy);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        rows(&copy, "SELECT count(*) FROM meta WHERE name = 'backup_of'"),
        1
    );
    assert_eq!(kept_aside(&copy).len(), 1);

    // A copy made with `cp`, put over the database by a slip: the database is kept.
    let cp = home.dir.path().join("cp.db");
    std::fs::copy(home.db(), &cp).unwrap();
    home.create_key("after-the-cp", &[]);
    let out = backup(&cp, &home.db());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let kept = kept_aside(&home.db());
    assert_eq!(kept.len(), 1, "{err}");
    assert!(
        err.contains(&format!("kept as {}", kept[0].display())),
        "{err}"
    );
    assert_eq!(
        rows(
            &kept[0],
            "SELECT count(*) FROM api_keys WHERE name = 'after-the-cp'"
        ),
        1
    );
    assert_eq!(
        rows(
            &copy,
            "SELECT count(*) FROM api_keys WHERE name = 'after-the-copy'"
        ),
        1
    );
}

/// A backup written to a shared directory (`/tmp`, sticky and open to all) follows no link
/// another local user planted under the copy's name, and never replaces a database in use:
/// it resolved the link and renamed the copy over what it pointed to, here another
/// oauthd's live database, whose keys and states were gone. A link of this user's still
/// names where the copy goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_follows_no_link_another_user_planted_nor_replaces_a_database_in_use() {
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    let home = Home::new();
    home.create_key("app", &[]);
    let victim = Home::new();
    let d = victim.start();
    let key = victim.create_key("victim", &[]);
    let state = d.create_state(&key, json!({"namespace": NS})).await;
    let shared = home.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = shared.join("oauthd-backup.db");
    symlink(victim.db(), &planted).unwrap();
    lchown(&planted, Some(65534), None).unwrap();
    let before = std::fs::read(victim.db()).unwrap();

    let out = home.cli(&["backup", planted.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a link owned by uid 65534"), "{err}");
    // Straight at it, or through a link of this user's: in use, so not replaced.
    let mine = shared.join("mine.db");
    symlink(victim.db(), &mine).unwrap();
    for target in [victim.db(), mine] {
        let out = home.cli(&["backup", target.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target:?}: {err}");
        assert!(
            err.contains("is open by pid") && err.contains("a file in use is never replaced"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(victim.db()).unwrap(), before);
    assert_eq!(d.consume(&key, &state, NS).await.0, 200);
    d.signal_and_wait("TERM");

    // A link of this user's to a file of its own names where the copy goes.
    let own = shared.join("own.db");
    let target = home.dir.path().join("kept.db");
    std::fs::write(&target, b"").unwrap();
    symlink(&target, &own).unwrap();
    let out = home.cli(&["backup", own.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(&own)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(rows(&target, "SELECT count(*) FROM api_keys"), 1);
    // A copy another process has open (no -wal file: a reader in rollback mode, here a
    // process that only holds it) is not replaced either; the refusal names the process.
    let mut holder = Command::new("sleep")
        .arg("30")
        .stdin(std::fs::File::open(&target).unwrap())
        .spawn()
        .unwrap();
    let out = home.cli(&["backup", target.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("is open by pid {} \"sleep\"", holder.id())),
        "{err}"
    );
}

/// `restore --db` through a link: followed only when every link on the way may be
/// trusted, as for `backup`; and what it leads to is replaced only when it is oauthd's
/// database (or an empty file), never a program or any other file a link another user
/// made could point at (a service's account, compromised, planting one in its own
/// directory for root's restore to follow).
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_follows_no_link_another_user_planted_nor_replaces_a_program() {
    use std::os::unix::fs::{chown, lchown, symlink, PermissionsExt};
    let home = Home::new();
    let copy = home.backed_up();
    let victim = home.dir.path().join("important-program");
    std::fs::copy("/bin/true", &victim).unwrap();
    let program = std::fs::read(&victim).unwrap();
    let restore = |db: &Path| {
        Command::new(common::BIN)
            .args(["restore", "--db"])
            .arg(db)
            .arg(&copy)
            .env("OAUTHD_KEY_FILE", home.key_file())
            .output()
            .expect("oauthd restore")
    };
    // A link to the program, made by uid 65534 in a directory of `mode` and `owner`; the
    // restore through it is refused, saying `said`.
    let refused_through = |name: &str, mode: u32, owner: Option<u32>, said: &str| {
        let dir = home.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(&dir, owner, owner).unwrap();
        let link = dir.join("oauthd.db");
        symlink(&victim, &link).unwrap();
        lchown(&link, Some(65534), None).unwrap();
        let out = restore(&link);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(said), "{err}");
    };
    refused_through("shared", 0o1777, None, "a link owned by uid 65534");
    // In the service's own directory, its link is followed; the program is not replaced.
    refused_through(
        "service",
        0o755,
        Some(65534),
        "does not start as a database",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), program);
    let aside = std::fs::read_dir(home.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".replaced-"))
        .collect::<Vec<_>>();
    assert!(aside.is_empty(), "{aside:?}");
}

/// `oauthd check --db COPY` with the key file kept with it, as the README advises to try a
/// copy out (it puts the copy in WAL mode); it must pass.
fn check_a_copy(home: &Home, copy: &Path) {
    let out = Command::new(common::BIN)
        .args(["check", "--db"])
        .arg(copy)
        .env("OAUTHD_KEY_FILE", home.key_file())
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A copy checked with `oauthd check --db` (as the README advises, which puts it in WAL
/// mode) and then restored from: the restore left `-wal` and `-shm` files beside it, and
/// every later backup to that name was refused as a database in use.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_checked_and_restored_from_takes_the_next_backup() {
    let home = Home::new();
    // Served once: its key file made.
    home.start().signal_and_wait("TERM");
    let copy = home.backed_up();
    check_a_copy(&home, &copy);
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for suffix in ["-wal", "-shm"] {
        let left = PathBuf::from(format!("{}{suffix}", copy.display()));
        assert!(!left.exists(), "{} left beside the copy", left.display());
    }
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let key = home.create_key("later", &[]);
    let d = home.start();
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.signal_and_wait("TERM");
}

/// `backup` left `-wal` and `-shm` files beside the database it copied (it read the file
/// read-only, which cannot remove them at its close): beside a stopped database, and
/// beside a checked copy (in WAL mode) that a slip named as the database to copy
/// (`backup --db nightly.db oauthd.db`, refused). Every later backup to either name was
/// refused as a database in use: a nightly backup stopped for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_leaves_no_files_beside_what_it_copied() {
    let home = Home::new();
    // Served once: its key file made; stopped.
    home.start().signal_and_wait("TERM");
    let copy = home.backed_up();
    let left = |db: &Path| -> Vec<PathBuf> {
        ["-wal", "-shm"]
            .iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
            .filter(|p| p.exists())
            .collect()
    };
    assert_eq!(
        left(&home.db()),
        Vec::<PathBuf>::new(),
        "beside the database"
    );
    check_a_copy(&home, &copy);
    // The two paths the wrong way round: refused, as the copy is one.
    let out = Command::new(common::BIN)
        .args(["backup", "--db"])
        .arg(&copy)
        .arg(home.db())
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(left(&copy), Vec::<PathBuf>::new(), "beside the copy");
    // The next night's backup.
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // An empty -wal and a -shm left beside a database by a process that ended before its
    // last connection closed (nothing has it open): no database in use.
    for target in [copy.clone(), home.db()] {
        std::fs::write(PathBuf::from(format!("{}-wal", target.display())), b"").unwrap();
        std::fs::write(
            PathBuf::from(format!("{}-shm", target.display())),
            [0u8; 32768],
        )
        .unwrap();
    }
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(left(&copy), Vec::<PathBuf>::new(), "beside the copy");
    let cp = home.dir.path().join("cp.db");
    std::fs::copy(home.db(), &cp).unwrap();
    let out = Command::new(common::BIN)
        .args(["backup", "--db"])
        .arg(&cp)
        .arg(home.db())
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        left(&home.db()),
        Vec::<PathBuf>::new(),
        "beside the database"
    );
}

/// A restore looks for every process that has the database open, not only for one that
/// holds a lock on it: in rollback mode (a copy restored by an older oauthd stays so until
/// it is served, or an operator's `PRAGMA journal_mode`), a connection that is not reading
/// holds none (here an `sqlite3` shell that ran one query). Replaced under it, the shell's
/// next write would go to the file moved aside. The refusal names the process.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_is_refused_while_any_process_has_the_database_open() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    assert!(home
        .cli(&["restore", copy.to_str().unwrap()])
        .status
        .success());
    let out = Command::new("sqlite3")
        .arg(home.db())
        .arg("PRAGMA journal_mode = DELETE;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "delete");
    let mut shell = common::SqliteShell::open(&home.db());
    assert_eq!(shell.query("SELECT count(*) FROM api_keys;"), "1");
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("a process has") && err.contains("\"sqlite3\""),
        "{err}"
    );
    assert_eq!(shell.query("SELECT count(*) FROM api_keys;"), "1");
    assert!(shell.close().success());
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let d = home.start();
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.signal_and_wait("TERM");
}

/// `restore --db` names the file it puts the copy in place of: a slip there (the key file
/// beside the database, another application's database) used to move that file aside as
/// "the database it replaced", advising to delete it once the restore is confirmed (the
/// vault key with it). Only oauthd's database, whole or damaged, or an empty file is
/// replaced; and a COPY that is not one is said to be that, not a permission problem.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_replaces_only_oauthds_database() {
    let home = Home::new();
    let d = home.start();
    let key = home.create_key("app", &[]);
    d.signal_and_wait("TERM");
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    let other = home.dir.path().join("other-app.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('x');")
        .unwrap();
    let restore = |db: &Path, from: &Path| {
        Command::new(common::BIN)
            .args(["restore", "--db"])
            .arg(db)
            .arg(from)
            .env("OAUTHD_KEY_FILE", home.key_file())
            .output()
            .expect("oauthd restore")
    };
    let key_text = std::fs::read(home.key_file()).unwrap();
    let other_bytes = std::fs::read(&other).unwrap();
    for (db, said) in [
        (home.key_file(), "is a text file, not a database"),
        (other.clone(), "another application's tables"),
    ] {
        let out = restore(&db, &copy);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{db:?}: {err}");
        assert!(err.contains(said), "{err}");
    }
    assert_eq!(std::fs::read(home.key_file()).unwrap(), key_text);
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
    let out = restore(&home.db(), &home.key_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a copy of oauthd's database"), "{err}");
    let aside = std::fs::read_dir(home.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".replaced-"))
        .count();
    assert_eq!(aside, 0, "a refused restore moved a file aside");

    // A damaged database of oauthd's is what a restore is for, even one whose first page,
    // header and all, was zeroed.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(home.db())
            .unwrap();
        f.write_all(&[0; 4096]).unwrap();
    }
    let out = restore(&home.db(), &copy);
    assert!(out.status.success(), "{out:?}");
    // In WAL mode, as oauthd keeps it (a copy is made in rollback mode).
    let out = Command::new("sqlite3")
        .arg(home.db())
        .arg("PRAGMA journal_mode;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wal");
    let d = home.start();
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    d.signal_and_wait("TERM");
    // Nor is one whose magic a torn write left garbage in (the rest of its header as every
    // SQLite header has it).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(home.db())
            .unwrap();
        f.write_all(b"\xffgarbage-magic!").unwrap();
    }
    let out = restore(&home.db(), &copy);
    assert!(out.status.success(), "{out:?}");
}

/// Hidden `.NAME.partial-PID` (and `.oauthd.db.restoring-PID`) files, each as large as the
/// database, stayed behind a backup or restore stopped by Ctrl-C or `timeout`, and nothing
/// ever removed them. Now a signal stops the copy, which removes its partial file (exit
/// 130, nothing changed), and a later run removes those left by a process that is gone
/// (`kill -9`).
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_or_restore_stopped_part_way_leaves_no_partial_copy() {
    let home = Home::new();
    home.create_key("app", &[]);
    // Enough rows that a copy takes a while.
    let out = Command::new("sqlite3")
        .arg(home.db())
        .arg(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600000)
             INSERT INTO expired_states SELECT randomblob(32), 'ns', i FROM n;",
        )
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "{out:?}");
    let listing = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(".partial-") || n.contains(".restoring-"))
            .collect()
    };
    let copy = home.dir.path().join("copy.db");
    let db_before = std::fs::read(home.db()).unwrap();
    for (args, what) in [
        (vec!["backup", copy.to_str().unwrap()], "partial"),
        (vec!["restore", copy.to_str().unwrap()], "restoring"),
    ] {
        if what == "restoring" {
            assert!(home
                .cli(&["backup", copy.to_str().unwrap()])
                .status
                .success());
        }
        let child = home
            .cli_command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !listing(home.dir.path()).iter().any(|n| n.contains(what))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = listing(home.dir.path());
        let Some(partial) = seen.iter().find(|n| n.contains(what)) else {
            panic!("{args:?}: no partial copy seen");
        };
        // Written in a directory nobody else may enter: SQLite's journal beside the copy
        // is made without O_EXCL, and in a directory others may write to (`/tmp`), one of
        // them could make it first.
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::symlink_metadata(home.dir.path().join(partial)).unwrap();
            assert!(meta.is_dir(), "{partial}: {meta:?}");
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{partial}");
        }
        common::interrupt(child);
        assert_eq!(listing(home.dir.path()), Vec::<String>::new(), "{args:?}");
    }
    assert_eq!(
        std::fs::read(home.db()).unwrap(),
        db_before,
        "the restore changed the database"
    );

    // Left by a copy killed outright (unlocked, unchanged for minutes): removed by the next
    // one. One held locked, or changed a moment ago, is a copy under way (in another PID
    // namespace, its process id says nothing) and is left alone.
    let made = |name: &str, ago: u64| {
        let path = home.dir.path().join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(ago))
            .unwrap();
        f
    };
    for name in [
        ".copy.db.partial-999999999",
        ".copy.db.partial-999999999-journal",
    ] {
        made(name, 120);
    }
    let busy = made(".copy.db.partial-999999998", 120);
    busy.lock().unwrap();
    made(".copy.db.partial-999999997", 0);
    // A copy's own directory, left the same way, goes too; one whose copy is held goes not.
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    let aged = |dir: &Path| {
        std::fs::File::open(dir).unwrap().set_modified(old).unwrap();
    };
    let made_dir = |name: &str, held: bool| {
        use std::os::unix::fs::DirBuilderExt;
        let dir = home.dir.path().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let f = std::fs::File::create(dir.join("copy.db")).unwrap();
        f.set_modified(old).unwrap();
        aged(&dir);
        if held {
            f.lock().unwrap();
        }
        f
    };
    made_dir(".copy.db.partial-999999996-00aa11bb22cc", false);
    let _held_dir = made_dir(".copy.db.partial-999999995-00aa11bb22cc", true);
    // Only what a copy makes, the way it makes it: a directory of someone's own named
    // alike, one that others may enter, and one holding more than a copy's files stay
    // (the last emptied of the copy's files only).
    {
        use std::os::unix::fs::PermissionsExt;
        for name in [
            ".copy.db.partial-2024-my-notes",
            ".copy.db.partial-999999994-00aa11bb22cc",
            ".copy.db.partial-999999993-00aa11bb22cc",
        ] {
            made_dir(name, false);
            std::fs::write(home.dir.path().join(name).join("notes.txt"), "mine").unwrap();
            aged(&home.dir.path().join(name));
        }
        std::fs::remove_file(
            home.dir
                .path()
                .join(".copy.db.partial-999999994-00aa11bb22cc/notes.txt"),
        )
        .unwrap();
        let open = home
            .dir
            .path()
            .join(".copy.db.partial-999999994-00aa11bb22cc");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        aged(&open);
    }
    // A FIFO where a copy's file would be does not hold the cleanup up.
    let fifo_dir = home
        .dir
        .path()
        .join(".copy.db.partial-999999992-00aa11bb22cc");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&fifo_dir)
            .unwrap();
    }
    let made_fifo = Command::new("mkfifo")
        .arg(fifo_dir.join("copy.db"))
        .status()
        .unwrap();
    assert!(made_fifo.success());
    aged(&fifo_dir);
    let mut backup = home
        .cli_command(&["backup", copy.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while backup.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = backup.kill();
    assert!(
        backup.wait().unwrap().success(),
        "the backup hung or failed"
    );
    let mut left = listing(home.dir.path());
    left.sort();
    assert_eq!(
        left,
        [
            ".copy.db.partial-2024-my-notes",
            ".copy.db.partial-999999992-00aa11bb22cc",
            ".copy.db.partial-999999993-00aa11bb22cc",
            ".copy.db.partial-999999994-00aa11bb22cc",
            ".copy.db.partial-999999995-00aa11bb22cc",
            ".copy.db.partial-999999997",
            ".copy.db.partial-999999998"
        ]
    );
    let kept = home.dir.path().join(".copy.db.partial-2024-my-notes");
    assert!(kept.join("notes.txt").exists() && kept.join("copy.db").exists());
    let emptied = home
        .dir
        .path()
        .join(".copy.db.partial-999999993-00aa11bb22cc");
    assert!(emptied.join("notes.txt").exists() && !emptied.join("copy.db").exists());
    drop(busy);
}

/// A copy from before `rekey --prune` holds a state whose data is sealed with a key the
/// prune removed: `check` and the start said the key file lacks it, but not that the
/// prune kept the old key file beside it, which holds it (as they say for connections).
/// `restore` said nothing of it (only of tokens' keys): it names the key and the copy.
#[tokio::test(flavor = "multi_thread")]
async fn state_data_of_a_copy_from_before_a_prune_names_the_key_file_the_prune_kept() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": NS, "data": {"v": 1}}))
        .await;
    let copy = home.dir.path().join("copy.db");
    assert!(home
        .cli(&["backup", copy.to_str().unwrap()])
        .status
        .success());
    assert!(home.cli(&["rekey"]).status.success());
    assert_eq!(d.consume(&key, &state, NS).await.0, 200);
    let out = home.cli(&["rekey", "--prune"]);
    assert!(out.status.success(), "{out:?}");
    d.signal_and_wait("TERM");
    let out = home.cli(&["restore", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let hint = format!(
        "`oauthd rekey --prune` kept the key file as it was before in {}.before-prune-",
        home.key_file().display()
    );
    // The restore says so too, rather than that `check` would tell.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("which the data of live states in the copy was sealed with: those states answer 503 vault_error")
            && said.contains(&hint),
        "{said}"
    );
    let report = String::from_utf8_lossy(&home.cli(&["check"]).stdout).into_owned();
    let line = report
        .lines()
        .find(|l| l.starts_with("FAIL  state data"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains(&hint), "{report}");
    let d = home.start();
    let logged =
        common::eventually(Duration::from_secs(10), || home.log_text().contains(&hint)).await;
    assert!(logged, "{}", home.log_text());
    assert_eq!(d.consume(&key, &state, NS).await.0, 503);
}

/// Served through a symbolic link, a database's -wal is beside the file the link leads
/// to: commands given the link open it while it is served, not taken for a copy made
/// without its -wal.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_served_through_a_link_opens_in_commands_meanwhile() {
    let home = Home::new();
    home.create_key("first", &[]);
    let real = home.dir.path().join("data");
    std::fs::create_dir(&real).unwrap();
    std::fs::rename(home.db(), real.join("oauthd.db")).unwrap();
    // With whatever lies beside it: a command's last writes may still be in its -wal.
    for name in ["oauthd.db-wal", "oauthd.db-shm", "oauthd.db.key"] {
        std::fs::rename(home.dir.path().join(name), real.join(name)).ok();
    }
    std::os::unix::fs::symlink(real.join("oauthd.db"), home.db()).unwrap();
    let d = home.start();
    home.create_key("while-served", &[]);
    let names = key_names(&home).expect("the linked database opens while served");
    assert!(
        names.contains("first") && names.contains("while-served"),
        "{names}"
    );
    d.signal_and_wait("TERM");
}

/// A command run while another program has the database open (an `sqlite3` shell left
/// open) left what it wrote in the `-wal`: SQLite merges it into the file only as the last
/// connection to the file closes, which the command's was not. The file moved or copied
/// alone lacked the command's key. The command merges what it wrote as its writer stops.
#[test]
fn a_commands_writes_are_in_the_file_while_another_program_has_it_open() {
    let home = Home::new();
    home.create_key("first", &[]);
    let mut shell = common::SqliteShell::open(&home.db());
    assert_eq!(shell.query("SELECT count(*) FROM api_keys;"), "1");
    home.create_key("second", &[]);
    let alone = home.dir.path().join("alone.db");
    std::fs::copy(home.db(), &alone).unwrap();
    let names: Vec<String> = rusqlite::Connection::open(&alone)
        .unwrap()
        .prepare("SELECT name FROM api_keys ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    assert_eq!(names, ["first", "second"], "the file alone");
    // A read the shell holds open keeps the command from merging all: it says so.
    assert_eq!(shell.query("BEGIN; SELECT count(*) FROM api_keys;"), "2");
    let out = home.cli(&["keys", "create", "--name", "third"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(" WARN ") && said.contains("-wal file could not all be merged into"),
        "{said}"
    );
    assert_eq!(shell.close().code(), Some(0));
}

/// A copy `oauthd backup` made, served beside its database (a backup tried out on another
/// port), refreshed the same refresh tokens: a provider that rotates them took the second
/// use for a stolen token and ended the grant, the database's too. A start on such a copy,
/// and `connections refresh` on it, are refused now (exit 2) and `check` says why; put in a
/// database's place by `restore`, the copy serves. `keys create` and `keys revoke` on it
/// say that what they change is in the copy only; `rekey` on it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_is_not_served_beside_its_database_until_restored() {
    let said = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = d
        .create_state(&key, json!({"namespace": "oauth:app"}))
        .await;
    let elsewhere = Home::new();
    let copy = elsewhere.db();
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));
    d.signal_and_wait("TERM");
    std::fs::copy(home.key_file(), elsewhere.key_file()).unwrap();
    let (code, err) = elsewhere.refused_start();
    assert_eq!(code, Some(2), "{err}");
    let of = format!("is a copy `oauthd backup` made of {}", home.db().display());
    assert!(
        err.contains(&of) && err.contains("oauthd restore --db"),
        "{err}"
    );
    for (args, doing) in [
        (
            &["connections", "refresh", "gh", "me"][..],
            "a refresh on it would use them",
        ),
        (
            &["connections", "delete", "gh", "me", "--yes"],
            "a delete on it (a revocation",
        ),
        (
            &["copy", "--to", "/nonexistent/x.db"],
            "a store copied from it and served",
        ),
    ] {
        let out = elsewhere.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        assert!(said(&out).contains(doing), "{args:?}: {}", said(&out));
    }
    // What changes it is done, and said to be in the copy only (a --db that names it by
    // mistake made a key that the oauthd serving the database answered 401): listings
    // say nothing.
    for (args, doing) in [
        (
            &["keys", "create", "--name", "on-the-copy"][..],
            "a key made here",
        ),
        (&["keys", "revoke", "on-the-copy"], "a revocation made here"),
        (&["keys", "list"], ""),
    ] {
        let out = elsewhere.cli(args);
        assert!(out.status.success(), "{args:?}: {}", said(&out));
        let note = format!("{of} at ");
        assert_eq!(
            said(&out).contains(&note)
                && said(&out).contains(&format!(": {doing} is in this copy only, not in ")),
            !doing.is_empty(),
            "{args:?}: {}",
            said(&out)
        );
    }
    // A rekey would rotate a key file the database's oauthd may read too (a prune after
    // it took out keys that database needed): refused, the key file as it was.
    let key_file = std::fs::read(elsewhere.key_file()).unwrap();
    let out = elsewhere.cli(&["rekey"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("{of} at "))
            && said(&out).contains("a rekey on it would rotate the key file"),
        "{}",
        said(&out)
    );
    assert_eq!(std::fs::read(elsewhere.key_file()).unwrap(), key_file);
    // A backup of the backup names the database the first was made of.
    let again = Home::new();
    let out = elsewhere.cli(&["backup", again.db().to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));
    std::fs::copy(home.key_file(), again.key_file()).unwrap();
    let (code, err) = again.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&of[of.find(" made of").unwrap_or(0)..]),
        "{err}"
    );
    let report = said(&elsewhere.cli(&["check"]));
    assert!(
        report.lines().any(|l| l.starts_with("warn  store: ")
            && l.contains(&of)
            && l.ends_with("a start on it is refused")),
        "{report}"
    );
    // Served where it is (a move to another machine), by the commands the refusal gives,
    // run as given: it serves (and holds what the backup took).
    let (_, err) = again.refused_start();
    run_the_commands_given(
        &err,
        "to serve it where it is (that database lost, a move to another machine): `",
    );
    let report = said(&again.cli(&["check"]));
    assert!(!report.contains("oauthd backup` made of"), "{report}");
    let d = again.start();
    assert_eq!(d.consume(&key, &state, "oauth:app").await.0, 200);
    d.signal_and_wait("TERM");
    // Put by hand at the path of the database it was made of (every container's path: a
    // second container would serve beside the first), it is refused there too.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", home.db().display()));
    }
    std::fs::copy(&copy, home.db()).unwrap();
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&of[of.find(" made of").unwrap_or(0)..]),
        "{err}"
    );
}

/// After a crash the database has a -wal file that holds its last writes. `backup` with its
/// two paths swapped told the operator to remove that file (and its writes with it), and
/// only said the paths were the wrong way round once it was gone; a target with such a file
/// was called what an older oauthd's backup left. Now the slip is said first, and a -wal
/// file nothing holds is never advised away: `oauthd check` merges it, as said.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_databases_wal_is_never_advised_away() {
    let home = Home::new();
    let d = home.start();
    home.create_key("before-the-copy", &[]);
    let copy = home.dir.path().join("nightly.db");
    let backup = |from: &Path, to: &Path| {
        let out = Command::new(common::BIN)
            .arg("backup")
            .arg("--db")
            .arg(from)
            .arg(to)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(backup(&home.db(), &copy).0, Some(0));
    home.create_key("after-the-copy", &[]);
    d.kill9();
    let wal = home.dir.path().join("oauthd.db-wal");
    assert!(
        std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0),
        "the killed oauthd left no -wal with writes in it"
    );

    let (code, err) = backup(&copy, &home.db());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("are the two files the wrong way round?"),
        "{err}"
    );
    assert!(!err.contains("remove its -wal"), "{err}");

    // A copy without the mark (made before copies were marked): the -wal is what stops it.
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute("DELETE FROM meta WHERE name = 'backup_of'", [])
        .unwrap();
    let (code, err) = backup(&copy, &home.db());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("Never delete that -wal file"), "{err}");
    assert!(!err.contains("remove its -wal"), "{err}");
    let check = format!("oauthd check --db {}", home.db().display());
    assert!(err.contains(&check), "{err}");
    assert!(wal.exists(), "the -wal went");

    // What it says merges the writes, and the database keeps them.
    let out = home.cli(&["check"]);
    assert!(!wal.exists(), "check left the -wal: {out:?}");
    let names = key_names(&home).expect("the database opens");
    assert!(names.contains("after-the-copy"), "{names}");
}

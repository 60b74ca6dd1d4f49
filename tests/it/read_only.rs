//! The database going read-only under oauthd, two ways it happens on real machines:
//!
//! - the file's mode or owner no longer lets oauthd write it (a restore as the wrong user,
//!   a stray `chmod`): oauthd still starts, serves reads, answers writes with 503, and
//!   recovers by itself once the file is writable again;
//! - the filesystem goes read-only under the running daemon after an error (ext4
//!   `errors=remount-ro`; here an ext4 image on a loop device, the error triggered through
//!   the kernel's `trigger_fs_error`): writes answer 503, and after the operator's fsck and
//!   restart every state acknowledged before the fault is still there.
//!
//! Both run as root: the first drops CAP_DAC_OVERRIDE so file modes apply; the second needs
//! loop devices and a private mount namespace (unshare), so nothing shows in the machine's
//! mounts and the loop device detaches when oauthd exits.

use crate::common;

use common::{eventually, Daemon, Home, SqliteShell, BIN};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const NS: &str = "ro";
/// Runs the rest as root without CAP_DAC_OVERRIDE: file modes apply as to any user.
const NO_DAC_OVERRIDE: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps=-all",
];

/// Runs oauthd with `args` (and `--db`) held to file modes, at most 20 s.
fn oauthd_without_dac_override(home: &Home, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("20")
        .args(NO_DAC_OVERRIDE)
        .arg(BIN)
        .args(args)
        .arg("--db")
        .arg(home.db())
        .env("RUST_LOG", "warn")
        .output()
        .expect("timeout, setpriv (coreutils, util-linux)")
}

/// What the sqlite3 shell prints for `sql` on the database (as an operator would run it).
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = run_ok(Command::new("sqlite3").arg(db).arg(sql));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn set_db_mode(home: &Home, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", home.db().display()));
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
}

fn assert_read_only_503(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage_unavailable", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("read-only"), "{body}");
}

async fn create_numbered(d: &Daemon, key: &str, n: usize) -> Vec<String> {
    let mut states = Vec::new();
    for i in 0..n {
        states.push(
            d.create_state(key, json!({"namespace": NS, "data": {"i": i}}))
                .await,
        );
    }
    states
}

async fn consume_numbered(d: &Daemon, key: &str, states: &[String]) {
    for (i, state) in states.iter().enumerate() {
        let (status, body) = d.consume(key, state, NS).await;
        assert_eq!(
            status, 200,
            "state {i}, acknowledged before the fault: {body}"
        );
        assert_eq!(body["data"]["i"], i, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_file_made_read_only_serves_reads_refuses_writes_and_recovers_by_itself() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let before = create_numbered(&d, &key, 10).await;
    assert!(d.signal_and_wait("TERM").success());

    // The operator's sqlite3 shell, open on the database, keeps its -wal and -shm files:
    // they turn read-only with it, so oauthd maps its shared-memory index read-only.
    let mut shell = SqliteShell::open(&home.db());
    assert_eq!(shell.query("SELECT count(*) > 0 FROM states;"), "1");
    set_db_mode(&home, 0o444);
    let d = home.start_via_shell(&format!("exec {} \"$@\"", NO_DAC_OVERRIDE.join(" ")));
    assert!(
        home.log_text().contains("is read-only for this process"),
        "{}",
        home.log_text()
    );
    let (status, body) = d.get("/readyz", "").await;
    assert_read_only_503(status, &body);
    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_read_only_503(status, &body);
    let (status, body) = d.consume(&key, &before[0], NS).await;
    assert_read_only_503(status, &body);
    // Reads still work: the API key is checked and the connection list is read. Several at
    // once, so the read pool holds more than one connection opened while read-only.
    let reads = (0..16).map(|_| d.get("/v1/connections", &key));
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, 200, "{body}");
    }
    const READ_ONLY: &str = "oauthd_storage_read_only";
    assert_eq!(d.metric(READ_ONLY).await, Some(1.0));
    // `oauthd check` fails on it and says why.
    let out = oauthd_without_dac_override(&home, &["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("read-only")),
        "{report}"
    );

    set_db_mode(&home, 0o600);
    // Reads racing the writer's recovery: a connection that read while the database was
    // read-only must not keep the writer from writing once it can.
    let reads = (0..16).map(|_| d.get("/v1/connections", &key));
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = d.readyz_until(200).await;
    assert_eq!(
        status, 200,
        "not ready 10 s after the file became writable: {body}"
    );
    // Logged by the writer thread once the commit answered: may trail the response a little.
    assert!(
        eventually(Duration::from_secs(5), || home
            .log_text()
            .contains("is writable again"))
        .await
    );
    assert_eq!(d.metric(READ_ONLY).await, Some(0.0));
    consume_numbered(&d, &key, &before).await;
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &after, NS).await.0, 200);
    // A key created now by another process is seen: no reader is left on a stale snapshot.
    let late = home.create_key("late", &[]);
    assert_eq!(d.get("/v1/connections", &late).await.0, 200);

    assert!(d.signal_and_wait("TERM").success());
    assert!(shell.close().success());
    assert_eq!(sqlite3(&home.db(), "PRAGMA integrity_check;"), "ok");
}

/// An ext4 image, mounted (errors=remount-ro) over a Home's directory in a private mount
/// namespace of each command run through it.
struct Ext4 {
    _dir: tempfile::TempDir,
    image: PathBuf,
    mount: PathBuf,
}

/// Mounts the image ($1) on the directory ($2), then execs the rest.
const MOUNT_THEN_EXEC: &str = "mount -o loop,errors=remount-ro \"$1\" \"$2\" || { echo \
     \"mount -o loop failed: this test needs loop devices and CAP_SYS_ADMIN\" >&2; exit 97; }; \
     shift 2; exec \"$@\"";

impl Ext4 {
    fn new(home: &Home) -> Ext4 {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image file");
        run_ok(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image));
        Ext4 {
            _dir: dir,
            image,
            mount: home.dir.path().to_owned(),
        }
    }

    /// A shell line for `Home::start_via_shell`: oauthd in its own mount namespace.
    fn wrapper(&self) -> String {
        format!(
            "exec unshare -m --propagation private sh -c '{MOUNT_THEN_EXEC}' sh {} {} \"$@\"",
            self.image.display(),
            self.mount.display()
        )
    }

    /// Runs a command with the image mounted.
    fn run(&self, args: &[&str]) -> Output {
        run_ok(
            Command::new("unshare")
                .args([
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    MOUNT_THEN_EXEC,
                    "sh",
                ])
                .arg(&self.image)
                .arg(&self.mount)
                .args(args)
                .env("RUST_LOG", "warn"),
        )
    }

    /// Makes the kernel take the filesystem read-only as after a metadata error.
    fn fail(&self) {
        let out = run_ok(Command::new("losetup").arg("-j").arg(&self.image));
        let listing = String::from_utf8_lossy(&out.stdout);
        let device = listing
            .split(':')
            .next()
            .and_then(|d| Path::new(d.trim()).file_name())
            .unwrap_or_else(|| panic!("no loop device for the image: {listing:?}"));
        let trigger = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "oauthd read-only test").expect("trigger_fs_error");
    }

    /// What the operator does before starting oauthd again: fsck the filesystem.
    fn fsck(&self) {
        let out = Command::new("e2fsck")
            .arg("-fy")
            .arg(&self.image)
            .output()
            .expect("e2fsck (e2fsprogs)");
        // 0: clean, 1: errors corrected (the error the test triggered).
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filesystem_gone_read_only_under_oauthd_gives_503_and_loses_no_acknowledged_state() {
    let home = Home::new();
    let fs = Ext4::new(&home);
    let db = home.db().display().to_string();
    let out = fs.run(&[
        BIN, "keys", "create", "--create", "--db", &db, "--name", "app",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout.lines().last().expect("key").trim().to_owned();

    // The default durability: what a 201 promises must hold without tuning.
    let d = home.start_via_shell(&fs.wrapper());
    let before = create_numbered(&d, &key, 20).await;
    fs.fail();

    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage_unavailable", "{body}");
    // A consume is refused too: the state is not lost by trying.
    let (status, body) = d.consume(&key, &before[0], NS).await;
    assert_eq!(status, 503, "{body}");
    // Once the writer has tried a fresh connection, the reason is plain.
    let (status, body) = d.readyz_until(503).await;
    assert_read_only_503(status, &body);
    let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
    assert_read_only_503(status, &body);
    let (status, body) = d.get("/v1/connections", &key).await;
    assert_eq!(status, 200, "reads go on: {body}");
    assert!(d.signal_and_wait("TERM").success(), "{}", home.log_text());

    fs.fsck();
    let d = home.start_via_shell(&fs.wrapper());
    consume_numbered(&d, &key, &before).await;
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &after, NS).await.0, 200);
    assert!(d.signal_and_wait("TERM").success());
    let out = fs.run(&["sqlite3", &db, "PRAGMA integrity_check;"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn a_read_only_database_that_needs_a_schema_upgrade_refuses_to_start_with_the_reason() {
    let home = Home::new();
    home.create_key("app", &[]);
    sqlite3(&home.db(), "PRAGMA user_version = 1;");
    set_db_mode(&home, 0o444);
    let out = oauthd_without_dac_override(&home, &["serve", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is read-only for this user and needs schema version"),
        "{err}"
    );
    // Nothing was changed: the schema version is still the old one.
    assert_eq!(sqlite3(&home.db(), "PRAGMA user_version;"), "1");
}

#[test]
fn a_read_only_filesystem_at_start_is_named_in_the_error() {
    let home = Home::new();
    home.create_key("app", &[]);
    // The CLI closed the database cleanly: no -wal or -shm file is left, and SQLite cannot
    // create them on a read-only filesystem, so this is the one case it cannot open at all.
    assert!(!PathBuf::from(format!("{}-wal", home.db().display())).exists());
    let out = Command::new("timeout")
        .args([
            "20",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"",
        )
        .arg("sh")
        .arg(home.dir.path())
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(home.db())
        .output()
        .expect("timeout, unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("its filesystem is read-only"), "{err}");
}

/// A database directory this user cannot look into may be fixed while oauthd waits to be
/// started again (modes fixed, a filesystem mounted late): exit 1, which the systemd unit
/// restarts after, and the reason; not "does not exist" with exit 2, which it does not.
#[test]
fn a_database_directory_that_cannot_be_looked_into_is_not_a_missing_one() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let locked = home.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let db = locked.join("state/oauthd.db");
    let out = Command::new("timeout")
        .arg("20")
        .args(NO_DAC_OVERRIDE)
        .arg(BIN)
        .arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("timeout, setpriv (coreutils, util-linux)");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Permission denied") && !err.contains("does not exist"),
        "{err}"
    );
}

/// `check` run by a user who cannot read the key file said `ok key file (mode 600)` just
/// before its vault line failed with "Permission denied"; the key file line fails now,
/// saying to run it as oauthd's user.
#[tokio::test(flavor = "multi_thread")]
async fn check_fails_a_key_file_it_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    home.start().signal_and_wait("TERM");
    let key = home.key_file();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o200)).unwrap();
    let out = oauthd_without_dac_override(&home, &["check"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL  key file") && report.contains("Permission denied"),
        "{report}"
    );
    assert!(!report.contains("ok    key file"), "{report}");
}

/// A key file another user owns (the database chowned to oauthd's user, as the database
/// error advised, the key file left to root) stopped the start with only "Permission
/// denied"; it now names the file's owner and mode, the user oauthd runs as, and the chown
/// that fixes it.
#[test]
fn a_key_file_of_another_user_is_said_with_its_owner_and_the_fix() {
    let home = Home::new();
    home.start().signal_and_wait("TERM");
    let key = home.key_file();
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).expect("chown");
    let out = oauthd_without_dac_override(&home, &["serve", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Permission denied")
            && err.contains("it is owned by uid 65534 with mode 600, and oauthd runs as uid 0")
            && err.contains(&format!("chown that user {}", key.display())),
        "{err}"
    );
}

/// A database of another user's that this one may not read (a restore run as root makes
/// files of mode 600): the start said "this user may not write it", of a file it may not
/// even read, and a restore run by that user took a copy it could not read for "not a copy
/// of oauthd's database". Both now say whose the file is, who asks, and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_or_a_copy_this_user_may_not_read_is_said_so() {
    let home = Home::new();
    let copy = home.backed_up();
    std::os::unix::fs::chown(home.db(), Some(65534), Some(65534)).expect("chown");
    let out = oauthd_without_dac_override(&home, &["serve", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "it is owned by uid 65534 with mode 600, and oauthd runs as uid 0, who may not read it"
        ),
        "{err}"
    );
    std::os::unix::fs::chown(home.db(), Some(0), Some(0)).expect("chown");
    std::os::unix::fs::chown(&copy, Some(65534), Some(65534)).expect("chown");
    let out = oauthd_without_dac_override(&home, &["restore", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "it is owned by uid 65534 with mode 600, and oauthd runs as uid 0, who may not read it"
        ) && !err.contains("not a copy"),
        "{err}"
    );
}

/// Runs `script` under `sh` with `$1` a 6 MiB tmpfs of its own (in a private mount
/// namespace, gone with it) and `$2` oauthd, within 60 s; exit 97 when the mount failed.
fn on_a_small_disk(home: &Home, script: &str) -> std::process::Output {
    let disk = home.dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    Command::new("timeout")
        .arg("60")
        .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=6m tmpfs \"$1\" \
             || {{ echo \"mount -t tmpfs failed: this test needs CAP_SYS_ADMIN\" >&2; exit 97; }}; {script}"
        ))
        .arg("sh")
        .arg(&disk)
        .arg(BIN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("timeout, unshare")
}

/// `oauthd check` on a database whose filesystem has too little room left said every line
/// `ok` (while writes answered 503 "the disk is full"): it says how much room is left, and
/// fails below the 8 MiB SQLite's `-wal` file needs. On a 6 MiB tmpfs of its own, in a
/// private mount namespace.
#[test]
fn check_fails_a_database_whose_disk_has_too_little_room() {
    let home = Home::new();
    let out = on_a_small_disk(
        &home,
        "\"$2\" keys create --create --db \"$1/oauthd.db\" --name app >/dev/null \
         && \"$2\" check --db \"$1/oauthd.db\"",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(97), "{out:?}");
    assert!(!out.status.success(), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with("FAIL  disk: ")
            && l.contains(" MiB free on the filesystem of ")
            && l.contains("make room")),
        "{report}"
    );
}

/// `check` on a database that opens but whose disk has no room for a write: it said to
/// make the files writable "for this user" (the advice for a read-only file), for a full
/// disk as for any other fault; it says to free space. On a 6 MiB tmpfs of its own, filled
/// but for 32 KiB (room to open the database, none to commit).
#[test]
fn check_says_a_full_disk_is_full_not_read_only() {
    let home = Home::new();
    let out = on_a_small_disk(
        &home,
        "\"$2\" keys create --create --db \"$1/oauthd.db\" --name app >/dev/null || exit 98; \
         avail=$(df --output=avail -B1 \"$1\" | tail -1); \
         fallocate -l $((avail - 32768)) \"$1/fill\" || exit 98; \
         \"$2\" check --db \"$1/oauthd.db\"",
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!matches!(out.status.code(), Some(97 | 98)), "{out:?}");
    let store = report
        .lines()
        .find(|l| l.starts_with("FAIL  store: "))
        .unwrap_or_else(|| panic!("no failed store line: {report}"));
    assert!(
        store.contains("the disk is full: free space on its file system")
            && !store.contains("writable"),
        "{store}"
    );
}

/// A start (and `check`) on a database whose disk is full: the start said "is the file and
/// its directory writable by this user?", and `check` left out its disk line with the store
/// that did not open. Both name the full disk now. On a 6 MiB tmpfs of its own, in a
/// private mount namespace, filled before the start (and again after `check`, whose -wal
/// and -shm files, when it can remove them, leave room).
#[test]
fn a_start_on_a_full_disk_names_it() {
    let home = Home::new();
    let out = on_a_small_disk(
        &home,
        "\"$2\" keys create --create --db \"$1/oauthd.db\" --name app >/dev/null || exit 98; \
         dd if=/dev/zero of=\"$1/fill\" bs=64k 2>/dev/null; \
         \"$2\" check --db \"$1/oauthd.db\"; echo \"check exit $?\"; \
         dd if=/dev/zero of=\"$1/fill2\" bs=4k 2>/dev/null; \
         timeout 10 \"$2\" serve --db \"$1/oauthd.db\" --listen 127.0.0.1:0; echo \"serve exit $?\"",
    );
    let (said, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!matches!(out.status.code(), Some(97 | 98)), "{out:?}");
    assert!(
        said.lines().any(|l| l.starts_with("FAIL  disk: ")) && said.contains("check exit 1"),
        "{said}"
    );
    assert!(
        err.contains("the filesystem holding it is full")
            && !said.contains("serve exit 0")
            && !said.contains("serve exit 124"),
        "{said}\n{err}"
    );
}

/// A disk that fills up under oauthd (a tmpfs of its own, in a private mount namespace,
/// filled by a file written into it through `/proc/PID/root`): writes answer 503 saying the
/// disk is full, `/readyz` says so too (a load balancer stops sending), it is logged once
/// with the metric set, and once room is made `/readyz` is ready again with no other write,
/// with every state acknowledged before still there.
///
/// At the edge of full, a small write that fits in what the `-wal` file already holds goes
/// through: it cleared the mark, so `/readyz` and the metric took turns with the writes
/// that failed. Both now wait for room (a quarter of this 4 MiB disk), and `/readyz`'s own
/// write clears them.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_up_is_said_by_readyz_and_recovered_from_once_there_is_room() {
    let home = Home::new();
    // The database lives on the small disk: its name is a link there, so the `-wal` and
    // `-shm` files are made beside it; the key file and the log stay beside the link.
    let disk = home.dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    std::os::unix::fs::symlink(disk.join("oauthd.db"), home.db()).expect("symlink");
    let key = home.create_key("app", &[]);
    let seed = home.dir.path().join("seed.db");
    std::fs::rename(disk.join("oauthd.db"), &seed).expect("move the new database aside");
    let d = home.start_via_shell(&format!(
        "exec unshare -m --propagation private sh -c 'mount -t tmpfs -o size=4m tmpfs \"$1\" \
         || {{ echo \"mount -t tmpfs failed: this test needs CAP_SYS_ADMIN\" >&2; exit 97; }}; \
         cp \"$2\" \"$1\"/oauthd.db && shift 2 && exec \"$@\"' sh {} {} \"$@\"",
        disk.display(),
        seed.display()
    ));
    let seen = PathBuf::from(format!("/proc/{}/root{}", d.pid(), disk.display()));
    let before = create_numbered(&d, &key, 20).await;

    // Fill the disk but for 12 KiB: a write that needs more stops part-way, leaving the
    // WAL file longer than its last commit (room a one-page write fits in).
    let filler = seen.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0usize;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
            assert!(written < 8 << 20, "a 4 MiB disk took more than 8 MiB");
        }
        f.set_len((written - (12 << 10)) as u64)
            .expect("make 12 KiB of room");
    }
    let mut full = None;
    for _ in 0..200 {
        let (status, body) = d
            .post(
                "/v1/states",
                &key,
                json!({"namespace": NS, "data": {"x": "y".repeat(8000)}}),
            )
            .await;
        assert!(status == 201 || status == 503, "{status} {body}");
        if status == 503 {
            full = Some(body);
            break;
        }
    }
    let says_full = |body: &serde_json::Value| {
        assert_eq!(body["code"], "storage_unavailable", "{body}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains("disk is full"), "{body}");
    };
    says_full(&full.expect("no write failed on a full disk"));
    let (status, body) = d.get("/readyz", "").await;
    assert_eq!(
        status, 503,
        "ready while writes fail for want of room: {body}"
    );
    says_full(&body);
    const DISK_FULL: &str = "oauthd_storage_disk_full";
    assert_eq!(d.metric(DISK_FULL).await, Some(1.0));
    // Reads go on.
    assert_eq!(d.get("/v1/connections", &key).await.0, 200);
    let said = "writes that find no room and /readyz answer 503 until there is room again";
    assert_eq!(
        home.log_text().matches(said).count(),
        1,
        "{}",
        home.log_text()
    );

    // Polled again: still not ready (a one-page probe fitted in what the failed write left
    // of the WAL file, said ready and cleared the mark, and the next failure logged it
    // again).
    let (status, body) = d.get("/readyz", "").await;
    assert_eq!(status, 503, "ready while the disk is full: {body}");
    assert_eq!(
        home.log_text().matches(said).count(),
        1,
        "{}",
        home.log_text()
    );

    // 64 KiB made free: small writes fit, and the disk is as good as full.
    let len = std::fs::metadata(&filler).expect("filler").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(len - (64 << 10)))
        .expect("make 64 KiB of room");
    let mut fitted = false;
    for _ in 0..5 {
        let (status, body) = d.post("/v1/states", &key, json!({"namespace": NS})).await;
        assert!(status == 201 || status == 503, "{status} {body}");
        if status == 201 {
            fitted = true;
            break;
        }
    }
    assert!(fitted, "no small write fitted on the full disk");
    let (status, body) = d.get("/readyz", "").await;
    assert_eq!(status, 503, "ready after a small write fitted: {body}");
    says_full(&body);
    assert_eq!(d.metric(DISK_FULL).await, Some(1.0));

    std::fs::remove_file(&filler).expect("make room");
    // Within a look of the writer's at the disk (`/readyz` itself reads nothing of it).
    let (status, body) = d.readyz_until(200).await;
    assert_eq!(status, 200, "not ready once there is room: {body}");
    // Its own write ended the mark: no request's was needed.
    assert_eq!(d.metric(DISK_FULL).await, Some(0.0));
    assert!(
        eventually(Duration::from_secs(5), || {
            home.log_text().contains("there is room to write again")
        })
        .await,
        "{}",
        home.log_text()
    );
    consume_numbered(&d, &key, &before).await;
    let after = d.create_state(&key, json!({"namespace": NS})).await;
    assert_eq!(d.consume(&key, &after, NS).await.0, 200);
    assert_eq!(
        sqlite3(&seen.join("oauthd.db"), "PRAGMA integrity_check;"),
        "ok"
    );
    assert!(d.signal_and_wait("TERM").success(), "{}", home.log_text());
}

/// A reader that holds a transaction open (a monitoring script, an `sqlite3` shell, a slow
/// copy tool) keeps SQLite from checkpointing, and the `-wal` grows with every write. It
/// stayed at its largest size once the reader let go, until oauthd's clean stop: a disk
/// used for good. Now it comes back within `journal_size_limit` (8 MiB) once the writes
/// after it restart the `-wal` from its start.
#[tokio::test(flavor = "multi_thread")]
async fn the_wal_a_long_reader_grew_shrinks_once_it_lets_go() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let wal = home.dir.path().join("oauthd.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let blob = "x".repeat(2_000);
    let reader = rusqlite::Connection::open(home.db()).unwrap();
    // Its first read takes the snapshot it holds until it commits.
    reader.execute_batch("BEGIN").unwrap();
    reader
        .query_row("SELECT count(*) FROM states", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let started = std::time::Instant::now();
    let mut made = Vec::new();
    while wal_size() < 12 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120) && made.len() < 20_000,
            "the -wal stayed at {} bytes after {} states",
            wal_size(),
            made.len()
        );
        made.push(
            d.create_state(&key, json!({"namespace": NS, "data": {"b": blob}}))
                .await,
        );
    }
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let mut shrunk = false;
    for state in &made {
        assert_eq!(d.consume(&key, state, NS).await.0, 200);
        if wal_size() <= 8 << 20 {
            shrunk = true;
            break;
        }
    }
    assert!(shrunk, "the -wal stayed at {} bytes", wal_size());
    d.signal_and_wait("TERM");
}

/// A secret file of another user's: unreadable, it is said with whose it is, who asks and
/// what to do (a systemd credential for a service whose user systemd makes up); readable
/// by others, the warning no longer says "chmod 600 it" alone, which would keep oauthd
/// out (a root-owned secret made 600 stopped the shipped unit's service for good). A
/// systemd credential's path that is not there says that credentials exist only while
/// their unit runs, and commands that only list go on without it.
#[test]
fn a_secret_file_of_another_user_is_said_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let secret = home.dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret-s3cret").unwrap();
    std::os::unix::fs::chown(&secret, Some(65534), Some(65534)).expect("chown");
    let provider = |file: &Path| {
        format!(
            "[providers.peer]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
             token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\n\
             client_secret_file = \"{}\"\n",
            file.display()
        )
    };
    home.write_config(&provider(&secret));
    std::fs::set_permissions(home.config(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = home.config().display().to_string();
    for (mode, said) in [
        (
            0o600,
            "it is owned by uid 65534 with mode 600, and oauthd runs as uid 0, who may not read it: make it that user's, or, for a service systemd runs (DynamicUser=), hand it over with LoadCredential=",
        ),
        // Root reads it anyway: made 600, it stays its owner's (a service's) to read.
        (
            0o644,
            "is readable by others (mode 644): chmod 600 it (and chown it to the user oauthd runs as",
        ),
    ] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let args = ["check", "--config", config.as_str()];
        let out = oauthd_without_dac_override(&home, &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(said), "{mode:o}: {text}");
    }
    // Read by another user than its owner (root's file, oauthd run as uid 65534).
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (roots, open_config) = (open.path().join("secret"), open.path().join("oauthd.toml"));
    std::fs::write(&roots, "s3cret-s3cret").unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&open_config, provider(&roots)).unwrap();
    std::fs::set_permissions(&open_config, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&open_config, Some(65534), Some(65534)).expect("chown");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(BIN)
        .args(["check", "--config"])
        .arg(&open_config)
        .arg("--db")
        .arg(open.path().join("oauthd.db"))
        .output()
        .expect("setpriv (util-linux)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("is readable by others (mode 644): it is uid 0's, and oauthd runs as uid 65534, so chmod 600 alone would keep oauthd out: chown it to uid 65534"),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home.write_config(&provider(Path::new(
        "/run/credentials/oauthd-test-absent.service/peer",
    )));
    let out = Command::new(BIN)
        .args(["providers", "list", "--config", config.as_str()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemd credentials exist only while their unit runs"),
        "{err}"
    );
    // Listing needs no secret: it lists (it stopped, exit 2, before the unit's first start).
    assert!(out.status.success(), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("redirect URI"),
        "{out:?}"
    );
    home.create_key("app", &[]);
    let out = home.cli(&["connections", "list"]);
    assert!(out.status.success(), "{out:?}");
}

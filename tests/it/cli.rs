//! The command line: start-up errors, key management, env overrides.

use crate::common;

use common::{Home, BIN};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keys_create_prints_the_key_alone_on_the_last_line() {
    let home = Home::new();
    // A pattern given twice is kept once (it was stored, and listed, twice).
    let out = home.cli(&[
        "keys",
        "create",
        "--create",
        "--name",
        "st-bridge",
        "--namespace",
        "oauth:*",
        "--namespace",
        "2fa",
        "--namespace",
        "oauth:*",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("oauthd_") && last.len() == 7 + 43,
        "{last:?}"
    );
    assert!(!last.contains(' '));

    let list = home.cli(&["keys", "list"]);
    let listed = text(&list.stdout);
    assert!(
        listed.contains("st-bridge") && listed.contains("active") && listed.contains("oauth:*,2fa"),
        "{listed}"
    );
    assert!(!listed.contains(last), "list must never show a key");

    // Names are unique among active keys.
    let dup = home.cli(&["keys", "create", "--name", "st-bridge"]);
    assert_eq!(dup.status.code(), Some(2));
    assert!(
        text(&dup.stderr).contains("already exists")
            // With the database it was made in: run from another directory, a bare
            // command would revoke in another database, or none.
            && text(&dup.stderr).contains(&format!(
                "`oauthd keys revoke --db {} st-bridge`",
                home.db().display()
            )),
        "{}",
        text(&dup.stderr)
    );

    let revoke = home.cli(&["keys", "revoke", "st-bridge"]);
    assert!(revoke.status.success());
    let json = home.cli(&["keys", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["name"], "st-bridge");
    assert!(rows[0]["revoked_at"].is_string());
    assert_eq!(rows[0]["namespaces"], serde_json::json!(["oauth:*", "2fa"]));
    // A revoked key's name can be used again.
    assert!(home
        .cli(&["keys", "create", "--name", "st-bridge"])
        .status
        .success());
    // `provider:` alone names no provider: refused (it was made, reaching nothing).
    let out = home.cli(&[
        "keys",
        "create",
        "--name",
        "nothing",
        "--namespace",
        "provider:",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("it names no provider"),
        "{out:?}"
    );
}

/// `check` reports a store it cannot open as one failed line and goes on to the key file
/// (here a Redis store without the shared key it needs).
#[cfg(feature = "redis")]
/// A key with many namespaces: its column widens, and ACCOUNTS still starts where its
/// header does (namespaces past 24 characters ran into it).
#[test]
fn keys_list_widens_a_column_for_a_long_cell() {
    let home = Home::new();
    assert!(home
        .cli(&["keys", "create", "--create", "--name", "app"])
        .status
        .success());
    let many = [
        "2fa",
        "2fa:*",
        "reset",
        "session",
        "as:*",
        "oauth:spotify:*",
    ];
    let mut args = vec!["keys", "create", "--name", "many"];
    for n in many {
        args.extend(["--namespace", n]);
    }
    assert!(home.cli(&args).status.success());
    let listed = text(&home.cli(&["keys", "list"]).stdout);
    let header = listed.lines().next().unwrap();
    let column = header.find("ACCOUNTS").unwrap();
    let row = listed.lines().find(|l| l.starts_with("many ")).unwrap();
    assert!(row.contains(&many.join(",")), "{listed}");
    assert_eq!(row.get(column..), Some("-"), "{listed}");
    assert_eq!(row.as_bytes()[column - 2..column], *b"  ", "{listed}");
}

#[test]
fn check_goes_on_past_a_store_it_cannot_reach() {
    let home = Home::new();
    home.write_config(
        "[providers.peer]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = format!("redis://127.0.0.1:{port}/0");
    let out = home.cli(&["check", "--store", &store]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL  store: cannot reach Redis at")),
        "{report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("FAIL  key file:")),
        "{report}"
    );
}

/// A Redis password is warned of where others on the machine can read it: in `--store`
/// (the process list shows it to every user), in a config file, `OAUTHD_STORE_FILE` or
/// `OAUTHD_REDIS_PASSWORD_FILE` others may read. Nothing was said of any.
#[cfg(feature = "redis")]
#[test]
fn a_redis_password_where_others_read_it_is_warned_of() {
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_password = format!("redis://:pw-0123456789@127.0.0.1:{port}/0");
    let out = home.cli(&["check", "--store", &with_password]);
    let said = text(&out.stderr);
    assert!(
        said.contains("the Redis password in --store can be read by every user of this machine in the process list"),
        "{said}"
    );
    assert!(!said.contains("pw-0123456789"), "{said}");
    home.write_config(&format!("store = \"{with_password}\"\n"));
    let out = home.cli(&["check"]);
    let report = text(&out.stdout);
    assert!(
        report.contains("the config file, which holds the Redis password in store")
            && report.contains("is readable by others (mode 644)"),
        "{report}"
    );
    home.write_config("");
    let url_file = home.dir.path().join("store-url");
    std::fs::write(&url_file, &with_password).unwrap();
    let password_file = home.dir.path().join("redis-password");
    std::fs::write(&password_file, "pw-0123456789").unwrap();
    let out = home
        .cli_command(&["check"])
        .env("OAUTHD_STORE_FILE", &url_file)
        .env("OAUTHD_REDIS_PASSWORD_FILE", &password_file)
        .output()
        .unwrap();
    let report = text(&out.stdout);
    for what in [
        "OAUTHD_STORE_FILE, which holds the Redis password",
        "OAUTHD_REDIS_PASSWORD_FILE",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains(what) && l.contains("readable by others (mode 644)")),
            "{what}: {report}"
        );
    }
}

/// Runs `command` with its stdout on a full disk (`/dev/full`).
fn onto_a_full_disk(command: &mut Command) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    command
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// A full disk under `oauthd openapi > file` is an error (exit 1, said why), not a
/// truncated description and exit 0.
#[test]
fn a_failed_write_of_the_description_is_an_error() {
    let mut openapi = Command::new(BIN);
    let out = onto_a_full_disk(openapi.arg("openapi"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

/// A key that could not be printed (stdout on a full disk) was made all the same: active,
/// held by nobody, its name taken. It is revoked again, the command fails saying so, and
/// the same command with a writable output makes it.
#[test]
fn a_key_that_could_not_be_printed_is_not_left_active() {
    let home = Home::new();
    home.create_key("first", &[]);
    let out = onto_a_full_disk(&mut home.cli_command(&["keys", "create", "--name", "lost"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("revoked again"), "{err}");
    let listed = text(&home.cli(&["keys", "list", "--json"]).stdout);
    let keys: serde_json::Value = serde_json::from_str(&listed).expect("keys list --json");
    let lost = keys
        .as_array()
        .expect("a list")
        .iter()
        .find(|k| k["name"] == "lost")
        .cloned()
        .unwrap_or_default();
    assert!(!lost["revoked_at"].is_null(), "{listed}");
    let out = home.cli(&["keys", "create", "--name", "lost"]);
    assert!(out.status.success(), "{out:?}");
}

/// Runs `command` with its stdout (or its stderr) a pipe nobody reads: its reading end is
/// closed before the command starts, so its first write fails, as after `| head -0`.
fn run_unread(command: &mut Command, stdout: bool) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    if stdout {
        command.stdout(writer).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::piped()).stderr(writer);
    }
    command.output().unwrap()
}

#[test]
fn a_reader_that_went_away_stops_a_command_as_sigpipe_would() {
    let home = Home::new();
    home.create_key("app", &[]);
    let mut keygen = Command::new(BIN);
    keygen.arg("keygen");
    let mut openapi = Command::new(BIN);
    openapi.arg("openapi");
    for (args, mut command) in [
        (&["keys", "list"][..], home.cli_command(&["keys", "list"])),
        (&["keygen"], keygen),
        (&["openapi"], openapi),
    ] {
        // A shell's 141 for a tool SIGPIPE stopped, without a panic.
        let out = run_unread(&mut command, true);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A closed stderr is no reason to stop: the key is made and printed.
    let out = run_unread(
        &mut home.cli_command(&["keys", "create", "--name", "second"]),
        false,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).trim().starts_with("oauthd_"), "{out:?}");
}

#[test]
fn a_new_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let out = home
        .cli_command(&["keys", "create", "--create", "--name", "app"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Its schema made, said in one line.
    let said = text(&out.stderr);
    assert_eq!(
        said.lines().filter(|l| l.contains("schema")).count(),
        1,
        "{said}"
    );
    assert!(said.contains("made its schema (version "), "{said}");
    let mode = std::fs::metadata(home.db()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// Nor for a moment, under the usual umask of 022: SQLite made the file with mode 644,
/// and oauthd narrowed it after, and a local user who opened it in between kept a handle
/// that read all that was written to it after. Made twenty times while a thread watches
/// for the file; the first mode seen is the one it was made with.
#[test]
fn a_new_database_is_never_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    for _ in 0..20 {
        let home = Home::new();
        let db = home.db();
        let watch = std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < until {
                if let Ok(meta) = std::fs::metadata(&db) {
                    return Some(meta.permissions().mode() & 0o777);
                }
            }
            None
        });
        let made = home.cli_command(&["keys", "create", "--create", "--name", "app"]);
        let mut under_umask = Command::new("sh");
        under_umask
            .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(made.get_program())
            .args(made.get_args());
        for (name, value) in made.get_envs() {
            match value {
                Some(value) => under_umask.env(name, value),
                None => under_umask.env_remove(name),
            };
        }
        let out = under_umask.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let first_seen = watch.join().unwrap().map(|mode| format!("{mode:o}"));
        assert_eq!(first_seen.as_deref(), Some("600"));
    }
}

/// A terminal command's output is its own words: the progress lines the daemon logs at
/// INFO (a schema made, a flow started) are left out unless RUST_LOG asks for them.
#[test]
fn a_command_logs_from_warn_unless_asked() {
    let home = Home::new();
    let out = home
        .cli_command(&["keys", "create", "--create", "--name", "app"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(!said.contains(" INFO "), "{said}");
    assert!(said.contains("Created API key"), "{said}");
}

/// `admin sessions revoke` without what to revoke names both ways: its usage line showed
/// `<ID>` alone, hiding `--all`.
#[test]
fn a_revoke_without_what_names_the_id_and_all() {
    let home = Home::new();
    home.create_key("app", &[]);
    let out = home.cli(&["admin", "sessions", "revoke"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = text(&out.stderr);
    assert!(said.contains(" <ID|--all>"), "{said}");
}

/// A key for states alone reaches no connection: its creation and the listing said "every
/// account" (`*`), as if it could read every account's tokens.
#[test]
fn a_key_for_states_alone_is_not_said_to_reach_every_account() {
    let home = Home::new();
    home.create_key("broker", &[]);
    let out = home.cli(&[
        "keys",
        "create",
        "--name",
        "web-app",
        "--namespace",
        "2fa",
        "--namespace",
        "as:*",
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains("Created API key \"web-app\" for 2fa, as:*; no connected account's tokens (a provider's take --namespace 'provider:NAME')."),
        "{said}"
    );
    let list = text(&home.cli(&["keys", "list"]).stdout);
    let accounts = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    assert_eq!(accounts("web-app").as_deref(), Some("-"), "{list}");
    assert_eq!(accounts("broker").as_deref(), Some("*"), "{list}");
}

#[test]
fn keys_refuses_bad_names_patterns_and_unknown_revokes() {
    let home = Home::new();
    home.create_key("first", &[]);
    // Command-line errors exit 2 (README: the systemd unit does not restart for them).
    let bad_name = home.cli(&["keys", "create", "--name", "has space"]);
    assert_eq!(bad_name.status.code(), Some(2));
    assert!(text(&bad_name.stderr).contains("key name"));
    let bad_ns = home.cli(&["keys", "create", "--name", "a", "--namespace", "a*b"]);
    assert_eq!(bad_ns.status.code(), Some(2));
    assert!(text(&bad_ns.stderr).contains("a*b"));
    // A pattern under connect: would reach nothing: every use of the key is refused.
    let flows = home.cli(&["keys", "create", "--name", "b", "--namespace", "connect:x"]);
    assert_eq!(flows.status.code(), Some(2), "{flows:?}");
    let err = text(&flows.stderr);
    assert!(
        err.contains("connect:x") && err.contains("'provider:*'"),
        "{err}"
    );
    let unknown = home.cli(&["keys", "revoke", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no active API key named \"nobody\""));
}

/// `check` stopped with exit 2 and one line on a value it parsed but could not take (a
/// number out of range, a notification target's bad URL), where the README says it
/// reports problems as FAIL lines and exits 1, and exits 2 only on a file that does not
/// parse.
#[test]
fn check_reports_a_value_it_cannot_take_and_exits_1() {
    let home = Home::new();
    for (toml, said) in [
        (
            "[states]\nmax_attempts_ceiling = 101\n",
            "FAIL  config: states.max_attempts_ceiling",
        ),
        (
            "[[notify]]\nurl = \"ftp://hooks.example/x\"\n",
            "FAIL  notify: notify[0].url",
        ),
    ] {
        home.write_config(toml);
        let out = home.cli(&["check"]);
        let report = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{toml}: {out:?}");
        assert!(report.contains(said), "{toml}: {report}");
    }
    home.write_config("[providers.p]\nisuer = \"https://x\"\n");
    let out = home.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `check` named a token endpoint as configured, a password or a query's key in it too;
/// it shows it without them now, as every other output does.
#[test]
fn check_shows_no_credential_of_a_token_url() {
    let home = Home::new();
    home.write_config(
        "[providers.p]\nauthorization_url = \"http://127.0.0.1:1/a\"\n\
         token_url = \"http://cid:pw-marker-1@127.0.0.1:1/t?key=q-marker-2\"\n\
         client_id = \"c\"\nclient_secret = \"cs\"\n",
    );
    let out = home.cli(&["check"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("token endpoint http://127.0.0.1:1/t?… unreachable"),
        "{said}"
    );
    assert!(
        !said.contains("pw-marker-1") && !said.contains("q-marker-2"),
        "{said}"
    );
}

/// `oauthd serve --db db` with a file-size limit of 8 blocks of 512 bytes: SQLite's first
/// pages fit, the schema does not.
fn serve_under_a_tiny_file_limit(db: &Path) -> std::process::Output {
    Command::new("sh")
        .args([
            "-c",
            "ulimit -f 8; exec \"$0\" serve --db \"$1\" --listen 127.0.0.1:0",
            BIN,
        ])
        .arg(db)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A first start that could not make the database's tables (the disk full; here a
/// file-size limit) left a file in WAL mode with no table, which every later start refused
/// as a database whose -wal was left behind (exit 2, which a unit's
/// RestartPreventExitStatus stops at): once there was room, it needed deleting by hand.
/// The start takes back what it began now, and the next one makes the database.
#[test]
fn a_first_start_that_could_not_make_the_tables_leaves_nothing_behind() {
    let home = Home::new();
    let db = home.db();
    let out = serve_under_a_tiny_file_limit(&db);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("cannot migrate"), "{err}");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = db.clone().into_os_string();
        file.push(suffix);
        assert!(
            !Path::new(&file).exists(),
            "{} was left behind: {err}",
            Path::new(&file).display()
        );
    }
    let out = home.cli(&["keys", "create", "--create", "--name", "app"]);
    assert!(out.status.success(), "{out:?}");

    // A --db that is a link to where the database is to be: the link stays, and what
    // SQLite began where it leads goes.
    let dir = db.parent().unwrap();
    let (target, link) = (dir.join("elsewhere.db"), dir.join("link.db"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = serve_under_a_tiny_file_limit(&link);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the link was removed"
    );
    assert!(
        !target.exists(),
        "what SQLite began where the link leads was left"
    );
}

#[test]
fn only_the_server_creates_a_database() {
    let home = Home::new();
    // A typo in --db: every command but the server refuses, naming the path it tried.
    for args in [
        &["keys", "create", "--name", "app"][..],
        &["keys", "list"],
        &["admin", "link"],
        &["admin", "sessions", "list"],
        &["connections", "list"],
    ] {
        let out = home.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no database at") && err.contains(&home.db().display().to_string()),
            "{args:?}: {err}"
        );
        assert!(err.contains("`keys create --create`"), "{args:?}: {err}");
        assert!(!home.db().exists(), "{args:?} created the database");
    }
    // `check` says what it cannot check yet, naming the path, and checks the rest.
    let out = home.cli(&["check"]);
    assert!(out.status.success(), "{out:?}");
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!(
            "skip  store: no database at {}",
            home.db().display()
        )),
        "{report}"
    );
    assert!(!home.db().exists(), "check created the database");
    // Before the first start, a key can be made on purpose.
    let out = home.cli(&["keys", "create", "--create", "--name", "app"]);
    assert!(out.status.success(), "{out:?}");
    assert!(home.db().exists());
}

/// Runs `args` with `--config` of `home`, from another directory (`elsewhere`), with no
/// database or config named in the environment.
fn run_from_elsewhere(home: &Home, elsewhere: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(home.config())
        .current_dir(elsewhere)
        .env_remove("OAUTHD_DB")
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap()
}

/// A config file without `db` leaves the database at the default, `oauthd.db` in the
/// working directory: a command run from elsewhere finds another database, or none, and
/// says where its path came from; the start says so too.
#[test]
fn a_config_file_naming_no_db_is_said_with_the_database_a_command_met() {
    let home = Home::new();
    std::fs::write(home.config(), "").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_from_elsewhere(&home, elsewhere.path(), &["keys", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = text(&out.stderr);
    let note = format!(
        "the default `oauthd.db` in the directory oauthd runs in: {} names no `db`",
        home.config().display()
    );
    assert!(said.contains(&note), "{said}");
    // An unrelated database met there is named the same way.
    std::fs::write(elsewhere.path().join("oauthd.db"), "").unwrap();
    let out = run_from_elsewhere(&home, elsewhere.path(), &["keys", "list"]);
    let said = text(&out.stderr);
    assert!(said.contains("is empty") && said.contains(&note), "{said}");
    // With `db` named, no such note.
    std::fs::write(home.config(), "db = \"oauthd.db\"\n").unwrap();
    let out = run_from_elsewhere(&home, elsewhere.path(), &["keys", "list"]);
    assert!(!text(&out.stderr).contains("names no `db`"), "{out:?}");
}

#[test]
fn a_relative_db_in_a_config_file_is_beside_the_file() {
    let home = Home::new();
    std::fs::write(home.config(), "db = \"state/oauthd.db\"\n").unwrap();
    std::fs::create_dir(home.dir.path().join("state")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_from_elsewhere(
        &home,
        elsewhere.path(),
        &["keys", "create", "--create", "--name", "app"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(home.dir.path().join("state/oauthd.db").exists());
    assert!(!elsewhere.path().join("state").exists());
}

#[test]
fn a_relative_secret_file_in_a_config_file_is_beside_the_file() {
    let home = Home::new();
    std::fs::write(home.dir.path().join("peer-secret"), "s3cret\n").unwrap();
    std::fs::write(
        home.config(),
        "[providers.peer]\nauthorization_url = \"https://peer.example/authorize\"\n\
         token_url = \"https://peer.example/token\"\nclient_id = \"app\"\n\
         client_secret_file = \"peer-secret\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_from_elsewhere(&home, elsewhere.path(), &["providers", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("peer"), "{out:?}");
}

#[test]
fn missing_parent_directory_is_explained() {
    let home = Home::new();
    let db = home.dir.path().join("no/such/dir/oauthd.db");
    let out = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    // A configuration error: exit 2, which the systemd unit does not restart for.
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("mkdir -p"),
        "{err}"
    );
}

/// A vault key that is not there or is no key stops the start as a configuration error
/// (exit 2: the systemd unit does not restart for it), naming the variable (or the config
/// file's setting) that set it, before a database is made.
#[test]
fn a_wrong_vault_key_stops_the_start_naming_its_variable_and_makes_no_database() {
    let home = Home::new();
    home.write_config("");
    let missing = home.dir.path().join("no-such.key");
    let missing = missing.to_str().unwrap();
    for (env, said) in [
        (
            ("OAUTHD_KEY_FILE", missing),
            "(OAUTHD_KEY_FILE): No such file",
        ),
        (
            ("OAUTHD_KEY", "notakey"),
            "OAUTHD_KEY: a vault key is 32 bytes",
        ),
        // An app's API key in the vault key's variable (a shared .env file).
        (
            (
                "OAUTHD_KEY",
                "oauthd_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
            ),
            "OAUTHD_KEY holds an API key",
        ),
    ] {
        let out = home.serve_once_with(&[env], "127.0.0.1:0");
        assert_eq!(out.status.code(), Some(2), "{env:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(said), "{env:?}: {err}");
        assert!(!err.contains("key file OAUTHD_KEY"), "{err}");
        assert!(!home.db().exists(), "{env:?}: a database was made");
    }
    // Named by the config file's `key_file` (it was said to be OAUTHD_KEY_FILE's, unset).
    home.write_config(&format!("key_file = {missing:?}\n"));
    let out = home.serve_once_with(&[], "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "key file {missing} (`key_file` in the config file): No such file"
        )),
        "{err}"
    );
    // With how to make it before a first start, and why not once oauthd has served.
    assert!(
        err.contains(&format!("(umask 077; oauthd keygen > {missing})"))
            && err.contains(
                "A new key for a store served before leaves what the old one sealed unreadable"
            ),
        "{err}"
    );
    assert!(!home.db().exists(), "a database was made");
    // `check` says the same.
    let report = text(&home.cli(&["check"]).stdout);
    assert!(
        report.lines().any(|l| l.starts_with(&format!(
            "FAIL  key file: {missing}: No such file or directory (os error 2): oauthd makes a key file only beside an SQLite database"
        )) && l.contains("oauthd keygen >")),
        "{report}"
    );
}

/// `connections import` of one JSON line in `home`.
fn import_line(home: &Home, line: &str) -> std::process::Output {
    let lines = home.dir.path().join("tokens.jsonl");
    std::fs::write(&lines, format!("{line}\n")).unwrap();
    home.cli(&["connections", "import", "--file", lines.to_str().unwrap()])
}

/// A UTF-16 file (what PowerShell 5's `>` and `Out-File` write) is refused as such, before
/// any line: each line was refused as "not UTF-8" or "not a JSON object", none saying why.
#[test]
fn an_import_of_utf16_text_says_so() {
    let home = Home::new();
    home.write_config(GH);
    home.create_key("app", &[]);
    let line = r#"{"provider": "gh", "account": "a", "access_token": "t"}"#;
    let mut bytes = vec![0xFF, 0xFE];
    for unit in format!("{line}\r\n").encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    let path = home.dir.path().join("utf16.jsonl");
    std::fs::write(&path, &bytes).unwrap();
    let out = home.cli(&["connections", "import", "--file", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("is UTF-16 text") && err.contains("Out-File -Encoding utf8"),
        "{err}"
    );
    assert!(text(&out.stdout).is_empty(), "{out:?}");
}

/// An imported lifetime is kept for ten years at most, whichever way it is given: an
/// `expires_at` in 9999 was stored as it was, and an `expires_in` too large for a double to
/// hold exactly was refused as "not a whole number of seconds".
#[test]
fn an_imported_lifetime_is_kept_for_ten_years_at_most() {
    let home = Home::new();
    home.write_config(GH);
    home.create_key("app", &[]);
    for (account, expiry) in [
        ("at", r#""expires_at": "9999-12-31T23:59:59Z""#),
        ("in", r#""expires_in": 100000000000000000000"#),
        ("max", r#""expires_in": 18446744073709551615"#),
        ("text", r#""expires_in": "1e20""#),
    ] {
        let out = import_line(
            &home,
            &format!(
                r#"{{"provider": "gh", "account": "{account}", "access_token": "t", {expiry}}}"#
            ),
        );
        assert!(out.status.success(), "{account}: {out:?}");
    }
    let listed: serde_json::Value =
        serde_json::from_slice(&home.cli(&["connections", "list", "--json"]).stdout).unwrap();
    let ten_years = chrono::Utc::now() + chrono::Duration::days(3651);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{listed}");
    for row in rows {
        let at = chrono::DateTime::parse_from_rfc3339(row["expires_at"].as_str().unwrap()).unwrap();
        assert!(at < ten_years, "{row}");
    }
}

/// A new vault key in `vault.key` in `home`, for oauthd to be given as OAUTHD_KEY_FILE.
fn key_file_of_its_own(home: &Home) -> std::path::PathBuf {
    let vault = home.dir.path().join("vault.key");
    std::fs::write(
        &vault,
        Command::new(BIN).arg("keygen").output().unwrap().stdout,
    )
    .unwrap();
    vault
}

/// Once oauthd has served a database, a terminal command that finds no key file beside it
/// makes none: run from a shell without the daemon's OAUTHD_KEY_FILE, it would seal what it
/// writes under a key of its own, which the daemon cannot open and which stops the
/// daemon's next start. (Before the first start, a command makes it: a box set up from the
/// terminal first, see the device flow's CLI test.)
#[test]
fn a_command_makes_no_key_file_beside_a_database_oauthd_served() {
    let home = Home::new();
    home.create_key("app", &[]);
    let vault = key_file_of_its_own(&home);
    let vault_env = ("OAUTHD_KEY_FILE", vault.to_str().unwrap());
    home.start_with_env(&[vault_env]).signal_and_wait("TERM");
    let key_file = home.key_file();
    assert!(
        !key_file.exists(),
        "serve made a key file beside its OAUTHD_KEY_FILE"
    );

    let out = home.cli(&["connections", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("no key file at {}", key_file.display()))
            && err.contains("OAUTHD_KEY_FILE")
            && err.contains("no key was made"),
        "{err}"
    );
    assert!(!key_file.exists(), "a command made the key file");

    // Nor does the daemon itself, started without its key: a new key would leave what
    // the old one sealed unreadable, and seal what comes next where the old key cannot
    // open it once it is back. `check` says the same before the start.
    home.write_config("");
    let out = home.serve_once_with(&[], "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("no key file at {}", key_file.display()))
            && err.contains("OAUTHD_KEY_FILE")
            && err.contains("oauthd keygen >"),
        "{err}"
    );
    assert!(!key_file.exists(), "serve made the key file");
    let out = home.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = text(&out.stdout);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL  key file: no vault key: oauthd has served this database")),
        "{report}"
    );

    // With the daemon's key named, the command runs.
    let out = home
        .cli_command(&["connections", "list"])
        .env(vault_env.0, vault_env.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!key_file.exists(), "a command made the key file");
}

/// The start-over advice followed while the daemon's key was elsewhere (its
/// OAUTHD_KEY_FILE, which sealed a state's data): a command sealed what it imported with
/// the new key file beside the database, and the daemon's next start was refused naming
/// only the key it lacks. It names the file beside the database that holds it, and that
/// both keys are needed; done so, the token and the state's data open.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_lacking_the_key_a_command_made_beside_the_database_names_that_file() {
    let home = Home::new();
    home.write_config(GH);
    let key = home.create_key("app", &[]);
    let vault = key_file_of_its_own(&home);
    let vault_env = ("OAUTHD_KEY_FILE", vault.to_str().unwrap());
    let d = home.start_with_env(&[vault_env]);
    let data = serde_json::json!({"n": 1});
    let state = d
        .create_state(
            &key,
            serde_json::json!({"namespace": "login", "data": data}),
        )
        .await;
    d.signal_and_wait("TERM");
    // "To start over with a new key": made beside the database, then used by a command.
    let made = Command::new(BIN).arg("keygen").output().unwrap();
    std::fs::write(home.key_file(), &made.stdout).unwrap();
    let out = import_line(
        &home,
        "{\"provider\":\"gh\",\"account\":\"second\",\"access_token\":\"t-second\"}",
    );
    assert!(out.status.success(), "{out:?}");
    let out = home.serve_once_with(&[vault_env], "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "The key file beside the database, {}, holds them",
            home.key_file().display()
        )) && err.contains("needs both keys"),
        "{err}"
    );
    // As it says: the line added to the daemon's key file.
    let mut both = std::fs::read_to_string(&vault).unwrap();
    both.push_str(&String::from_utf8(made.stdout).unwrap());
    std::fs::write(&vault, both).unwrap();
    let d = home.start_with_env(&[vault_env]);
    let (status, body) = d.get("/v1/connections/gh/second/token", &key).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &serde_json::json!("t-second")),
        "{body}"
    );
    let (status, body) = d.consume(&key, &state, "login").await;
    assert_eq!((status, &body["data"]), (200, &data), "{body}");
    d.signal_and_wait("TERM");
}

/// A command run with another key file than the serving oauthd's (OAUTHD_KEY_FILE left set
/// in a shell) was refused with advice to add the daemon's key to the command's file as a
/// further line. Followed, the command sealed with its own key, which the daemon lacks:
/// the imported token answered 503 there, and the daemon's next start was refused. Now
/// the refusal says the serving oauthd's key is the one to use and where it is, and a
/// command that seals tokens is refused while a serving oauthd cannot open what it seals.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_with_another_key_file_than_the_serving_oauthds_is_sent_to_its_key() {
    let home = Home::new();
    home.write_config(GH);
    let key = home.create_key("app", &[]);
    let d = home.start();
    let tokens = |account: &str| {
        let lines = home.dir.path().join(format!("{account}.jsonl"));
        std::fs::write(
            &lines,
            format!("{{\"provider\":\"gh\",\"account\":\"{account}\",\"access_token\":\"t-{account}\"}}\n"),
        )
        .unwrap();
        lines
    };
    let import_with = |file: &Path, account: &str| {
        let lines = tokens(account);
        home.cli_command(&["connections", "import", "--file", lines.to_str().unwrap()])
            .env("OAUTHD_KEY_FILE", file)
            .output()
            .unwrap()
    };
    let other = key_file_of_its_own(&home);
    let unset = format!(
        "the key file beside the database, {}, holds it (unset OAUTHD_KEY_FILE)",
        home.key_file().display()
    );
    // No token stored yet: refused as the serving oauthd seals with another key, and sent
    // to the file that holds it (it said only "the same key file, or a copy of it").
    let out = import_with(&other, "zero");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("which the key loaded from") && err.contains(&unset),
        "{err}"
    );
    let first = tokens("first");
    let out = home.cli(&["connections", "import", "--file", first.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let out = import_with(&other, "second");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("An oauthd serving this store seals with vault key")
            && err.contains(&format!(
                "the key file beside the database, {}, holds it (unset OAUTHD_KEY_FILE)",
                home.key_file().display()
            )),
        "{err}"
    );
    assert!(!err.contains("further lines"), "{err}");

    // The old advice followed anyway: the daemon's key added after the command's own.
    let both = home.dir.path().join("both.key");
    let daemons = std::fs::read_to_string(home.key_file()).unwrap();
    std::fs::write(
        &both,
        format!("{}{daemons}", std::fs::read_to_string(&other).unwrap()),
    )
    .unwrap();
    let out = import_with(&both, "third");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("an oauthd serving this store")
            && err.contains("every token this command sealed would answer 503 vault_error there")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    let (status, _) = d.get("/v1/connections/gh/third/token", &key).await;
    assert_eq!(status, 404, "the refused import stored the token");
    // A command that seals nothing still runs with it.
    let out = home
        .cli_command(&["connections", "list"])
        .env("OAUTHD_KEY_FILE", &both)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // With the daemon's key, the import runs and its token opens there.
    let out = home.cli(&[
        "connections",
        "import",
        "--file",
        tokens("fourth").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let (status, body) = d.get("/v1/connections/gh/fourth/token", &key).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &serde_json::json!("t-fourth")),
        "{body}"
    );
    d.signal_and_wait("TERM");
}

/// `check` and `backup` run without the OAUTHD_KEY_FILE a serving oauthd reads: `check`
/// failed the key file as lost (and the daemon ran fine), `backup` said to keep a key file
/// that does not exist. Both say where the key is and that the command was not told; so
/// do the other commands, which offered to make a new key.
#[test]
fn commands_without_the_serving_oauthds_key_file_say_where_the_key_is() {
    let home = Home::new();
    home.create_key("app", &[]);
    let vault = home.dir.path().join("vault.key");
    let made = Command::new(BIN).arg("keygen").output().unwrap();
    std::fs::write(&vault, &made.stdout).unwrap();
    let vault_env = ("OAUTHD_KEY_FILE", vault.to_str().unwrap());
    let d = home.start_with_env(&[vault_env]);
    let id = text(&made.stderr)
        .trim()
        .trim_start_matches("key id ")
        .to_owned();

    let out = home.cli(&["check"]);
    let report = text(&out.stdout);
    assert!(
        report.lines().any(|l| l.starts_with("FAIL  key file: ")
            && l.contains(&format!(
                "An oauthd serving this store seals with key {id} now"
            ))
            && l.contains("give this command the same")),
        "{report}"
    );
    // A command that would seal says the same, and offers no new key while an oauthd
    // serves: made, it split the data between two keys once the daemon stopped.
    let out = home.cli(&["connections", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "An oauthd serving this store seals with key {id} now"
        )) && !said.contains("oauthd keygen >"),
        "{said}"
    );
    let copy = home.dir.path().join("copy.db");
    let out = home.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "there is no key file at {}",
            home.key_file().display()
        )) && said.contains("which this command was not given"),
        "{said}"
    );
    // Given, but naming no file: said as such.
    let typo = home.dir.path().join("typo.key");
    let out = home
        .cli_command(&["backup", copy.to_str().unwrap()])
        .env("OAUTHD_KEY_FILE", &typo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "OAUTHD_KEY_FILE names {}, which does not exist",
            typo.display()
        )),
        "{said}"
    );
    drop(d);
}

/// A provider "gh" (GitHub's preset) for the import tests.
const GH: &str = "[providers.gh]\npreset = \"github\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";

/// A rekey that met a value it could not open (sealed with a key the key file lacks)
/// stopped half-way: the key file already sealed with the new key, and the message named
/// only the missing key, so an operator who put back the key file as it was stranded
/// what had been moved. Every value is looked at first now, and nothing changes.
#[test]
fn a_rekey_that_cannot_open_every_value_changes_nothing() {
    let home = Home::new();
    home.write_config(GH);
    assert!(home.start().signal_and_wait("TERM").success());
    let import = |account: &str| {
        let file = home.dir.path().join(format!("{account}.jsonl"));
        let line = format!(
            "{{\"provider\":\"gh\",\"account\":\"{account}\",\"access_token\":\"t-{account}\"}}\n"
        );
        std::fs::write(&file, line).unwrap();
        let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    };
    let key_lines = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    };
    // "a" sealed with the first key; "b" with a second, which seals once first; then the
    // first key is lost from the file.
    import("a");
    let first = key_lines(&std::fs::read_to_string(home.key_file()).unwrap());
    let keygen = Command::new(common::BIN).arg("keygen").output().unwrap();
    let second = key_lines(&String::from_utf8(keygen.stdout).unwrap());
    std::fs::write(home.key_file(), format!("{second}{first}")).unwrap();
    import("b");
    std::fs::write(home.key_file(), &second).unwrap();
    let sealed = || -> Vec<Vec<u8>> {
        let conn = rusqlite::Connection::open(home.db()).unwrap();
        let mut q = conn
            .prepare("SELECT access_token FROM connections ORDER BY account")
            .unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = sealed();

    let out = home.cli(&["rekey"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1 stored value(s) do not open with the keys in ")
            && err.contains("nothing was changed. The first: gh/a's access_token"),
        "{err}"
    );
    assert_eq!(
        key_lines(&std::fs::read_to_string(home.key_file()).unwrap()),
        second,
        "the key file changed"
    );
    assert_eq!(sealed(), before, "a value was re-sealed");
}

/// Imports a token for gh/me from a file, as the terminal does.
fn import_gh_me(home: &Home) -> std::process::Output {
    let file = home.dir.path().join("tokens.jsonl");
    std::fs::write(
        &file,
        "{\"provider\":\"gh\",\"account\":\"me\",\"access_token\":\"t\"}\n",
    )
    .unwrap();
    home.cli(&["connections", "import", "--file", file.to_str().unwrap()])
}

/// A provider added to the config while oauthd runs, and connected from the terminal (here
/// by import): the running oauthd, which serves the config it read at its start, answered
/// `404 unknown_provider` for it, while the terminal said it was done and `check` said
/// `ok`. Both now say that the config changed after the serving oauthd started.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_changed_after_the_start_is_pointed_out() {
    let home = Home::new();
    home.write_config("");
    let key = home.create_key("app", &[]);
    let d = home.start();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    home.write_config(GH);
    let out = import_gh_me(&home);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    let said = "and the oauthd serving this store started before it: an oauthd serves the \
                configuration it read at its start, so if it reads this file, restart it";
    assert!(err.contains(said), "{err}");
    let (status, _) = d.get("/v1/connections/gh/me/token", &key).await;
    assert_eq!(status, 404, "the running oauthd knows the provider");
    let report = text(&home.cli(&["check"]).stdout);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warn  config: ") && l.contains(said)),
        "{report}"
    );
    // Restarted, it serves the provider, and nothing is said.
    d.signal_and_wait("TERM");
    let d = home.start();
    assert_eq!(d.get("/v1/connections/gh/me/token", &key).await.0, 200);
    let report = text(&home.cli(&["check"]).stdout);
    assert!(!report.contains("restart it"), "{report}");
    // With two serving the store, those started before the change are told by their start
    // times (each may read a config file of its own).
    let second = home.start();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    home.write_config(GH);
    let report = text(&home.cli(&["check"]).stdout);
    assert!(
        report.contains("2 of the 2 oauthd serving this store started before it (at 20")
            && report
                .contains("; one that reads another config file needs no restart for this one)"),
        "{report}"
    );
    second.signal_and_wait("TERM");
    d.signal_and_wait("TERM");
}

/// A namespace table that leaves out the `sliding = false` its prefix's table sets allows
/// sliding states (only the most specific table applies): `check` and the start say so.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_looser_than_its_prefix_table_is_pointed_out() {
    let home = Home::new();
    home.write_config(
        "[states.namespaces.\"bridge:*\"]\nsliding = false\n[states.namespaces.\"bridge:sess\"]\ndefault_ttl_seconds = 7200\n",
    );
    home.create_key("app", &[]);
    let said = "[states.namespaces.\"bridge:sess\"] leaves out what a broader table that matches the same namespaces sets";
    let report = text(&home.cli(&["check"]).stdout);
    assert!(
        report.lines().any(|l| l.starts_with("warn  config: ")
            && l.contains(said)
            && l.contains("sliding is true there")),
        "{report}"
    );
    let d = home.start();
    d.signal_and_wait("TERM");
    assert!(home.log_text().contains(said), "{}", home.log_text());
}

/// Connections that need their owner to connect again, or whose refreshes fail: `check`
/// said every line was ok (exit 0) while the apps' token calls answered 409 or 503; a
/// check run from cron now hears of them.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_connections_that_need_reauth_or_fail_to_refresh() {
    let home = Home::new();
    home.create_key("app", &[]);
    home.write_config(GH);
    let file = home.dir.path().join("tokens.jsonl");
    let lines: Vec<String> = ["me", "you", "them"]
        .iter()
        .map(|a| {
            serde_json::json!({"provider": "gh", "account": a, "access_token": format!("t-{a}")})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let report = text(&home.cli(&["check"]).stdout);
    assert!(!report.contains("connect again"), "{report}");

    let db = rusqlite::Connection::open(home.db()).unwrap();
    db.execute_batch(
        "UPDATE connections SET status = 'needs_reauth', failures = 1 WHERE account = 'you';
         UPDATE connections SET failures = 3 WHERE account = 'them';",
    )
    .unwrap();
    drop(db);
    let report = text(&home.cli(&["check"]).stdout);
    let line = report
        .lines()
        .find(|l| l.starts_with("warn  connections: "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        line.contains("1 of 3 need(s) the account's owner to connect again"),
        "{line}"
    );
    assert!(line.contains("): gh/you;"), "{line}");
    // The commands it names read the same store, run from wherever (cron's directory).
    let config = home.config();
    assert!(line.ends_with(&format!("1 refresh(es) failing, tried again with a backoff (`oauthd connections show --config {c} <provider> <account>` says why; `oauthd connections refresh --config {c} <provider> <account>` tries at once): gh/them", c = config.display())), "{line}");
}

/// Connections whose provider the config does not have, as when the config file is left
/// out (a unit or a shell without `--config`): `check` said all was well and the start said
/// nothing, while every token call answered `provider_missing`. Both say so now, and that
/// no config file was given; so do `connections list` and `connections refresh` (which
/// said "Refreshing…" first). And `connections delete` deleted
/// such a connection, revoking nothing at the provider, with exit 0: without a config
/// file, or with one that lacks the provider, it now stops unless told `--force`.
#[tokio::test(flavor = "multi_thread")]
async fn connections_of_providers_not_in_the_config_are_pointed_out() {
    let home = Home::new();
    home.create_key("app", &[]);
    home.write_config(GH);
    let out = import_gh_me(&home);
    assert!(out.status.success(), "{out:?}");
    let said = "1 connection(s) belong to providers not in the config (no config file was given";
    let report = text(&home.cli(&["check"]).stdout);
    assert!(!report.contains("providers not in"), "{report}");

    std::fs::remove_file(home.config()).unwrap();
    let report = text(&home.cli(&["check"]).stdout);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warn  connections: ") && l.contains(said) && l.ends_with(
                "gh (1); their tokens are not handed out by an oauthd run with it (is it the config the running oauthd reads?) (provider_missing) until the providers are configured again"
            )),
        "{report}"
    );
    let d = home.start();
    assert!(home.log_text().contains(said), "{}", home.log_text());
    d.signal_and_wait("TERM");
    let out = home.cli(&["connections", "list"]);
    assert!(text(&out.stderr).contains(said), "{out:?}");
    // A refresh says why before it says it refreshes.
    let out = home.cli(&["connections", "refresh", "gh", "me"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(
            "nothing was refreshed: provider gh is not configured (no config file was given"
        ) && !text(&out.stderr).contains("Refreshing"),
        "{out:?}"
    );
    let out = home.cli(&["connections", "delete", "gh", "me", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(
            "nothing was deleted: provider gh is not configured (no config file was given"
        ),
        "{out:?}"
    );
    assert!(home
        .cli(&["connections", "show", "gh", "me"])
        .status
        .success());
    // A config file given that lacks the provider (another one than the daemon reads):
    // the same, naming the file.
    home.write_config("");
    let out = home.cli(&["connections", "delete", "gh", "me", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!(
            "nothing was deleted: provider gh is not configured (not in the config file {};",
            home.config().display()
        )),
        "{out:?}"
    );
    assert!(home
        .cli(&["connections", "show", "gh", "me"])
        .status
        .success());
    let out = home.cli(&["connections", "delete", "gh", "me", "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("is not configured (not in the config given)"),
        "{out:?}"
    );
    assert!(!home
        .cli(&["connections", "show", "gh", "me"])
        .status
        .success());
}

/// An import file with lines that cannot be imported: each is refused by its number and
/// the rest go on. A line that was not UTF-8 ended the run ("stream did not contain valid
/// UTF-8", no summary, the lines after it never read), a line of any length was read
/// whole into memory, and a token with a line break (a header injected in every app that
/// sends it) was stored. Through HTTP, tokens as long as the import allows were refused
/// as a body too large (the limit followed the states' `max_data_bytes`).
#[tokio::test(flavor = "multi_thread")]
async fn an_import_refuses_bad_lines_one_by_one() {
    let home = Home::new();
    home.write_config(GH);
    let key = home.create_key("app", &[]);
    let line = |account: &str, token: &str| {
        serde_json::json!({"provider": "gh", "account": account, "access_token": token})
            .to_string()
            .into_bytes()
    };
    let mut file = Vec::new();
    for part in [
        // After a byte-order mark, as Notepad saves a file ("UTF-8 with BOM").
        [b"\xef\xbb\xbf".to_vec(), line("first", "t1")].concat(),
        b"{\"provider\":\"gh\",\"account\":\"bad\",\"access_token\":\"\xff\xfe\"}".to_vec(),
        line("long", &"x".repeat(70_000)),
        line("broken", "tok\nInjected: yes"),
        line("last", "t5"),
    ] {
        file.extend_from_slice(&part);
        file.push(b'\n');
    }
    let path = home.dir.path().join("tokens.jsonl");
    std::fs::write(&path, &file).unwrap();
    let out = home.cli(&["connections", "import", "--file", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = text(&out.stdout);
    for expected in [
        "line 1: created gh/first",
        "line 2: refused: not UTF-8",
        "line 3: refused: longer than 64 KiB",
        "line 4: refused: access_token holds a character other than visible ASCII",
        "line 5: created gh/last",
    ] {
        assert!(said.contains(expected), "{expected:?} in {said}");
    }
    // The summary once, not a second count after it.
    let err = text(&out.stderr);
    assert_eq!(err.matches("refused").count(), 1, "{err}");
    // As a line of its own, as without a refused line (it was "oauthd: 2 imported, …").
    assert!(
        err.lines().any(|l| l == "2 imported, 0 kept, 3 refused."),
        "{err}"
    );

    let d = home.start();
    let long = "y".repeat(16_000);
    let (status, body) = d
        .put(
            "/v1/connections/gh/big",
            &key,
            serde_json::json!({"access_token": long, "refresh_token": long}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // `expires_in` as text, as providers write it at times: read as its number; text that
    // is no whole number is refused, naming the field.
    let (status, body) = d
        .put(
            "/v1/connections/gh/text",
            &key,
            serde_json::json!({"access_token": "t", "expires_in": "3600.0"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (expires - chrono::Utc::now().timestamp() - 3600).abs() < 60,
        "{body}"
    );
    let (status, body) = d
        .put(
            "/v1/connections/gh/soon",
            &key,
            serde_json::json!({"access_token": "t", "expires_in": "soon"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("expires_in must be a whole number of seconds"),
        "{body}"
    );
    d.signal_and_wait("TERM");
}

/// `check` is what a new user runs before the first start: with no database yet it says
/// so and still checks the providers (here one nobody answers for).
#[test]
fn check_before_the_first_start_checks_the_providers() {
    let home = Home::new();
    home.write_config(
        "[providers.peer]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    );
    let out = home.cli(&["check"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("skip  store: no database at")),
        "{report}"
    );
    // The line says why (reqwest's own text names only the URL).
    assert!(
        report.lines().any(|l| l.starts_with(
            "FAIL  provider peer: token endpoint http://127.0.0.1:9/token unreachable"
        ) && l.contains("Connection refused")),
        "{report}"
    );
    assert!(!home.db().exists(), "check made a database");
}

/// A client secret in a config file others may read (a config left 0644), a secret file
/// likewise, and a trusted proxy range that holds every address: `check` said `ok config`
/// for all of them (the start warned of the range only).
#[test]
fn secrets_others_may_read_and_a_wide_proxy_range_are_warned_of_by_check() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let secret = home.dir.path().join("other.secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let provider = |name: &str, secret: &str| {
        format!(
            "[providers.{name}]\nauthorization_url = \"http://127.0.0.1:9/authorize\"\n\
             token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\n{secret}\n"
        )
    };
    // A [[notify]] target with no name is named by its URL's host (said without the URL,
    // which may carry a token).
    let hook_secret = home.dir.path().join("hook.secret");
    std::fs::write(&hook_secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let hook = format!(
        "[[notify]]\nurl = \"https://hooks.example/t0ken\"\nsecret_file = \"{}\"\n",
        hook_secret.display()
    );
    home.write_config(&format!(
        "[limits]\ntrusted_proxies = [\"0.0.0.0/0\"]\n{}{}{hook}",
        provider("peer", "client_secret = \"s\""),
        provider(
            "other",
            &format!("client_secret_file = \"{}\"", secret.display())
        )
    ));
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&home.config(), 0o644);
    mode(&secret, 0o644);
    mode(&hook_secret, 0o644);
    let report = text(&home.cli(&["check"]).stdout);
    assert!(!report.contains("t0ken"), "{report}");
    for said in [
        "warn  secrets: the config file, which holds the client_secret of peer (client_secret_file keeps a secret in a file of its own",
        "warn  secrets: provider other's client_secret_file:",
        "warn  secrets: the secret_file of the [[notify]] target hooks.example:",
        "warn  config: limits.trusted_proxies: 0.0.0.0/0 holds many addresses",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(said)),
            "{said}\n{report}"
        );
    }
    // Made 600 by root, a file the service's user no longer reads: the hint says chown.
    assert!(
        report.contains(
            "(mode 644): chmod 600 it (and chown it to the user oauthd runs as, if another"
        ),
        "{report}"
    );
    mode(&home.config(), 0o600);
    mode(&secret, 0o600);
    mode(&hook_secret, 0o600);
    let report = text(&home.cli(&["check"]).stdout);
    assert!(!report.contains("warn  secrets"), "{report}");
}

/// An address another program listens on is explained, and leaves no database behind.
#[test]
fn a_taken_address_is_explained_and_makes_no_database() {
    let home = Home::new();
    home.write_config("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = home.serve_once_with(&[], &address);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {address}")) && err.contains("--listen"),
        "{err}"
    );
    assert!(!home.db().exists(), "a database was made");
}

/// `limits.trusted_proxies` takes ranges; one with bits set past its length says which
/// range was meant.
#[test]
fn a_trusted_proxy_range_with_host_bits_is_a_config_error_naming_the_range() {
    let home = Home::new();
    home.write_config("[limits]\ntrusted_proxies = [\"172.16.0.0/12\", \"10.0.0.5/8\"]\n");
    let out = home.serve_once();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("the range is 10.0.0.0/8"), "{err}");
    assert!(err.contains("trusted_proxies"), "{err}");
}

/// `--db` naming a directory, or a file that is no database (the config file), is a
/// configuration error that says what `--db` is for; the file is left as it was.
#[test]
fn a_db_path_that_is_no_database_is_explained() {
    let home = Home::new();
    let config = home.dir.path().join("oauthd.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
    let dir = home.dir.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    for (db, said) in [
        (&config, "is not an SQLite database"),
        (&dir, "is a directory"),
    ] {
        let mut serve = Command::new(BIN);
        for name in common::OAUTHD_VARIABLES {
            serve.env_remove(name);
        }
        let out =
            common::run_until_exit(serve.arg("--db").arg(db).args(["--listen", "127.0.0.1:0"]));
        assert_eq!(out.status.code(), Some(2), "{db:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(said) && err.contains("--db"), "{db:?}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "listen = \"127.0.0.1:0\"\n"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "made files in the directory"
    );
}

/// A database named by a relative path is named in full in what oauthd says of it: run
/// from another directory, the same words name another file.
#[test]
fn a_relative_database_path_is_named_in_full() {
    let home = Home::new();
    std::fs::write(home.dir.path().join("notes.txt"), "not a database\n").unwrap();
    let mut cmd = Command::new(BIN);
    for name in common::OAUTHD_VARIABLES {
        cmd.env_remove(name);
    }
    let out = cmd
        .current_dir(home.dir.path())
        .args(["keys", "list", "--db", "notes.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let full = std::fs::canonicalize(home.dir.path().join("notes.txt")).unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{} is not an SQLite database", full.display())),
        "{err}"
    );
}

/// A value from the environment is named as such: an operator whose variable comes from a
/// shell profile or a unit file would look for it in the config file.
#[test]
fn values_from_the_environment_are_named_by_their_variables() {
    let home = Home::new();
    let listen = Command::new(BIN)
        .args(["keys", "list", "--db"])
        .arg(home.db())
        .env("OAUTHD_LISTEN", "bogus")
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(listen.status.code(), Some(2), "{listen:?}");
    assert!(text(&listen.stderr).contains("OAUTHD_LISTEN"), "{listen:?}");
    let config = Command::new(BIN)
        .args(["keys", "list", "--db"])
        .arg(home.db())
        .env("OAUTHD_CONFIG", home.dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(config.status.code(), Some(2), "{config:?}");
    assert!(text(&config.stderr).contains("OAUTHD_CONFIG"), "{config:?}");
}

/// A variable oauthd reads, misspelled, was never read and said nothing: with
/// `OAUTHD_METRICS_TOKN` set, `/metrics` answered anyone. Now it stops oauthd (exit 2,
/// nothing created) with the name it meant; another `OAUTHD_*` name is warned of.
#[test]
fn a_misspelled_variable_stops_oauthd_and_an_unknown_one_is_warned_of() {
    let home = Home::new();
    home.write_config("");
    let out = home.serve_once_with(
        &[("OAUTHD_METRICS_TOKN", "averylongtokenvalue1234")],
        "127.0.0.1:0",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(
            "the environment variable OAUTHD_METRICS_TOKN is not one oauthd reads: did you \
             mean OAUTHD_METRICS_TOKEN?"
        ),
        "{out:?}"
    );
    assert!(!home.db().exists(), "a database was made");
    let out = home
        .cli_command(&["check"])
        .env("OAUTHD_CACHE_DIR", "/tmp")
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(
        said.contains(
            "warn  environment: the environment variable OAUTHD_CACHE_DIR is not one oauthd reads"
        ),
        "{said}"
    );
    // A terminal command says it too: it looks for the default database, not the one the
    // variable was meant to name.
    let out = home
        .cli_command(&["keys", "list"])
        .env("OAUTHD_DB_FILE", "/tmp/elsewhere.db")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr)
            .contains("warning: the environment variable OAUTHD_DB_FILE is not one oauthd reads"),
        "{out:?}"
    );
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let home = Home::new();
    home.write_config("[states]\nmax_ttl_seconds = 0\n");
    let out = home.serve_once();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("states.max_ttl_seconds"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !home.db().exists(),
        "nothing is created when the config is wrong"
    );

    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/oauthd.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/oauthd.toml"));
}

#[test]
fn plain_invocation_serves_and_env_vars_override_defaults() {
    // `oauthd` with no subcommand serves; OAUTHD_DB / OAUTHD_LISTEN / OAUTHD_CONFIG apply.
    let home = Home::new();
    home.write_config("");
    let mut child = Command::new(BIN)
        .env("OAUTHD_DB", home.db())
        .env("OAUTHD_LISTEN", "127.0.0.1:0")
        .env("OAUTHD_CONFIG", home.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("oauthd listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("listening line");
    assert!(
        line.starts_with("oauthd listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(home.db().exists(), "OAUTHD_DB was not used");

    // OAUTHD_CONFIG is read: a wrong value in it stops the start.
    home.write_config("[states]\ndefault_ttl_seconds = 0\n");
    let out = Command::new(BIN)
        .env("OAUTHD_DB", home.db())
        .env("OAUTHD_CONFIG", home.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("states.default_ttl_seconds"));
}

#[test]
fn port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let home = Home::new();
    let out = Command::new(BIN)
        .arg("--db")
        .arg(home.db())
        .arg("--listen")
        .arg(&addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("cannot listen on {addr}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn providers_list_prints_the_redirect_uri_to_register() {
    let home = Home::new();
    home.write_config(
        "public_url = \"https://auth.home.example\"\n[providers.st]\npreset = \"smartthings\"\nclient_id = \"abc\"\nclient_secret = \"s3cret-value\"\n\
         [providers.tv]\npreset = \"tidal\"\nclient_id = \"t\"\nclient_secret = \"s\"\n\
         [providers.oidc]\nissuer = \"https://id.home.example\"\nclient_id = \"o\"\nclient_secret = \"s\"\n",
    );
    let out = Command::new(BIN)
        .args(["providers", "list", "--config"])
        .arg(home.config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = text(&out.stdout);
    assert!(
        listed.contains("redirect URI: https://auth.home.example/callback/st"),
        "{listed}"
    );
    assert!(listed.contains("preset:       smartthings"), "{listed}");
    // Whether each has the device flow, as far as the config tells.
    let block = |name: &str| {
        listed
            .lines()
            .skip_while(|l| *l != name)
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(block("st").contains("device flow:  no"), "{listed}");
    assert!(block("tv").contains("device flow:  yes"), "{listed}");
    assert!(
        block("oidc").contains("device flow:  if the issuer's metadata lists"),
        "{listed}"
    );
    // The issuer as configured: `iss` in its ID tokens must be that, and a slash added
    // (`https://id.home.example/`) made it look as if it should end in one.
    assert!(
        block("oidc").contains("issuer:       https://id.home.example (endpoints"),
        "{listed}"
    );
    assert!(
        !listed.contains("s3cret-value"),
        "a client secret was printed"
    );
}

#[test]
fn keygen_prints_a_usable_vault_key() {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let key = text(&out.stdout).trim().to_owned();
    assert!(oauthd::vault::parse_key(&key).is_ok(), "{key}");
    let other = text(&Command::new(BIN).arg("keygen").output().unwrap().stdout);
    assert_ne!(key, other.trim());
}

#[test]
fn each_command_lists_only_the_flags_it_uses() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        text(&out.stdout)
    };
    let keygen = help(&["keygen"]);
    assert!(
        !keygen.contains("--db") && !keygen.contains("--listen"),
        "{keygen}"
    );
    let create = help(&["keys", "create"]);
    assert!(
        create.contains("--db") && create.contains("--create"),
        "{create}"
    );
    assert!(!create.contains("--listen"), "{create}");
    let providers = help(&["providers", "list"]);
    assert!(
        providers.contains("--config") && !providers.contains("--db"),
        "{providers}"
    );
    let show = help(&["connections", "show"]);
    assert!(
        show.contains("<PROVIDER>") && show.contains("account name"),
        "{show}"
    );
}

#[test]
fn flags_before_the_command_still_count() {
    let home = Home::new();
    home.create_key("app", &[]);
    let out = Command::new(BIN)
        .arg("--db")
        .arg(home.db())
        .args(["keys", "list"])
        .env_remove("OAUTHD_DB")
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("app"));
}

/// A flag outranks the environment wherever it stands: `oauthd --db X keys list` in a
/// container whose image sets `OAUTHD_DB` uses X. A variable set to nothing counts as
/// unset, as for every other `OAUTHD_*` variable, and spaces around a value are dropped.
#[test]
fn a_flag_outranks_the_environment_before_the_command_and_empty_variables_are_unset() {
    let home = Home::new();
    home.create_key("app", &[]);
    let elsewhere = Home::new();
    let out = Command::new(BIN)
        .arg("--db")
        .arg(home.db())
        .args(["keys", "list"])
        .env("OAUTHD_DB", elsewhere.db())
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("app"));
    // The same before `serve`: the database named by the flag is the one it cannot create.
    let out = Command::new(BIN)
        .arg("--db")
        .arg(home.dir.path().join("flag/x.db"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OAUTHD_DB", home.dir.path().join("variable/x.db"))
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("flag/x.db"), "{out:?}");

    let out = Command::new(BIN)
        .args(["keys", "list", "--db"])
        .arg(home.db())
        .env("OAUTHD_DB", "")
        .env("OAUTHD_CONFIG", " ")
        .env("OAUTHD_LISTEN", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("app"));
    let out = Command::new(BIN)
        .arg("keygen")
        .env("OAUTHD_DB", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut padded = std::ffi::OsString::from("  ");
    padded.push(home.db());
    padded.push(" ");
    let out = Command::new(BIN)
        .args(["keys", "list"])
        .env("OAUTHD_DB", padded)
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("app"));
}

/// `rekey` on a mistyped --db names the database it did not find, not a key file; a key
/// file others can read is said at every start, not only by `check`.
#[tokio::test(flavor = "multi_thread")]
async fn rekey_names_a_missing_database_and_the_start_a_readable_key_file() {
    let home = Home::new();
    home.write_config("");
    let out = home.cli(&["rekey"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("no database at {}", home.db().display())),
        "{err}"
    );

    drop(home.start());
    // A key file in a directory that is not there is named as missing, not as a lock that
    // could not be taken.
    let nowhere = home.dir.path().join("nowhere").join("vault.key");
    let out = home
        .cli_command(&["rekey"])
        .env("OAUTHD_KEY_FILE", &nowhere)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("key file {} does not exist", nowhere.display())),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(home.start());
    let log = home.log_text();
    assert!(
        log.contains(&format!(
            "vault key file {} is readable by others (mode 644): chmod 600 it",
            home.key_file().display()
        )),
        "{log}"
    );
}

/// A key made for a provider the config does not have (a typo) says so when it is made,
/// not when the app gets `401 namespace_not_allowed`.
#[test]
fn a_provider_the_config_lacks_is_named_by_keys_create_and_connect() {
    let home = Home::new();
    home.write_config(
        "[providers.spotify]\npreset = \"spotify\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    );
    let made = |name: &str, pattern: &str| {
        let out = home.cli(&[
            "keys",
            "create",
            "--create",
            "--name",
            name,
            "--namespace",
            pattern,
        ]);
        assert!(out.status.success(), "{out:?}");
        text(&out.stderr)
    };
    let said = made("typo", "provider:spotfy");
    assert!(
        said.contains("no provider named spotfy is configured (configured: spotify)"),
        "{said}"
    );
    let said = made("right", "provider:spotify");
    assert!(!said.contains("no provider named"), "{said}");
    // The same typo when connecting from the terminal is a command-line error, said
    // before anything is opened or made (here, with no database yet).
    let fresh = Home::new();
    fresh.write_config(
        "[providers.spotify]\npreset = \"spotify\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    );
    for how in ["--device", "--paste"] {
        let out = fresh.cli(&["connect", "spotfy", how]);
        assert_eq!(out.status.code(), Some(2), "{how}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("no provider named \"spotfy\""), "{how}: {err}");
    }
    assert!(!fresh.db().exists() && !fresh.key_file().exists());
}

/// Which build runs: `--version` named only the package version (0.1.0 for every build),
/// while the README speaks of behaviour by date. It names the commit and its date, as do
/// the start's first line and the `oauthd_build_info` metric.
#[tokio::test(flavor = "multi_thread")]
async fn the_version_names_the_commit_the_build_came_from() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{out:?}");
    let rest = said
        .strip_prefix(concat!("oauthd ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("{said}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", "))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{said}"
    );
    assert!(
        date.len() == 10 && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{said}"
    );
    // A commit of this repository.
    let known = Command::new("git")
        .args(["-c", "safe.directory=*", "cat-file", "-e"])
        .arg(format!("{commit}^{{commit}}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(known.success(), "{said}: not a commit here");
    let home = Home::new();
    let d = home.start();
    let metrics = d.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "oauthd_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    d.signal_and_wait("TERM");
    let log = home.log_text();
    assert!(log.contains(&format!("{said} starting")), "{log}");
}

/// `keys create --create` run as root in the directory made for the service's user made a
/// database of root's, mode 600, which the service then could not open (`restore
/// --create` gave its copy the directory's owner). It is now the directory owner's, and
/// that user's commands open it; so is the key file a later command run as root makes.
#[test]
fn keys_create_as_root_gives_a_new_database_its_directorys_owner() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("svc");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let db = home.join("oauthd.db");
    let out = Command::new(BIN)
        .args(["keys", "create", "--create", "--name", "first", "--db"])
        .arg(&db)
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // Run from a directory the other user may enter: the build's own may be root's alone
    // (a clone in a directory of `mktemp -d`).
    let bin = dir.path().join("oauthd");
    // Copied by `cp`, not by this process: a thread of the tests forking meanwhile kept
    // this process's write handle on the copy open in its child, and its exec failed
    // with "Text file busy".
    let copied = Command::new("cp").arg(BIN).arg(&bin).status().unwrap();
    assert!(copied.success());
    // A command run as that user on the database, with `more` arguments.
    let as_that_user = |command: &[&str], more: &[&std::ffi::OsStr]| {
        Command::new(&bin)
            .args(command)
            .arg("--db")
            .arg(&db)
            .args(more)
            .env_remove("OAUTHD_CONFIG")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_that_user(&["keys", "list"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("first"));
    // The key file a command run as root makes beside it (the first token sealed) is
    // that user's too: it was root's, mode 600, and the service's start failed on it.
    let config = dir.path().join("oauthd.toml");
    std::fs::write(
        &config,
        "[providers.music]\npreset = \"spotify\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    let lines = dir.path().join("tokens.jsonl");
    std::fs::write(
        &lines,
        "{\"provider\":\"music\",\"account\":\"me\",\"access_token\":\"t\"}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["connections", "import", "--file"])
        .arg(&lines)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key_file = home.join("oauthd.db.key");
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600)
    );
    let out = as_that_user(
        &["connections", "list"],
        &["--config".as_ref(), config.as_os_str()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("me"),
        "{out:?}"
    );
    // In a shared directory (root's, mode 1777) a database file another user made there
    // does not get them the key file.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let planted = shared.join("x.db");
    std::fs::write(&planted, "").unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    for args in [
        &["keys", "create", "--create", "--name", "a"][..],
        &["connections", "list"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--db")
            .arg(&planted)
            .env_remove("OAUTHD_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let meta = std::fs::metadata(shared.join("x.db.key")).unwrap();
    assert_eq!(
        meta.uid(),
        0,
        "the key file was given to the database file's owner"
    );
}

/// Small traps an operator met: an empty import file (an export that failed upstream)
/// said "0 imported, 0 refused." and exited 0; `connections show` of a provider no config
/// names said only "no connection"; `providers list` without a config file said "No
/// providers configured" as if the file named none.
#[test]
fn empty_imports_unknown_providers_and_a_missing_config_are_said_so() {
    let home = Home::new();
    home.create_key("app", &[]);
    let empty = home.dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let out = home.cli(&["connections", "import", "--file", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("nothing imported: ")
            && text(&out.stderr).contains("holds no line to import"),
        "{out:?}"
    );
    let out = home.cli(&["connections", "show", "nope", "bob"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("no provider \"nope\" is configured (no config file was given"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["providers", "list"])
        .env_remove("OAUTHD_CONFIG")
        .current_dir(home.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("no config file was given")
            || text(&out.stderr).contains("no config file was given"),
        "{out:?}"
    );
}

/// Slips with paths an operator made: `backup --db` naming the database's directory was
/// said to be "no such file"; `check` with an empty key file printed `key(s) ` with
/// nothing after it on its ok line; the database given as the key file was "stream did
/// not contain valid UTF-8".
#[test]
fn a_directory_an_empty_key_file_and_a_database_as_the_key_file_are_said_so() {
    let home = Home::new();
    home.create_key("app", &[]);
    let out = Command::new(BIN)
        .args(["backup", "--db"])
        .arg(home.dir.path())
        .arg(home.dir.path().join("copy.db"))
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!(
            "{}: is a directory: name the database file in it",
            home.dir.path().display()
        )),
        "{out:?}"
    );
    let empty = home.dir.path().join("empty.key");
    std::fs::write(&empty, "").unwrap();
    std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // `check`'s report with `key_file` as the key file; it fails.
    let check_with = |key_file: &Path| {
        let out = home
            .cli_command(&["check"])
            .env("OAUTHD_KEY_FILE", key_file)
            .output()
            .unwrap();
        let report = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{report}");
        report
    };
    let report = check_with(&empty);
    assert!(
        report.lines().any(|l| l.starts_with("ok ")
            && l.ends_with(&format!("key file: {} (mode 600)", empty.display()))),
        "{report}"
    );
    assert!(report.contains("it holds no key (it is empty"), "{report}");
    let report = check_with(&home.db());
    assert!(
        report.contains("it is not text, so no key file") && !report.contains("UTF-8"),
        "{report}"
    );
}

/// A vault key lost for good, with tokens stored: every command and the start were refused
/// with "restore the key that was used", and a forced delete too, so that only editing the
/// database by hand got the daemon going. The refusal now names the connections whose
/// tokens the key sealed and the way out, `connections delete … --lost-key`, which deletes
/// oauthd's copy without opening the tokens; then the start goes on. `--force` is not it
/// (it deleted whatever the key, without revoking, under the first version of this), nor
/// does `--lost-key` delete a connection whose tokens open.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_a_key_lost_for_good_are_deleted_by_a_forced_delete() {
    let home = Home::new();
    home.write_config(GH);
    home.create_key("app", &[]);
    let out = import_line(
        &home,
        "{\"provider\":\"gh\",\"account\":\"me\",\"access_token\":\"t\",\"refresh_token\":\"r\"}",
    );
    assert!(out.status.success(), "{out:?}");
    // The key file lost; a new one made in its place.
    let kept = std::fs::read(home.key_file()).unwrap();
    let made = Command::new(BIN).arg("keygen").output().unwrap();
    std::fs::write(home.key_file(), &made.stdout).unwrap();
    let (code, err) = home.refused_start();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "If that key is lost for good, so are the tokens it sealed, of 1 connection(s): gh/me."
        ) && err.contains("`oauthd connections delete PROVIDER ACCOUNT --lost-key`"),
        "{err}"
    );
    for forced in [&[][..], &["--force", "--yes"]] {
        let out = home.cli(&[&["connections", "delete", "gh", "me"][..], forced].concat());
        assert_eq!(out.status.code(), Some(2), "{forced:?}: {out:?}");
    }
    // A key that is there is not lost: --lost-key deletes nothing with it, nor when only
    // the command was given another key file (OAUTHD_KEY_FILE left set in a shell) and
    // the one beside the database holds it (it deleted the connection, under review).
    let lost = std::fs::read(home.key_file()).unwrap();
    std::fs::write(home.key_file(), &kept).unwrap();
    let out = home.cli(&["connections", "delete", "gh", "me", "--lost-key"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // The command it names reads the same store and config (it named neither).
    let config = oauthd::paths::shell_word(&home.config());
    assert!(
        text(&out.stderr).contains("open with the vault key loaded")
            && text(&out.stderr).contains(&format!(
                "`oauthd connections delete gh me --config {config}` (without --lost-key)"
            )),
        "{out:?}"
    );
    let other = home.dir.path().join("other.key");
    std::fs::write(&other, &lost).unwrap();
    let out = home
        .cli_command(&["connections", "delete", "gh", "me", "--lost-key"])
        .env("OAUTHD_KEY_FILE", &other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("but that key is not lost")
            && text(&out.stderr).contains(&format!(
                "The key file beside the database, {}, holds them",
                home.key_file().display()
            )),
        "{out:?}"
    );
    std::fs::write(home.key_file(), &lost).unwrap();
    let out = home.cli(&["connections", "delete", "gh", "me", "--lost-key"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("Deleted connection gh/me: its tokens could not be opened"),
        "{out:?}"
    );
    let d = home.start();
    d.signal_and_wait("TERM");
}

/// `check --db` with the database's name mistyped said "skip: no database yet" and exited
/// 0, as on a first install: it now warns, naming oauthd's database beside that path.
#[test]
fn check_names_the_database_beside_a_mistyped_db() {
    let home = Home::new();
    home.create_key("app", &[]);
    std::fs::write(home.dir.path().join("notes.db"), "not a database").unwrap();
    let typo = home.dir.path().join("oauhtd.db");
    let out = Command::new(BIN)
        .args(["check", "--db"])
        .arg(&typo)
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    let report = text(&out.stdout);
    assert!(
        report.lines().any(|l| l.starts_with("warn  store: ")
            && l.contains(&format!(
                "no database at {}, but {} beside it is oauthd's",
                typo.display(),
                home.db().display()
            ))),
        "{report}"
    );
    assert!(!typo.exists());
    // Where none is beside it (a first install), it is a first start's to make.
    let first = Home::new();
    let out = first.cli(&["check"]);
    assert!(
        text(&out.stdout).contains("skip  store: no database at "),
        "{out:?}"
    );
}

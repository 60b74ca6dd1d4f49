//! Test harness: runs the real `oauthd` binary on a temp database and a free loopback
//! port, and talks to it over HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod peer;
pub mod proxy;
pub mod receiver;
pub mod redis;
pub mod relay;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_oauthd");

/// The variables that point oauthd at a store, a key, a config or an address: removed
/// where a test names its own.
pub const OAUTHD_VARIABLES: [&str; 7] = [
    "OAUTHD_DB",
    "OAUTHD_CONFIG",
    "OAUTHD_LISTEN",
    "OAUTHD_KEY",
    "OAUTHD_KEY_FILE",
    "OAUTHD_STORE",
    "OAUTHD_STORE_FILE",
];

/// Sends the signal named `sig` (TERM, STOP, ...) to the process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{sig} {pid}");
}

/// Sends Ctrl-C (SIGINT) to `child`, an oauthd command under way, and checks that it ended
/// as interrupted (exit 130, said so); returns what it said on stderr.
pub fn interrupt(child: std::process::Child) -> String {
    signal(child.id(), "INT");
    let out = exit_of(child);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    err
}

/// Runs `cmd`, an oauthd that must stop at start (a config or key error), and returns
/// what it said. One that starts after all is stopped (by PID) within 30 s, and fails
/// the test.
pub fn run_until_exit(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    exit_of(child)
}

/// Waits up to 30 s for `child`, an oauthd command, to end, and returns what it said; one
/// still running then is stopped (by PID), and fails the test.
pub fn exit_of(child: std::process::Child) -> Output {
    exit_within(
        child,
        Duration::from_secs(30),
        "oauthd kept running where it must stop",
    )
}

/// Waits up to `limit` for `child` to end, and returns what it said; one still running
/// then is stopped (by PID), and fails the test with `what` and what it said.
pub fn exit_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let started = Instant::now();
    let (status, ran_on) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (status, false);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().expect("wait"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = |pipe: Option<std::thread::JoinHandle<Vec<u8>>>| {
        pipe.map(|p| p.join().unwrap_or_default())
            .unwrap_or_default()
    };
    let out = Output {
        status,
        stdout: said(stdout),
        stderr: said(stderr),
    };
    assert!(!ran_on, "{what} ({limit:?}): {out:?}");
    out
}

/// libfaketime (Debian package `faketime`, installed by scripts/test), found where dpkg put it.
pub fn libfaketime() -> String {
    let out = Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .expect("dpkg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .expect("libfaketime is not installed: run scripts/test (Debian package faketime)")
        .to_owned()
}

/// A temp directory holding one oauthd's database (or its Redis), config and log.
pub struct Home {
    pub dir: tempfile::TempDir,
    shared: Option<Shared>,
    /// The person's browser, for every oauthd this home starts (see `Daemon::confirm`).
    browser: Arc<reqwest::cookie::Jar>,
}

/// A Redis store and the vault key file every instance on it uses.
#[derive(Clone)]
pub struct Shared {
    pub redis: Arc<Mutex<redis::RedisServer>>,
    pub url: String,
    pub key_file: PathBuf,
}

impl Home {
    /// On the SQLite file.
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
            shared: None,
            browser: Arc::default(),
        }
    }

    /// On a Redis server of its own (append-only file on), with a shared-style key file.
    pub fn redis() -> Home {
        Home::redis_with(redis::RedisServer::start())
    }

    pub fn redis_with(server: redis::RedisServer) -> Home {
        let url = server.url();
        Home::redis_via(server, url)
    }

    /// On `server`, which oauthd reaches at `url` (a relay in front of it).
    pub fn redis_via(server: redis::RedisServer, url: String) -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("shared.key");
        let out = Command::new(BIN).arg("keygen").output().expect("keygen");
        assert!(out.status.success());
        std::fs::write(&key_file, &out.stdout).expect("write key file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Home {
            dir,
            shared: Some(Shared {
                redis: Arc::new(Mutex::new(server)),
                url,
                key_file,
            }),
            browser: Arc::default(),
        }
    }

    /// A second instance's home on the same Redis with the same key: its own directory,
    /// log and config.
    pub fn sharing(other: &Home) -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
            shared: Some(other.shared.clone().expect("a Redis home")),
            browser: other.browser.clone(),
        }
    }

    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The Redis server (panics for a SQLite home).
    pub fn redis_server(&self) -> std::sync::MutexGuard<'_, redis::RedisServer> {
        self.shared
            .as_ref()
            .expect("a Redis home")
            .redis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What the backend holds at rest: the database file and WAL, or Redis' files.
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &self.shared {
            None => self.db_bytes(),
            Some(_) => self.redis_server().stored_bytes(),
        }
    }

    /// `--store` and the vault key for a Redis home.
    fn store_args(&self, cmd: &mut Command) {
        cmd.env_remove("OAUTHD_STORE")
            .env_remove("OAUTHD_STORE_FILE")
            .env_remove("OAUTHD_KEY")
            .env_remove("OAUTHD_KEY_FILE");
        if let Some(s) = &self.shared {
            cmd.arg("--store")
                .arg(&s.url)
                .env("OAUTHD_KEY_FILE", &s.key_file);
        }
    }

    /// The vault key file: beside the database, or the one every instance on the Redis
    /// store shares.
    pub fn key_file(&self) -> PathBuf {
        match &self.shared {
            Some(s) => s.key_file.clone(),
            None => self.dir.path().join("oauthd.db.key"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("oauthd.db")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("oauthd.log")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("oauthd.toml")
    }

    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.config(), toml).expect("write config");
    }

    /// Runs an oauthd CLI command against this home's database (and config, when written).
    pub fn cli(&self, args: &[&str]) -> Output {
        let child = self
            .cli_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run oauthd");
        exit_within(
            child,
            Duration::from_secs(120),
            &format!("oauthd {args:?} ran on"),
        )
    }

    /// The command `cli` runs, to run another way.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--db")
            .arg(self.db())
            .env("RUST_LOG", "warn")
            .env_remove("OAUTHD_CONFIG");
        self.store_args(&mut cmd);
        if self.config().exists() {
            cmd.arg("--config").arg(self.config());
        }
        cmd
    }

    /// A start that must stop at once: `serve` run to its exit; its exit code and stderr.
    pub fn refused_start(&self) -> (Option<i32>, String) {
        let refused = run_until_exit(
            self.cli_command(&["serve", "--listen", "127.0.0.1:0"])
                .stdin(std::process::Stdio::null()),
        );
        (
            refused.status.code(),
            String::from_utf8_lossy(&refused.stderr).into_owned(),
        )
    }

    /// This home's database, made with an API key "app", copied by `oauthd backup` to
    /// `copy.db` beside it: the copy's path.
    pub fn backed_up(&self) -> PathBuf {
        self.create_key("app", &[]);
        let copy = self.dir.path().join("copy.db");
        let out = self.cli(&["backup", copy.to_str().expect("a UTF-8 path")]);
        assert!(out.status.success(), "backup failed: {out:?}");
        copy
    }

    /// Creates an API key and returns it (the last line of stdout).
    pub fn create_key(&self, name: &str, namespaces: &[&str]) -> String {
        let mut args = vec!["keys", "create", "--create", "--name", name];
        for ns in namespaces {
            args.push("--namespace");
            args.push(ns);
        }
        let out = self.cli(&args);
        assert!(out.status.success(), "keys create failed: {out:?}");
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        stdout.lines().last().expect("a key line").to_owned()
    }

    /// Everything oauthd processes of this home have logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Bytes of the database file and its WAL.
    pub fn db_bytes(&self) -> Vec<u8> {
        let mut all = std::fs::read(self.db()).unwrap_or_default();
        let mut wal = self.db().into_os_string();
        wal.push("-wal");
        all.extend(std::fs::read(wal).unwrap_or_default());
        all
    }

    /// Runs `oauthd serve` with this home's config and database where it must stop at
    /// start (a config or key error), and returns what it said.
    /// One that starts after all is stopped (by PID) within 30 s, and fails the test.
    pub fn serve_once(&self) -> Output {
        self.serve_once_with(&[], "127.0.0.1:0")
    }

    /// `serve_once` with environment variables, listening on `listen`.
    pub fn serve_once_with(&self, env: &[(&str, &str)], listen: &str) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", listen, "--config"])
            .arg(self.config())
            .arg("--db")
            .arg(self.db());
        for name in OAUTHD_VARIABLES {
            cmd.env_remove(name);
        }
        run_until_exit(cmd.envs(env.iter().copied()))
    }

    /// Starts the daemon with this home's config file when one was written.
    pub fn start(&self) -> Daemon {
        Daemon::start(self, &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(self, env)
    }

    /// Starts the daemon through `sh -c SCRIPT`, which ends with `exec "$@"` (so the PID is
    /// oauthd's): for limits and signal dispositions set before oauthd runs.
    pub fn start_via_shell(&self, script: &str) -> Daemon {
        Daemon::start_inner(self, &[], Some(script))
    }

    /// oauthd on a wall clock that `clock_file` moves ("+660": eleven minutes ahead), while
    /// its timers keep real time: virtual minutes pass at once.
    pub fn start_on_a_virtual_clock(&self, clock_file: &Path) -> Daemon {
        std::fs::write(clock_file, "+0").unwrap();
        self.start_via_shell(&format!(
            "export LD_PRELOAD='{}' FAKETIME_TIMESTAMP_FILE='{}' FAKETIME_NO_CACHE=1 \
             FAKETIME_DONT_FAKE_MONOTONIC=1; exec \"$@\"",
            libfaketime(),
            clock_file.display()
        ))
    }
}

pub struct Daemon {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
    /// The cookies the person's browser got from oauthd's confirmation pages (`confirm`);
    /// `browser_get` sends them, as the browser would on the provider's redirect back.
    pub flow_cookies: Arc<reqwest::cookie::Jar>,
    /// The lines it printed on stdout so far (the sign-in link of a start among them).
    printed: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(home: &Home, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_inner(home, env, None)
    }

    fn start_inner(home: &Home, env: &[(&str, &str)], shell: Option<&str>) -> Daemon {
        let log = File::options()
            .create(true)
            .append(true)
            .open(home.log())
            .expect("open log");
        let mut cmd = match shell {
            None => Command::new(BIN),
            Some(script) => {
                let mut c = Command::new("sh");
                c.args(["-c", script, "sh", BIN]);
                c
            }
        };
        cmd.arg("serve")
            .arg("--db")
            .arg(home.db())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OAUTHD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        home.store_args(&mut cmd);
        if home.config().exists() {
            cmd.arg("--config").arg(home.config());
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn oauthd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let printed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("oauthd listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("oauthd did not start; log:\n{}", home.log_text());
            }
        };
        Daemon {
            child,
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // oauthd (actix-web) closes a connection idle for 5 s; a pooled one reused
                // at that moment fails with IncompleteMessage (seen in CI after a browser
                // step). Let idle connections go well before.
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
            flow_cookies: home.browser.clone(),
            printed,
        }
    }

    /// The first line it printed on stdout that starts with `start`, waited for up to 10 s.
    pub async fn printed_line(&self, start: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .printed
                .lock()
                .ok()
                .and_then(|lines| lines.iter().find(|l| l.starts_with(start)).cloned());
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `method target` as written (no client normalises its path: `%2E` stays) with
    /// the API key; the status and the whole answer.
    pub async fn raw(&self, method: &str, key: &str, target: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (TERM, INT) and waits for the exit, at most 30 s.
    pub fn signal_and_wait(self, sig: &str) -> ExitStatus {
        signal(self.pid(), sig);
        self.wait_exit()
    }

    /// Sends `body` as JSON with `method` and the API key.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(
        &self,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self.send_json(reqwest::Method::POST, path, key, body).await;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// `PUT path` with a JSON body; the answer as text (to look for what must not be in it).
    pub async fn put(&self, path: &str, key: &str, body: serde_json::Value) -> (u16, String) {
        let resp = self.send_json(reqwest::Method::PUT, path, key, body).await;
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Polls `/readyz` until it answers `want`, at most 10 s; returns the last answer.
    pub async fn readyz_until(&self, want: u16) -> (u16, serde_json::Value) {
        let mut last = self.get("/readyz", "").await;
        for _ in 0..100 {
            if last.0 == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = self.get("/readyz", "").await;
        }
        last
    }

    /// `GET /metrics` (no token), as text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.get_raw("/metrics", None).await;
        resp.text().await.expect("metrics text")
    }

    /// The value of one series in `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics_text().await, series)
    }

    /// Polls one series of `/metrics` until it shows `want` or `limit` passes, and returns
    /// the last value seen: for counters moved by work that ends after what the test
    /// observed (a delivery is counted once the receiver's answer is back).
    pub async fn metric_reaches(&self, series: &str, want: f64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.metric(series).await;
            if value == Some(want) || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn create_state(&self, key: &str, body: serde_json::Value) -> String {
        let (status, body) = self.post("/v1/states", key, body).await;
        assert_eq!(status, 201, "{body}");
        body["state"].as_str().expect("state").to_owned()
    }

    pub async fn consume(&self, key: &str, state: &str, ns: &str) -> (u16, serde_json::Value) {
        self.post(
            "/v1/states/consume",
            key,
            serde_json::json!({"state": state, "namespace": ns}),
        )
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// The sqlite3 shell an operator leaves open on the database: another process, killed by
/// PID when dropped.
pub struct SqliteShell {
    child: Child,
    input: Option<std::process::ChildStdin>,
    lines: Lines,
    errors: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// How long the shell waits for a lock another process holds (its `.timeout`), as an
/// operator's would, rather than failing its statement.
const SHELL_LOCK_WAIT: Duration = Duration::from_secs(10);

impl SqliteShell {
    pub fn open(db: &Path) -> SqliteShell {
        SqliteShell::open_as(db, Path::new("sqlite3"))
    }

    /// `open`, running the shell as `program` (a copy of sqlite3 under another name, for a
    /// process that is named as another program would be).
    pub fn open_as(db: &Path, program: &Path) -> SqliteShell {
        let mut child = Command::new(program)
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite3 (scripts/test installs it)");
        let input = child.stdin.take().expect("sqlite3 stdin");
        let lines = Lines::of(child.stdout.take().expect("sqlite3 stdout"));
        let errors = Some(drain(child.stderr.take().expect("sqlite3 stderr")));
        let mut shell = SqliteShell {
            child,
            input: Some(input),
            lines,
            errors,
        };
        // Without it, a statement that meets oauthd's write under way (a key's first use
        // is recorded in the background) fails, and prints nothing.
        shell.send(&format!(".timeout {}", SHELL_LOCK_WAIT.as_millis()));
        shell
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, sql: &str) {
        use std::io::Write;
        let input = self.input.as_mut().expect("sqlite3 still open");
        writeln!(input, "{sql}").expect("write to sqlite3");
    }

    /// Runs `sql` and returns the line it printed (`sql` must print exactly one); fails
    /// the test, with what sqlite3 said, when none comes within 30 s.
    pub fn query(&mut self, sql: &str) -> String {
        self.send(sql);
        match self.lines.0.recv_timeout(LINE_WITHIN) {
            Ok(line) => line.trim().to_owned(),
            Err(e) => panic!("sqlite3 printed nothing for {sql:?} ({e}): {}", self.stop()),
        }
    }

    /// Stops the shell (by PID); what it said on stderr.
    fn stop(&mut self) -> String {
        drop(self.input.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let said = self.errors.take().map(|e| e.join().unwrap_or_default());
        String::from_utf8_lossy(&said.unwrap_or_default()).into_owned()
    }

    /// Ends the shell as an operator would (end of input) and waits for it, 30 s at most.
    pub fn close(mut self) -> ExitStatus {
        drop(self.input.take());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sqlite3") {
                return status;
            }
            assert!(
                started.elapsed() < SHELL_LOCK_WAIT * 3,
                "sqlite3 went on after the end of its input"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SqliteShell {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child's output read line by line on a thread of its own: a test waits for a line a
/// bounded time, and fails saying so, where a read would wait for ever.
pub struct Lines(mpsc::Receiver<String>);

/// How long `Lines` waits for a line.
const LINE_WITHIN: Duration = Duration::from_secs(30);

impl Lines {
    pub fn of(from: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line; `None` at the end of the output. Fails the test when none comes
    /// within 30 s.
    pub fn next_line(&self) -> Option<String> {
        match self.0.recv_timeout(LINE_WITHIN) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line within {LINE_WITHIN:?}"),
        }
    }

    /// The rest of the first line that starts with `prefix`, the lines before it skipped.
    pub fn after(&self, prefix: &str) -> String {
        loop {
            let line = self
                .next_line()
                .unwrap_or_else(|| panic!("the output ended without {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Every line to the end of the output.
    pub fn rest(&self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}

/// Reads `from` (a child's pipe) to its end on a thread of its own, so that a child that
/// says much is not stalled on a full pipe while it is waited for.
fn drain(mut from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut said = Vec::new();
        let _ = from.read_to_end(&mut said);
        said
    })
}

/// Counts rows of a table in the database file, read-only, as an operator with sqlite3 would.
pub fn count_rows(db: &Path, table: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db read-only");
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

/// One of the store's totals as the database holds it (`*states`: live states of all
/// namespaces, `*tombstones`: tombstones of expired states).
pub fn stored_total(db: &Path, name: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db read-only");
    conn.query_row(
        "SELECT live FROM namespace_counts WHERE namespace = ?1",
        [name],
        |r| r.get(0),
    )
    .expect("a total")
}

impl Daemon {
    /// Waits (at most 30 s) for a process that was already signalled to exit.
    pub fn wait_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "oauthd did not stop");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// `GET path`, with the API key as bearer token when there is one.
    pub async fn get_raw(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, serde_json::Value) {
        let resp = self.get_raw(path, Some(key)).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Follows a provider's redirect back to oauthd (the callback), as the browser would.
    pub async fn browser_get(&self, url: &str) -> (u16, String, Option<String>) {
        browser_get_with(&self.flow_cookies, url).await
    }
}

/// Plays the person at the address an app's connect flow hands out: opens oauthd's
/// confirmation page and presses its button, keeping the flow's cookie in `cookies`.
/// The requests go to `oauthd_url` (where oauthd listens) even when the address names
/// oauthd's `public_url` (a proxy or load balancer's). Returns where oauthd sends the
/// browser: the provider.
pub async fn confirm_flow(
    cookies: &reqwest::cookie::Jar,
    oauthd_url: &str,
    authorize_url: &str,
) -> String {
    let public = reqwest::Url::parse(authorize_url).expect("url");
    let origin = public.origin().ascii_serialization();
    assert_eq!(
        public.path().split('/').rev().nth(2),
        Some("connect"),
        "an app's flow starts on oauthd's page: {authorize_url}"
    );
    let page_url = authorize_url.replacen(&origin, oauthd_url, 1);
    let browser = no_redirects();
    let page = browser.get(&page_url).send().await.expect("confirm page");
    let status = page.status();
    let text = page.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Continue to"), "{text}");
    let resp = browser
        .post(&page_url)
        .header("origin", &origin)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("confirm");
    assert_eq!(resp.status(), 303, "{:?}", resp.text().await);
    for cookie in resp.headers().get_all("set-cookie") {
        cookies.add_cookie_str(cookie.to_str().expect("cookie"), &public);
    }
    header(&resp, "location")
}

/// `GET url` as the person's browser, with the cookies it holds for that address, not
/// following redirects: `(status, body, Location)`.
pub async fn browser_get_with(
    cookies: &reqwest::cookie::Jar,
    url: &str,
) -> (u16, String, Option<String>) {
    use reqwest::cookie::CookieStore;
    let mut request = no_redirects().get(url);
    if let Some(held) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| cookies.cookies(&u))
    {
        request = request.header("cookie", held);
    }
    let resp = request.send().await.expect("browser request");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let page = resp.text().await.unwrap_or_default();
    // An app's flow back from the provider: the person presses "Connect" on the page.
    match held_value(&page) {
        Some(value) if status == 200 => press_connect(url, &value).await,
        _ => (status, page, location),
    }
}

/// The value the page of an app's flow back from the provider holds for its "Connect"
/// button, when `page` is that page.
pub fn held_value(page: &str) -> Option<String> {
    let marker = "name=\"held\" value=\"";
    let start = page.find(marker)? + marker.len();
    let end = page[start..].find('"')?;
    Some(page[start..start + end].to_owned())
}

/// Presses "Connect" on the page an app's flow came back to at `callback` (the callback's
/// address), as the browser that got it: `(status, body, Location)` of the answer.
pub async fn press_connect(callback: &str, value: &str) -> (u16, String, Option<String>) {
    let url = reqwest::Url::parse(callback).expect("callback url");
    let origin = url.origin().ascii_serialization();
    let finish = format!("{}{}/finish", origin, url.path());
    let resp = no_redirects()
        .post(&finish)
        .header("origin", &origin)
        .header("sec-fetch-site", "same-origin")
        .form(&[("held", value)])
        .send()
        .await
        .expect("connect press");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    (status, resp.text().await.unwrap_or_default(), location)
}

/// Runs each listed test against both backends: `sqlite::NAME` on a real SQLite file and,
/// with the `redis` feature, `redis::NAME` on a real redis-server. Each test is an
/// `async fn NAME(home: Home)` and gets a fresh `Home` on its backend.
#[macro_export]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::common::Home::new()).await
                }
            )*
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::common::Home::redis()).await
                }
            )*
        }
    };
}

/// Like `contract!`, for in-process tests that take a store `Backend` instead of a `Home`:
/// each test runs on a SQLite file and on a real redis-server.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::store_contract::sqlite()).await
                }
            )*
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let backend = tokio::task::spawn_blocking($crate::store_contract::redis)
                        .await
                        .unwrap();
                    super::$name(backend).await
                }
            )*
        }
    };
}

impl Daemon {
    /// POSTs a state create that must be refused with `status` and a `Retry-After`;
    /// returns the problem body.
    pub async fn create_refused(
        &self,
        key: &str,
        namespace: &str,
        status: u16,
    ) -> serde_json::Value {
        let resp = self
            .http
            .post(format!("{}/v1/states", self.url))
            .bearer_auth(key)
            .json(&serde_json::json!({"namespace": namespace}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status);
        assert!(
            resp.headers().get("retry-after").is_some(),
            "no Retry-After"
        );
        resp.json().await.expect("a problem body")
    }
}

/// `n` concurrent consumes of one state spread over `daemons`: exactly one must win and
/// every other get 404. Returns the winner's body.
pub async fn consume_race(
    daemons: &[&Daemon],
    key: &str,
    state: &str,
    namespace: &str,
    n: usize,
) -> serde_json::Value {
    let tries = (0..n).map(|i| daemons[i % daemons.len()].consume(key, state, namespace));
    let results = futures::future::join_all(tries).await;
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    let not_found = results.iter().filter(|(s, _)| *s == 404).count();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert_eq!(not_found, n - 1);
    ok[0].1.clone()
}

/// One query parameter of a URL (panics when it is missing: the test expected it).
pub fn query_param(url: &str, name: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// A client that never follows redirects, like a test that wants to see them.
/// `GET url` with exactly this `Cookie` header, following no redirect: status and body.
pub async fn get_with_cookie(url: &str, cookie: &str) -> (u16, String) {
    let resp = no_redirects()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("request with a cookie");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl Home {
    /// Signs in over HTTP; returns the session cookie and its CSRF token.
    pub async fn ui_session(&self, d: &Daemon) -> (String, String) {
        let session = d.sign_in(&self.login_link(d)).await;
        let csrf = d.ui_overview(&session).await["csrf"]
            .as_str()
            .expect("csrf")
            .to_owned();
        (session, csrf)
    }

    /// A fresh one-time login link from the CLI, for this daemon's address.
    pub fn login_link(&self, d: &Daemon) -> String {
        let out = self.cli(&[
            "admin",
            "link",
            "--listen",
            d.url.trim_start_matches("http://"),
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }
}

impl Daemon {
    /// Starts a connect flow over the API and confirms it as the person would; returns the
    /// provider's authorization URL.
    pub async fn start_connect(&self, key: &str, provider: &str, account: &str) -> String {
        self.start_connect_with(key, provider, serde_json::json!({"account": account}))
            .await
    }

    /// Starts a connect flow for `account` over the API, as an app does; returns the
    /// address it hands out (oauthd's confirmation page), not confirmed.
    pub async fn app_flow_address(&self, key: &str, provider: &str, account: &str) -> String {
        let path = format!("/v1/connect/{provider}");
        let body = self
            .created(&path, key, serde_json::json!({"account": account}))
            .await;
        body["authorize_url"]
            .as_str()
            .expect("authorize_url")
            .to_owned()
    }

    /// `POST path` with the API key and this body, which must answer `201`: its body.
    async fn created(
        &self,
        path: &str,
        key: &str,
        request: serde_json::Value,
    ) -> serde_json::Value {
        let (status, body) = self.post(path, key, request).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Starts a connect flow with this request body and confirms it as the person would;
    /// returns the provider's authorization URL.
    pub async fn start_connect_with(
        &self,
        key: &str,
        provider: &str,
        request: serde_json::Value,
    ) -> String {
        let body = self
            .created(&format!("/v1/connect/{provider}"), key, request)
            .await;
        self.confirm(body["authorize_url"].as_str().expect("authorize_url"))
            .await
    }

    /// Plays the person at the address an app's connect flow hands out (`confirm_flow`),
    /// keeping the flow's cookie in `flow_cookies`. Returns the provider's address.
    pub async fn confirm(&self, authorize_url: &str) -> String {
        confirm_flow(&self.flow_cookies, &self.url, authorize_url).await
    }

    /// `DELETE path` with the API key.
    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    /// POSTs a form (with a session cookie, when given), following no redirect.
    pub async fn post_form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        session: Option<&str>,
    ) -> reqwest::Response {
        // As a browser posts a form of oauthd's own page.
        let mut req = no_redirects()
            .post(format!("{}{path}", self.url))
            .header("sec-fetch-site", "same-origin")
            .form(fields);
        if let Some(cookie) = session {
            req = req.header("cookie", format!("oauthd_session={cookie}"));
        }
        req.send().await.expect("form request")
    }
}

impl Daemon {
    /// Starts a device flow over the API; returns the 201 body.
    pub async fn start_device(
        &self,
        key: &str,
        provider: &str,
        account: &str,
    ) -> serde_json::Value {
        let path = format!("/v1/device/{provider}");
        self.created(&path, key, serde_json::json!({"account": account}))
            .await
    }

    /// Polls a device flow's status until it is no longer 202, at most `limit`.
    pub async fn wait_device(
        &self,
        key: &str,
        provider: &str,
        id: &str,
        limit: Duration,
    ) -> (u16, serde_json::Value) {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get(&format!("/v1/device/{provider}/{id}"), key).await;
            if status != 202 || Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Connects `provider`/`account` by calling oauthd's callback with `code` directly, as a
/// provider that needs no user (a mock) would send the browser back.
pub async fn connect_with_code(d: &Daemon, key: &str, provider: &str, account: &str, code: &str) {
    let state = query_param(&d.start_connect(key, provider, account).await, "state");
    let (status, page, _) = d
        .browser_get(&format!(
            "{}/callback/{provider}?code={code}&state={state}",
            d.url
        ))
        .await;
    assert_eq!(status, 200, "{page}");
}

/// The JSON answer to `request` (whatever its status).
pub async fn json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("a JSON answer")
}

/// Sends the request and returns the body of whatever answer comes back.
pub async fn text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Reads the response as a problem document and checks its stable error code.
pub async fn assert_code(resp: reqwest::Response, code: &str) {
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], code, "{problem}");
}

/// The `Retry-After` seconds the response must carry.
pub fn retry_after(resp: &reqwest::Response) -> u64 {
    header(resp, "retry-after").parse().unwrap()
}

/// The value of one sample line of Prometheus text (`name{labels} value`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// A header the response must carry, as text.
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    let value = resp.headers().get(name);
    let value = value.unwrap_or_else(|| panic!("no {name} header in {resp:?}"));
    value.to_str().unwrap().to_owned()
}

pub fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("oauthd_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .filter(|v| !v.is_empty())
}

impl Daemon {
    /// Signs a browser in as a person does: opens the login link (a page with a button),
    /// then presses the button. Returns the session cookie's value.
    pub async fn sign_in(&self, link: &str) -> String {
        let page = no_redirects().get(link).send().await.expect("link page");
        assert_eq!(page.status(), 200);
        let token = query_param(link, "token");
        let resp = self
            .post_form("/admin/login", &[("link", &token)], None)
            .await;
        assert_eq!(resp.status(), 303);
        session_cookie(&resp).expect("a session cookie")
    }

    /// `GET path` as a signed-in browser.
    /// `POST path` with this JSON as the signed-in page does (`ui` from
    /// `Home::ui_session`): `(status, JSON answer)`.
    pub async fn ui_post(
        &self,
        (session, csrf): &(String, String),
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = no_redirects()
            .post(format!("{}{path}", self.url))
            .header("cookie", format!("oauthd_session={session}"))
            .header("x-csrf-token", csrf)
            .json(&body)
            .send()
            .await
            .expect("request");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or_default(),
        )
    }

    /// `GET /ui/api/overview` as the signed-in page does.
    pub async fn ui_overview(&self, session: &str) -> serde_json::Value {
        self.ui_get("/ui/api/overview", session)
            .await
            .json()
            .await
            .expect("overview")
    }

    pub async fn ui_get(&self, path: &str, session: &str) -> reqwest::Response {
        use reqwest::cookie::CookieStore;
        let url = format!("{}{path}", self.url);
        let mut cookies = format!("oauthd_session={session}");
        // And what the browser holds of the flows it confirmed.
        if let Some(held) = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| self.flow_cookies.cookies(&u))
        {
            cookies = format!("{cookies}; {}", held.to_str().unwrap_or_default());
        }
        no_redirects()
            .get(url)
            .header("cookie", cookies)
            .send()
            .await
            .expect("request")
    }
}

/// A mock token endpoint (wiremock, at `/token`) answers a refresh with `refresh_token`
/// by `response`.
pub async fn on_refresh(
    mock: &wiremock::MockServer,
    refresh_token: &str,
    response: wiremock::ResponseTemplate,
) {
    use wiremock::matchers::{body_string_contains, method, path};
    wiremock::Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains(format!(
            "refresh_token={refresh_token}"
        )))
        .respond_with(response)
        .mount(mock)
        .await;
}

//! A real `redis-server` for one test: a free loopback port, its own directory, append-only
//! file on (so a restart keeps the data, as in production), stopped by PID on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    /// Where the server's clock shift is written (`start_with_clock_shift`).
    shift_file: Option<PathBuf>,
}

impl RedisServer {
    /// With the append-only file on.
    pub fn start() -> RedisServer {
        RedisServer::start_with(true)
    }

    pub fn start_with(appendonly: bool) -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut server = RedisServer::at_a_free_port(dir, appendonly, None);
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? scripts/test installs it)");
    }

    /// Not started yet, on a loopback port free now, in `dir`.
    fn at_a_free_port(
        dir: tempfile::TempDir,
        appendonly: bool,
        shift_file: Option<PathBuf>,
    ) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        RedisServer {
            child: None,
            port,
            dir,
            appendonly,
            shift_file,
        }
    }

    /// Without persistence, its wall clock shifted by what `shift_clock` says (a shim
    /// built from `clock_shift.c` with `cc`, preloaded).
    pub fn start_with_clock_shift() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let shim = dir.path().join("clock_shift.so");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/common/clock_shift.c");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(source)
            .status()
            .expect("cc (a C compiler: the Rust toolchain links with it)");
        assert!(built.success(), "building the clock shim failed");
        let shift_file = dir.path().join("shift.ms");
        std::fs::write(&shift_file, "0").expect("write shift");
        let mut server = RedisServer::at_a_free_port(dir, false, Some(shift_file));
        assert!(
            server.spawn(),
            "redis-server did not start with the clock shim"
        );
        server
    }

    /// Steps the server's wall clock to `ms` from the real one; seen within 50 ms.
    pub fn shift_clock(&self, ms: i64) {
        let file = self
            .shift_file
            .as_ref()
            .expect("started with a clock shift");
        std::fs::write(file, ms.to_string()).expect("write shift");
        std::thread::sleep(Duration::from_millis(200));
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log");
        let mut command = Command::new("redis-server");
        if let Some(file) = &self.shift_file {
            command
                .env("LD_PRELOAD", self.dir.path().join("clock_shift.so"))
                .env("SHIFT_FILE", file);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--rdbcompression", "no", "--daemonize", "no"])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            panic!("cannot run redis-server: install it (scripts/test does: apt-get install redis-server)");
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").as_deref() == Some("+PONG") {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One inline command; returns the first line of the reply.
    pub fn command(&self, cmd: &str) -> Option<String> {
        RedisServer::command_at(self.port, cmd)
    }

    /// `command` to the server at `port` (from where the server itself is not at hand).
    pub fn command_at(port: u16, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// `first` (an `AUTH`), then `cmd` on the same connection; the first line of `cmd`'s
    /// reply.
    pub fn command_after(&self, first: &str, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{first}\r\n{cmd}\r\n").as_bytes())
            .ok()?;
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        line.clear();
        reader.read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Stops the server (SIGKILL: like a crash or a network cut, no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Removes what a stopped server kept on disk: it starts again empty.
    pub fn wipe(&self) {
        assert!(self.child.is_none(), "wiping a running server");
        for entry in std::fs::read_dir(self.dir.path())
            .expect("redis dir")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else if path.file_name().is_some_and(|n| n != "redis.log") {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }

    /// Starts it again on the same port and directory (the append-only file reloads).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not come back");
    }

    /// Every byte Redis holds on disk right now: the append-only files plus a fresh
    /// uncompressed snapshot.
    pub fn stored_bytes(&self) -> Vec<u8> {
        assert_eq!(self.command("SAVE").as_deref(), Some("+OK"));
        let mut all = Vec::new();
        collect(self.dir.path().to_owned(), &mut all);
        all
    }
}

fn collect(dir: PathBuf, out: &mut Vec<u8>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(path, out);
        } else if path.extension().is_none_or(|e| e != "log") {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

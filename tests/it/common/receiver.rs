//! A webhook receiver for the notification tests: `tests/receiver/receiver.py`, which
//! records every delivery and verifies its signature with the Standard Webhooks reference
//! library from PyPI. Killed by PID when dropped or stopped.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn receiver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/receiver")
}

/// A random signing secret as `oauthd` and the receiver share it.
pub fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend(uuid::Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub struct Receiver {
    child: Option<Child>,
    pub port: u16,
    secret: Option<String>,
}

impl Receiver {
    /// On a free port; verifying signatures with `secret` when given.
    pub fn start(secret: Option<&str>) -> Receiver {
        Self::start_on(0, secret)
    }

    /// On `port` (0: a free one).
    pub fn start_on(port: u16, secret: Option<&str>) -> Receiver {
        let python = receiver_dir().join(".venv/bin/python");
        assert!(
            python.exists(),
            "the receiver's venv is missing: run scripts/test (it installs tests/receiver/requirements.txt)"
        );
        let mut cmd = Command::new(python);
        cmd.arg(receiver_dir().join("receiver.py"))
            .arg("--port")
            .arg(port.to_string());
        if let Some(s) = secret {
            cmd.arg("--secret").arg(s);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the receiver");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("receiver listening on ") {
                    let _ = tx.send(p.trim().parse::<u16>().unwrap_or(0));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) if p > 0 => p,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the receiver did not start on port {port}");
            }
        };
        Receiver {
            child: Some(child),
            port,
            secret: secret.map(str::to_owned),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything received so far, oldest first.
    pub async fn received(&self) -> Vec<Value> {
        reqwest::get(self.url("/_received"))
            .await
            .expect("receiver answers")
            .json()
            .await
            .expect("receiver JSON")
    }

    /// The deliveries of this event type, oldest first.
    pub async fn of_type(&self, kind: &str) -> Vec<Value> {
        self.received()
            .await
            .into_iter()
            .filter(|r| r["json"]["type"] == kind)
            .collect()
    }

    /// Waits (at most `limit`) until `count` deliveries of `kind` arrived; returns them.
    pub async fn wait_for(&self, kind: &str, count: usize, limit: Duration) -> Vec<Value> {
        self.wait_until(Some(kind), count, limit).await
    }

    /// Like `wait_for`, for deliveries of any kind (text ones have no JSON type).
    pub async fn wait_for_all(&self, count: usize, limit: Duration) -> Vec<Value> {
        self.wait_until(None, count, limit).await
    }

    async fn wait_until(&self, kind: Option<&str>, count: usize, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = match kind {
                Some(kind) => self.of_type(kind).await,
                None => self.received().await,
            };
            if got.len() >= count || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next `count` deliveries are answered with `status`.
    pub async fn fail_next(&self, count: u32, status: u16) {
        self.fail_next_asking(count, status, None).await
    }

    /// The next `count` deliveries are answered with `status` and, when given, this
    /// `Retry-After` header.
    pub async fn fail_next_asking(&self, count: u32, status: u16, retry_after: Option<&str>) {
        let mut url = format!("/_fail?count={count}&status={status}");
        if let Some(v) = retry_after {
            url = format!(
                "{url}&retry_after={}",
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            );
        }
        let resp = reqwest::Client::new()
            .post(self.url(&url))
            .send()
            .await
            .expect("receiver answers");
        assert_eq!(resp.status(), 204);
    }

    /// Stops it (by PID); `restart` brings it back on the same port, with nothing recorded.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let again = Receiver::start_on(self.port, self.secret.as_deref());
        *self = again;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A real headless Chromium (Debian's chromium + chromium-driver) driven over WebDriver.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    /// Screenshots go to `test-artifacts/<name>/`.
    pub async fn start(name: &str) -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/test installs chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-quic", "--window-size=1100,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..50 {
            let http = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(http)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("test-artifacts")
                        .join(name);
                    std::fs::create_dir_all(&shots).unwrap();
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                        shots,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no WebDriver session: {last:?}");
    }

    pub async fn screenshot(&self, file: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(file), png).expect("write screenshot");
    }

    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    /// Clicks the element, finding it again if the page replaced it meanwhile (the
    /// provider's pages redirect through several documents).
    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            match self.wait_for(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} kept going stale");
    }

    /// Waits until the element's text contains `expected` (pages change under us while
    /// the browser follows redirects), at most 20 s.
    pub async fn wait_text(&self, css: &str, expected: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if t.contains(expected) {
                        return;
                    }
                    last = t;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never read {expected:?} (last: {last:?})");
    }

    /// Opens a one-time login link and presses its Sign in button (a GET alone never
    /// signs in).
    pub async fn sign_in(&self, link: &str) {
        self.client.goto(link).await.unwrap();
        self.click("#sign-in").await;
    }

    /// The element's text; found again when the page re-rendered it between finding and
    /// reading (its list refreshes on its own).
    pub async fn text(&self, css: &str) -> String {
        for _ in 0..10 {
            match self.wait_for(css).await.text().await {
                Ok(text) => return text,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css}: re-rendered at every read")
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// At the test provider: log in with any name (unless it still remembers the user),
    /// then consent.
    pub async fn login_and_consent_at_provider(&self, prefix: &str) {
        self.wait_for("input[name=prompt]").await;
        if self
            .client
            .find(Locator::Css("input[name=login]"))
            .await
            .is_ok()
        {
            self.wait_for("input[name=login]")
                .await
                .send_keys("alice")
                .await
                .unwrap();
            self.wait_for("input[name=password]")
                .await
                .send_keys("any")
                .await
                .unwrap();
            self.screenshot(&format!("{prefix}-provider-login.png"))
                .await;
            self.click("button[type=submit]").await;
        }
        // The consent form replaces the login form.
        self.wait_for("input[name=prompt][value=consent]").await;
        self.screenshot(&format!("{prefix}-provider-consent.png"))
            .await;
        self.click("button[type=submit]").await;
    }

    /// Waits until the alert's text contains `expected`, then answers it.
    pub async fn answer_confirm(&self, expected: &str, accept: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let text = loop {
            match self.client.get_alert_text().await {
                Ok(t) => break t,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("no dialog saying {expected:?}: {e}"),
            }
        };
        assert!(text.contains(expected), "{text}");
        if accept {
            self.client.accept_alert().await.unwrap();
        } else {
            self.client.dismiss_alert().await.unwrap();
        }
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    /// A test that failed mid-way never reaches `close`: chromedriver is killed, and the
    /// Chromium it started (which outlives it) by PID, found by its profile directory.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let marker = format!("--user-data-dir={}", self._profile.path().display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let started_here = std::fs::read(entry.path().join("cmdline"))
                .map(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()))
                .unwrap_or(false);
            if started_here {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

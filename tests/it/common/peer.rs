//! The test OpenID provider: panva's oidc-provider (tests/peer, pinned with a lockfile),
//! run with node on a free loopback port, and a browser stand-in that completes its login
//! and consent pages over plain HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const CLIENT_ID: &str = "oauthd";
pub const CLIENT_SECRET: &str = "peer-secret";

pub struct Peer {
    child: Child,
    pub issuer: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peer")
}

impl Peer {
    /// Starts the provider; access tokens live `access_ttl` seconds.
    pub fn start(access_ttl: u64) -> Peer {
        Self::start_with(access_ttl, 600)
    }

    /// Like `start`; device codes expire after `device_ttl` seconds.
    pub fn start_with(access_ttl: u64, device_ttl: u64) -> Peer {
        let dir = peer_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test provider is not installed: run scripts/test (or npm ci --prefix tests/peer)"
        );
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("peer.log");
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .env("PEER_ACCESS_TTL", access_ttl.to_string())
            .env("PEER_DEVICE_TTL", device_ttl.to_string())
            .env("PEER_CLIENT_SECRET", CLIENT_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("peer log")))
            .spawn()
            .expect("start node (is Node.js installed? scripts/test installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("peer listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the test provider did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Peer {
            child,
            issuer,
            log,
            _dir: tmp,
        }
    }

    /// The `[providers.NAME]` table for this provider.
    /// A new SQLite home whose config is `extra_toml` and this peer as provider "peer".
    /// The provider's process, to stop and continue it (`kill -STOP`, `kill -CONT`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn home(&self, extra_toml: &str) -> super::Home {
        let home = super::Home::new();
        home.write_config(&format!("{extra_toml}{}", self.provider_toml("peer")));
        home
    }

    /// Writes `extra_toml` and this peer as provider "peer" into `home`'s config, and
    /// returns a new API key ("app") for every namespace and provider.
    pub fn configure(&self, home: &super::Home, extra_toml: &str) -> String {
        home.write_config(&format!("{extra_toml}\n{}", self.provider_toml("peer")));
        home.create_key("app", &[])
    }

    /// A new SQLite home configured as `configure` does, and its API key.
    pub fn home_with_key(&self, extra_toml: &str) -> (super::Home, String) {
        let home = super::Home::new();
        let key = self.configure(&home, extra_toml);
        (home, key)
    }

    pub fn provider_toml(&self, name: &str) -> String {
        format!(
            "[providers.{name}]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\
             scopes = [\"openid\", \"offline_access\"]\nclient_auth = \"basic\"\n\
             [providers.{name}.authorize_params]\nprompt = \"consent\"\n",
            self.issuer
        )
    }

    /// A relay in front of this provider's token endpoint (`common::relay`: it holds
    /// back an answer when armed), and `provider_toml` with `token_url` through it.
    pub async fn behind_relay(&self, name: &str) -> (super::relay::Relay, String) {
        let port: u16 = self
            .issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the peer's port");
        let relay = super::relay::Relay::start(port).await;
        let section = format!("[providers.{name}.authorize_params]");
        let toml = self.provider_toml(name).replace(
            &section,
            &format!(
                "token_url = \"http://127.0.0.1:{}/token\"\n{section}",
                relay.port
            ),
        );
        (relay, toml)
    }

    /// `provider_toml`, with this provider's own endpoints as the proxy's API
    /// (`api_base_url`: its userinfo endpoint is `me`).
    pub fn provider_toml_with_api(&self, name: &str) -> String {
        self.provider_toml(name).replace(
            &format!("[providers.{name}.authorize_params]"),
            &format!(
                "api_base_url = \"{}/\"\n[providers.{name}.authorize_params]",
                self.issuer
            ),
        )
    }

    /// A browser of its own: its session at the provider (a cookie) outlives one flow.
    pub fn browser() -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client")
    }

    /// Plays the user at the provider: follows the authorization URL through login
    /// (any name) and consent, and returns where the provider sends the browser back.
    pub async fn approve(&self, authorize_url: &str) -> String {
        self.walk(authorize_url, "consent").await
    }

    /// Like `approve`, in `browser`: a second approval of oauthd's client there, signed in
    /// as the same user, continues the grant of the first (one grant, several tokens).
    pub async fn approve_in(&self, browser: &reqwest::Client, authorize_url: &str) -> String {
        self.walk_with(browser, authorize_url, "consent", "alice")
            .await
    }

    /// Like `approve`, signed in at the provider as `user` (another `sub` than alice's).
    pub async fn approve_as(&self, user: &str, authorize_url: &str) -> String {
        self.walk_with(&Self::browser(), authorize_url, "consent", user)
            .await
    }

    /// Like `approve`, but the user aborts at the consent step.
    pub async fn deny(&self, authorize_url: &str) -> String {
        self.walk(authorize_url, "abort").await
    }

    async fn walk(&self, authorize_url: &str, at_consent: &str) -> String {
        self.walk_with(&Self::browser(), authorize_url, at_consent, "alice")
            .await
    }

    /// Follows redirects from `authorize_url`, logging in and answering consent, until the
    /// browser leaves the provider (returns that URL) or lands on a page (returns
    /// "page:" and its text).
    async fn walk_with(
        &self,
        browser: &reqwest::Client,
        start: &str,
        at_consent: &str,
        user: &str,
    ) -> String {
        let base = reqwest::Url::parse(&self.issuer).unwrap();
        let mut next = reqwest::Url::parse(start).expect("start url");
        for _ in 0..16 {
            if next.origin() != base.origin() {
                return next.to_string();
            }
            let resp = if next.path().starts_with("/interaction/") {
                // The login form, unless the browser is signed in at the provider already.
                let page = browser.get(next.clone()).send().await.expect("interaction");
                let login = page
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("name=\"login\"");
                match (login, at_consent) {
                    (true, _) => browser.post(next.clone()).form(&[
                        ("prompt", "login"),
                        ("login", user),
                        ("password", "any"),
                    ]),
                    // What the consent page's abort link does.
                    (_, "abort") => browser.get(format!("{next}/abort")),
                    _ => browser.post(next.clone()).form(&[("prompt", "consent")]),
                }
            } else {
                browser.get(next.clone())
            }
            .send()
            .await
            .expect("provider request");
            let Some(location) = resp.headers().get("location").and_then(|l| l.to_str().ok())
            else {
                assert!(
                    resp.status().is_success(),
                    "the provider stopped at {next} with {}",
                    resp.status()
                );
                return format!("page:{}", resp.text().await.unwrap_or_default());
            };
            next = base.join(location).expect("location");
        }
        panic!("too many redirects at the provider");
    }

    async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_test/stats", self.issuer))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Plays the user on another device: enters `user_code` at the provider's device page,
    /// confirms (or aborts), logs in and consents. Returns the last page's text.
    pub async fn verify_device(&self, user_code: &str, approve: bool) -> String {
        self.verify_device_as("alice", user_code, approve).await
    }

    /// Like `verify_device`, signed in at the provider as `user`.
    pub async fn verify_device_as(&self, user: &str, user_code: &str, approve: bool) -> String {
        let browser = Self::browser();
        let xsrf = |page: &str| {
            let marker = "name=\"xsrf\" value=\"";
            let start = page.find(marker).expect("xsrf field") + marker.len();
            page[start..start + page[start..].find('"').expect("xsrf end")].to_owned()
        };
        let device = format!("{}/device", self.issuer);
        let page = crate::common::text(browser.get(&device)).await;
        let page = crate::common::text(
            browser
                .post(&device)
                .form(&[("xsrf", xsrf(&page).as_str()), ("user_code", user_code)]),
        )
        .await;
        let answer = if approve { "confirm" } else { "abort" };
        let resp = browser
            .post(&device)
            .form(&[
                ("xsrf", xsrf(&page).as_str()),
                ("user_code", user_code),
                (answer, "yes"),
            ])
            .send()
            .await
            .unwrap();
        match resp.headers().get("location").and_then(|l| l.to_str().ok()) {
            Some(location) => {
                let next = reqwest::Url::parse(&self.issuer)
                    .unwrap()
                    .join(location)
                    .unwrap();
                self.walk_with(&browser, next.as_str(), "consent", user)
                    .await
            }
            None => format!("page:{}", resp.text().await.unwrap_or_default()),
        }
    }

    /// Tokens obtained from the provider directly, as an app that ran its own device flow
    /// would hold them (for importing into oauthd): `(access_token, refresh_token)`.
    pub async fn device_tokens(&self) -> (String, String) {
        let http = reqwest::Client::new();
        let meta: serde_json::Value = http
            .get(format!("{}/.well-known/openid-configuration", self.issuer))
            .send()
            .await
            .expect("discovery")
            .json()
            .await
            .expect("discovery json");
        let endpoint = |name: &str| meta[name].as_str().expect(name).to_owned();
        let started: serde_json::Value = http
            .post(endpoint("device_authorization_endpoint"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("scope", "openid offline_access")])
            .send()
            .await
            .expect("device authorization")
            .json()
            .await
            .expect("device json");
        let user_code = started["user_code"].as_str().expect("user_code");
        self.verify_device(user_code, true).await;
        let device_code = started["device_code"].as_str().expect("device_code");
        for _ in 0..20 {
            let answer: serde_json::Value = http
                .post(endpoint("token_endpoint"))
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ])
                .send()
                .await
                .expect("token request")
                .json()
                .await
                .expect("token json");
            if let (Some(a), Some(r)) = (
                answer["access_token"].as_str(),
                answer["refresh_token"].as_str(),
            ) {
                return (a.to_owned(), r.to_owned());
            }
            assert_eq!(answer["error"], "authorization_pending", "{answer}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the device flow did not finish");
    }

    /// How many grants of this type (`authorization_code`, `refresh_token`) succeeded.
    pub async fn grants(&self, grant_type: &str) -> u64 {
        self.stats().await["grants"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// How many token requests of this grant type the provider refused.
    pub async fn grant_errors(&self, grant_type: &str) -> u64 {
        self.stats().await["errors"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// How many revocation requests the provider answered 200.
    pub async fn revocations(&self) -> u64 {
        self.stats().await["revocations"].as_u64().unwrap_or(0)
    }

    /// Revokes a token directly at the provider, as if the user revoked access there.
    pub async fn revoke(&self, token: &str) {
        let resp = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revocation");
        assert!(resp.status().is_success(), "revocation: {}", resp.status());
    }

    /// RFC 7662 introspection: whether the provider still considers the token active.
    pub async fn is_active(&self, token: &str) -> bool {
        let resp: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection")
            .json()
            .await
            .expect("introspection json");
        resp["active"].as_bool().expect("active field")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Twenty token calls for peer/alice spread over `daemons`, at a moment the token has
/// expired: all must get 200 and the same new token, from exactly one refresh at the
/// provider, and the grant must stay alive. Returns the token.
pub async fn twenty_token_calls_refresh_once(
    peer: &Peer,
    daemons: &[&super::Daemon],
    key: &str,
) -> String {
    let calls =
        (0..20).map(|i| daemons[i % daemons.len()].get("/v1/connections/peer/alice/token", key));
    let results = futures::future::join_all(calls).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(
        peer.grants("refresh_token").await,
        1,
        "more than one refresh reached the provider"
    );
    assert_eq!(peer.grant_errors("refresh_token").await, 0);
    let tokens: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, b)| b["access_token"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(tokens.len(), 1, "callers got different tokens: {tokens:?}");
    let token = tokens.into_iter().next().unwrap_or_default();
    assert!(peer.is_active(&token).await, "the grant was revoked");
    token
}

/// Starts a connect flow for "alice" at provider "peer" with return_to
/// `http://127.0.0.1:9/app/done`, approves it, and returns the callback URL.
pub async fn approved_with_return_to(d: &super::Daemon, peer: &Peer, key: &str) -> String {
    let request =
        serde_json::json!({"account": "alice", "return_to": "http://127.0.0.1:9/app/done"});
    let authorize = d.start_connect_with(key, "peer", request).await;
    peer.approve(&authorize).await
}

/// Connects peer/`account` through the browser flow (the peer approves at once); returns
/// the status and page of oauthd's callback.
pub async fn connect(d: &super::Daemon, peer: &Peer, key: &str, account: &str) -> (u16, String) {
    let authorize = d.start_connect(key, "peer", account).await;
    let callback = peer.approve(&authorize).await;
    assert!(
        callback.starts_with(&format!("{}/callback/peer?", d.url)),
        "{callback}"
    );
    let (status, page, _) = d.browser_get(&callback).await;
    (status, page)
}

/// A peer whose tokens live `token_secs`, configured in `home` (with `extra_toml`) as
/// provider "peer", an API key, and oauthd serving that home.
pub fn serving(
    home: &super::Home,
    token_secs: u64,
    extra_toml: &str,
) -> (Peer, String, super::Daemon) {
    let peer = Peer::start(token_secs);
    let key = peer.configure(home, extra_toml);
    let d = home.start();
    (peer, key, d)
}

//! The example apps (examples/), end to end against a real oauthd and the real test
//! provider: what their READMEs promise, checked from outside like a browser or a caller.

use crate::common::{self, peer::Peer, Home};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A process that prints "... listening on URL" once it serves; killed by PID when dropped.
struct Listening {
    child: Child,
    url: String,
}

impl Listening {
    fn start(mut cmd: Command, log: &Path) -> Listening {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, url)) = line.split_once(" listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Listening { child, url },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the example did not start: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name=value` of the first cookie an answer sets.
fn first_cookie(resp: &reqwest::Response) -> String {
    let set = common::header(resp, "set-cookie");
    set.split(';').next().unwrap_or_default().to_owned()
}

async fn body(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn express_signs_in_a_slow_user_and_checks_2fa_codes_with_state_in_oauthd() {
    let dir = root().join("examples/express-oauth");
    assert!(
        dir.join("node_modules/express").exists(),
        "examples/express-oauth is not installed: run scripts/test (npm ci)"
    );
    let peer = Peer::start(3600);
    let home = Home::new();
    let key = home.create_key("express", &["express:*"]);
    let tmp = tempfile::tempdir().unwrap();
    let clock = tmp.path().join("clock");
    let d = home.start_on_a_virtual_clock(&clock);
    let outbox = tmp.path().join("codes");
    let express = |issuer: &str, log: &str| {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("app.mjs"))
            .current_dir(&dir)
            .env("OAUTHD_URL", &d.url)
            .env("OAUTHD_API_KEY", &key)
            .env("ISSUER", issuer)
            .env("CLIENT_ID", "express-example")
            .env("CLIENT_SECRET", common::peer::CLIENT_SECRET)
            .env("PORT", "0")
            .env("CODE_OUTBOX", &outbox);
        Listening::start(cmd, &tmp.path().join(log))
    };
    // The issuer as people often write it, with a slash at the end.
    let app = express(&format!("{}/", peer.issuer), "express.log");
    let http = common::no_redirects();
    let get = |path: &str| http.get(format!("{}{path}", app.url));

    // A sign-in where the person spends eleven minutes on the provider's own 2FA: a
    // ten-minute in-memory state would be gone; the app's 60-minute state in oauthd is not.
    let login = get("/login").send().await.unwrap();
    assert_eq!(login.status(), 302);
    let authorize = common::header(&login, "location");
    let signin = first_cookie(&login);
    assert!(authorize.starts_with(&peer.issuer), "{authorize}");
    std::fs::write(&clock, "+660").unwrap();
    let callback = peer.approve(&authorize).await;
    assert!(
        callback.starts_with(&format!("{}/callback?", app.url)),
        "{callback}"
    );
    // The same link opened in another browser (an attacker's sign-in pressed on a victim)
    // is refused, and leaves the sign-in to its own browser.
    let elsewhere = http.get(&callback).send().await.unwrap();
    assert_eq!(
        body(elsewhere).await,
        (
            403,
            "this sign-in was not started in this browser: start again at /login\n".into()
        )
    );
    let resp = http
        .get(&callback)
        .header("cookie", &signin)
        .send()
        .await
        .unwrap();
    let session = first_cookie(&resp);
    assert!(session.starts_with("session="), "{session}");
    assert_eq!(body(resp).await, (200, "signed in as alice\n".into()));
    let me = get("/me").header("cookie", &session).send().await.unwrap();
    assert_eq!(body(me).await, (200, "signed in as alice\n".into()));
    // The same callback again: consumed exactly once.
    let again = http
        .get(&callback)
        .header("cookie", &signin)
        .send()
        .await
        .unwrap();
    assert_eq!(body(again).await.0, 400);

    // The provider says it names itself in its answers (RFC 9207): an answer without its
    // name is refused.
    let (authorize, signin) = start_sign_in(&http, &app.url).await;
    let callback = without_iss(&peer.approve(&authorize).await);
    assert_eq!(
        finish_sign_in(&http, &callback, &signin).await,
        (400, "the answer did not come from the provider\n".into())
    );

    // Past the hour the app chose, the sign-in is refused with its own words.
    let (authorize, signin) = start_sign_in(&http, &app.url).await;
    std::fs::write(&clock, "+4320").unwrap();
    let callback = peer.approve(&authorize).await;
    assert_eq!(
        finish_sign_in(&http, &callback, &signin).await,
        (
            410,
            "this sign-in took too long: start again at /login\n".into()
        )
    );

    // A 2FA code: five attempts, then none; the right code once.
    let start_2fa = || async {
        let resp = http
            .post(format!("{}/2fa/start", app.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let challenge: serde_json::Value = resp.json().await.unwrap();
        let sent = std::fs::read_to_string(&outbox).unwrap();
        let code = sent.lines().last().unwrap().split(' ').nth(1).unwrap();
        (
            challenge["challenge"].as_str().unwrap().to_owned(),
            code.to_owned(),
        )
    };
    let verify = |challenge: String, code: String| {
        let http = http.clone();
        let url = format!("{}/2fa/verify", app.url);
        let session = session.clone();
        async move {
            body(
                http.post(url)
                    .header("cookie", session)
                    .form(&[("challenge", challenge), ("code", code)])
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let wrong = |code: &str| if code == "000000" { "111111" } else { "000000" }.to_owned();
    let (challenge, code) = start_2fa().await;
    assert_eq!(
        verify(challenge.clone(), wrong(&code)).await,
        (403, "wrong code: 4 attempts left\n".into())
    );
    // What the person typed is trimmed (a space before it was a wrong try).
    assert_eq!(
        verify(challenge.clone(), format!(" {code}\n")).await,
        (200, "verified alice\n".into())
    );
    // A challenge that is none, or no code: the person's error, not the app's (503).
    for (challenge, code) in [("short", code.as_str()), (challenge.as_str(), "")] {
        assert_eq!(
            verify(challenge.to_owned(), code.to_owned()).await,
            (
                400,
                "not a challenge and code this app sent: ask for a new one\n".into()
            )
        );
    }
    assert_eq!(verify(challenge, code).await.0, 410);
    let (challenge, code) = start_2fa().await;
    for left in (0..5).rev() {
        let expected = if left > 0 {
            format!("wrong code: {left} attempts left\n")
        } else {
            "wrong code: no attempts left, ask for a new one\n".into()
        };
        assert_eq!(
            verify(challenge.clone(), wrong(&code)).await,
            (403, expected)
        );
    }
    assert_eq!(verify(challenge, code).await.0, 410);
    // Five virtual minutes later a code is no longer valid, even the right one.
    let (challenge, code) = start_2fa().await;
    std::fs::write(&clock, "+4640").unwrap();
    assert_eq!(
        verify(challenge, code).await,
        (
            410,
            "this code is no longer valid: ask for a new one\n".into()
        )
    );
    // Three codes sent within the hour: a fourth is not (five guesses each, asked for
    // again and again, got through a 6-digit code within a day), nor any of ten asked for
    // at once, and none of those leaves a marker. Retry-After is worked out from the
    // markers' ends, by oauthd's clock (4640 s ahead of this host's) and the app's.
    let ask = || {
        http.post(format!("{}/2fa/start", app.url))
            .header("cookie", &session)
            .send()
    };
    for fourth in futures::future::join_all((0..10).map(|_| ask())).await {
        let fourth = fourth.unwrap();
        let wait: u64 = common::header(&fourth, "retry-after").parse().unwrap();
        assert!((4640..=4640 + 3600).contains(&wait), "{wait}");
        let (status, said) = body(fourth).await;
        assert_eq!(status, 429, "{said}");
        assert!(
            said.starts_with("too many codes asked for: try again in "),
            "{said}"
        );
    }
    let markers = d
        .get(
            "/v1/namespaces/express:2fa:sent/subjects/alice/states",
            &key,
        )
        .await
        .1;
    let markers = markers["states"].as_array().map(Vec::len);
    assert_eq!(markers, Some(3));
    // A sign-in cookie set by hand to something no state is: refused as unknown.
    let forged = http
        .get(format!("{}/callback?state=short&code=x", app.url))
        .header("cookie", "signin=short")
        .send()
        .await
        .unwrap();
    assert_eq!(
        body(forged).await,
        (
            400,
            "unknown or already used sign-in: start again at /login\n".into()
        )
    );
    drop(app);

    // A provider that neither says it names itself nor does (many do not): its answers
    // are taken, as oauthd's broker takes them. Its metadata, served elsewhere without
    // the promise, points at the same provider.
    let mut meta: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", peer.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let quiet = wiremock::MockServer::start().await;
    let fields = meta.as_object_mut().unwrap();
    fields.remove("authorization_response_iss_parameter_supported");
    // Its own issuer, as Discovery has it (the app checks that).
    fields.insert("issuer".into(), quiet.uri().into());
    wiremock::Mock::given(wiremock::matchers::path(
        "/.well-known/openid-configuration",
    ))
    .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(meta))
    .mount(&quiet)
    .await;
    let app = express(&quiet.uri(), "express-quiet.log");
    let (authorize, signin) = start_sign_in(&http, &app.url).await;
    let callback = without_iss(&peer.approve(&authorize).await);
    assert_eq!(
        finish_sign_in(&http, &callback, &signin).await,
        (200, "signed in as alice\n".into())
    );
    drop(app);
    assert!(!home.log_text().contains("panicked"));
}

/// `/login` at the app: the provider's address to sign in at, and the sign-in's cookie.
async fn start_sign_in(http: &reqwest::Client, app: &str) -> (String, String) {
    let login = http.get(format!("{app}/login")).send().await.unwrap();
    assert_eq!(login.status(), 302);
    (common::header(&login, "location"), first_cookie(&login))
}

/// The provider's callback opened in the browser that holds `cookie`.
async fn finish_sign_in(http: &reqwest::Client, callback: &str, cookie: &str) -> (u16, String) {
    body(
        http.get(callback)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `url` without its `iss` query parameter: what a provider that does not send it answers.
fn without_iss(url: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert!(kept.len() < parsed.query_pairs().count(), "no iss in {url}");
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    parsed.to_string()
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// oauthd on `port` of `home` (so that it can be restarted where apps expect it).
fn oauthd_on(home: &Home, port: u16, log: &Path) -> Listening {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("serve")
        .arg("--db")
        .arg(home.db())
        .arg("--config")
        .arg(home.config())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .env_remove("OAUTHD_CONFIG");
    Listening::start(cmd, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_music_gets_a_token_per_call_links_a_speaker_and_survives_an_oauthd_restart() {
    let python = root().join("clients/python/.venv/bin/python");
    assert!(
        python.exists(),
        "the Python client is not installed: run scripts/test"
    );
    let peer = Peer::start(3600);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("music", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = oauthd_on(&home, port, &tmp.path().join("oauthd-1.log"));
    let http = common::no_redirects();

    // The listener's own account, connected in the browser (the provider approves).
    let started = common::json(
        http.post(format!("{}/v1/connect/peer", daemon.url))
            .bearer_auth(&key)
            .json(&serde_json::json!({})),
    )
    .await;
    let browser = reqwest::cookie::Jar::default();
    let to_provider = common::confirm_flow(
        &browser,
        &daemon.url,
        started["authorize_url"].as_str().unwrap(),
    )
    .await;
    let callback = peer.approve(&to_provider).await;
    let (status, page, _) = common::browser_get_with(&browser, &callback).await;
    assert_eq!(status, 200, "{page}");

    let mut cmd = Command::new(&python);
    cmd.arg(root().join("examples/python-music/app.py"))
        .env("OAUTHD_URL", &daemon.url)
        .env("OAUTHD_API_KEY", &key)
        .env("PROVIDER", "peer")
        .env("MUSIC_API", format!("{}/me", peer.issuer))
        .env("PORT", "0");
    let music = Listening::start(cmd, &tmp.path().join("music.log"));
    let now_playing = |account: &str| {
        let url = format!("{}/now-playing?account={account}", music.url);
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    for _ in 0..5 {
        let (status, body) = now_playing("default").await;
        assert_eq!(
            (status, body["listener"].as_str()),
            (200, Some("alice")),
            "{body}"
        );
    }

    // A second account, for a speaker, by the device flow.
    let speaker = common::json(
        http.post(format!("{}/speakers", music.url))
            .json(&serde_json::json!({"account": "kitchen"})),
    )
    .await;
    let user_code = speaker["user_code"]
        .as_str()
        .expect("a user code")
        .to_owned();

    // oauthd restarts in the middle: a call made while it is down is answered once it is
    // back, and the pending device flow carries on.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let during = tokio::spawn(now_playing("default"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon = oauthd_on(&home, port, &tmp.path().join("oauthd-2.log"));
    let (status, body) = during.await.unwrap();
    assert_eq!(
        (status, body["listener"].as_str()),
        (200, Some("alice")),
        "{body}"
    );

    // Down again, for longer than the client's retries last: the person
    // approves meanwhile, and the speaker's wait carries on until oauthd is back.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let page = peer.verify_device(&user_code, true).await;
    assert!(!page.contains("error"), "{page}");
    // The speaker's poll (every 5 s) left waiting on oauthd runs out of retries 17 to 22 s
    // in.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let status = common::json(http.get(format!("{}/speakers/kitchen", music.url))).await;
    assert_eq!(status["status"], "pending", "{status}");
    daemon = oauthd_on(&home, port, &tmp.path().join("oauthd-3.log"));
    let mut linked = false;
    for _ in 0..600 {
        let status = common::json(http.get(format!("{}/speakers/kitchen", music.url))).await;
        if status["status"] == "connected" {
            linked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(linked, "the speaker's device flow did not end connected");
    let (status, body) = now_playing("kitchen").await;
    assert_eq!(
        (status, body["listener"].as_str()),
        (200, Some("alice")),
        "{body}"
    );
    let (status, _) = now_playing("nobody").await;
    assert_eq!(status, 404);
    // A request oauthd refuses as it is (an account name it does not take) is said as
    // such, not as "try again".
    let resp = http
        .post(format!("{}/speakers", music.url))
        .json(&serde_json::json!({"account": "no spaces allowed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_account", "{body}");
    drop(music);

    // A music API with nothing playing answers 204 and no body (Spotify's
    // currently-playing): said as nothing playing, not a crash.
    let silent = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&silent)
        .await;
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("examples/python-music/app.py"))
        .env("OAUTHD_URL", &daemon.url)
        .env("OAUTHD_API_KEY", &key)
        .env("PROVIDER", "peer")
        .env(
            "MUSIC_API",
            format!("{}/v1/me/player/currently-playing", silent.uri()),
        )
        .env("PORT", "0");
    let music = Listening::start(cmd, &tmp.path().join("music-2.log"));
    let resp = http
        .get(format!("{}/now-playing?account=default", music.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (&body["account"], &body["playing"]),
        (&serde_json::json!("default"), &serde_json::Value::Null),
        "{body}"
    );
    drop(music);
    drop(daemon);
    for log in ["oauthd-1.log", "oauthd-2.log", "oauthd-3.log"] {
        let text = std::fs::read_to_string(tmp.path().join(log)).unwrap();
        assert!(!text.contains("panicked"), "{text}");
    }
}

//! Paste-back connect, for installs the provider cannot redirect to: the provider sends the
//! browser to a loopback address where nothing listens, and the person pastes that address
//! into oauthd (the page, or `oauthd connect --paste`). Against the real test provider,
//! whose client is registered with the loopback redirect URI.

use crate::common;

use common::browser::Browser;
use common::peer::Peer;
use common::Home;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts a connect of provider "peer" (`request`: `{}` or `{"account": …}`) as oauthd's
/// page does; the address it hands out.
async fn page_connect(
    d: &common::Daemon,
    ui: &(String, String),
    request: serde_json::Value,
) -> String {
    let (status, started) = d.ui_post(ui, "/ui/api/connect/peer", request).await;
    assert_eq!(status, 201, "{started}");
    started["authorize_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Pastes `url` into the page's field for `provider`, as oauthd's page does.
async fn page_paste(
    d: &common::Daemon,
    ui: &(String, String),
    provider: &str,
    url: &str,
) -> (u16, serde_json::Value) {
    let path = format!("/ui/api/paste/{provider}");
    d.ui_post(ui, &path, serde_json::json!({ "url": url }))
        .await
}

/// The peer as provider "peer" with a paste-back redirect URI on `port`, plus `extra`.
fn paste_home(peer: &Peer, port: u16, extra: &str) -> (Home, String) {
    let provider = peer.provider_toml("peer").replace(
        "[providers.peer.authorize_params]",
        &format!(
            "redirect_uri = \"http://127.0.0.1:{port}/callback/peer\"\n[providers.peer.authorize_params]"
        ),
    );
    let home = Home::new();
    home.write_config(&format!("{extra}\n{provider}"));
    let key = home.create_key("app", &[]);
    (home, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn paste_back_from_the_page_in_chromium() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, key) = paste_home(&peer, port, "");
    let d = home.start();
    let b = Browser::start("paste").await;
    b.sign_in(&home.login_link(&d)).await;
    b.wait_for("[data-connect=peer]").await;
    let card = b.text("#providers").await;
    assert!(
        card.contains(&format!("http://127.0.0.1:{port}/callback/peer"))
            && card.contains("Paste-back"),
        "{card}"
    );
    let page_window = b.client.window().await.unwrap();
    b.click("[data-connect=peer]").await;

    // The provider opens in a new tab; the page keeps the field for the address.
    b.wait_for("#paste-url-peer").await;
    let mut windows = Vec::new();
    for _ in 0..50 {
        windows = b.client.windows().await.unwrap();
        if windows.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let provider_tab = windows
        .into_iter()
        .find(|w| *w != page_window)
        .expect("Connect opened no tab for the provider");
    b.client.switch_to_window(provider_tab).await.unwrap();
    b.login_and_consent_at_provider("01").await;
    // The browser ends on the loopback address, where nothing answers.
    let landed = format!("http://127.0.0.1:{port}/callback/peer?");
    let mut address = String::new();
    for _ in 0..100 {
        address = b.url().await;
        if address.starts_with(&landed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        address.starts_with(&landed),
        "the browser ended on {address}"
    );
    assert!(
        address.contains("code=") && address.contains("state="),
        "{address}"
    );
    b.screenshot("02-unreachable.png").await;
    b.client.close_window().await.unwrap();

    b.client
        .switch_to_window(page_window.clone())
        .await
        .unwrap();
    b.wait_for("#paste-url-peer")
        .await
        .send_keys(&address)
        .await
        .unwrap();
    b.screenshot("03-pasted.png").await;
    b.click("[data-paste=peer]").await;
    b.wait_text("#notice", "Connected peer/default").await;
    b.wait_for("tr[data-connection='peer/default']").await;
    b.screenshot("04-connected.png").await;
    assert_eq!(
        d.get("/v1/connections/peer/default/token", &key).await.0,
        200
    );

    // The same address again: its state was used; the page says so and how to go on.
    // (Connecting an account that exists asks first.)
    b.click("[data-connect=peer]").await;
    b.answer_confirm("peer (default) is alice at peer", true)
        .await;
    let field = b.wait_for("#paste-url-peer").await;
    field.send_keys(&address).await.unwrap();
    b.click("[data-paste=peer]").await;
    b.wait_text("#paste-peer", "already used").await;
    b.wait_text("#paste-peer", "start again").await;
    b.screenshot("05-used.png").await;

    // Garbage: the page says what to paste.
    let field = b.wait_for("#paste-url-peer").await;
    field.clear().await.unwrap();
    field.send_keys("garbage").await.unwrap();
    b.click("[data-paste=peer]").await;
    b.wait_text("#paste-peer", "Paste the whole address").await;
    b.screenshot("06-garbage.png").await;

    // The provider's error: in the tab this Connect opened, the person declines; the
    // address the browser ends on carries error=access_denied.
    let tab = b
        .client
        .windows()
        .await
        .unwrap()
        .into_iter()
        .find(|w| *w != page_window)
        .expect("Connect opened no tab for the provider");
    b.client.switch_to_window(tab).await.unwrap();
    b.click("a[href$='/abort']").await;
    let mut denied = String::new();
    for _ in 0..100 {
        denied = b.url().await;
        if denied.starts_with(&landed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(denied.contains("error=access_denied"), "{denied}");
    b.client.close_window().await.unwrap();
    b.client.switch_to_window(page_window).await.unwrap();
    let field = b.wait_for("#paste-url-peer").await;
    field.clear().await.unwrap();
    field.send_keys(&denied).await.unwrap();
    b.click("[data-paste=peer]").await;
    b.wait_text("#paste-peer", "access was not granted").await;
    // The flow is over with it (its state taken): the page says to start again, not to
    // paste once more (it said only what went wrong, and the box stayed, inviting a paste
    // that could only be refused).
    b.wait_text("#paste-peer", "This sign-in is over").await;
    b.screenshot("07-declined.png").await;
    b.close().await;
}

/// Only the operator finishes a paste-back flow (by pasting), so an app cannot start one:
/// it could not be confirmed in the person's browser. Nor does the paste box finish a
/// flow an app started for another provider: that flow is its confirming browser's.
#[tokio::test(flavor = "multi_thread")]
async fn apps_neither_start_paste_back_flows_nor_have_their_flows_pasted() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, key) = paste_home(&peer, port, &peer.provider_toml("direct"));
    let d = home.start();
    let resp = d
        .http
        .post(format!("{}/v1/connect/peer", d.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"account": "tv"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    common::assert_code(resp, "paste_back_provider").await;

    let ui = home.ui_session(&d).await;
    let address = d.app_flow_address(&key, "direct", "evil").await;
    // The person confirms it and signs in at the provider: the way back is the callback.
    let callback = peer.approve(&d.confirm(&address).await).await;
    let (status, body) = page_paste(&d, &ui, "direct", &callback).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("app_flow_pasted")),
        "{body}"
    );
    // The paste left the flow to the browser that confirmed it (it used to take it).
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        d.get("/v1/connections/direct/evil/token", &key).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pasting_runs_the_callbacks_rules() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, key) = paste_home(&peer, port, "");
    let d = home.start();
    let ui = home.ui_session(&d).await;
    let paste = |url: String| {
        let (d, ui) = (&d, &ui);
        async move { page_paste(d, ui, "peer", &url).await }
    };
    let authorize = page_connect(&d, &ui, serde_json::json!({})).await;
    assert!(
        authorize.contains(&format!(
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback%2Fpeer"
        )),
        "{authorize}"
    );
    let address = peer.approve(&authorize).await;
    assert!(address.starts_with(&format!("http://127.0.0.1:{port}/callback/peer?")));

    // Garbage, and addresses that are not the registered redirect URI, touch nothing.
    for (text, code) in [
        ("", "paste_unreadable"),
        ("not an address at all", "paste_unreadable"),
        ("code=abc&state=def", "paste_unreadable"),
    ] {
        let (status, body) = paste(text.into()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{text}: {body}"
        );
    }
    let query = address.split_once('?').unwrap().1;
    // The redirect URI with a code and no state: no sign-in ends there, and the words
    // say what to paste instead (they said only to start again, while the terminal asked
    // for another paste).
    let code_only = format!("http://127.0.0.1:{port}/callback/peer?code=abc");
    let (status, body) = paste(code_only).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("no_state")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("paste the one the browser ended on after you approved")),
        "{body}"
    );
    for elsewhere in [
        format!("http://127.0.0.1:{}/callback/peer?{query}", dead_port()),
        format!("http://127.0.0.1:{port}/callback/other?{query}"),
        format!("https://127.0.0.1:{port}/callback/peer?{query}"),
        format!("http://evil.example/callback/peer?{query}"),
    ] {
        let (status, body) = paste(elsewhere.clone()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("paste_wrong_address")),
            "{elsewhere}: {body}"
        );
        assert!(!body.to_string().contains("code="), "{body}");
    }
    // A state given twice is not read either way.
    let (status, body) = paste(format!("{address}&state=x")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("paste_unreadable")),
        "{body}"
    );
    // Without the CSRF token nothing happens.
    let (status, body) = page_paste(&d, &(ui.0.clone(), "wrong".into()), "peer", &address).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("csrf_failed")));

    // The same answer presented at oauthd's own callback, where this provider never
    // sends a browser (by someone who saw it, without the operator's sign-in): refused,
    // and the flow stays open for the paste.
    let (status, page, _) = d
        .browser_get(&format!("{}/callback/peer?{query}", d.url))
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("Paste the address instead"), "{page}");
    // Prose, not Markdown: a backtick shows as it is on an HTML page.
    assert!(!page.contains('`'), "{page}");
    // The flow stays open: the address is not taken out of the address bar.
    assert!(!page.contains("forget-address.js"), "{page}");
    assert_eq!(d.get("/v1/connections/peer/default", &key).await.0, 404);

    // The real address, with surrounding whitespace as copied: connected.
    let (status, body) = paste(format!("  {address}\n")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"], "default");
    assert_eq!(
        d.get("/v1/connections/peer/default/token", &key).await.0,
        200
    );
    // Used: the state is gone, the code is never redeemed twice.
    let (status, body) = paste(address.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("unknown_state")),
        "{body}"
    );

    // The provider's error, shown with the account to start again for.
    let authorize = page_connect(&d, &ui, serde_json::json!({"account": "second"})).await;
    let denied = peer.deny(&authorize).await;
    assert!(denied.contains("error=access_denied"), "{denied}");
    let (status, body) = paste(denied).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    assert_eq!(body["account"], "second");

    // A state for another provider's flow pasted here reads as unknown.
    let (status, body) = paste(format!(
        "http://127.0.0.1:{port}/callback/peer?state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&code=x"
    ))
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("unknown_state")),
        "{body}"
    );
    assert!(
        !home.log_text().contains(query),
        "the pasted query reached the log"
    );
}

/// A paste-back provider whose redirect URI is oauthd's own callback by another loopback
/// name (`127.0.0.1` for a `public_url` at `localhost`, as for a provider that refuses
/// `localhost`) sends the browser to oauthd: the callback finishes the flow there.
#[tokio::test(flavor = "multi_thread")]
async fn a_paste_back_provider_sent_to_oauthds_own_callback_finishes_there() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, key) = paste_home(
        &peer,
        port,
        &format!("public_url = \"http://localhost:{port}\""),
    );
    let d = home.start();
    // The sign-in link names public_url, where nothing listens here.
    let link = home
        .login_link(&d)
        .replace(&format!("http://localhost:{port}"), &d.url);
    let session = d.sign_in(&link).await;
    let csrf = d.ui_overview(&session).await["csrf"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let authorize = page_connect(&d, &(session, csrf), serde_json::json!({})).await;
    let address = peer.approve(&authorize).await;
    let query = address.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let (status, page, _) = d
        .browser_get(&format!("{}/callback/peer?{query}", d.url))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(d.get("/v1/connections/peer/default", &key).await.0, 200);
}

/// A paste on the page that reconnected an account as another one at the provider said
/// only "Connected": the callback's page says that the apps now get another account's
/// tokens, and what became of the grant it was; the paste's answer carries the same notes
/// for the page to show.
#[tokio::test(flavor = "multi_thread")]
async fn a_paste_that_reconnects_another_account_says_so() {
    let peer = Peer::start(3600);
    let (home, _key) = paste_home(&peer, dead_port(), "");
    let d = home.start();
    let ui = home.ui_session(&d).await;
    for user in ["alice", "carol"] {
        let authorize = page_connect(&d, &ui, serde_json::json!({"account": "tv"})).await;
        let address = peer.approve_as(user, &authorize).await;
        let (status, body) = page_paste(&d, &ui, "peer", &address).await;
        assert_eq!(status, 200, "{body}");
        let notes = body["notes"].to_string();
        if user == "alice" {
            assert_eq!(body["notes"], serde_json::json!([]), "{body}");
        } else {
            assert!(
                notes.contains("Changed: tv was connected, signed in at peer as alice")
                    && notes.contains("The account it was: its grant was revoked at peer"),
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_paste_says_start_again() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, _key) = paste_home(
        &peer,
        port,
        "[states.namespaces.\"connect:*\"]\ndefault_ttl_seconds = 1\n",
    );
    let d = home.start();
    let ui = home.ui_session(&d).await;
    let authorize = page_connect(&d, &ui, serde_json::json!({})).await;
    let address = peer.approve(&authorize).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = page_paste(&d, &ui, "peer", &address).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("flow_expired")),
        "{body}"
    );
    assert_eq!(body["account"], "default");
}

/// `oauthd connect peer --paste` on the home's database and config, with `extra`
/// arguments; its stdout, to read.
fn start_paste(
    home: &Home,
    extra: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(common::BIN)
        .args(["connect", "peer", "--paste", "--db"])
        .arg(home.db())
        .arg("--config")
        .arg(home.config())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oauthd");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

/// What `connect --paste` prints up to its prompt, and the authorization URL in it.
fn until_the_paste_prompt(out: &mut impl BufRead, peer: &Peer) -> (String, Option<String>) {
    let mut printed = String::new();
    let mut authorize = None;
    for _ in 0..10 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        printed.push_str(&line);
        if line.starts_with(&peer.issuer) {
            authorize = Some(line.trim().to_owned());
        }
        if line.contains("paste it here") {
            break;
        }
    }
    (printed, authorize)
}

/// `oauthd connect peer --paste`: prints the authorization URL, reads the address from
/// stdin. Returns the exit status and everything printed.
async fn cli_paste(
    home: &Home,
    peer: &Peer,
    answer: impl FnOnce(String) -> String,
) -> (bool, String) {
    let (child, mut out) = start_paste(home, &[]);
    let (mut printed, authorize) = until_the_paste_prompt(&mut out, peer);
    let authorize = authorize.unwrap_or_else(|| panic!("no authorization URL printed: {printed}"));
    let address = peer.approve(&authorize).await;
    let (status, rest) = paste_and_wait(child, out, &answer(address));
    printed.push_str(&rest);
    (status.success(), printed)
}

/// Writes `text` and a newline to a `connect --paste`'s stdin and closes it; its exit
/// status, and everything it printed from then on (stdout, then stderr).
fn paste_and_wait(
    mut child: std::process::Child,
    mut out: BufReader<std::process::ChildStdout>,
    text: &str,
) -> (std::process::ExitStatus, String) {
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{text}").unwrap();
    drop(stdin);
    let rest = std::thread::spawn(move || {
        let mut printed = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut printed);
        printed
    });
    let output = common::exit_of(child);
    let mut printed = rest.join().unwrap_or_default();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn paste_back_from_the_terminal() {
    let peer = Peer::start(60);
    let port = dead_port();
    let (home, _key) = paste_home(&peer, port, "");
    // The terminal flow needs no running daemon: it works on the database itself.
    let listed = Command::new(common::BIN)
        .args(["providers", "list", "--config"])
        .arg(home.config())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains(&format!(
            "redirect URI: http://127.0.0.1:{port}/callback/peer"
        )) && listed.contains("paste-back"),
        "{listed}"
    );

    let mut kept = String::new();
    let (ok, printed) = cli_paste(&home, &peer, |a| {
        kept = a.clone();
        a
    })
    .await;
    assert!(ok, "{printed}");
    assert!(printed.contains("Connected peer/default."), "{printed}");
    assert!(
        printed.contains(&format!("http://127.0.0.1:{port}/callback/peer")),
        "{printed}"
    );
    let list = home.cli(&["connections", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("peer"),
        "{list:?}"
    );

    // The used address again (another flow's, for this command), garbage and another
    // address: not connected, exit 1, and why.
    let (ok, printed) = cli_paste(&home, &peer, |_| kept.clone()).await;
    assert!(
        !ok && printed.contains("Another sign-in's address"),
        "{printed}"
    );
    let (ok, printed) = cli_paste(&home, &peer, |_| "garbage".into()).await;
    assert!(!ok && printed.contains("Not an address"), "{printed}");
    let (ok, printed) =
        cli_paste(&home, &peer, |a| a.replace("/callback/peer", "/elsewhere")).await;
    assert!(
        !ok && printed.contains("Not the address oauthd waits for"),
        "{printed}"
    );
    let (ok, printed) = cli_paste(&home, &peer, |_| String::new()).await;
    assert!(!ok && printed.contains("nothing was pasted"), "{printed}");
    // Five tries used: said as such, not as the last try's "Paste the whole address".
    let (ok, printed) = cli_paste(&home, &peer, |_| ["garbage"; 5].join("\n")).await;
    assert!(
        !ok && printed.contains("5 addresses were pasted and none finished the sign-in"),
        "{printed}"
    );

    // A wrong paste leaves the flow open, as on the page: the right address pasted next
    // connects.
    let (ok, printed) = cli_paste(&home, &peer, |a| {
        let elsewhere = a.replace("/callback/peer", "/elsewhere");
        format!("garbage\n{elsewhere}\n{a}")
    })
    .await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains("Not an address")
            && printed.contains("Paste the address again")
            && printed.contains("Connected peer/default."),
        "{printed}"
    );
}

/// Two `connect --paste` at once: the address of one's sign-in pasted into the other is
/// refused there and left to its own, which connects with it. It used to connect the first
/// one's account from the second command, which said "Connected peer/xa." and exited 0
/// although asked for xb (a script's `&&` went on).
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_paste_finishes_only_its_own_sign_in() {
    let peer = Peer::start(60);
    let (home, key) = paste_home(&peer, dead_port(), "");
    let (a, mut a_out) = start_paste(&home, &["--account", "xa"]);
    let (printed, authorize) = until_the_paste_prompt(&mut a_out, &peer);
    let Some(authorize) = authorize else {
        let (_, said) = paste_and_wait(a, a_out, "");
        panic!("no authorization URL printed: {printed}{said}");
    };
    let (b, mut b_out) = start_paste(&home, &["--account", "xb"]);
    let (printed, _) = until_the_paste_prompt(&mut b_out, &peer);
    if !printed.contains("peer/xb") {
        let (_, said) = paste_and_wait(b, b_out, "");
        panic!("no authorization URL printed: {printed}{said}");
    }
    let address = peer.approve(&authorize).await;
    let (status, said) = paste_and_wait(b, b_out, &address);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("Another sign-in's address") && !said.contains("Connected"),
        "{said}"
    );
    let (status, said) = paste_and_wait(a, a_out, &address);
    assert!(status.success(), "{said}");
    assert!(said.contains("Connected peer/xa."), "{said}");
    let d = home.start();
    assert_eq!(d.get("/v1/connections/peer/xa", &key).await.0, 200);
    assert_eq!(d.get("/v1/connections/peer/xb", &key).await.0, 404);
}

/// `connect --paste` for a provider whose redirect URI is oauthd's own callback, with
/// oauthd running there: the browser lands on oauthd, which finishes the flow. The
/// command says so and ends, instead of waiting for a paste that will never come.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_paste_ends_when_the_running_oauthd_finishes_the_flow() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let d = home.start();
    let listen = d.url.trim_start_matches("http://");
    let (mut child, mut out) = start_paste(&home, &["--account", "cli1", "--listen", listen]);
    let (printed, authorize) = until_the_paste_prompt(&mut out, &peer);
    assert!(
        printed.contains("If oauthd answers there, the flow finishes by itself"),
        "{printed}"
    );
    let authorize = authorize.unwrap_or_else(|| panic!("no authorization URL printed: {printed}"));
    // The account connected another way meanwhile (an import) is not this flow finishing:
    // the command goes on waiting.
    let file = home.dir.path().join("tokens.jsonl");
    std::fs::write(
        &file,
        "{\"provider\":\"peer\",\"account\":\"cli1\",\"access_token\":\"tok-imported\"}\n",
    )
    .unwrap();
    let imported = home.cli(&["connections", "import", "--file", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{imported:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command took an import for its flow"
    );
    let address = peer.approve(&authorize).await;
    assert!(address.starts_with(&d.url), "{address}");
    let landed = d.http.get(&address).send().await.unwrap();
    assert!(landed.status().is_success(), "{landed:?}");
    // stdin stays open (nobody pastes): the command ends by itself, within seconds.
    let _stdin = child.stdin.take();
    let mut ended = None;
    for _ in 0..100 {
        ended = child.try_wait().unwrap();
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = ended else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still waiting for a paste after the flow finished: {printed}");
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(status.success(), "{printed}{rest}");
    assert!(
        rest.contains("Connected peer/cli1 (oauthd's callback finished the flow)."),
        "{rest}"
    );
    let (status, conn) = d
        .get("/v1/connections/peer/cli1", &home.create_key("app", &[]))
        .await;
    assert_eq!((status, conn["status"].as_str()), (200, Some("active")));
}

/// `connect --paste` given up (an empty line) said "not connected" but left its flow open
/// until it expired: a flow started from the terminal is tied to no browser, so anyone who
/// saw its address (scroll-back, a shared screen) could finish it at oauthd's callback
/// with their own account, under the operator's account name. Given up, the flow ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_paste_given_up_leaves_no_flow_another_browser_can_finish() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let d = home.start();
    let listen = d.url.trim_start_matches("http://");
    let (mut child, mut out) = start_paste(&home, &["--account", "late", "--listen", listen]);
    let (printed, authorize) = until_the_paste_prompt(&mut out, &peer);
    let authorize = authorize.unwrap_or_else(|| panic!("no authorization URL printed: {printed}"));
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin).unwrap();
    drop(stdin);
    let output = common::exit_of(child);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("nothing was pasted")
            && said.contains("The sign-in address printed above no longer works"),
        "{said}"
    );
    // Someone else's browser, at the provider as someone else, then at oauthd's callback.
    let other_browser = Peer::browser();
    let landed_at = peer.approve_in(&other_browser, &authorize).await;
    let (status, page, _) = d.browser_get(&landed_at).await;
    assert_ne!(status, 200, "{page}");
    let key = home.create_key("app", &[]);
    assert_eq!(
        d.get("/v1/connections/peer/late", &key).await.0,
        404,
        "the given-up flow connected the account"
    );
}

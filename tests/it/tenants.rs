//! Per-tenant API keys (`keys create --account PATTERN`) and token import (`PUT
//! /v1/connections/{p}/{a}`, `connections import`), against the real binary and the test
//! OpenID provider, on SQLite and on a real redis-server.

use crate::common::peer::{connect, serving};
use crate::common::{self, Home};
use serde_json::{json, Value};

contract![
    an_account_scoped_key_reaches_only_its_accounts_on_every_connection_route,
    imported_tokens_are_served_refreshed_and_end_as_needs_reauth_when_rejected,
    connections_import_reports_each_line_and_can_run_again,
    an_import_run_again_keeps_what_oauthd_refreshed_since,
    an_import_during_a_refresh_keeps_what_the_refresh_saves,
    a_key_reaching_its_most_connections_adds_no_other_account,
    imports_sent_at_once_stop_at_the_cap,
    connect_flows_started_before_the_cap_stop_there,
    device_flows_started_before_the_cap_stop_there,
];

fn tenant_key(home: &Home, name: &str, accounts: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--name", name];
    for a in accounts {
        args.extend(["--account", a]);
    }
    let out = home.cli(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

async fn assert_refused(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    common::assert_code(resp, "account_not_allowed").await;
}

/// A key made with `--account acme.*` sees and touches only acme accounts: token,
/// metadata, list, connect, device, import and delete; a key without it is unchanged.
async fn an_account_scoped_key_reaches_only_its_accounts_on_every_connection_route(home: Home) {
    let (peer, key, d) = serving(&home, 3600, "");
    for account in ["alice", "acme.bob"] {
        assert_eq!(connect(&d, &peer, &key, account).await.0, 200);
    }
    // Connect flows count per provider: account names stay off the scrape.
    let text = d.metrics_text().await;
    assert_eq!(
        common::sample(
            &text,
            "oauthd_states_created_total{namespace=\"connect:peer\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        !text.contains("alice") && !text.contains("acme.bob"),
        "{text}"
    );
    let tenant = tenant_key(&home, "acme", &["acme.*"]);
    let out = home.cli(&["keys", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acme = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "acme")
        .unwrap();
    assert_eq!(acme["accounts"], json!(["acme.*"]));

    let (status, list) = d.get("/v1/connections", &tenant).await;
    assert_eq!(status, 200);
    let accounts: Vec<&str> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, vec!["acme.bob"]);
    let (_, list) = d.get("/v1/connections", &key).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 2);

    let (status, token) = d.get("/v1/connections/peer/acme.bob/token", &tenant).await;
    assert_eq!(status, 200, "{token}");
    for path in [
        "/v1/connections/peer/alice/token",
        "/v1/connections/peer/alice",
    ] {
        assert_refused(d.get_raw(path, Some(&tenant)).await, path).await;
    }
    assert_refused(
        d.delete("/v1/connections/peer/alice", &tenant).await,
        "delete",
    )
    .await;
    let (status, problem) = d
        .put(
            "/v1/connections/peer/alice",
            &tenant,
            json!({"access_token": "x"}),
        )
        .await;
    assert_eq!(status, 401);
    assert!(problem.contains("account_not_allowed"), "{problem}");
    for (path, body) in [
        ("/v1/connect/peer", json!({"account": "alice"})),
        ("/v1/connect/peer", json!({})),
        ("/v1/device/peer", json!({"account": "alice"})),
    ] {
        let (status, problem) = d.post(path, &tenant, body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (401, Some("account_not_allowed")),
            "{path} {body}"
        );
    }
    let (status, _) = d
        .post(
            "/v1/connect/peer",
            &tenant,
            json!({"account": "acme.carol"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, flow) = d
        .post("/v1/device/peer", &key, json!({"account": "alice"}))
        .await;
    assert_eq!(status, 201, "{flow}");
    let status_path = format!("/v1/device/peer/{}", flow["id"].as_str().unwrap());
    // Another tenant's flow is as unknown as a flow that never existed.
    let resp = d.get_raw(&status_path, Some(&tenant)).await;
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("device_flow_not_found") && !body.contains("alice"),
        "{body}"
    );
    assert_eq!(d.get(&status_path, &key).await.0, 202);
    // Still alive after all of that; the tenant's own delete works.
    assert_eq!(d.get("/v1/connections/peer/alice/token", &key).await.0, 200);
    assert_eq!(
        d.delete("/v1/connections/peer/acme.bob", &tenant)
            .await
            .status(),
        204
    );

    let out = home.cli(&["keys", "create", "--name", "bad", "--account", "no spaces*"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("account"),
        "{out:?}"
    );
}

/// A key reaches a provider's connections only through a namespace pattern that spells
/// `provider:` out, or `*`: `p*`, made for states in `payments`, reaches those states and no
/// token, and `keys create` and `oauthd check` say so. (Scope is checked above the store:
/// SQLite only.)
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_pattern_reaches_providers_only_when_it_names_them() {
    let home = Home::new();
    let (peer, key, d) = serving(&home, 3600, "");
    assert_eq!(connect(&d, &peer, &key, "alice").await.0, 200);
    for (i, (pattern, reaches)) in [
        ("p*", false),
        ("provider*", false),
        ("provider:*", true),
        ("provider:pe*", true),
        ("provider:peer", true),
        ("*", true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("k{i}");
        let out = home.cli(&["keys", "create", "--name", &name, "--namespace", pattern]);
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            said.contains("does not reach any provider's tokens"),
            !reaches,
            "{pattern}: {said}"
        );
        let scoped = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_owned();
        let resp = d
            .get_raw("/v1/connections/peer/alice/token", Some(&scoped))
            .await;
        if reaches {
            assert_eq!(resp.status(), 200, "{pattern}");
        } else {
            assert_eq!(resp.status(), 401, "{pattern}");
            let body = resp.text().await.unwrap();
            assert!(
                body.contains("namespace_not_allowed") && body.contains("'provider:*'"),
                "{pattern}: {body}"
            );
        }
        if pattern == "p*" {
            let state = d
                .create_state(&scoped, json!({"namespace": "payments"}))
                .await;
            assert_eq!(d.consume(&scoped, &state, "payments").await.0, 200);
        }
    }
    // A key that also names the providers gets no note. Keys made before the rule (the
    // same rows) are pointed out by `oauthd check`, and revoked ones are not.
    let both = ["keys", "create", "--name", "both", "--namespace", "p*"];
    let out = home.cli(&[&both[..], &["--namespace", "provider:*"]].concat());
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("does not reach"), "{said}");
    assert!(home.cli(&["keys", "revoke", "k1"]).status.success());
    let out = home.cli(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    let warned: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("warn") && l.contains("does not reach any provider's tokens"))
        .collect();
    assert_eq!(warned.len(), 1, "{report}");
    assert!(warned[0].contains("API key \"k0\": p*"), "{report}");
}

/// A file to import peer/`account` from, with tokens the provider issued, due at once:
/// the first token call refreshes them, rotating the refresh token.
async fn due_import_file(
    peer: &crate::common::peer::Peer,
    account: &str,
) -> tempfile::NamedTempFile {
    let (access, refresh) = peer.device_tokens().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let line = json!({"provider": "peer", "account": account, "access_token": access,
                      "refresh_token": refresh, "expires_at": "2020-01-01T00:00:00Z"});
    std::fs::write(file.path(), format!("{line}\n")).unwrap();
    file
}

/// `connections import` run again after oauthd refreshed an imported connection replaced its
/// tokens with the file's, whose refresh token the provider had rotated out: the next
/// refresh replayed it, the provider ended the whole grant, and the connection needed
/// reauth. Run again, it keeps what oauthd refreshed (or connected) since; `--replace`
/// imports anyway.
async fn an_import_run_again_keeps_what_oauthd_refreshed_since(home: Home) {
    let (peer, key, d) = serving(&home, 3600, "");
    let file = due_import_file(&peer, "moved").await;
    let path = file.path().to_str().unwrap();
    let import = |more: &[&str]| {
        let mut args = vec!["connections", "import", "--file", path];
        args.extend(more);
        let out = home.cli(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(import(&[]).contains("line 1: created peer/moved"));
    // Imported again before any refresh: its tokens are still the file's.
    assert!(import(&[]).contains("line 1: replaced peer/moved"));
    let (status, token) = d.get("/v1/connections/peer/moved/token", &key).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(peer.grants("refresh_token").await, 1);

    let said = import(&[]);
    assert!(
        said.contains("line 1: kept peer/moved: oauthd has had its tokens from peer since"),
        "{said}"
    );
    // What oauthd refreshed still refreshes.
    let out = home.cli(&["connections", "refresh", "peer", "moved"]);
    assert!(out.status.success(), "{out:?}");
    let (_, view) = d.get("/v1/connections/peer/moved", &key).await;
    assert_eq!(view["status"], "active", "{view}");

    // --replace imports over it: the rotated-out refresh token then ends the grant, as the
    // line said it would.
    assert!(import(&["--replace"]).contains("line 1: replaced peer/moved"));
    let (status, problem) = d.get("/v1/connections/peer/moved/token", &key).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("needs_reauth")),
        "{problem}"
    );
}

/// An import run while oauthd refreshes the connection it names: saved, it would fence off
/// the refresh, whose rotated refresh token was then lost (the file's replayed instead).
/// It keeps the connection, saying the refresh is under way.
async fn an_import_during_a_refresh_keeps_what_the_refresh_saves(home: Home) {
    use crate::common::relay::Fault;
    use std::time::Duration;
    let peer = crate::common::peer::Peer::start(3600);
    let (relay, provider) = peer.behind_relay("peer").await;
    home.write_config(&provider);
    let key = home.create_key("app", &[]);
    let d = home.start();
    let file = due_import_file(&peer, "busy").await;
    let path = file.path().to_str().unwrap();
    let out = home.cli(&["connections", "import", "--file", path]);
    assert!(out.status.success(), "{out:?}");
    // Its first token call refreshes it; the provider's answer is held a while.
    relay.arm(
        "grant_type=refresh_token",
        Fault::Hold(Duration::from_secs(3)),
    );
    let token = d.get("/v1/connections/peer/busy/token", &key);
    let importing = async {
        assert!(relay.struck(Duration::from_secs(20)).await, "no refresh");
        let out = home.cli(&["connections", "import", "--file", path]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ((status, answer), said) = tokio::join!(token, importing);
    assert_eq!(status, 200, "{answer}");
    assert!(
        said.contains("line 1: kept peer/busy: oauthd is refreshing it at peer now"),
        "{said}"
    );
    // What the refresh saved refreshes again.
    let out = home.cli(&["connections", "refresh", "peer", "busy"]);
    assert!(out.status.success(), "{out:?}");
}

/// Tokens an app got by itself are handed to oauthd: served as they are, refreshed with
/// the imported refresh token when due, and `needs_reauth` when the provider rejects it.
async fn imported_tokens_are_served_refreshed_and_end_as_needs_reauth_when_rejected(home: Home) {
    let (peer, key, d) = serving(&home, 3600, "");
    let (access, refresh) = peer.device_tokens().await;
    let path = "/v1/connections/peer/imported";
    let body = json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600,
                      "scope": "openid offline_access"});
    let (status, answer) = d.put(path, &key, body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        !answer.contains(&access) && !answer.contains(&refresh),
        "{answer}"
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], "active");
    let (status, token) = d.get(&format!("{path}/token"), &key).await;
    assert_eq!(status, 200);
    assert_eq!(token["access_token"], access.as_str());
    // The same import again replaces (200); sealed at rest like any token.
    assert_eq!(d.put(path, &key, body).await.0, 200);
    let stored = home.stored_bytes();
    for secret in [&access, &refresh] {
        assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    // Due (expired): refreshed with the imported refresh token, once.
    let due = json!({"access_token": access, "refresh_token": refresh,
                     "expires_at": "2020-01-01T00:00:00Z"});
    assert_eq!(d.put(path, &key, due).await.0, 200);
    let (status, token) = d.get(&format!("{path}/token"), &key).await;
    assert_eq!(status, 200, "{token}");
    assert_ne!(token["access_token"], access.as_str());
    assert_eq!(peer.grants("refresh_token").await, 1);
    assert!(
        peer.is_active(token["access_token"].as_str().unwrap())
            .await
    );

    // A refresh token the provider does not know ends as needs_reauth, not in retries.
    let rejected = json!({"access_token": "old", "refresh_token": "not-a-real-refresh-token",
                          "expires_in": 0});
    assert_eq!(
        d.put("/v1/connections/peer/stale", &key, rejected).await.0,
        201
    );
    let (status, problem) = d.get("/v1/connections/peer/stale/token", &key).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("needs_reauth")),
        "{problem}"
    );
    let (_, view) = d.get("/v1/connections/peer/stale", &key).await;
    assert_eq!(view["status"], "needs_reauth");

    // Bad imports are 4xx problems that never repeat a token.
    for (target, body, status, code) in [
        (path, json!({}), 400, "invalid_tokens"),
        (
            path,
            json!({"access_token": "SECRET-1", "expires_in": "SECRET-2"}),
            400,
            "invalid_tokens",
        ),
        (
            path,
            json!({"access_token": "SECRET-1", "expires_in": 5, "expires_at": "2030-01-01T00:00:00Z"}),
            400,
            "invalid_tokens",
        ),
        (
            path,
            json!({"access_token": "SECRET-1", "refresh": "SECRET-2"}),
            400,
            "invalid_tokens",
        ),
        // An access token already expired with nothing to renew it: refused, not stored
        // to answer needs_reauth ever after.
        (
            "/v1/connections/peer/expired",
            json!({"access_token": "SECRET-1", "expires_in": 0}),
            400,
            "invalid_tokens",
        ),
        (
            "/v1/connections/peer/expired",
            json!({"access_token": "SECRET-1", "expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "invalid_tokens",
        ),
        (
            "/v1/connections/nobody/x",
            json!({"access_token": "SECRET-1"}),
            404,
            "unknown_provider",
        ),
        (
            "/v1/connections/peer/bad%20name",
            json!({"access_token": "SECRET-1"}),
            400,
            "invalid_account",
        ),
    ] {
        let (got, answer) = d.put(target, &key, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer.contains(code) && !answer.contains("SECRET-"),
            "{body}: {answer}"
        );
    }
    let (status, _) = d.get("/v1/connections/peer/expired", &key).await;
    assert_eq!(status, 404, "a refused import stored nothing");
    assert!(!home.log_text().contains(&refresh));
}

/// A key limited to accounts (a tenant's) that reaches `limits.max_connections_per_key`
/// connections starts no flow and imports nothing for another account (`429
/// too_many_connections`); it replaces one it has, connections it does not reach do not
/// count, a delete makes room, and a key without account limits is not capped. Imports of
/// made-up tokens piled up without end (60 a minute), each refreshed under the operator's
/// client id and said by event when it failed.
async fn a_key_reaching_its_most_connections_adds_no_other_account(home: Home) {
    let (_peer, key, d) = serving(&home, 3600, "[limits]\nmax_connections_per_key = 2\n");
    let tenant = tenant_key(&home, "acme", &["acme.*"]);
    let tokens = json!({"access_token": "made-up", "expires_in": 3600});
    let import = |account: &str, key: &str| {
        let (d, key, path) = (
            &d,
            key.to_owned(),
            format!("/v1/connections/peer/{account}"),
        );
        let tokens = tokens.clone();
        async move { d.put(&path, &key, tokens).await }
    };
    // Not the tenant's: it does not count against the tenant's key.
    assert_eq!(import("other", &key).await.0, 201);
    for account in ["acme.a", "acme.b"] {
        assert_eq!(import(account, &tenant).await.0, 201, "{account}");
    }
    let (status, problem) = import("acme.c", &tenant).await;
    assert_eq!(status, 429, "{problem}");
    let problem: Value = serde_json::from_str(&problem).unwrap();
    assert_eq!(problem["code"], "too_many_connections");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reaches 2 connections")
                && d.contains("max_connections_per_key = 2")),
        "{problem}"
    );
    for path in ["/v1/connect/peer", "/v1/device/peer"] {
        let (status, problem) = d.post(path, &tenant, json!({"account": "acme.c"})).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (429, Some("too_many_connections")),
            "{path}: {problem}"
        );
    }
    // One it has: replaced, and its connect flow starts.
    assert_eq!(import("acme.a", &tenant).await.0, 200);
    let (status, started) = d
        .post("/v1/connect/peer", &tenant, json!({"account": "acme.a"}))
        .await;
    assert_eq!(status, 201, "{started}");
    // A key without account limits (one app's for all its users) is not capped.
    assert_eq!(import("third", &key).await.0, 201);
    let gone = d
        .delete("/v1/connections/peer/acme.b?force=true", &tenant)
        .await;
    assert!(gone.status().is_success(), "{gone:?}");
    assert_eq!(import("acme.c", &tenant).await.0, 201);
}

/// Imports a tenant's key sends at once to one oauthd stop at its cap: each passed the
/// check before any was stored, and 16 sent at once with a cap of 3 stored 10. So do those
/// of two keys of one scope (a tenant's old and new key while it rotates them), which
/// count the same connections: with a turn each, they stored 2 where the cap was 1.
async fn imports_sent_at_once_stop_at_the_cap(home: Home) {
    let (_peer, _key, d) = serving(&home, 3600, "[limits]\nmax_connections_per_key = 3\n");
    let keys = [
        tenant_key(&home, "acme", &["acme.*"]),
        tenant_key(&home, "acme-new", &["acme.*"]),
    ];
    let tenant = keys[0].clone();
    let tokens = json!({"access_token": "made-up", "expires_in": 3600});
    let imports = (0..16).map(|i| {
        let (d, tenant, tokens) = (&d, keys[i % 2].clone(), tokens.clone());
        async move {
            d.put(&format!("/v1/connections/peer/acme.{i}"), &tenant, tokens)
                .await
                .0
        }
    });
    let answers = futures::future::join_all(imports).await;
    let stored = answers.iter().filter(|s| **s == 201).count();
    assert_eq!(stored, 3, "{answers:?}");
    assert!(
        answers.iter().all(|s| [201, 429].contains(s)),
        "{answers:?}"
    );
    let mut held = 0;
    for i in 0..16 {
        let (status, _) = d
            .get(&format!("/v1/connections/peer/acme.{i}"), &tenant)
            .await;
        held += usize::from(status == 200);
    }
    assert_eq!(held, 3);
}

/// Flows a capped tenant key started while it had room are checked again where they
/// connect: of four callbacks arriving at once, one stores its connection and the others
/// store nothing, and a fifth flow's confirmation page says so before the person goes to
/// the provider. All four connected before: the cap was checked only when a flow started.
/// Tokens got for a refused flow are not revoked (a provider that ends the whole grant
/// would end the stored one's: all were approved by one user).
async fn connect_flows_started_before_the_cap_stop_there(home: Home) {
    let (peer, key, d) = serving(&home, 3600, "[limits]\nmax_connections_per_key = 1\n");
    let tenant = tenant_key(&home, "acme", &["acme.*"]);
    let accounts = ["acme.a", "acme.b", "acme.c", "acme.d"];
    let mut callbacks = Vec::new();
    for account in accounts {
        let authorize = d.start_connect(&tenant, "peer", account).await;
        callbacks.push(peer.approve(&authorize).await);
    }
    let fifth = d.app_flow_address(&tenant, "peer", "acme.e").await;
    let revoked_before = peer.revocations().await;
    let pages = futures::future::join_all(callbacks.iter().map(|c| d.browser_get(c))).await;
    let statuses: Vec<u16> = pages.iter().map(|(status, _, _)| *status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    for (status, page, _) in pages.iter().filter(|(status, _, _)| *status != 200) {
        assert_eq!(*status, 429, "{page}");
        assert!(
            page.contains("already has 1 connections") && page.contains("max_connections_per_key"),
            "{page}"
        );
    }
    let (_, list) = d.get("/v1/connections", &key).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 1, "{list}");
    let (status, page, _) = d.browser_get(&fifth).await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("no room for another account"), "{page}");
    assert_eq!(peer.revocations().await, revoked_before);
    // The account it has reconnects.
    let connected = accounts[statuses.iter().position(|s| *s == 200).unwrap()];
    let (status, page) = connect(&d, &peer, &tenant, connected).await;
    assert_eq!(status, 200, "{page}");
}

/// The same for device flows: of those a capped key started while it had room, approved
/// after one connected, none connects, and each ends `failed` saying why. Their tokens
/// are not revoked, whoever approved them: a provider that ends the whole grant on a
/// revocation (this one, for one browser's sign-ins; Google per user) could end another
/// connection's of the same account, stored or being stored by another key's flow.
async fn device_flows_started_before_the_cap_stop_there(home: Home) {
    let (peer, key, d) = serving(&home, 3600, "[limits]\nmax_connections_per_key = 1\n");
    let tenant = tenant_key(&home, "acme", &["acme.*"]);
    let mut flows = Vec::new();
    for account in ["acme.a", "acme.b", "acme.c"] {
        flows.push(d.start_device(&tenant, "peer", account).await);
    }
    let code = |n: usize| flows[n]["user_code"].as_str().unwrap().to_owned();
    let end = |n: usize| {
        let id = flows[n]["id"].as_str().unwrap().to_owned();
        let d = &d;
        let tenant = tenant.clone();
        async move {
            let limit = std::time::Duration::from_secs(30);
            d.wait_device(&tenant, "peer", &id, limit).await
        }
    };
    peer.verify_device_as("alice", &code(0), true).await;
    let (status, body) = end(0).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("connected")),
        "{body}"
    );
    let revoked_before = peer.revocations().await;
    for (n, user) in [(1, "alice"), (2, "bob")] {
        peer.verify_device_as(user, &code(n), true).await;
        let (status, body) = end(n).await;
        assert_eq!(
            (status, body["status"].as_str(), body["error"].as_str()),
            (502, Some("failed"), Some("too_many_connections")),
            "{body}"
        );
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("reaches 1 connections")),
            "{body}"
        );
    }
    let (_, list) = d.get("/v1/connections", &key).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 1, "{list}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(peer.revocations().await, revoked_before);
}

/// `connections import --file`: each line reported, bad lines refused without a token in
/// the message (exit 1), the good ones imported; running it again replaces them.
async fn connections_import_reports_each_line_and_can_run_again(home: Home) {
    let (_peer, key, d) = serving(&home, 3600, "");
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines = [
        json!({"provider": "peer", "account": "one", "access_token": "tok-1", "expires_in": 3600}),
        json!({"provider": "peer", "account": "two", "access_token": "tok-2", "refresh_token": "rt-2"}),
        json!({"provider": "nobody", "account": "x", "access_token": "SECRET-A"}),
        json!({"provider": "peer", "account": "y", "access_token": "SECRET-B", "expires_in": "SECRET-C"}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str("\n{not json SECRET-D\n");
    // A member named twice is refused, as in an HTTP body (the last one used to win).
    text.push_str(
        "{\"provider\":\"peer\",\"account\":\"twice\",\"access_token\":\"SECRET-E\",\"access_token\":\"SECRET-F\"}\n",
    );
    std::fs::write(file.path(), text).unwrap();
    let path = file.path().to_str().unwrap();
    let out = home.cli(&["connections", "import", "--file", path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains("line 1: created peer/one"), "{stdout}");
    assert!(stdout.contains("line 2: created peer/two"), "{stdout}");
    for n in [3, 4, 6, 7] {
        assert!(stdout.contains(&format!("line {n}: refused")), "{stdout}");
    }
    // Which of the two a line is not (it said "not a JSON object, or one that names a
    // member more than once" of both).
    assert!(
        stdout.contains("line 6: refused: not valid JSON (from byte 2 of the line on)")
            && stdout.contains("line 7: refused: a JSON object that names a member more than once"),
        "{stdout}"
    );
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("SECRET-") && !all.contains("tok-"), "{all}");
    let (status, token) = d.get("/v1/connections/peer/one/token", &key).await;
    assert_eq!(
        (status, token["access_token"].as_str()),
        (200, Some("tok-1"))
    );

    let out = home.cli(&["connections", "import", "--file", path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("line 1: replaced peer/one"), "{stdout}");
    let (_, list) = d.get("/v1/connections", &key).await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 2);
}

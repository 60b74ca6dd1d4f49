//! What oauthd believes of a provider: an ID token only once its signature and claims
//! verify (against the real test provider, and against a mock that signs whatever a case
//! needs), and provider text only escaped in the log.

use crate::common;

use common::peer::Peer;
use common::{query_param, Daemon, Home};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_id_token_names_the_connected_account() {
    let peer = Peer::start(60);
    let home = Home::new();
    home.write_config(&peer.provider_toml("peer"));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d
        .post("/v1/connect/peer", &key, json!({"account": "main"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let authorize = d.confirm(body["authorize_url"].as_str().unwrap()).await;
    assert!(authorize.contains("nonce="), "{authorize}");
    let callback = peer.approve(&authorize).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    let (_, conn) = d.get("/v1/connections/peer/main", &key).await;
    // The test provider signs in whatever name it is given; the harness uses "alice".
    assert_eq!(conn["provider_account"]["sub"], "alice", "{conn}");
}

/// An RSA key made with openssl: (PKCS#1 DER for signing, the public JWK).
fn rsa_key(dir: &Path, name: &str, kid: &str) -> (Vec<u8>, serde_json::Value) {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    run(&["genrsa", "-out", pem.to_str().unwrap(), "2048"]);
    run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-traditional",
        "-out",
        der.to_str().unwrap(),
    ]);
    let modulus = String::from_utf8(run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-noout",
        "-modulus",
    ]))
    .unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                     "n": b64.encode(bytes), "e": "AQAB"});
    (std::fs::read(der).unwrap(), jwk)
}

fn sign(der: &[u8], kid: &str, alg: jsonwebtoken::Algorithm, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    let key = match alg {
        jsonwebtoken::Algorithm::HS256 => jsonwebtoken::EncodingKey::from_secret(b"c-secret"),
        _ => jsonwebtoken::EncodingKey::from_rsa_der(der),
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Mounts discovery, the key set and a token endpoint that answers with `id_token`.
async fn provider(mock: &MockServer, jwks: &serde_json::Value, id_token: &str) {
    mock.reset().await;
    let uri = mock.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": uri,
            "authorization_endpoint": format!("{uri}/authorize"),
            "token_endpoint": format!("{uri}/token"),
            "jwks_uri": format!("{uri}/jwks"),
        })))
        .mount(mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks))
        .mount(mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
            "id_token": id_token,
        })))
        .mount(mock)
        .await;
}

/// Starts a flow: (state, nonce) from the authorization URL.
async fn start(d: &Daemon, key: &str) -> (String, String) {
    let authorize = d.start_connect(key, "op", "a").await;
    (
        query_param(&authorize, "state"),
        query_param(&authorize, "nonce"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_token_that_does_not_verify_stores_nothing() {
    let mock = MockServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (good, jwk) = rsa_key(keys.path(), "good", "k1");
    let (other, _) = rsa_key(keys.path(), "other", "k1");
    let jwks = json!({"keys": [jwk]});
    let home = Home::new();
    home.write_config(&format!(
        "[providers.op]\nissuer = \"{}\"\nclient_id = \"cid\"\nclient_secret = \"c-secret\"\nscopes = [\"openid\"]\n",
        mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let now = chrono::Utc::now().timestamp();
    let issuer = mock.uri();
    let claims = |nonce: &str| {
        json!({"iss": issuer, "aud": "cid", "sub": "user-7", "exp": now + 600,
               "iat": now, "nonce": nonce, "email": "u7@op.test", "email_verified": true,
               "name": "User Seven"})
    };
    use jsonwebtoken::Algorithm::{HS256, RS256};
    // (what is wrong, signing key, key id, algorithm, change to the claims)
    type Edit = fn(&mut serde_json::Value, i64);
    let cases: [(&str, &[u8], &str, jsonwebtoken::Algorithm, Edit); 7] = [
        ("signed by another key", &other, "k1", RS256, |_, _| {}),
        ("a nonce oauthd did not send", &good, "k1", RS256, |c, _| {
            c["nonce"] = json!("not-the-nonce")
        }),
        ("another audience", &good, "k1", RS256, |c, _| {
            c["aud"] = json!("someone-else")
        }),
        ("another issuer", &good, "k1", RS256, |c, _| {
            c["iss"] = json!("https://evil.example")
        }),
        ("expired an hour ago", &good, "k1", RS256, |c, now| {
            c["exp"] = json!(now - 3600)
        }),
        (
            "an HMAC signature with the client secret",
            &good,
            "k1",
            HS256,
            |_, _| {},
        ),
        ("an unknown key id", &good, "k9", RS256, |_, _| {}),
    ];
    // Discovery happens when the first flow starts; each case then swaps the token answer.
    provider(&mock, &jwks, "not-yet").await;
    for (case, signer, kid, alg, edit) in cases {
        let (state, nonce) = start(&d, &key).await;
        let mut c = claims(&nonce);
        edit(&mut c, now);
        provider(&mock, &jwks, &sign(signer, kid, alg, &c)).await;
        let (status, page, _) = d
            .browser_get(&format!("{}/callback/op?code=c1&state={state}", d.url))
            .await;
        assert_eq!(status, 502, "{case}: {page}");
        assert!(page.contains("ID token did not verify"), "{case}: {page}");
        let (status, _) = d.get("/v1/connections/op/a", &key).await;
        assert_eq!(status, 404, "{case}: a connection was stored");
    }

    // A good token names the account; an email the provider did not verify is not shown.
    let unverified: Edit = |c, _| c["email_verified"] = json!(false);
    let expected = [
        json!({"sub": "user-7", "email": "u7@op.test", "name": "User Seven"}),
        json!({"sub": "user-7", "name": "User Seven"}),
    ];
    for (edit, expected) in [(|_: &mut serde_json::Value, _| {}) as Edit, unverified]
        .into_iter()
        .zip(expected)
    {
        let (state, nonce) = start(&d, &key).await;
        let mut c = claims(&nonce);
        edit(&mut c, now);
        provider(&mock, &jwks, &sign(&good, "k1", RS256, &c)).await;
        let (status, page, _) = d
            .browser_get(&format!("{}/callback/op?code=c1&state={state}", d.url))
            .await;
        assert_eq!(status, 200, "{page}");
        let (_, conn) = d.get("/v1/connections/op/a", &key).await;
        assert_eq!(conn["provider_account"], expected, "{conn}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_text_cannot_forge_log_lines() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_request",
            "error_description": "nope\n2026-12-01T00:00:00Z ERROR oauthd] FORGED admin signed in",
        })))
        .mount(&mock)
        .await;
    let home = Home::new();
    home.write_config(&format!(
        "[providers.op]\nauthorization_url = \"{uri}/authorize\"\ntoken_url = \"{uri}/token\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\n",
        uri = mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let state = query_param(&d.start_connect(&key, "op", "a").await, "state");
    let (status, page, _) = d
        .browser_get(&format!("{}/callback/op?code=c1&state={state}", d.url))
        .await;
    assert_eq!(status, 502, "{page}");
    // And through the callback's own error parameters.
    let state = query_param(&d.start_connect(&key, "op", "b").await, "state");
    d.browser_get(&format!(
        "{}/callback/op?state={state}&error=server_error&error_description=x%0A2026-12-01T00:00:00Z%20ERROR%20FORGED%20second",
        d.url
    ))
    .await;
    d.signal_and_wait("TERM");
    let log = home.log_text();
    assert!(
        log.contains("FORGED admin signed in"),
        "the provider's text was not logged: {log}"
    );
    assert!(
        log.contains("FORGED second"),
        "the callback's error was not logged: {log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00Z"),
            "a provider forged a log line: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_flows_are_bounded_per_api_key() {
    let peer = Peer::start(60);
    let home = peer.home("[limits]\nmax_device_flows_per_key = 2\n");
    let first = home.create_key("first", &[]);
    let second = home.create_key("second", &[]);
    let d = home.start();
    for i in 0..2 {
        let (status, body) = d
            .post(
                "/v1/device/peer",
                &first,
                json!({"account": format!("tv{i}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, problem) = d
        .post("/v1/device/peer", &first, json!({"account": "tv9"}))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (429, Some("too_many_device_flows")),
        "{problem}"
    );
    assert_eq!(
        peer.grants("urn:ietf:params:oauth:grant-type:device_code")
            .await,
        0
    );
    // Another key has a budget of its own.
    let (status, body) = d
        .post("/v1/device/peer", &second, json!({"account": "tv0"}))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_queued_behind_a_stalled_key_set_share_its_failure() {
    let mock = MockServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (good, _) = rsa_key(keys.path(), "good", "k1");
    let home = Home::new();
    home.write_config(&format!(
        "provider_timeout_seconds = 1\n[providers.op]\nissuer = \"{}\"\nclient_id = \"cid\"\n\
         client_secret = \"c-secret\"\nscopes = [\"openid\"]\n",
        mock.uri()
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    provider(&mock, &json!({"keys": []}), "not-yet").await;
    let mut states = Vec::new();
    for _ in 0..4 {
        states.push(start(&d, &key).await);
    }
    // The key set now answers only after the provider timeout.
    let now = chrono::Utc::now().timestamp();
    let issuer = mock.uri();
    let token = sign(
        &good,
        "k1",
        jsonwebtoken::Algorithm::RS256,
        &json!({"iss": issuer, "aud": "cid", "sub": "u", "exp": now + 600, "iat": now,
                "nonce": "n"}),
    );
    mock.reset().await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"keys": []}))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
            "id_token": token,
        })))
        .mount(&mock)
        .await;
    let urls: Vec<String> = states
        .iter()
        .map(|(state, _)| format!("{}/callback/op?code=c1&state={state}", d.url))
        .collect();
    let calls = urls.iter().map(|url| d.browser_get(url));
    for (status, page, _) in futures::future::join_all(calls).await {
        assert_eq!(status, 502, "{page}");
        assert!(page.contains("signing keys could not be read"), "{page}");
    }
    let fetched = mock
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/jwks")
        .count();
    assert_eq!(
        fetched, 1,
        "each queued callback fetched the stalled key set again"
    );
}

/// oauthd serving provider `op`, an OpenID provider on `mock` (discovery, revocation and
/// the key set `jwk`: answered `answered` times when given, and stalled after), and an
/// API key.
async fn serving_op(
    mock: &MockServer,
    jwk: &serde_json::Value,
    answered: Option<u64>,
) -> (Home, String, Daemon) {
    let uri = mock.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": uri, "authorization_endpoint": format!("{uri}/authorize"),
            "token_endpoint": format!("{uri}/token"), "jwks_uri": format!("{uri}/jwks"),
            "revocation_endpoint": format!("{uri}/revoke"),
        })))
        .mount(mock)
        .await;
    let key_set = Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk]})));
    match answered {
        Some(times) => {
            key_set.up_to_n_times(times).mount(mock).await;
            Mock::given(method("GET"))
                .and(path("/jwks"))
                .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(120)))
                .mount(mock)
                .await;
        }
        None => key_set.mount(mock).await,
    }
    let home = Home::new();
    home.write_config(&format!(
        "[providers.op]\nissuer = \"{uri}\"\nclient_id = \"cid\"\nclient_secret = \"c-secret\"\nscopes = [\"openid\"]\n"
    ));
    let key = home.create_key("app", &[]);
    let d = home.start();
    (home, key, d)
}

/// An ID token in a refresh's answer that verifies and names another account than the
/// connection was made for (OpenID Core 12.2) is not handed out as that account's token:
/// the grant is someone else's now, and the connection needs the user. One that names the
/// same account refreshes as before, and one that does not verify is passed over
/// (providers send the first one again, long expired).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_whose_id_token_names_another_account_is_not_handed_out() {
    use jsonwebtoken::Algorithm::RS256;
    let mock = MockServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (good, jwk) = rsa_key(keys.path(), "good", "k1");
    let (other, _) = rsa_key(keys.path(), "other", "k1");
    let uri = mock.uri();
    let (_home, key, d) = serving_op(&mock, &jwk, None).await;
    let now = chrono::Utc::now().timestamp();
    let claims =
        |sub: &str| json!({"iss": uri, "aud": "cid", "sub": sub, "exp": now + 600, "iat": now});
    // (account, the ID token its refresh answers with, whether the token is handed out)
    let cases = [
        ("same", sign(&good, "k1", RS256, &claims("user-7")), true),
        (
            "forged",
            sign(&other, "k1", RS256, &claims("mallory")),
            true,
        ),
        ("other", sign(&good, "k1", RS256, &claims("mallory")), false),
        // An access token unfit to hand out, whose new refresh token would be kept: not
        // for another account's answer.
        ("unfit", sign(&good, "k1", RS256, &claims("mallory")), false),
    ];
    for (account, refreshed_id_token, _) in &cases {
        let authorize = d.start_connect(&key, "op", account).await;
        let state = query_param(&authorize, "state");
        let mut first = claims("user-7");
        first["nonce"] = json!(query_param(&authorize, "nonce"));
        for (grant, answer) in [
            (
                format!("code=code-{account}"),
                json!({"access_token": format!("at-{account}-1"), "token_type": "Bearer", "expires_in": 1,
                       "refresh_token": format!("rt-{account}"), "id_token": sign(&good, "k1", RS256, &first)}),
            ),
            (
                format!("refresh_token=rt-{account}"),
                json!({"access_token": if *account == "unfit" { "at unfit".to_owned() } else { format!("at-{account}-2") },
                       "token_type": "Bearer", "expires_in": 600, "refresh_token": format!("rt-{account}-2"),
                       "id_token": refreshed_id_token}),
            ),
        ] {
            Mock::given(method("POST"))
                .and(path("/token"))
                .and(wiremock::matchers::body_string_contains(grant))
                .respond_with(ResponseTemplate::new(200).set_body_json(answer))
                .mount(&mock)
                .await;
        }
        let (status, page, _) = d
            .browser_get(&format!(
                "{}/callback/op?code=code-{account}&state={state}",
                d.url
            ))
            .await;
        assert_eq!(status, 200, "{account}: {page}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (account, _, handed_out) in cases {
        let (status, body) = d
            .get(&format!("/v1/connections/op/{account}/token"), &key)
            .await;
        if handed_out {
            assert_eq!(status, 200, "{account}: {body}");
            assert_eq!(body["access_token"], format!("at-{account}-2"), "{account}");
        } else {
            assert_eq!(
                (status, body["code"].as_str()),
                (409, Some("needs_reauth")),
                "{account}: {body}"
            );
            let (_, conn) = d.get(&format!("/v1/connections/op/{account}"), &key).await;
            let why = conn["last_error"].as_str().unwrap_or_default();
            assert!(
                why.contains("ID token for another account (sub mallory"),
                "{conn}"
            );
            assert_eq!(conn["provider_account"]["sub"], "user-7", "{conn}");
        }
    }
    // The other account's tokens, kept nowhere, are revoked at the provider (in the
    // background).
    let mut revoked = Vec::new();
    for _ in 0..50 {
        revoked = mock
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/revoke")
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        if revoked.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        revoked.iter().any(|b| b.contains("token=rt-other-2"))
            && revoked.iter().any(|b| b.contains("token=rt-unfit-2")),
        "{revoked:?}"
    );
}

/// A refresh whose answer's ID token is checked (the connection's account is known) has
/// the provider's key set at hand before it asks: the key set, not held since the start,
/// was fetched after the answer, while the answer and its rotated refresh token waited
/// to be saved (a kill then lost them).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_fetches_the_key_set_before_it_asks() {
    let mock = MockServer::start().await;
    let (_home, key, d, before) = connected_then_restarted(&mock, None).await;
    let (status, body) = d.get("/v1/connections/op/a/token", &key).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-2")),
        "{body}"
    );
    let asked: Vec<String> = mock
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .skip(before)
        .filter(|r| !r.url.path().starts_with("/.well-known/"))
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect();
    assert_eq!(asked, ["GET /jwks", "POST /token"], "{asked:?}");
}

/// A refresh whose provider's key set stalls (not held since the start) asks for it once,
/// waiting at most 2 s before it asks the token endpoint, and not again after the answer:
/// the caller has its token. The check after the answer asked again and waited for it
/// while the answer's refresh token waited to be saved, and the caller was answered 503
/// after its timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_waits_for_a_stalled_key_set_once() {
    let mock = MockServer::start().await;
    let (_home, key, d, before) = connected_then_restarted(&mock, Some(1)).await;
    let (status, body) = d.get("/v1/connections/op/a/token", &key).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some("at-2")),
        "{body}"
    );
    let key_set_asked = mock
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .skip(before)
        .filter(|r| r.url.path() == "/jwks")
        .count();
    assert_eq!(key_set_asked, 1);
}

/// Provider `op` on `mock` (its key set answered `key_set_answered` times when given, and
/// stalled after), account `a` connected with an ID token for user-7 and an access token
/// that expires at once, then oauthd restarted (nothing held in memory): its API key, the
/// daemon and how many requests the mock had before the restart. The refresh answers with
/// at-2 and an ID token for the same user.
async fn connected_then_restarted(
    mock: &MockServer,
    key_set_answered: Option<u64>,
) -> (Home, String, Daemon, usize) {
    use jsonwebtoken::Algorithm::RS256;
    let keys = tempfile::tempdir().unwrap();
    let (good, jwk) = rsa_key(keys.path(), "good", "k1");
    let uri = mock.uri();
    let (home, key, d) = serving_op(mock, &jwk, key_set_answered).await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": uri, "aud": "cid", "sub": "user-7", "exp": now + 600, "iat": now});
    let authorize = d.start_connect(&key, "op", "a").await;
    let state = query_param(&authorize, "state");
    let mut first = claims.clone();
    first["nonce"] = json!(query_param(&authorize, "nonce"));
    for (grant, answer) in [
        (
            "grant_type=authorization_code",
            json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 1,
                   "refresh_token": "rt-1", "id_token": sign(&good, "k1", RS256, &first)}),
        ),
        (
            "grant_type=refresh_token",
            json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 600,
                   "refresh_token": "rt-2", "id_token": sign(&good, "k1", RS256, &claims)}),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(wiremock::matchers::body_string_contains(grant))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(mock)
            .await;
    }
    let callback = format!("{}/callback/op?code=c&state={state}", d.url);
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    d.signal_and_wait("TERM");
    let before = mock.received_requests().await.unwrap_or_default().len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = home.start();
    (home, key, d, before)
}

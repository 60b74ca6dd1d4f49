//! The credential-injecting proxy, `/v1/proxy/{provider}/{account}/{path}`: against the
//! real test provider's userinfo endpoint as the API (a real token, validated by the
//! provider), and a mock upstream (wiremock, or a raw socket for streaming) for what a real
//! provider cannot be made to do: a 401 that a refresh cures, a slow answer, a large or
//! endless body, redirects, and every attempt to leave the API base.

use crate::common;

use common::peer::Peer;
use common::{on_refresh, Daemon, Home};
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Provider "mock": token endpoint and API at `mock` (the API under `/api/`).
fn mock_provider(mock: &MockServer, api_base: &str) -> String {
    format!(
        "[providers.mock]\nauthorization_url = \"{uri}/authorize\"\ntoken_url = \"{uri}/token\"\n\
         client_id = \"cid\"\nclient_secret = \"c-secret\"\napi_base_url = \"{api_base}\"\n\
         proxy_headers = [\"X-App-Version\"]\n",
        uri = mock.uri()
    )
}

/// A home with provider "mock" (plus `extra`), started, and mock/default holding the
/// tokens `old` / `r1` (imported, as an app that had them would).
async fn mock_home(mock: &MockServer, extra: &str) -> (Home, Daemon, String) {
    let api = format!("{}/api/", mock.uri());
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 3600});
    api_home(mock, &api, extra, tokens).await
}

/// A home whose provider "mock" has its API at `api` (with `extra` config first),
/// started, and mock/default holding `tokens`.
async fn api_home(
    mock: &MockServer,
    api: &str,
    extra: &str,
    tokens: serde_json::Value,
) -> (Home, Daemon, String) {
    let home = Home::new();
    home.write_config(&format!("{extra}\n{}", mock_provider(mock, api)));
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d.put("/v1/connections/mock/default", &key, tokens).await;
    assert_eq!(status, 201, "{body}");
    (home, d, key)
}

async fn requests_to(mock: &MockServer, prefix: &str) -> Vec<wiremock::Request> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path().starts_with(prefix))
        .collect()
}

fn proxy_url(d: &Daemon, rest: &str) -> String {
    format!("{}/v1/proxy/mock/default/{rest}", d.url)
}

/// `method` of `/v1/proxy/{target}`, with the key (none when empty).
async fn call(d: &Daemon, key: &str, method: reqwest::Method, target: &str) -> reqwest::Response {
    let mut req = d
        .http
        .request(method, format!("{}/v1/proxy/{target}", d.url));
    if !key.is_empty() {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

/// `GET` of `rest` through mock/default's proxy route, with the key.
async fn get(d: &Daemon, key: &str, rest: &str) -> reqwest::Response {
    get_of(d, key, "default", rest).await
}

/// `GET` of `rest` through mock/`account`'s proxy route, with the key.
async fn get_of(d: &Daemon, key: &str, account: &str, rest: &str) -> reqwest::Response {
    let target = format!("mock/{account}/{rest}");
    call(d, key, reqwest::Method::GET, &target).await
}

/// `POST` of `body` to `rest` through mock/default's proxy route, with the key.
async fn post(
    d: &Daemon,
    key: &str,
    rest: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    d.http
        .post(proxy_url(d, rest))
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Which answers are the API's and which oauthd's: a 404 or a 401 looked the same whoever
/// gave it (only a problem document's type told, and an API may answer in one too). Every
/// answer to a proxied call says so in `Proxy-Status` (RFC 9209): the API's with the status
/// oauthd received, oauthd's own with its problem's code.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_status_says_whose_answer_it_is() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    Mock::given(path("/api/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such track"))
        .mount(&mock)
        .await;
    let status =
        |resp: &reqwest::Response| (resp.status().as_u16(), common::header(resp, "proxy-status"));
    let theirs = get(&d, &key, "missing").await;
    assert_eq!(
        status(&theirs),
        (404, "oauthd; received-status=404".to_owned())
    );
    let own = |code: &str| format!("oauthd; error=proxy_internal_response; details=\"{code}\"");
    let missing = get_of(&d, &key, "nobody", "missing").await;
    assert_eq!(status(&missing), (404, own("connection_not_found")));
    let unkeyed = call(&d, "", reqwest::Method::GET, "mock/default/missing").await;
    assert_eq!(status(&unkeyed), (401, own("missing_api_key")));
    // Refused before any route (a URL too long), too.
    let long = format!("mock/default/{}", "a".repeat(9000));
    let refused = call(&d, &key, reqwest::Method::GET, &long).await;
    assert_eq!(status(&refused), (414, own("uri_too_long")));
}

/// An empty body sent with POST, PUT or PATCH (Spotify's `PUT /me/player/pause`) goes on
/// with `Content-Length: 0`, as RFC 9110 has a request whose method gives a body meaning
/// say its length: it went with neither a length nor chunks, which front ends such as
/// Google's answer with 411. A DELETE still goes without one.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_body_goes_on_with_its_length() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    Mock::given(path("/api/player/pause"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&mock)
        .await;
    use reqwest::Method;
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let resp = call(&d, &key, m.clone(), "mock/default/player/pause").await;
        assert_eq!(resp.status(), 204, "{m}");
    }
    let seen = requests_to(&mock, "/api/player/pause").await;
    assert_eq!(seen.len(), 4);
    for r in seen {
        let length = r
            .headers
            .get("content-length")
            .map(|v| v.as_bytes().to_vec());
        let chunked = r.headers.get("transfer-encoding").is_some();
        let want = (r.method.as_str() != "DELETE").then(|| b"0".to_vec());
        assert_eq!((length, chunked), (want, false), "{}", r.method);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_providers_api_sees_a_real_token() {
    let peer = Peer::start(60);
    let home = Home::new();
    let provider = peer.provider_toml_with_api("peer");
    // A second provider without an API: the proxy has nowhere to send.
    let plain = peer
        .provider_toml("other")
        .replace("other.authorize_params", "other.x");
    let plain = plain
        .split("[providers.other.x]")
        .next()
        .unwrap()
        .to_owned();
    home.write_config(&format!("{provider}\n{plain}"));
    let key = home.create_key("app", &[]);
    let scoped = home.create_key("other-only", &["provider:other"]);
    let d = home.start();
    let (status, page) = common::peer::connect(&d, &peer, &key, "default").await;
    assert_eq!(status, 200, "{page}");

    // The provider's userinfo endpoint validates the token oauthd puts in.
    let resp = call(&d, &key, reqwest::Method::GET, "peer/default/me").await;
    assert_eq!(resp.status(), 200);
    assert!(common::header(&resp, "content-type").starts_with("application/json"));
    let me: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(me["sub"], "alice", "{me}");
    // POST works the same (userinfo accepts both).
    let resp = call(&d, &key, reqwest::Method::POST, "peer/default/me").await;
    assert_eq!(resp.status(), 200);

    // Scope, configuration and connection are checked first.
    for (k, target, code) in [
        (&scoped, "peer/default/me", "namespace_not_allowed"),
        (&key, "other/default/me", "proxy_not_configured"),
        (&key, "peer/nobody/me", "connection_not_found"),
        (&key, "nope/default/me", "unknown_provider"),
        (&key, "peer/default", "not_found"),
    ] {
        common::assert_code(call(&d, k, reqwest::Method::GET, target).await, code).await;
    }
    let resp = call(&d, "", reqwest::Method::GET, "peer/default/me").await;
    assert_eq!(resp.status(), 401);

    // Nothing is logged per proxied request (the metrics middleware once warned on each).
    let log = home.log_text();
    assert!(
        !log.contains("actix_web_prom") && !log.contains("Cannot build"),
        "{log}"
    );
    let metrics = d.metrics_text().await;
    assert!(
        common::sample(
            &metrics,
            "oauthd_proxy_requests_total{class=\"2xx\",provider=\"peer\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    // Proxied calls, refused ones too, have their own endpoint in the HTTP metrics, apart
    // from probes.
    for status in [200, 404] {
        let series = format!(
            "oauthd_http_requests_total{{endpoint=\"/v1/proxy/{{provider}}/{{account}}/{{path}}\",method=\"GET\",status=\"{status}\"}}"
        );
        assert!(
            common::sample(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series}\n{metrics}"
        );
    }
}

/// An imported token's time left is not its lifetime: read as one, a caller's `min_ttl`
/// counted at most half of it, and a token with 20 s left was handed out to a call asking
/// for 60 (and sent by the proxy, which asks for 60). Refreshed first now; the refreshed
/// token's lifetime is the provider's.
#[tokio::test(flavor = "multi_thread")]
async fn an_imported_token_with_less_than_min_ttl_left_is_refreshed_first() {
    let mock = MockServer::start().await;
    let api = format!("{}/api/", mock.uri());
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 20});
    let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
    on_refresh(
        &mock,
        "r1",
        ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "new", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r2"}),
        ),
    )
    .await;
    let (status, body) = d
        .get("/v1/connections/mock/default/token?min_ttl=60", &key)
        .await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("new")),
        "{body}"
    );
    let (status, body) = d
        .get("/v1/connections/mock/default/token?min_ttl=600", &key)
        .await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("new")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_is_cured_by_one_refresh_shared_by_every_caller() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    on_refresh(
        &mock,
        "r1",
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "new", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r2"}))
            .set_delay(Duration::from_millis(300)),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/api/items"))
        .and(header("authorization", "Bearer old"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", "Bearer error=\"invalid_token\""),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/items"))
        .and(header("authorization", "Bearer new"))
        .and(body_string("{\"name\":\"lamp\"}"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"created": true})))
        .mount(&mock)
        .await;

    // Eight callers at once: each sends its body twice (the 401, then the retry); one refresh.
    let calls = (0..8).map(|_| {
        d.http
            .post(proxy_url(&d, "items"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"name\":\"lamp\"}")
            .send()
    });
    for resp in futures::future::join_all(calls).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap()["created"],
            true
        );
    }
    let refreshes = requests_to(&mock, "/token").await;
    assert_eq!(refreshes.len(), 1, "one refresh for all callers");
    // The token API hands out the refreshed token too.
    let (status, token) = d.get("/v1/connections/mock/default/token", &key).await;
    assert_eq!((status, token["access_token"].as_str()), (200, Some("new")));

    // An endpoint that refuses even the fresh token: its 401 comes back as it is, and
    // no second refresh burns the new refresh token.
    Mock::given(method("GET"))
        .and(path("/api/admin"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", "Bearer error=\"insufficient_scope\""),
        )
        .mount(&mock)
        .await;
    let resp = get(&d, &key, "admin").await;
    assert_eq!(resp.status(), 401);
    assert!(common::header(&resp, "www-authenticate").contains("insufficient_scope"));
    assert_eq!(requests_to(&mock, "/token").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_on_the_refresh_is_needs_reauth() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    on_refresh(
        &mock,
        "r1",
        ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/api/me"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&mock)
        .await;
    let resp = get(&d, &key, "me").await;
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "needs_reauth");
    assert!(body["reconnect_url"].as_str().is_some());
    let (_, conn) = d.get("/v1/connections/mock/default", &key).await;
    assert_eq!(conn["status"], "needs_reauth");
}

/// A connection the provider gave no refresh token (GitHub's tokens that never expire, an
/// import without one) gets a `401` passed on as it came: one request's `401` (a missing
/// scope) does not say the grant is dead, and taking it so put the connection in
/// `needs_reauth` for every app, at one request of any key that may use it.
#[tokio::test(flavor = "multi_thread")]
async fn a_401_on_a_connection_without_a_refresh_token_is_passed_on() {
    let mock = MockServer::start().await;
    let api = format!("{}/api/", mock.uri());
    for tokens in [
        json!({"access_token": "forever"}),
        json!({"access_token": "forever", "expires_in": 3600}),
    ] {
        let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
        Mock::given(method("GET"))
            .and(path("/api/app"))
            .respond_with(
                ResponseTemplate::new(401)
                    .insert_header("www-authenticate", "Bearer error=\"insufficient_scope\""),
            )
            .mount(&mock)
            .await;
        let resp = get(&d, &key, "app").await;
        assert_eq!(resp.status(), 401);
        assert!(common::header(&resp, "www-authenticate").contains("insufficient_scope"));
        let (status, token) = d.get("/v1/connections/mock/default/token", &key).await;
        assert_eq!(status, 200, "{token}");
        assert_eq!(token["access_token"], "forever");
        let (_, conn) = d.get("/v1/connections/mock/default", &key).await;
        assert_eq!(conn["status"], "active", "{conn}");
        assert!(requests_to(&mock, "/token").await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_query_and_redirects() {
    let mock = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    // The provider's API at "localhost", oauthd called at 127.0.0.1 and named elsewhere
    // for browsers: addresses of the API's host are not oauthd's (a redirect to any port
    // of a host oauthd is called by is left out).
    let named = |m: &MockServer| m.uri().replace("127.0.0.1", "localhost");
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 3600});
    let (home, d, key) = api_home(
        &mock,
        &format!("{}/api/", named(&mock)),
        "public_url = \"https://auth.home.example\"",
        tokens,
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/api/echo"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("ok")
                .insert_header(
                    "link",
                    r#"</api/echo?page=2>; rel="next", </v1/states>; rel="up""#,
                )
                .insert_header("set-cookie", "upstream=1")
                .insert_header("x-ratelimit-remaining", "41")
                .insert_header("strict-transport-security", "max-age=1"),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/hop"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("ok")
                .insert_header("connection", "X-RateLimit-Remaining")
                .insert_header("x-ratelimit-remaining", "41")
                .insert_header("x-request-id", "r1"),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/moved"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/stolen", named(&elsewhere)).as_str()),
        )
        .mount(&mock)
        .await;
    // Redirects the API makes within itself, and one to a path of its host's root.
    for (from, status, to) in [
        (
            "/api/renamed",
            301,
            format!("{}/api/echo?v=2", named(&mock)),
        ),
        ("/api/sibling", 302, "echo".to_owned()),
        (
            "/api/rooted",
            307,
            "/v1/connections/mock/default".to_owned(),
        ),
        (
            "/api/home",
            307,
            format!("{}/v1/connections/mock/default", d.url),
        ),
        ("/api/script", 302, "javascript:alert(1)".to_owned()),
    ] {
        Mock::given(path(from))
            .respond_with(ResponseTemplate::new(status).insert_header("location", to.as_str()))
            .mount(&mock)
            .await;
    }
    let resp = d
        .http
        .get(proxy_url(&d, "echo?market=DE&q=a%20b&q=c"))
        .bearer_auth(&key)
        .header("cookie", "oauthd_session=secret-cookie")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-api-key", "another-secret")
        .header("x-app-version", "7")
        .header("x-other", "8")
        .header("x-auth-request-access-token", "front-proxy-token")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(common::header(&resp, "x-ratelimit-remaining"), "41");
    // A pagination link stays on the proxy; one outside the API names the provider's host.
    assert_eq!(
        common::header(&resp, "link"),
        format!(
            r#"</v1/proxy/mock/default/echo?page=2>; rel="next", <{}/v1/states>; rel="up""#,
            named(&mock)
        )
    );
    assert!(resp.headers().get("set-cookie").is_none());
    // The provider's HSTS is not oauthd's (its max-age=1 would end oauthd's own).
    assert_eq!(
        common::header(&resp, "strict-transport-security"),
        "max-age=31536000"
    );
    // Served from oauthd's origin: never sniffed into a page, never cached in between.
    assert_eq!(common::header(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(common::header(&resp, "cache-control"), "no-store");
    assert!(common::header(&resp, "content-security-policy").contains("sandbox"));
    let seen = requests_to(&mock, "/api/echo").await;
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.url.query(), Some("market=DE&q=a%20b&q=c"));
    let h = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("authorization").as_deref(), Some("Bearer old"));
    assert_eq!(h("x-app-version").as_deref(), Some("7"));
    assert_eq!(h("accept").as_deref(), Some("application/json"));
    for gone in [
        "cookie",
        "x-forwarded-for",
        "x-api-key",
        "x-other",
        "x-auth-request-access-token",
    ] {
        assert!(h(gone).is_none(), "{gone} reached the provider");
    }
    assert_eq!(
        h("host").as_deref(),
        Some(named(&mock).trim_start_matches("http://"))
    );
    // The oauthd API key never reaches the provider, in any header.
    assert!(!format!("{:?}", r.headers).contains(&key));
    // A header the caller's `Connection` names is for oauthd's hop only (it reached the
    // provider when `proxy_headers` listed it).
    let resp = d
        .http
        .get(proxy_url(&d, "echo?hop=1"))
        .bearer_auth(&key)
        .header("connection", "X-App-Version")
        .header("x-app-version", "7")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = requests_to(&mock, "/api/echo").await;
    let r = seen
        .iter()
        .find(|r| r.url.query() == Some("hop=1"))
        .expect("the second call reached the provider");
    assert!(r.headers.get("x-app-version").is_none(), "{:?}", r.headers);
    assert!(r.headers.get("accept").is_some(), "{:?}", r.headers);
    // And one the provider's `Connection` names is for its hop only.
    let resp = get(&d, &key, "hop").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(common::header(&resp, "x-request-id"), "r1");
    assert!(
        resp.headers().get("x-ratelimit-remaining").is_none(),
        "{:?}",
        resp.headers()
    );

    // `GET` of the proxy's `rest`, following no redirect.
    let answer = |rest: &'static str| {
        let url = proxy_url(&d, rest);
        let key = key.clone();
        async move {
            common::no_redirects()
                .get(url)
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
        }
    };
    // A redirect is handed back, never followed.
    let resp = answer("moved").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        common::header(&resp, "location"),
        format!("{}/stolen", named(&elsewhere))
    );
    assert!(elsewhere
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());
    // A redirect within the API's base names the proxy's own path for it: following it
    // goes through oauthd again, with the account's token.
    let located = |rest: &'static str| {
        let resp = answer(rest);
        async move { common::header(&resp.await, "location") }
    };
    assert_eq!(located("renamed").await, "/v1/proxy/mock/default/echo?v=2");
    assert_eq!(located("sibling").await, "/v1/proxy/mock/default/echo");
    let followed = d
        .http
        .get(proxy_url(&d, "renamed"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), 200);
    assert_eq!(followed.text().await.unwrap(), "ok");
    // A relative one outside the base names the provider's host: a client following it
    // never sends its oauthd key (here: a DELETE kept by a 307) to oauthd's own API.
    assert_eq!(
        located("rooted").await,
        format!("{}/v1/connections/mock/default", named(&mock))
    );
    // One naming oauthd itself, or no http(s) address at all, comes back without it.
    for rest in ["home", "script"] {
        let resp = answer(rest).await;
        assert!(resp.status().is_redirection(), "{rest}");
        assert!(resp.headers().get("location").is_none(), "{rest}");
    }
    // TRACE would echo the token back; CONNECT is not an API call. Neither is sent.
    let resp = d
        .http
        .request(reqwest::Method::TRACE, proxy_url(&d, "echo"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    common::assert_code(resp, "method_not_allowed").await;
    // The first two calls and the redirect followed above; not the TRACE.
    assert_eq!(requests_to(&mock, "/api/echo").await.len(), 3);
    assert!(
        !home.log_text().contains("market=DE"),
        "the proxied query reached the log"
    );
}

/// With a `public_url` that names the machine for browsers, an app on the machine still
/// calls oauthd at 127.0.0.1: a provider's redirect to that address (or another name of
/// this machine with its port) comes back without its `Location`, which a client would
/// follow with its oauthd key (a `307` keeps a `DELETE` a `DELETE`).
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_the_address_the_caller_used_is_left_out() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "public_url = \"https://auth.home.example\"").await;
    let port = d.url.rsplit(':').next().unwrap().to_owned();
    for (from, to) in [
        (
            "/api/called",
            format!("{}/v1/connections/mock/default", d.url),
        ),
        (
            "/api/public",
            "https://auth.home.example/v1/states".to_owned(),
        ),
        (
            "/api/forwarded",
            "http://oauthd.lan/v1/connections/mock/default".to_owned(),
        ),
        // Another name of the machine: a client does not keep its key for it.
        ("/api/alias", format!("http://localhost:{port}/v1/states")),
        // The caller's host on another port, and a subdomain of public_url's host: Go's
        // client keeps its Authorization header (the oauthd key) for those.
        ("/api/port", "http://127.0.0.1:9/elsewhere".to_owned()),
        ("/api/sub", "https://files.auth.home.example/x".to_owned()),
        ("/api/other", "https://cdn.example/elsewhere".to_owned()),
    ] {
        Mock::given(path(from))
            .respond_with(ResponseTemplate::new(307).insert_header("location", to.as_str()))
            .mount(&mock)
            .await;
    }
    // A DELETE through the proxy, as through a proxy in front that passes on the name it
    // was called by when `forwarded_host` is given.
    let location = |rest: &'static str, forwarded_host: Option<&'static str>| {
        let url = proxy_url(&d, rest);
        let key = key.clone();
        async move {
            let mut request = common::no_redirects().delete(url).bearer_auth(&key);
            if let Some(host) = forwarded_host {
                request = request.header("x-forwarded-host", host);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 307, "{rest}");
            resp.headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(location("called", None).await, None);
    assert_eq!(location("public", None).await, None);
    assert_eq!(location("forwarded", Some("oauthd.lan")).await, None);
    assert!(location("forwarded", None).await.is_some());
    assert!(location("alias", None).await.is_some());
    assert_eq!(location("port", None).await, None);
    assert_eq!(location("sub", None).await, None);
    assert_eq!(
        location("other", None).await.as_deref(),
        Some("https://cdn.example/elsewhere")
    );
    let (status, _) = d.get("/v1/connections/mock/default", &key).await;
    assert_eq!(status, 200, "the connection is still there");
}

async fn raw_request(d: &Daemon, key: &str, target: &str) -> (u16, String) {
    d.raw("GET", key, target).await
}

/// One connection to oauthd kept for every request, so that one worker thread answers
/// them all (a client's pool may open another, which may go to the other worker).
struct OneConnection {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    addr: String,
}

impl OneConnection {
    async fn open(d: &Daemon) -> OneConnection {
        let addr = d.url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        OneConnection {
            stream: tokio::io::BufReader::new(stream),
            addr,
        }
    }

    /// `method` of `target`: the status and the body (which must have a length).
    async fn send(&mut self, key: &str, method: &str, target: &str) -> (u16, String) {
        use tokio::io::AsyncBufReadExt;
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\r\n",
            self.addr
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .unwrap();
        let (mut status, mut length) = (0, 0);
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                status = code[..3].parse().unwrap();
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_path_leaves_the_api_base() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("reached"))
        .mount(&mock)
        .await;
    let prefix = "/v1/proxy/mock/default/";
    for rest in [
        "..",
        "../token",
        "../../token",
        "me/../../token",
        "./me",
        "%2e%2e/token",
        "%2E%2E/token",
        ".%2e/token",
        "me/%2e%2e/%2e%2e/token",
        "..%2ftoken",
        "..%2Ftoken",
        "me%2f..%2f..%2ftoken",
        "..%5ctoken",
        "..\\token",
        "%252e%252e/token",
        "/token",
        "//evil.example/x",
        "http://evil.example/x",
        "https:%2f%2fevil.example/x",
        "http:evil.example",
        "user@evil.example/x",
        "me%40evil.example",
        "me%00",
        "me%0d%0aHost:%20evil",
        "%",
        "me%zz",
        "%EF%BC%8E%EF%BC%8E/token",
        "me/%EF%BC%8F..%EF%BC%8Ftoken",
        "me/a%E2%80%AEb",
        "me/..%CD%8F/token",
        "me/..%CC%81/token",
        "me/..%E2%88%95token",
    ] {
        let (status, out) = raw_request(&d, &key, &format!("{prefix}{rest}")).await;
        assert!(
            status == 400 && out.contains("invalid_proxy_path"),
            "{rest}: {out}"
        );
    }
    // Which segment, said (the detail was the same long list for every one).
    let (_, out) = raw_request(&d, &key, &format!("{prefix}me/a%E2%80%AEb")).await;
    assert!(
        out.contains("segment 2 of the API's path (after the account): "),
        "{out}"
    );
    let seen = requests_to(&mock, "/").await;
    assert!(
        seen.is_empty(),
        "reached the upstream: {:?}",
        seen.iter().map(|r| r.url.to_string()).collect::<Vec<_>>()
    );
    // Plain paths do reach it, below the base.
    let (status, out) = raw_request(&d, &key, &format!("{prefix}v1/me:batch/x-y_z~")).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(requests_to(&mock, "/api/v1/me:batch/x-y_z~").await.len(), 1);
    // Names beyond ASCII (percent-encoded UTF-8) and `@` past the first segment too: an
    // artist's name, a user principal name.
    for rest in [
        "search/Beyonc%C3%A9",
        "users/alice%40contoso.com/drive",
        "users/bob@contoso.com/drive",
    ] {
        let (status, out) = raw_request(&d, &key, &format!("{prefix}{rest}")).await;
        assert_eq!(status, 200, "{rest}: {out}");
        let seen = requests_to(&mock, &format!("/api/{rest}")).await;
        assert_eq!(seen.len(), 1, "{rest}");
        assert_eq!(seen[0].url.path(), format!("/api/{rest}"));
    }
}

/// `HEAD` through the proxy answered `content-length: 0` whatever the provider said: a
/// client that reads a file's size before fetching it read 0. The provider's length is
/// passed on now, with no body; a `GET` of the same answers the body itself.
#[tokio::test(flavor = "multi_thread")]
async fn head_passes_on_the_providers_content_length() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(&mock, "").await;
    let body = "x".repeat(1234);
    Mock::given(path("/api/files/song.flac"))
        .respond_with(ResponseTemplate::new(200).set_body_string(body.clone()))
        .mount(&mock)
        .await;
    let url = proxy_url(&d, "files/song.flac");
    let direct = reqwest::Client::new()
        .head(format!("{}/api/files/song.flac", mock.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(common::header(&direct, "content-length"), "1234");
    let head = reqwest::Client::new()
        .head(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(common::header(&head, "content-length"), "1234");
    assert_eq!(head.bytes().await.unwrap().len(), 0);
    let get = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(get.text().await.unwrap(), body);
}

/// An API on a raw socket at the returned base (`.../api/`): each request's head (request
/// line and headers) goes to `answer`, which gives what to write at once and what to
/// write a second later, on the same connection, before the next request is read. That
/// late part is an answer to nothing: a misbehaving API's. Also: how many connections it
/// accepted so far.
async fn raw_api(
    answer: fn(&str) -> (String, Option<&'static str>),
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        let (now, late) = answer(&head);
                        if socket.write_all(now.as_bytes()).await.is_err() {
                            return;
                        }
                        if let Some(late) = late {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if socket.write_all(late.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (api, accepted)
}

/// The late answer `raw_api`'s misbehaving APIs send.
const SMUGGLED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nSMUGGLED!";

/// `raw_api`'s answer to a request that is answered well: its path as the body.
fn path_as_body(head: &str) -> String {
    let path = head.split(' ').nth(1).unwrap_or("");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
        path.len()
    )
}

/// An API that sends a body with its answer to `HEAD` (some frameworks do), late: on a
/// connection kept for the next request, that body was read as the next request's answer,
/// which may be another account's. A `HEAD` now has its connection closed after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_late_to_head_is_no_later_requests_answer() {
    let (api, _) = raw_api(|head| {
        if head.starts_with("HEAD ") {
            let now = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n".to_owned();
            (now, Some(SMUGGLED))
        } else {
            (path_as_body(head), None)
        }
    })
    .await;
    let mock = MockServer::start().await;
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 3600});
    let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
    // The same client, and so the same connection to oauthd and the same worker, for all.
    let head = d
        .http
        .head(proxy_url(&d, "head"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(common::header(&head, "content-length"), "9");
    // At once, while the late body is on its way (sent a second after the answer).
    for n in 1..=6 {
        let answer = get(&d, &key, &format!("x{n}")).await.text().await.unwrap();
        assert_eq!(answer, format!("/api/x{n}"));
    }
}

/// `raw_api`'s misbehaving API: a `DELETE` with the token `old` is answered `204`, and
/// an extra answer follows a second later.
fn extra_answer_after_a_204(head: &str) -> (String, Option<&'static str>) {
    if head.contains("Bearer old") && head.starts_with("DELETE ") {
        ("HTTP/1.1 204 No Content\r\n\r\n".to_owned(), Some(SMUGGLED))
    } else {
        (path_as_body(head), None)
    }
}

/// An API that sends a whole answer more than it was asked for (here, after a `204`): the
/// connection it came on was kept, and shared by every account of the provider, so the
/// extra answer was read as the next request's, which another account's could be. Each
/// account now has connections of its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_extra_answer_from_the_api_never_reaches_another_account() {
    let (api, _) = raw_api(extra_answer_after_a_204).await;
    let mock = MockServer::start().await;
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 3600});
    let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
    let other = json!({"access_token": "other-token", "expires_in": 3600});
    let (status, body) = d.put("/v1/connections/mock/other", &key, other).await;
    assert_eq!(status, 201, "{body}");
    let mut oauthd = OneConnection::open(&d).await;
    let deleted = oauthd
        .send(&key, "DELETE", "/v1/proxy/mock/default/items/1")
        .await;
    assert_eq!(deleted, (204, String::new()));
    // At once, while the extra answer is on its way (sent a second after the 204).
    for n in 1..=6 {
        let answer = oauthd
            .send(&key, "GET", &format!("/v1/proxy/mock/other/x{n}"))
            .await;
        assert_eq!(answer, (200, format!("/api/x{n}")));
    }
}

/// The same with a connection deleted and made again under the same name (another
/// person's account, maybe): its calls went over the connections the old grant's had
/// left, so the old grant's extra answer was read as the new one's.
#[tokio::test(flavor = "multi_thread")]
async fn an_extra_answer_never_reaches_a_connection_made_again_under_the_name() {
    let (api, _) = raw_api(extra_answer_after_a_204).await;
    let mock = MockServer::start().await;
    let tokens = json!({"access_token": "old", "refresh_token": "r1", "expires_in": 3600});
    let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
    let mut oauthd = OneConnection::open(&d).await;
    let deleted = oauthd
        .send(&key, "DELETE", "/v1/proxy/mock/default/items/1")
        .await;
    assert_eq!(deleted, (204, String::new()));
    let gone = oauthd
        .send(&key, "DELETE", "/v1/connections/mock/default")
        .await;
    assert_eq!(gone.0, 204);
    let again = json!({"access_token": "new-person", "expires_in": 3600});
    let (status, body) = d.put("/v1/connections/mock/default", &key, again).await;
    assert_eq!(status, 201, "{body}");
    let answer = oauthd.send(&key, "GET", "/v1/proxy/mock/default/x1").await;
    assert_eq!(answer, (200, "/api/x1".to_owned()));
}

/// Calls that go round twenty accounts, one after another, reuse each account's
/// connection: with clients for only 16 accounts kept on a worker, each call past the
/// sixteenth account pushed out the client the next call needed, and every call opened a
/// connection (a TCP and TLS handshake to a real API).
#[tokio::test(flavor = "multi_thread")]
async fn calls_that_go_round_twenty_accounts_reuse_their_connections() {
    let (api, accepted) = raw_api(|head| (path_as_body(head), None)).await;
    let mock = MockServer::start().await;
    let tokens = json!({"access_token": "t-default", "expires_in": 3600});
    let (_home, d, key) = api_home(&mock, &api, "", tokens).await;
    let accounts: Vec<String> = (1..20)
        .map(|n| format!("a{n}"))
        .chain(["default".into()])
        .collect();
    for account in &accounts {
        if account != "default" {
            let tokens = json!({"access_token": format!("t-{account}"), "expires_in": 3600});
            let (status, body) = d
                .put(&format!("/v1/connections/mock/{account}"), &key, tokens)
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }
    let mut oauthd = OneConnection::open(&d).await;
    for round in 0..3 {
        for account in &accounts {
            let target = format!("/v1/proxy/mock/{account}/r{round}");
            let answer = oauthd.send(&key, "GET", &target).await;
            assert_eq!(answer, (200, format!("/api/r{round}")));
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        accounts.len()
    );
}

/// The requests of one API key hold at most a share of the proxy's room for request bodies
/// that leaves room for one more key: tenants that start uploads and stall them half way,
/// with one key or two, no longer leave the other apps `503 proxy_busy` for as long as they
/// like.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_uploads_of_one_key_or_two_leave_room_for_the_others() {
    let mock = MockServer::start().await;
    let (home, d, app_key) = mock_home(&mock, "").await;
    let tenants = [
        home.create_key("tenant", &[]),
        home.create_key("tenant-2", &[]),
    ];
    Mock::given(method("POST"))
        .and(path("/api/upload"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&mock)
        .await;
    let addr = d.url.trim_start_matches("http://").to_owned();
    let chunk = vec![b'x'; 1024 * 1024];
    // Uploads of 10 MiB declared (the limit), each stalled after 8 MiB: four fill half of
    // the 64 MiB all bodies may hold together.
    let stall = |tenant: String, n: usize| {
        let (addr, chunk) = (addr.clone(), chunk.clone());
        async move {
            let mut stalled = Vec::new();
            for _ in 0..n {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let head = format!(
                    "POST /v1/proxy/mock/default/upload HTTP/1.1\r\nHost: {addr}\r\n\
                     Authorization: Bearer {tenant}\r\nContent-Length: 10485760\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await.unwrap();
                for _ in 0..8 {
                    // A refused upload is answered and closed part way: the rest is not
                    // taken.
                    if s.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                stalled.push(s);
            }
            stalled
        }
    };
    // Eight of one key (64 MiB), then six of a second.
    let first = stall(tenants[0].clone(), 8).await;
    let second = stall(tenants[1].clone(), 6).await;
    // Another key's upload goes through while they stall.
    let resp = d
        .http
        .post(proxy_url(&d, "upload"))
        .bearer_auth(&app_key)
        .body(vec![b'y'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        204,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    // Each tenant's uploads past its share were refused, and said why.
    for stalled in [first, second] {
        let mut refused = 0;
        for mut s in stalled {
            let mut answer = vec![0; 4096];
            let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut answer)).await;
            let Ok(Ok(n)) = read else { continue };
            let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
            if answer.starts_with("HTTP/1.1 503 ") {
                assert!(answer.contains("proxy_busy"), "{answer}");
                assert!(answer.contains("as one key may"), "{answer}");
                refused += 1;
            }
        }
        assert!(refused >= 3, "{refused} refused");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_on_size_and_time() {
    let mock = MockServer::start().await;
    let (_home, d, key) = mock_home(
        &mock,
        "[proxy]\nmax_request_bytes = 1024\nmax_response_bytes = 1048576\ntimeout_seconds = 1\n",
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/api/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/huge"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 2 * 1024 * 1024]))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/upload"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&mock)
        .await;

    let started = Instant::now();
    let resp = get(&d, &key, "slow").await;
    common::assert_code(resp, "upstream_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Under the limit with a Content-Length: streamed with its length, byte for byte.
    let medium: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    Mock::given(method("GET"))
        .and(path("/api/medium"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(medium.clone()))
        .mount(&mock)
        .await;
    let resp = get(&d, &key, "medium").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(medium.len() as u64));
    assert!(
        resp.bytes().await.unwrap() == medium,
        "the body changed on the way"
    );
    let resp = get(&d, &key, "huge").await;
    common::assert_code(resp, "upstream_too_large").await;

    let resp = post(&d, &key, "upload", vec![0u8; 1025]).await;
    common::assert_code(resp, "body_too_large").await;
    let resp = post(&d, &key, "upload", vec![0u8; 1024]).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(requests_to(&mock, "/api/upload").await.len(), 1);
    // A body that stops arriving holds nothing for long.
    let stalled = futures::stream::iter([Ok::<_, std::io::Error>(vec![1u8; 10])])
        .chain(futures::stream::pending());
    let started = Instant::now();
    let resp = post(&d, &key, "upload", reqwest::Body::wrap_stream(stalled)).await;
    common::assert_code(resp, "body_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(requests_to(&mock, "/api/upload").await.len(), 1);
}

/// An upstream on a raw socket: answers every request with a chunked body of `first`,
/// then waits for `go`, then sends `rest` bytes in 64 KiB chunks.
async fn chunked_upstream(rest: usize) -> (String, tokio::sync::mpsc::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(b"5\r\nfirst\r\n").await;
            let _ = s.flush().await;
            if go_rx.recv().await.is_none() {
                return;
            }
            let chunk = vec![b'y'; 65536];
            let mut left = rest;
            while left > 0 {
                let n = left.min(chunk.len());
                let _ = s.write_all(format!("{n:x}\r\n").as_bytes()).await;
                let _ = s.write_all(&chunk[..n]).await;
                let _ = s.write_all(b"\r\n").await;
                left -= n;
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        }
    });
    (url, go_tx)
}

/// An API that answers `101 Switching Protocols` (the proxy never sends `Upgrade`): a `502`
/// problem, where the `101` was handed back and the caller's connection then spoke on in
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_switches_protocols_is_a_bad_gateway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                .await;
        }
    });
    let mock = MockServer::start().await;
    let (_home, d, key) = api_home(&mock, &upstream, "", json!({"access_token": "t"})).await;
    let resp = get(&d, &key, "socket").await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().get("upgrade").is_none());
    assert_eq!(
        common::header(&resp, "proxy-status"),
        "oauthd; error=http_protocol_error; details=\"upstream_upgraded\""
    );
    common::assert_code(resp, "upstream_upgraded").await;
}

/// A small answer that goes silent half-way (its `Content-Length` not reached) is said to
/// have gone silent, naming the setting: it was "the provider's answer broke off".
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_goes_silent_says_so() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf an answer")
                    .await;
                tokio::time::sleep(Duration::from_secs(20)).await;
            });
        }
    });
    let mock = MockServer::start().await;
    let limits = "[proxy]\nread_timeout_seconds = 1";
    let (_home, d, key) = api_home(&mock, &upstream, limits, json!({"access_token": "t"})).await;
    let resp = get(&d, &key, "silent").await;
    assert_eq!(resp.status(), 502);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_unavailable");
    assert_eq!(
        problem["detail"],
        "the provider's answer went silent for 1 s before its end (proxy.read_timeout_seconds)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_stream_through_and_stop_at_the_limit() {
    let mock = MockServer::start().await;
    let (upstream, go) = chunked_upstream(20 * 1024 * 1024).await;
    let limit = "[proxy]\nmax_response_bytes = 8388608";
    let (_home, d, key) = api_home(&mock, &upstream, limit, json!({"access_token": "t"})).await;

    // The first bytes arrive while the upstream still holds the rest back: streamed,
    // not buffered. Then the body runs past max_response_bytes and is cut off.
    let mut resp = get(&d, &key, "file").await;
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first chunk did not arrive before the rest was sent: buffered?")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first");
    go.send(()).await.unwrap();
    let mut received = first.len();
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(c)) => received += c.len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut, "a body over the limit ended as if whole");
    assert!(received <= 8 * 1024 * 1024, "{received}");
}

/// A client that asks for a large answer and never reads it held its connection, and the
/// answer's buffers, without end: a streamed answer holds its request's turn, which has no
/// deadline of its own. An answer the client takes nothing of for 30 s ends the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_a_streamed_answer_loses_its_connection() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/big"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 16 * 1024 * 1024]))
        .mount(&mock)
        .await;
    let (_home, d, key) = mock_home(&mock, "").await;
    let addr: std::net::SocketAddr = d.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "GET /v1/proxy/mock/default/big HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    // Read on: a connection still served delivers the whole answer and then waits.
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was held ({read} bytes read)");
    assert!(read < 16 * 1024 * 1024, "the whole answer was sent");
    // oauthd stopped first (by PID), then the mock server left as it is: its drop checks
    // its expectations (there are none) under a lock that the 16 MB answer it was writing
    // to the closed connection could hold, and it once hung a test run there for good.
    drop(d);
    std::mem::forget(mock);
}

/// A proxied call without the API's path after the account is told what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_address_without_the_apis_path_says_what_is_missing() {
    let home = Home::new();
    let key = home.create_key("app", &[]);
    let d = home.start();
    let (status, body) = d.get("/v1/proxy/spotify/default", &key).await;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("/v1/proxy/{provider}/{account}/{path}"),
        "{body}"
    );
    // Any other unknown path keeps the plain answer.
    let (status, body) = d.get("/v1/nothing-here", &key).await;
    assert_eq!((status, &body["detail"]), (404, &json!("no such endpoint")));
}

/// `openssl s_server` serving the files of a directory over TLS, with a certificate for
/// 127.0.0.1 issued by a CA of its own; stopped (by PID) when dropped.
struct TlsApi {
    dir: tempfile::TempDir,
    server: std::process::Child,
    port: u16,
}

impl TlsApi {
    fn start(files: &[(&str, &str)]) -> TlsApi {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (Debian package openssl)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-days", "1", "-subj", "/CN=test CA"][..],
                &key,
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &key,
                &["-keyout", "api.key", "-out", "api.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.path().join("api.ext"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "api.ext",
            "-out",
            "api.pem",
        ]);
        for (name, body) in files {
            let file = dir.path().join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, body).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = std::process::Command::new("openssl")
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "api.pem", "-key", "api.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let api = TlsApi { dir, server, port };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "openssl s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        api
    }
}

impl Drop for TlsApi {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// An API over TLS: reached when its certificate's CA is among the roots oauthd trusts
/// (`SSL_CERT_FILE` names them, as for any program using the system's store), refused as
/// unreachable when it is not. The proxy's clients, one per account, share a TLS set-up
/// made once at start.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_over_tls_is_reached_through_the_roots_oauthd_trusts() {
    let api = TlsApi::start(&[("api/me.txt", "hello over TLS")]);
    let mock = MockServer::start().await;
    let base = format!("https://127.0.0.1:{}/api/", api.port);
    let home = Home::new();
    home.write_config(&mock_provider(&mock, &base));
    let key = home.create_key("app", &[]);
    let tokens = json!({"access_token": "old", "expires_in": 3600});
    // Not trusted: neither the system's roots nor the bundled ones hold the API's CA.
    let d = home.start();
    for account in ["default", "other"] {
        let path = format!("/v1/connections/mock/{account}");
        let (status, body) = d.put(&path, &key, tokens.clone()).await;
        assert_eq!(status, 201, "{body}");
        let resp = get_of(&d, &key, account, "me.txt").await;
        assert_eq!(resp.status(), 502);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "upstream_unavailable", "{body}");
    }
    drop(d);
    // A roots file that is not there, or whose certificate cannot be parsed, is said at
    // start, not only as "unknown issuer" later. (`SSL_CERT_DIR`, which some machines set,
    // would add its own: empty, it is unset.)
    let unparsable = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let ca_pem = std::fs::read_to_string(api.dir.path().join("ca.pem")).unwrap();
    let bad = api.dir.path().join("bad-roots.pem");
    std::fs::write(&bad, format!("{ca_pem}{unparsable}")).unwrap();
    let missing = api.dir.path().join("no-such-roots.pem");
    let not_pem = api.dir.path().join("roots.der");
    std::fs::write(&not_pem, b"\x30\x82\x01\x0a not a PEM file").unwrap();
    for (roots, said) in [
        (
            &not_pem,
            "SSL_CERT_FILE or SSL_CERT_DIR names no certificate in PEM form",
        ),
        (&missing, "TLS roots could not be read"),
        (
            &bad,
            "1 of the 2 certificates of the system's TLS roots could not be parsed",
        ),
    ] {
        let d = home.start_with_env(&[
            ("SSL_CERT_DIR", ""),
            ("SSL_CERT_FILE", roots.to_str().unwrap()),
        ]);
        drop(d);
        let log = home.log_text();
        assert!(log.contains(said), "{log}");
    }
    assert!(home.log_text().contains("no-such-roots.pem"));
    // None that parses: no HTTP client can be set up, and the refused start says why.
    std::fs::write(&bad, unparsable).unwrap();
    let out = common::run_until_exit(
        home.cli_command(&["serve", "--listen", "127.0.0.1:0"])
            .env("SSL_CERT_DIR", "")
            .env("SSL_CERT_FILE", &bad)
            .stdin(std::process::Stdio::null()),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("zero valid certificates"), "{said}");
    let ca = api.dir.path().join("ca.pem");
    let d = home.start_with_env(&[
        ("SSL_CERT_DIR", ""),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ]);
    for account in ["default", "other"] {
        let resp = get_of(&d, &key, account, "me.txt").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "hello over TLS");
    }
}

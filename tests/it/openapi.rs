//! The OpenAPI description: served and printed alike, every described operation routed
//! and nothing else under `/v1`, and schemathesis (PyPI, pinned in
//! tests/schemathesis/requirements.txt) fuzzing a live oauthd from it.

use crate::common::{self, Home, BIN};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

async fn served(d: &common::Daemon) -> Value {
    let resp = d
        .http
        .get(format!("{}/openapi.json", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(common::header(&resp, "content-type"), "application/json");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn the_description_is_served_without_a_key_and_printed_alike() {
    let home = Home::new();
    let d = home.start();
    let doc = served(&d).await;
    assert_eq!(doc["openapi"], "3.1.0");
    // Without a server, a config or a database.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("openapi")
        .current_dir(empty.path())
        .env_remove("OAUTHD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc);
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    // Errors are problem documents, with the shape ApiError renders.
    let problem = &doc["components"]["schemas"]["Problem"];
    for member in ["type", "title", "status", "code", "detail"] {
        assert!(
            problem["required"]
                .as_array()
                .unwrap()
                .contains(&member.into()),
            "{problem}"
        );
    }
}

/// The description a server serves bounds `ttl_seconds` by the longest TTL its config
/// allows: it said 86,400 under a namespace allowed 30 days (the README's advice for
/// grants), and a client checking its requests against it refused what the server takes.
#[tokio::test]
async fn the_served_description_bounds_the_ttl_by_the_config() {
    let home = Home::new();
    // oauthd's own connect flows' rule is not the API's: it does not count.
    home.write_config(
        "[states.namespaces.\"as:grant\"]\nmax_ttl_seconds = 2592000\n[states.namespaces.\"connect:*\"]\nmax_ttl_seconds = 5000000\n",
    );
    let key = home.create_key("app", &[]);
    let d = home.start();
    let doc = served(&d).await;
    let ttl = &doc["components"]["schemas"]["CreateState"]["properties"]["ttl_seconds"];
    assert_eq!(ttl["maximum"], 2_592_000, "{ttl}");
    let (status, body) = d
        .post(
            "/v1/states",
            &key,
            serde_json::json!({"namespace": "as:grant", "ttl_seconds": 2_592_000}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// `{name}` segments filled with values the routes take.
fn fill(path: &str) -> String {
    path.replace("{provider}", "spotify")
        .replace("{account}", "default")
        .replace("{namespace}", "app")
        .replace("{subject}", "alice")
        .replace("{id}", "01a23386-935c-8a64-be8f-08124bbecda8")
        .replace("{path}", "v1/me")
}

#[tokio::test]
async fn every_described_operation_is_routed_and_nothing_else_is_under_v1() {
    let home = Home::new();
    let d = home.start();
    let doc = served(&d).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = d
                .http
                .request(method.clone(), format!("{}{}", d.url, fill(path)))
                .send()
                .await
                .unwrap();
            // Routed: the route's own answer to a request without a key, not the router's
            // 404 or 405.
            assert_eq!(resp.status(), 401, "{method} {path}");
            if method != reqwest::Method::HEAD {
                common::assert_code(resp, "missing_api_key").await;
            }
            operations += 1;
        }
    }
    assert!(operations >= 24, "{operations} operations described");

    let key = home.create_key("routes", &[]);
    // A path no description names: 404, even with a key.
    let resp = d
        .http
        .get(format!("{}/v1/not-described", d.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    common::assert_code(resp, "not_found").await;
    // A described path and a method it does not describe: 405 naming the ones it does.
    let resp = d
        .http
        .patch(format!("{}/v1/states", d.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(common::header(&resp, "allow"), "POST");
    let resp = d
        .http
        .post(format!("{}/v1/connections/spotify/default", d.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(common::header(&resp, "allow"), "GET, HEAD, PUT, DELETE");
    let resp = d
        .http
        .request(
            reqwest::Method::TRACE,
            format!("{}/v1/proxy/spotify/default/v1/me", d.url),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(
        common::header(&resp, "allow"),
        "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    );
}

fn schemathesis_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis")
}

/// The description holds to the OpenAPI 3.1 schema and rules, as openapi-spec-validator
/// (PyPI) checks them: the proxy's seven methods had one operation id, `forward`, which
/// client generators take as one function (the validator refused the file for it).
#[test]
fn the_description_passes_an_openapi_validator() {
    let validator = schemathesis_dir().join(".venv/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "openapi-spec-validator's venv is missing: run scripts/test (it installs tests/schemathesis/requirements.txt)"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.json");
    let out = Command::new(BIN).arg("openapi").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&spec, &out.stdout).unwrap();
    let out = Command::new(&validator).arg(&spec).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
    let proxy = &doc["paths"]["/v1/proxy/{provider}/{account}/{path}"];
    assert_eq!(proxy["get"]["operationId"], "forward_get", "{proxy}");
    // The code an attempt sends is bounded as the create's is (the server refuses it out
    // of range, `invalid_secret`; the description let any string through).
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["AttemptState"]["properties"]["secret"]["maxLength"],
        schemas["CreateState"]["properties"]["secret"]["maxLength"]
    );
    assert_eq!(
        schemas["AttemptState"]["properties"]["secret"]["maxLength"],
        128
    );
    // Codes every route may answer are named where an operation describes the status
    // itself (they were left out there: `unknown_parameter` on create, consume, verify;
    // `rate_limited` on create), the proxy's 400s aside (its query is the provider's).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            let says = |status: &str, code: &str| {
                responses
                    .get(status)
                    .is_none_or(|r| r["description"].as_str().unwrap_or("").contains(code))
            };
            assert!(says("429", "`rate_limited`"), "{method} {path}");
            if !path.starts_with("/v1/proxy/") {
                assert!(says("400", "`unknown_parameter`"), "{method} {path}");
            }
        }
    }
}

/// schemathesis runs every operation from the served description: its examples, the
/// coverage phase (edges of every schema, and values just outside them), random cases, and
/// chains along the description's links (create -> consume, verify, revoke, by id, by
/// subject). The build fails on any 5xx, any answer the description does not allow (status,
/// content type, headers, body), any request outside the description that oauthd accepts,
/// a missing `Allow`, a route that answers without a valid key, or a crash.
///
/// Three of its checks are off, as their premises do not hold here by design:
/// `positive_data_acceptance` (schema-valid requests that oauthd refuses on purpose:
/// bounds from the running config, such as a namespace's TTL and lifetime limits, and
/// states that expired, 410, or were consumed a step earlier, 404), `use_after_free` (a
/// subject's list of states is a collection: after "sign out everywhere" it is empty, not
/// gone) and `ensure_resource_availability` (a chain that consumed or revoked a state
/// before a step that uses it again gets 404: consumed exactly once).
///
/// The broker's operations reach a real provider: the test OpenID provider is configured
/// as `peer` (its userinfo endpoint as the proxy's API) with account `default` connected,
/// and every `{provider}` and `{account}` the fuzzer sends names them.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_fault_in_the_api_or_its_description() {
    let st = schemathesis_dir().join(".venv/bin/schemathesis");
    assert!(
        st.exists(),
        "schemathesis' venv is missing: run scripts/test (it installs tests/schemathesis/requirements.txt)"
    );
    let peer = common::peer::Peer::start(3600);
    let home = Home::new();
    home.write_config(&peer.provider_toml_with_api("peer"));
    let key = home.create_key("fuzz", &[]);
    let d = home.start();
    let (status, page) = common::peer::connect(&d, &peer, &key, "default").await;
    assert_eq!(status, 200, "{page}");
    let config = home.dir.path().join("schemathesis.toml");
    let shared = std::fs::read_to_string(schemathesis_dir().join("schemathesis.toml")).unwrap();
    std::fs::write(
        &config,
        format!("{shared}\n[parameters]\n\"path.provider\" = \"peer\"\n\"path.account\" = \"default\"\n"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let url = format!("{}/openapi.json", d.url);
        // It keeps a cache in its working directory: the test's own.
        let cwd = home.dir.path().to_owned();
        move || {
            Command::new(st)
                .current_dir(cwd)
                .arg("--config-file")
                .arg(config)
                .args(["run", &url])
                .args(["--header", &format!("Authorization: Bearer {key}")])
                .args(["--checks", "all"])
                .args([
                    "--exclude-checks",
                    "positive_data_acceptance,use_after_free,ensure_resource_availability",
                ])
                .args(["--max-examples", "20", "--seed", "1", "--workers", "1"])
                .args(["--request-timeout", "10", "--no-color"])
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let _ = std::fs::write(artifacts.join("schemathesis.txt"), &report);
    assert!(
        out.status.success(),
        "schemathesis found faults (test-artifacts/schemathesis.txt):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It ran: every operation, many cases, every link.
    assert!(report.contains("24 selected / 24 total"), "{report}");
    let generated: u64 = report
        .lines()
        .find(|l| l.contains(" generated, "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 800, "only {generated} cases:\n{report}");
    assert!(
        report.contains("6 covered / 6 selected / 6 total"),
        "{report}"
    );
    println!("schemathesis: {generated} cases");
    let log = home.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// What the fuzzer found, each checked on its own: a whole number written `600.0`, a state
/// id in another spelling than oauthd's, a `force` that is not a boolean.
#[tokio::test]
async fn what_the_fuzzer_found_stays_fixed() {
    let home = Home::new();
    let d = home.start();
    let key = home.create_key("found", &[]);
    let (status, body) = d
        .post(
            "/v1/states",
            &key,
            serde_json::json!({"namespace": "app", "ttl_seconds": 600.0}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for id in [
        "{01a23386-935c-8a64-be8f-08124bbecda8}",
        "01a23386935c8a64be8f08124bbecda8",
        "urn:uuid:01a23386-935c-8a64-be8f-08124bbecda8",
    ] {
        let resp = d
            .delete(&format!("/v1/namespaces/app/states/{id}"), &key)
            .await;
        assert_eq!(resp.status(), 400, "{id}");
        common::assert_code(resp, "invalid_id").await;
    }
    // Given twice (`false&force=bogus` passed, and answered 404): refused too.
    for force in ["null", "yes", "", "false&force=bogus", "true&force=true"] {
        let resp = d
            .delete(&format!("/v1/connections/p/a?force={force}"), &key)
            .await;
        assert_eq!(resp.status(), 400, "force={force}");
        common::assert_code(resp, "invalid_force").await;
    }
    // A HEAD is refused as its GET is.
    let twice = format!("{}/v1/connections/p/a/token?min_ttl=5&min_ttl=6", d.url);
    let resp = d.http.head(twice).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let forced = format!("{}/v1/connections/p/a?force=true", d.url);
    let resp = d.http.head(forced).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // A method the route does not serve gets its 405, a parameter given twice or not.
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        for query in ["min_ttl=5", "min_ttl=5&min_ttl=6"] {
            let resp = d
                .http
                .request(
                    method.clone(),
                    format!("{}/v1/connections/p/a/token?{query}", d.url),
                )
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 405, "{method} {query}");
        }
    }
    // An account named `token` is a connection's route, not the token route.
    let resp = d.delete("/v1/connections/p/token?force=true", &key).await;
    assert_eq!(resp.status(), 404);
    common::assert_code(resp, "connection_not_found").await;
}

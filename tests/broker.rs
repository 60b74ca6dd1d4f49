//! The broker against a real OpenID provider (panva's oidc-provider, run by the harness):
//! connect with authorization code + PKCE, tokens sealed at rest, refresh rules.

mod common;

use common::peer::Peer;
use common::{Daemon, Home};
use serde_json::json;

/// oauthd with the peer configured as provider "peer", and an API key.
fn setup(peer: &Peer, extra_toml: &str) -> (Home, String) {
    let home = Home::new();
    home.write_config(&format!("{extra_toml}\n{}", peer.provider_toml("peer")));
    let key = home.create_key("app", &[]);
    (home, key)
}

/// Runs the whole connect flow for `account` and returns the callback page's status and body.
async fn connect(d: &Daemon, peer: &Peer, key: &str, account: &str) -> (u16, String) {
    let (status, body) = d
        .post("/v1/connect/peer", key, json!({"account": account}))
        .await;
    assert_eq!(status, 201, "{body}");
    let callback = peer.approve(body["authorize_url"].as_str().unwrap()).await;
    assert!(
        callback.starts_with(&format!("{}/callback/peer?", d.url)),
        "{callback}"
    );
    let (status, page, _) = d.browser_get(&callback).await;
    (status, page)
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_flow_stores_a_connection_and_the_token_api_hands_out_its_token() {
    let peer = Peer::start(60);
    let (home, key) = setup(&peer, "");
    let d = home.start();

    let (status, body) = d
        .post("/v1/connect/peer", &key, json!({"account": "alice"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let authorize = reqwest::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
    let params: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["redirect_uri"], format!("{}/callback/peer", d.url));
    assert_eq!(params["state"].len(), 43);
    assert_eq!(params["prompt"], "consent");
    assert!(body["expires_at"].is_string());

    let callback = peer.approve(authorize.as_str()).await;
    let (status, page, _) = d.browser_get(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Connected"), "{page}");

    let (status, conn) = d.get("/v1/connections/peer/alice", &key).await;
    assert_eq!(status, 200, "{conn}");
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["has_refresh_token"], true);
    assert!(conn.get("access_token").is_none() && !conn.to_string().contains("refresh_token\":\""));

    let (status, token) = d.get("/v1/connections/peer/alice/token", &key).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    let access = token["access_token"].as_str().unwrap();
    assert!(
        peer.is_active(access).await,
        "the provider does not know the token"
    );
    assert!(token.get("refresh_token").is_none());

    let (status, list) = d.get("/v1/connections", &key).await;
    assert_eq!(status, 200);
    assert_eq!(list["connections"][0]["account"], "alice");
    assert_eq!(peer.grants("authorization_code").await, 1);
}

//! The services called in-process, with a manual clock and (for the broker) a scripted
//! token endpoint: the rules about time — TTLs, the grace window, the live-state cap,
//! refresh backoff — tested by moving the clock, never by waiting. Each runs on SQLite
//! and on a real redis-server.

use crate::store_contract::Backend;
use oauthd::broker::{
    Broker, BrokerError, BrokerSettings, Browser, CallbackError, CallbackQuery, Disconnected,
    FlowStarter, ViewStatus,
};
use oauthd::clock::Clock;
use oauthd::namespace::Namespace;
use oauthd::oauth::flows::{TokenEndpoint, TokenFuture};
use oauthd::oauth::{Provider, ProviderConfig};
use oauthd::states::{StateError, StatePolicy, StateService, TtlRule};
use oauthd::vault::{KeySource, VaultHandle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Rules for a row a test puts into the store itself: room enough, kept two hours.
pub fn room(now: i64) -> oauthd::store::InsertRules {
    oauthd::store::InsertRules {
        max_live: 1000,
        now_ms: now,
        keep_until_ms: now + 7_200_000,
        replace_subject: false,
        max_per_subject: 100,
        max_total: 1000,
        max_tombstones: 1000,
        max_per_key: 1000,
    }
}

/// A vault with a key of its own, for services that need one.
pub fn vault() -> Arc<VaultHandle> {
    let key = oauthd::vault::generate_key_text().unwrap();
    Arc::new(VaultHandle::load(KeySource::Inline(key)).unwrap())
}

/// The API key an app's states are created for (`StateService::create`).
pub fn app_key() -> &'static oauthd::store::ApiKeyRecord {
    static KEY: std::sync::LazyLock<oauthd::store::ApiKeyRecord> =
        std::sync::LazyLock::new(|| oauthd::store::ApiKeyRecord {
            id: "00000000-0000-4000-8000-000000000001".into(),
            name: "app".into(),
            ..Default::default()
        });
    &KEY
}

pub fn policy(max_states: u64) -> StatePolicy {
    StatePolicy {
        base: TtlRule {
            default_ttl: 60 * MINUTE,
            max_ttl: 24 * 60 * MINUTE,
            max_states,
            max_per_subject: 1000,
            max_attempts: 5,
            attempts_ceiling: 100,
            sliding: true,
            max_lifetime: 30 * 24 * 60 * MINUTE,
        },
        overrides: vec![],
        max_data_bytes: 4096,
        max_total_states: 1_000_000,
        max_states_per_key: 1_000_000,
        expired_grace: 10 * MINUTE,
        verify_cache: Duration::from_secs(1),
    }
}

/// A manual clock at the real time (Redis keeps its own TTLs in real time; the rules
/// under test are judged by the clock the service is given).
pub fn clock() -> Clock {
    Clock::manual(chrono::Utc::now().timestamp_millis())
}

pub fn ns(s: &str) -> Namespace {
    Namespace::parse(s).unwrap()
}

/// A browser at the callback, not signed in to oauthd, with this flow cookie.
fn a_browser(flow: Option<&str>) -> Browser<'_> {
    Browser::Cookie {
        flow,
        signed_in: false,
    }
}

/// A state is good until its TTL, then "expired" (410) for the grace window, then as
/// unknown (404) as one never issued — whether or not the backend has forgotten it.
async fn expiry_and_the_grace_window_follow_the_clock(b: Backend) {
    let clock = clock();
    let states = StateService::new(b.store.clone(), policy(1000), clock.clone(), vault());
    let issue = || states.issue(ns("login"), Some(60), None);
    let (early, in_grace, late) = (
        issue().await.unwrap(),
        issue().await.unwrap(),
        issue().await.unwrap(),
    );
    clock.advance(Duration::from_secs(59));
    states.consume(&early.state, &ns("login")).await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        states.consume(&in_grace.state, &ns("login")).await,
        Err(StateError::Expired { .. })
    ));
    clock.advance(10 * MINUTE);
    assert!(matches!(
        states.consume(&late.state, &ns("login")).await,
        Err(StateError::NotFound)
    ));
}

/// The cap counts live states only: states past their expiry free their places at once,
/// before any sweep (SQLite counted them until the sweeper came by).
async fn expired_states_never_count_against_the_cap(b: Backend) {
    let clock = clock();
    let states = StateService::new(b.store.clone(), policy(3), clock.clone(), vault());
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(states.issue(ns("2fa"), Some(30), None).await.unwrap());
    }
    assert!(matches!(
        states.issue(ns("2fa"), Some(30), None).await,
        Err(StateError::NamespaceFull { max: 3, .. })
    ));
    clock.advance(Duration::from_secs(31));
    for _ in 0..3 {
        states.issue(ns("2fa"), Some(30), None).await.unwrap();
    }
    assert!(matches!(
        states.issue(ns("2fa"), Some(30), None).await,
        Err(StateError::NamespaceFull { .. })
    ));
    // The states that made room still answer "expired", not "unknown", in their grace.
    assert!(matches!(
        states.consume(&live[0].state, &ns("2fa")).await,
        Err(StateError::Expired { .. })
    ));
}

/// A provider's token endpoint, scripted: each answer is (status, JSON body); calls are
/// counted, and each takes `delay` (in tokio time) so that concurrent callers overlap.
struct Scripted {
    answers: Mutex<Vec<(u16, serde_json::Value)>>,
    calls: AtomicUsize,
    delay: Duration,
    /// The body of the last request.
    last: Mutex<String>,
}

impl Scripted {
    fn new(delay: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            delay,
            last: Mutex::default(),
        })
    }

    fn then(&self, status: u16, body: serde_json::Value) {
        self.answers.lock().unwrap().push((status, body));
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last_body(&self) -> String {
        self.last.lock().unwrap().clone()
    }
}

impl TokenEndpoint for Scripted {
    fn send<'a>(&'a self, req: oauth2::HttpRequest) -> TokenFuture<'a> {
        *self.last.lock().unwrap() = String::from_utf8_lossy(req.body()).into_owned();
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let (status, body) = {
                let mut answers = self.answers.lock().unwrap();
                assert!(
                    !answers.is_empty(),
                    "the token endpoint was called more often than scripted"
                );
                answers.remove(0)
            };
            Ok(oauth2::http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body.to_string().into_bytes())
                .unwrap())
        })
    }
}

fn tokens(access: &str, refresh: &str, expires_in: u64) -> serde_json::Value {
    serde_json::json!({
        "access_token": access, "token_type": "Bearer",
        "refresh_token": refresh, "expires_in": expires_in
    })
}

/// A broker with one provider ("p", explicit endpoints that are never dialled: every
/// token request goes to `endpoint`), and an account "a" connected through a real
/// connect flow whose tokens expire in an hour.
async fn connected(b: &Backend, clock: &Clock, endpoint: Arc<Scripted>) -> Arc<Broker> {
    connected_revoking_at(b, clock, endpoint, None).await
}

/// `connected`, with the provider's revocation endpoint at `revocation_url`.
async fn connected_revoking_at(
    b: &Backend,
    clock: &Clock,
    endpoint: Arc<Scripted>,
    revocation_url: Option<String>,
) -> Arc<Broker> {
    let key = oauthd::vault::generate_key_text().unwrap();
    connected_with_key(b, clock, endpoint, revocation_url, &key).await
}

/// `connected_revoking_at`, its tokens sealed with `vault_key`.
async fn connected_with_key(
    b: &Backend,
    clock: &Clock,
    endpoint: Arc<Scripted>,
    revocation_url: Option<String>,
    vault_key: &str,
) -> Arc<Broker> {
    let broker = broker_on(b, clock, endpoint.clone(), revocation_url, vault_key);
    connect_account(&broker, &endpoint, "a").await;
    broker
}

/// `connected` with a provider that answers at once, the clock an hour and a minute on:
/// the token has expired, and the next call refreshes it.
async fn expired(b: &Backend) -> (Clock, Arc<Scripted>, Arc<Broker>) {
    let clock = clock();
    let endpoint = Scripted::new(Duration::ZERO);
    let broker = connected(b, &clock, endpoint.clone()).await;
    clock.advance(61 * MINUTE);
    (clock, endpoint, broker)
}

/// Connects `account` of provider "p" through a real connect flow; its tokens expire in
/// an hour.
async fn connect_account(broker: &std::sync::Arc<Broker>, endpoint: &Scripted, account: &str) {
    let answer = tokens("access-1", "refresh-1", 3600);
    connect_account_with(broker, endpoint, account, answer).await;
}

/// `connect_account`, the provider answering the code with `answer`.
async fn connect_account_with(
    broker: &std::sync::Arc<Broker>,
    endpoint: &Scripted,
    account: &str,
    answer: serde_json::Value,
) {
    let start = broker
        .start_connect("p", Some(account), None, FlowStarter::Operator)
        .await
        .unwrap();
    let state = start
        .authorize_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    endpoint.then(200, answer);
    let query = CallbackQuery {
        state,
        code: Some("the-code".into()),
        ..Default::default()
    };
    broker
        .finish_callback("p", query, a_browser(None))
        .await
        .unwrap();
}

/// The `state` parameter of an address.
fn state_of(url: &url::Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state")
}

/// An app's connect flow hands out oauthd's confirmation page, not the provider's address,
/// and its callback redeems the code only for the browser holding the value that page
/// gave it (or for the operator pasting the address back). A browser without it uses the
/// flow up and stores nothing.
async fn an_apps_flow_finishes_only_in_the_browser_that_confirmed_it(b: Backend) {
    let clock = clock();
    let endpoint = Scripted::new(Duration::ZERO);
    let key = oauthd::vault::generate_key_text().unwrap();
    let broker = broker_on(&b, &clock, endpoint.clone(), None, &key);
    let (_, music) =
        oauthd::apikeys::create(&*b.store, "music", Default::default(), clock.now_ms())
            .await
            .unwrap();
    let app = FlowStarter::App {
        key_id: &music.id,
        key_name: "music",
    };
    let start = |account: &'static str| broker.start_connect("p", Some(account), None, app);
    let callback = |state: &str| CallbackQuery {
        state: Some(state.to_owned()),
        code: Some("the-code".into()),
        ..Default::default()
    };
    // Finishes the flow that handed out `address`, as `browser` brings it back.
    let finish = |address: &url::Url, browser: Browser<'static>| {
        broker.finish_callback("p", callback(&state_of(address)), browser)
    };
    // Starts a flow for `account` and finishes it so.
    let finish_new = |account: &'static str, browser: Browser<'static>| async move {
        let started = start(account).await.unwrap();
        finish(&started.authorize_url, browser).await
    };
    // Starts a flow for `account`, confirmed, and brings it back from the provider
    // `minutes` later to the browser that confirmed it: held for the person's press (the
    // value the page holds).
    let (b_ref, c_ref, callback) = (&broker, &clock, &callback);
    let held_new = move |account: &'static str, minutes: u32| async move {
        let (broker, clock) = (b_ref, c_ref);
        let started = start(account).await.unwrap();
        let state = state_of(&started.authorize_url);
        let value = oauthd::secret::StateValue::parse(&state).unwrap();
        let flow = broker.app_flow("p", account, &value).await.unwrap();
        clock.advance(minutes * MINUTE);
        let back = broker
            .finish_callback("p", callback(&state), a_browser(Some(&flow.browser)))
            .await;
        match back {
            Ok(oauthd::broker::Finished::Held(held)) => held.value,
            other => panic!("an app's flow back from the provider: {other:?}"),
        }
    };

    let started = start("evil").await.unwrap();
    assert_eq!(started.authorize_url.path(), "/connect/p/confirm");
    let state = state_of(&started.authorize_url);
    let value = oauthd::secret::StateValue::parse(&state).unwrap();
    let flow = broker.app_flow("p", "evil", &value).await.unwrap();
    assert_eq!(
        (flow.key_name.as_str(), flow.account.as_str()),
        ("music", "evil")
    );
    let to_provider = url::Url::parse(&flow.provider_url).unwrap();
    assert_eq!(to_provider.host_str(), Some("provider.test"));
    assert_eq!(state_of(&to_provider), state);
    assert!(matches!(
        broker.app_flow("p", "other", &value).await,
        Err(CallbackError::UnknownState)
    ));
    for presented in [None, Some(""), Some("another browser's value")] {
        let refused = finish_new("evil", a_browser(presented)).await;
        assert_eq!(
            refused.unwrap_err(),
            CallbackError::NotConfirmedHere {
                account: "evil".into()
            }
        );
    }
    let replay = broker
        .finish_callback("p", callback(&state), a_browser(None))
        .await;
    assert_eq!(
        replay.unwrap_err(),
        CallbackError::NotConfirmedHere {
            account: "evil".into()
        }
    );
    let again = broker
        .finish_callback("p", callback(&state), a_browser(Some(&flow.browser)))
        .await;
    assert_eq!(again.unwrap_err(), CallbackError::UnknownState, "used up");
    assert_eq!(endpoint.calls(), 0, "no code redeemed");
    assert!(broker.connection("p", "evil").await.is_err());

    let started = start("evil").await.unwrap();
    let state = state_of(&started.authorize_url);
    let value = oauthd::secret::StateValue::parse(&state).unwrap();
    let flow = broker.app_flow("p", "evil", &value).await.unwrap();
    endpoint.then(200, tokens("access-1", "refresh-1", 3600));
    let finished = broker
        .finish_callback("p", callback(&state), a_browser(Some(&flow.browser)))
        .await
        .unwrap();
    // Back from the provider, it waits for the person's press on the page this browser
    // gets: the flow's cookie may have been set there by a page of the app's.
    let oauthd::broker::Finished::Held(held) = finished else {
        panic!("an app's flow connected without the press: {finished:?}");
    };
    assert_eq!(endpoint.calls(), 0, "nothing redeemed before the press");
    assert!(broker.connection("p", "evil").await.is_err());
    broker.finish_held("p", &held.value).await.unwrap();
    assert_eq!(
        broker.finish_held("p", &held.value).await.unwrap_err(),
        CallbackError::ByApp(Box::new(CallbackError::UnknownState)),
        "pressed once only"
    );
    assert_eq!(endpoint.calls(), 1);
    let token = broker.access_token("p", "evil", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-1");
    // The operator's paste-back box finishes the operator's flows only.
    let started = start("pasted").await.unwrap();
    let pasted = finish(&started.authorize_url, Browser::Pasted).await;
    assert_eq!(
        pasted.unwrap_err(),
        CallbackError::AppFlowPasted {
            account: "pasted".into()
        }
    );
    // What goes wrong with an app's flow says so, expired or not: starting again is the
    // app's to do.
    let started = start("evil").await.unwrap();
    let state = state_of(&started.authorize_url);
    let value = oauthd::secret::StateValue::parse(&state).unwrap();
    let flow = broker.app_flow("p", "evil", &value).await.unwrap();
    let denied = CallbackQuery {
        state: Some(state),
        error: Some("access_denied".into()),
        ..Default::default()
    };
    let denied = broker
        .finish_callback("p", denied, a_browser(Some(&flow.browser)))
        .await;
    assert!(
        matches!(denied.as_ref().unwrap_err().unwrapped(), (CallbackError::Denied { account, .. }, true) if account == "evil"),
        "{denied:?}"
    );
    // Back from the provider late, pressed after the flow's end: expired, as the app was
    // told it would be (the wait for the press is the flow's own time, not more).
    let late = held_new("tardy", 50).await;
    clock.advance(11 * MINUTE);
    assert_eq!(
        broker.finish_held("p", &late).await.unwrap_err(),
        CallbackError::ByApp(Box::new(CallbackError::Expired {
            account: "tardy".into()
        }))
    );
    let started = start("slow").await.unwrap();
    clock.advance(61 * MINUTE);
    let expired = finish(&started.authorize_url, a_browser(None)).await;
    assert_eq!(
        expired.unwrap_err(),
        CallbackError::ByApp(Box::new(CallbackError::Expired {
            account: "slow".into()
        }))
    );
    assert_eq!(endpoint.calls(), 1);

    // Once the app's key is revoked, its flows are confirmed nowhere and finish nowhere,
    // even in the browser that confirmed one before.
    let confirmed = start("late").await.unwrap();
    let state = state_of(&confirmed.authorize_url);
    let value = oauthd::secret::StateValue::parse(&state).unwrap();
    let flow = broker.app_flow("p", "late", &value).await.unwrap();
    let unconfirmed = start("later").await.unwrap();
    let later = oauthd::secret::StateValue::parse(&state_of(&unconfirmed.authorize_url)).unwrap();
    // And one back from the provider, its page not pressed yet.
    let waiting = held_new("waiting", 0).await;
    assert!(b.store.revoke_key("music", clock.now_ms()).await.unwrap());
    assert_eq!(
        broker.finish_held("p", &waiting).await.unwrap_err(),
        CallbackError::ByApp(Box::new(CallbackError::StarterRevoked {
            account: "waiting".into()
        }))
    );
    // A new key of the same name is another key: it revives none of the old one's flows.
    oauthd::apikeys::create(&*b.store, "music", Default::default(), clock.now_ms())
        .await
        .unwrap();
    assert!(matches!(
        broker.app_flow("p", "later", &later).await,
        Err(CallbackError::StarterRevoked { account }) if account == "later"
    ));
    let revoked = broker
        .finish_callback("p", callback(&state), a_browser(Some(&flow.browser)))
        .await;
    assert_eq!(
        revoked.unwrap_err(),
        CallbackError::ByApp(Box::new(CallbackError::StarterRevoked {
            account: "late".into()
        }))
    );
    assert_eq!(endpoint.calls(), 1, "no code redeemed");
    assert!(broker.connection("p", "late").await.is_err());

    // The operator's flows go to the provider at once and need no browser's value.
    let own = broker
        .start_connect("p", Some("own"), None, FlowStarter::Operator)
        .await
        .unwrap();
    assert_eq!(own.authorize_url.host_str(), Some("provider.test"));
    let value = oauthd::secret::StateValue::parse(&state_of(&own.authorize_url)).unwrap();
    assert!(matches!(
        broker.app_flow("p", "own", &value).await,
        Err(CallbackError::UnknownState)
    ));
    endpoint.then(200, tokens("access-3", "refresh-3", 3600));
    finish(&own.authorize_url, a_browser(None)).await.unwrap();
}

/// The credentials check reads GitHub's answers, which come with 200: a made-up code
/// refused as `bad_verification_code` means the client id and secret were accepted,
/// `incorrect_client_credentials` that they were not.
#[tokio::test]
async fn the_credentials_check_reads_errors_answered_with_200() {
    use oauthd::oauth::flows::{check_client, ClientCheck};
    let provider = Provider::from_config(
        "gh",
        &ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some("secret".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let endpoints = provider
        .endpoints(&reqwest::Client::new())
        .await
        .unwrap()
        .clone();
    let redirect = url::Url::parse("http://127.0.0.1:6288/callback/gh").unwrap();
    for (error, accepted) in [
        ("bad_verification_code", true),
        ("incorrect_client_credentials", false),
    ] {
        let endpoint = Scripted::new(Duration::ZERO);
        endpoint.then(200, serde_json::json!({"error": error}));
        let verdict = check_client(endpoint.as_ref(), &provider, &endpoints, &redirect).await;
        let ok = match verdict {
            ClientCheck::Accepted(_) => true,
            ClientCheck::Refused(_) => false,
            ClientCheck::Unknown(d) => panic!("{error}: unknown: {d}"),
        };
        assert_eq!(ok, accepted, "{error}");
    }
}

/// A broker for provider "p" on `b`'s store, its tokens sealed with `vault_key`: one
/// oauthd process (two of them on one store share the key, as processes on one file do).
fn broker_on(
    b: &Backend,
    clock: &Clock,
    endpoint: Arc<Scripted>,
    revocation_url: Option<String>,
    vault_key: &str,
) -> Arc<Broker> {
    let provider = Provider::from_config(
        "p",
        &ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            revocation_url,
            client_id: Some("client".into()),
            client_secret: Some("the-client-secret".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let key = zeroize::Zeroizing::new(vault_key.to_owned());
    let vault = Arc::new(VaultHandle::load(KeySource::Inline(key)).unwrap());
    let states = Arc::new(StateService::new(
        b.store.clone(),
        policy(1000),
        clock.clone(),
        vault.clone(),
    ));
    Broker::new(
        vec![Arc::new(provider)],
        states,
        b.store.clone(),
        vault,
        BrokerSettings {
            public_url: "http://127.0.0.1:9/".parse().unwrap(),
            return_to_allowlist: vec![],
            provider_timeout: Duration::from_secs(5),
            provider_answer_wait: Duration::from_secs(60),
            max_device_flows: 5,
            max_connections_per_key: 0,
            clock: clock.clone(),
            token_cache: Duration::from_secs(1),
            notifier: Arc::new(oauthd::notify::Notifier::silent(clock.clone())),
        },
    )
    .map(|broker| Arc::new(broker.with_token_endpoint(endpoint)))
    .unwrap()
}

/// Ten callers find the token expired at once: one refresh reaches the provider, and all
/// ten get its token (a second refresh would replay a rotated-out refresh token).
async fn concurrent_callers_share_one_refresh(b: Backend) {
    let clock = clock();
    let endpoint = Scripted::new(Duration::from_millis(200));
    let broker = connected(&b, &clock, endpoint.clone()).await;
    assert_eq!(endpoint.calls(), 1);
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-1");
    assert_eq!(endpoint.calls(), 1, "a fresh token costs no provider call");

    clock.advance(60 * MINUTE);
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    // Ten calls in flight together (the scripted endpoint takes 200 ms to answer).
    let callers = (0..10).map(|_| broker.access_token("p", "a", MINUTE));
    for token in futures::future::join_all(callers).await {
        assert_eq!(token.unwrap().access_token.as_str(), "access-2");
    }
    assert_eq!(endpoint.calls(), 2, "exactly one refresh for ten callers");
}

/// A caller that goes away while its refresh waits for the provider (a client resetting
/// its connection makes actix drop the request) does not take the refresh with it: the
/// provider has rotated the refresh token by then, and its answer is stored all the
/// same, and a stop waits for it. The next caller gets that token without asking the
/// provider again.
async fn a_refresh_outlives_the_caller_that_started_it(b: Backend) {
    let clock = clock();
    let endpoint = Scripted::new(Duration::from_millis(300));
    let broker = connected(&b, &clock, endpoint.clone()).await;
    let key = oauthd::store::ConnectionKey::new("p", "a");
    let before = b.store.get_connection(&key).await.unwrap().unwrap();
    clock.advance(61 * MINUTE);
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    // Dropped 100 ms into the provider's 300.
    let gone = tokio::time::timeout(
        Duration::from_millis(100),
        broker.access_token("p", "a", MINUTE),
    );
    assert!(gone.await.is_err(), "the caller gave up");
    assert_eq!(endpoint.calls(), 2, "the refresh reached the provider");
    // A stop waits for it.
    broker.stop_background().await;
    let row = b.store.get_connection(&key).await.unwrap().unwrap();
    assert_ne!(
        row.access_token, before.access_token,
        "the provider's answer was dropped with its caller"
    );
    assert_eq!(row.lease_until_ms, None, "the lease was let go");
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-2");
    assert_eq!(endpoint.calls(), 2, "no second refresh");
    // Once the stop began no refresh begins: the stop could not wait for its lease.
    clock.advance(61 * MINUTE);
    endpoint.then(200, tokens("access-3", "refresh-3", 3600));
    let late = broker.access_token("p", "a", MINUTE).await;
    assert!(
        matches!(&late, Err(BrokerError::ProviderUnavailable { message, .. }) if message.contains("stopping")),
        "{late:?}"
    );
    assert_eq!(endpoint.calls(), 2, "no refresh after the stop began");
}

/// A connection the provider gave no refresh token (it cannot be refreshed) keeps
/// answering with its access token until that expires: a caller asking for more time
/// than it has left is told to connect again, without marking the connection for the
/// callers content with less.
async fn a_token_without_a_refresh_token_serves_until_it_expires(b: Backend) {
    let clock = clock();
    let endpoint = Scripted::new(Duration::ZERO);
    let broker = connected(&b, &clock, endpoint.clone()).await;
    let without_refresh =
        serde_json::json!({"access_token": "once-1", "token_type": "bearer", "expires_in": 3600});
    connect_account_with(&broker, &endpoint, "once", without_refresh).await;
    // 30 s left: a caller asking for a minute is sent to the user...
    clock.advance(Duration::from_secs(3570));
    let asked = broker.access_token("p", "once", MINUTE).await;
    assert!(
        matches!(&asked, Err(BrokerError::NeedsReauth { reason, .. }) if reason.contains("no refresh token")),
        "{asked:?}"
    );
    // ...one content with less gets the token, which still works.
    let token = broker
        .access_token("p", "once", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(token.access_token.as_str(), "once-1");
    let row = broker.connection("p", "once").await.unwrap();
    assert!(matches!(row.status, ViewStatus::Active), "{row:?}");
    assert_eq!(row.failures, 0);
    // Past its expiry the connection needs the user.
    clock.advance(Duration::from_secs(31));
    let expired = broker.access_token("p", "once", Duration::ZERO).await;
    assert!(
        matches!(expired, Err(BrokerError::NeedsReauth { .. })),
        "{expired:?}"
    );
    assert_eq!(endpoint.calls(), 2, "no provider call to refresh");
}

/// Callers whose token the provider's API refused queue behind one refresh; when the
/// provider answers it with the same access token (some do, for a token still valid),
/// those queued behind take that answer instead of refreshing again one after the other.
/// The clock ticks on every read, as a real one does between a refresh's save and the
/// next caller's turn.
async fn callers_queued_behind_a_refresh_take_its_answer(b: Backend) {
    let clock = Clock::ticking(1_000_000, Duration::from_millis(1));
    let endpoint = Scripted::new(Duration::from_millis(200));
    let broker = connected(&b, &clock, endpoint.clone()).await;
    let rejected = broker.access_token("p", "a", MINUTE).await.unwrap();
    clock.advance(MINUTE);
    for refresh in ["refresh-2", "refresh-3", "refresh-4"] {
        endpoint.then(200, tokens("access-1", refresh, 3600));
    }
    let callers = (0..3).map(|_| broker.access_token_instead_of("p", "a", &rejected));
    for token in futures::future::join_all(callers).await {
        let token = token.unwrap().expect("a token");
        assert_eq!(token.access_token.as_str(), "access-1");
    }
    assert_eq!(endpoint.calls(), 2, "one refresh for the three callers");
}

/// Some token endpoints echo what they were sent in their error text ("Invalid refresh
/// token: <value>"). That text is logged, stored with the connection, shown to apps and
/// on the page: the refresh token and the client secret are taken out of it first.
async fn a_providers_error_text_never_carries_what_it_was_sent(b: Backend) {
    let (_clock, endpoint, broker) = expired(&b).await;
    endpoint.then(
        400,
        serde_json::json!({
            "error": "invalid_grant",
            "error_description": "Invalid refresh token: refresh-1 (client the-client-secret)",
        }),
    );
    let refused = broker.access_token("p", "a", MINUTE).await.unwrap_err();
    let row = broker.connection("p", "a").await.unwrap();
    let told = format!("{refused} {refused:?} {:?}", row.last_error);
    assert!(told.contains("Invalid refresh token: [redacted]"), "{told}");
    for secret in ["refresh-1", "the-client-secret"] {
        assert!(!told.contains(secret), "{secret} in {told}");
    }
}

/// A failed refresh backs off: callers in the backoff get 503 without a provider call;
/// once the clock passes it, the next caller refreshes. No waiting involved.
async fn a_failed_refresh_backs_off_by_the_clock(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(503, serde_json::json!({"error": "temporarily_unavailable"}));
    let first = broker.access_token("p", "a", MINUTE).await;
    assert_eq!(retry_after(first), 5);
    assert_eq!(endpoint.calls(), 2);
    clock.advance(Duration::from_secs(4));
    let during = broker.access_token("p", "a", MINUTE).await;
    assert_eq!(retry_after(during), 1);
    assert_eq!(endpoint.calls(), 2, "no provider call during the backoff");
    clock.advance(Duration::from_secs(1));
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-2");
    assert_eq!(endpoint.calls(), 3);
}

/// A clock stepped back (NTP fixing a clock that ran ahead, a restored snapshot) made every
/// stored expiry and backoff look that much further away: oauthd handed out a token the
/// provider had expired for as long as the step, and nothing refreshed it, not even the
/// background refresher. Once the clock was seen to step back, a token stored more than a
/// minute ahead of it is refreshed rather than trusted, a backoff stored ahead is not
/// waited out, and one stored after the step is; once refreshed, the connection's times
/// are the clock's again.
async fn a_clock_stepped_back_refreshes_what_was_written_before_the_step(b: Backend) {
    const DAYS_3: Duration = Duration::from_secs(3 * 24 * 3600);
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(503, serde_json::json!({"error": "temporarily_unavailable"}));
    assert_eq!(retry_after(broker.access_token("p", "a", MINUTE).await), 5);
    assert_eq!(endpoint.calls(), 2);
    clock.step_back(DAYS_3);
    // Tried at once, the backoff stored ahead not waited out; failing again, the new
    // backoff holds: no provider call in it.
    endpoint.then(503, serde_json::json!({"error": "temporarily_unavailable"}));
    assert_eq!(retry_after(broker.access_token("p", "a", MINUTE).await), 10);
    assert_eq!(endpoint.calls(), 3);
    assert!(broker.access_token("p", "a", MINUTE).await.is_err());
    assert_eq!(broker.refresh_due(&|| false).await.unwrap(), 0);
    assert_eq!(endpoint.calls(), 3, "no provider call in the backoff");
    clock.advance(Duration::from_secs(10));
    // The background refresher takes it up.
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    assert_eq!(broker.refresh_due(&|| false).await.unwrap(), 1);
    assert_eq!(endpoint.calls(), 4);
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-2");
    assert_eq!(
        endpoint.calls(),
        4,
        "refreshed once: its times are the clock's again"
    );
    // And a caller, where the refresher has not come by yet.
    clock.step_back(DAYS_3);
    endpoint.then(200, tokens("access-3", "refresh-3", 3600));
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-3");
    assert_eq!(endpoint.calls(), 5);
}

/// Two instances on one store whose clocks differ by minutes (no step seen by either):
/// each took the other's fresh tokens for ones stored before a step and refreshed them,
/// and the two refreshed each other's tokens for good. A row ahead of a clock that never
/// stepped back is trusted as stored.
async fn an_instance_on_a_clock_behind_trusts_tokens_stored_ahead(b: Backend) {
    let ahead = clock();
    let endpoint = Scripted::new(Duration::ZERO);
    let key = oauthd::vault::generate_key_text().unwrap();
    let a = connected_with_key(&b, &ahead, endpoint.clone(), None, &key).await;
    let behind = Clock::manual(ahead.now_ms() - 3 * 60_000);
    let other = broker_on(&b, &behind, endpoint.clone(), None, &key);
    assert_eq!(other.refresh_due(&|| false).await.unwrap(), 0);
    let token = other.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-1");
    assert_eq!(endpoint.calls(), 1, "only the connect's exchange");
    drop(a);
}

/// The Retry-After of a call that must have failed for the provider's sake.
fn retry_after<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> u64 {
    match result {
        Err(BrokerError::ProviderUnavailable {
            retry_after_secs, ..
        }) => retry_after_secs,
        other => panic!("expected 503 ProviderUnavailable, got {other:?}"),
    }
}

/// `invalid_grant` ends refreshing: the connection needs the user, and no later call
/// goes to the provider until they reconnect.
async fn invalid_grant_stops_refreshing_for_good(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": "revoked"}),
    );
    for _ in 0..3 {
        let e = broker.access_token("p", "a", MINUTE).await.unwrap_err();
        assert!(matches!(e, BrokerError::NeedsReauth { .. }), "{e:?}");
        clock.advance(MINUTE);
    }
    assert_eq!(endpoint.calls(), 2);
}

/// A refresh lease that ran out without being let go (its process killed while the
/// provider answered, or its store failing) may have spent the refresh token: the
/// `invalid_grant` that follows says so, where it read as if the user had revoked access.
async fn an_invalid_grant_after_a_lease_that_ran_out_says_what_likely_spent_the_token(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    let key = oauthd::store::ConnectionKey::new("p", "a");
    let row = b.store.get_connection(&key).await.unwrap().unwrap();
    // Another process's lease, never let go (Redis ends it by its own clock).
    let taken = b
        .store
        .acquire_refresh_lease(&key, row.generation, clock.now_ms(), 200)
        .await
        .unwrap();
    assert!(taken.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.advance(MINUTE);
    endpoint.then(
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": "grant request is invalid"}),
    );
    let e = broker.access_token("p", "a", MINUTE).await.unwrap_err();
    assert!(matches!(e, BrokerError::NeedsReauth { .. }), "{e:?}");
    let row = b.store.get_connection(&key).await.unwrap().unwrap();
    let said = row.last_error.unwrap_or_default();
    assert!(
        said.contains("was never saved: killed, or its store failed; the provider may have rotated the refresh token for it"),
        "{said}"
    );
    // One that was let go says nothing of the sort.
    let (_, endpoint, broker) = expired(&b).await;
    endpoint.then(400, serde_json::json!({"error": "invalid_grant"}));
    let e = broker.access_token("p", "a", MINUTE).await.unwrap_err();
    assert!(matches!(e, BrokerError::NeedsReauth { .. }), "{e:?}");
    let row = b.store.get_connection(&key).await.unwrap().unwrap();
    let said = row.last_error.unwrap_or_default();
    assert!(
        said.starts_with("invalid_grant") && !said.contains("never saved"),
        "{said}"
    );
}

/// A refresh's token is held in memory only once a read that began after the refresh
/// committed found it. Holding it straight away let a change committed right after the
/// refresh (a delete or a reconnect, whose drop of the token could come before the hold)
/// hide behind it: the token API went on answering a deleted connection's, or the previous
/// account's, token for as long as it lived. Here the connection goes behind the cache's
/// back, as that racing change did.
async fn a_refreshed_token_is_held_only_once_a_read_finds_it(b: Backend) {
    let (_clock, endpoint, broker) = expired(&b).await;
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-2");
    let key = oauthd::store::ConnectionKey::new("p", "a");
    let row = b.store.get_connection(&key).await.unwrap().unwrap();
    assert!(b
        .store
        .delete_connection(&key, row.generation, &row.access_token, vec![])
        .await
        .unwrap());
    let after = broker.access_token("p", "a", MINUTE).await;
    assert!(
        matches!(after, Err(BrokerError::ConnectionNotFound { .. })),
        "answered from memory: {after:?}"
    );
    assert_eq!(endpoint.calls(), 2);
}

/// A provider that says "never" with a huge `expires_in` (Java's Long.MAX_VALUE seconds)
/// gives a token good for years, not one that wrapped around into the past and is refreshed
/// on every call.
async fn a_huge_expires_in_is_years_not_the_past(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(
        200,
        serde_json::json!({
            "access_token": "access-2", "token_type": "Bearer",
            "refresh_token": "refresh-2", "expires_in": 9_223_372_036_854_775_807_u64
        }),
    );
    for _ in 0..3 {
        let token = broker.access_token("p", "a", MINUTE).await.unwrap();
        assert_eq!(token.access_token.as_str(), "access-2");
        let left = token.expires_at_ms.unwrap() - clock.now_ms();
        assert!(left > 9 * 365 * 86_400_000, "{left} ms");
        clock.advance(MINUTE);
    }
    assert_eq!(endpoint.calls(), 2, "one refresh, then the token lasts");
}

/// A refresh answered with its lifetime as text (`"3600"`, as Azure AD's v1 endpoints
/// write it) and a new refresh token keeps both: the answer was refused as malformed (503)
/// and the rotated refresh token lost with it, and a rotating provider then refused the
/// old one (`invalid_grant`: the account had to be connected again).
async fn a_token_response_written_loosely_keeps_its_rotated_refresh_token(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(
        200,
        serde_json::json!({
            "access_token": "access-2", "token_type": "bearer",
            "refresh_token": "refresh-2", "expires_in": "3600", "scope": ["openid", "email"]
        }),
    );
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-2");
    // Counted from when the refresh was sent: the answer's wait (real time, a few
    // milliseconds here) is not part of the token's life.
    let left = token.expires_at_ms.unwrap() - clock.now_ms();
    assert!((3_599_000..=3_600_000).contains(&left), "{left}");
    // The next refresh sends the rotated token.
    clock.advance(61 * MINUTE);
    endpoint.then(200, tokens("access-3", "refresh-3", 3600));
    let token = broker.access_token("p", "a", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-3");
    let sent = endpoint.last_body();
    assert!(sent.contains("refresh_token=refresh-2"), "{sent}");
    assert_eq!(endpoint.calls(), 3);
}

/// A token the provider said lasts 0 s (some send 0 for "does not expire") is taken as one
/// whose lifetime was not said: it was refreshed at every call, one provider request per
/// request of an app.
async fn a_lifetime_of_zero_is_not_a_refresh_at_every_call(b: Backend) {
    let (clock, endpoint, broker) = expired(&b).await;
    endpoint.then(200, tokens("access-2", "refresh-2", 0));
    for _ in 0..3 {
        let token = broker.access_token("p", "a", MINUTE).await.unwrap();
        assert_eq!(token.access_token.as_str(), "access-2");
        assert_eq!(token.expires_at_ms, None);
        clock.advance(MINUTE);
    }
    assert_eq!(endpoint.calls(), 2, "one refresh, then the token serves");
}

/// The parser's text for an answer it refuses quotes the value it met: a provider that
/// put what it was sent there (the refresh token, in a field of the wrong type) had it
/// logged, stored with the connection and shown.
async fn a_malformed_token_response_never_carries_what_it_was_sent(b: Backend) {
    let (_clock, endpoint, broker) = expired(&b).await;
    endpoint.then(200, serde_json::json!({"expires_in": "soon-refresh-1"}));
    let refused = broker.access_token("p", "a", MINUTE).await.unwrap_err();
    let row = broker.connection("p", "a").await.unwrap();
    let told = format!("{refused} {refused:?} {:?}", row.last_error);
    assert!(told.contains("malformed token response"), "{told}");
    assert!(!told.contains("refresh-1"), "{told}");
}

/// A state made before 2026-12-01 is stored under its value's whole SHA-256: it still
/// verifies, and once revoked (by id, as a list of a subject's states shows it) it does
/// not verify from memory.
async fn a_state_under_its_legacy_key_verifies_until_revoked(b: Backend) {
    use oauthd::secret::{StateId, StateValue};
    use oauthd::store::StateRow;
    let clock = clock();
    let states = StateService::new(b.store.clone(), policy(1000), clock.clone(), vault());
    let value = StateValue::generate().unwrap();
    let key = value.legacy_hash();
    let now = clock.now_ms();
    let row = StateRow {
        key_hash: key,
        namespace: "session".into(),
        data: None,
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
        subject: None,
        secret: None,
        sliding: None,
        created_by: None,
    };
    b.store.insert_state(row, room(now)).await.unwrap();
    for _ in 0..2 {
        states.verify(&value, &ns("session"), false).await.unwrap();
    }
    states
        .revoke_id(&ns("session"), &StateId::of(&key))
        .await
        .unwrap();
    let after = states.verify(&value, &ns("session"), false).await;
    assert!(
        matches!(after, Err(StateError::NotFound)),
        "verified after its revoke: {after:?}"
    );
}

/// A provider's revocation endpoint (wiremock) that accepts every request: the server,
/// and its URL for `connected_revoking_at`.
async fn revocation_endpoint() -> (wiremock::MockServer, Option<String>) {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&provider)
        .await;
    let url = format!("{}/revoke", provider.uri());
    (provider, Some(url))
}

/// The bodies of the revocation requests `provider` received.
async fn revocations(provider: &wiremock::MockServer) -> Vec<String> {
    provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

/// A disconnect while a refresh of the same connection is on its way in this process
/// waits for it, then revokes what the provider issued last. Revoking the tokens it read
/// before the refresh left the refreshed ones live at the provider, with nothing left to
/// revoke them from.
async fn a_disconnect_during_a_refresh_revokes_the_refreshed_tokens(b: Backend) {
    let (provider, revocation) = revocation_endpoint().await;
    let clock = clock();
    let endpoint = Scripted::new(Duration::from_millis(300));
    let broker = connected_revoking_at(&b, &clock, endpoint.clone(), revocation).await;
    clock.advance(61 * MINUTE);
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    let (refreshed, disconnected) = tokio::join!(broker.access_token("p", "a", MINUTE), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.disconnect("p", "a", false).await
    });
    assert_eq!(disconnected.unwrap(), Disconnected::Revoked);
    assert_eq!(refreshed.unwrap().access_token.as_str(), "access-2");
    let revoked = revocations(&provider).await;
    assert!(
        revoked.iter().any(|body| body.contains("token=refresh-2")),
        "{revoked:?}"
    );
    assert!(
        broker.connection("p", "a").await.is_err(),
        "still connected"
    );
}

/// A refresh whose connection was deleted under it (here by another process once the
/// refresh's lease had run out; a forced disconnect does the same) revokes the tokens it
/// got: nothing else could, with no row left to revoke them from.
async fn a_refresh_that_finds_its_connection_deleted_revokes_what_it_got(b: Backend) {
    let (provider, revocation) = revocation_endpoint().await;
    let clock = clock();
    let endpoint = Scripted::new(Duration::from_millis(500));
    let key = oauthd::vault::generate_key_text().unwrap();
    let other = broker_on(&b, &clock, endpoint.clone(), revocation.clone(), &key);
    let this = connected_with_key(&b, &clock, endpoint.clone(), revocation, &key).await;
    clock.advance(61 * MINUTE);
    endpoint.then(200, tokens("access-2", "refresh-2", 3600));
    let (refreshed, disconnected) = tokio::join!(this.access_token("p", "a", MINUTE), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The refresh's lease (the 60 s a refresh waits for its answer, the 5 s provider
        // timeout and 5 s more) has run out by the other process's clock.
        clock.advance(2 * MINUTE);
        other.disconnect("p", "a", false).await
    });
    disconnected.unwrap();
    assert!(
        refreshed.is_err(),
        "handed out a token of a deleted connection"
    );
    let revoked = revocations(&provider).await;
    for token in ["refresh-1", "access-1", "refresh-2", "access-2"] {
        assert!(
            revoked
                .iter()
                .any(|body| body.contains(&format!("token={token}&"))),
            "{token} not revoked: {revoked:?}"
        );
    }
}

/// The background refresher goes one connection at a time. One that something in this
/// process is on already (here a disconnect waiting for a slow revocation endpoint) is
/// left for the next round instead of holding up every connection after it.
async fn the_refresher_passes_a_connection_a_disconnect_is_on(b: Backend) {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let provider = MockServer::start().await;
    // Slower than the broker's provider timeout (5 s): the disconnect holds the
    // connection's turn until it gives up.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&provider)
        .await;
    let clock = clock();
    let endpoint = Scripted::new(Duration::ZERO);
    let revocation = Some(format!("{}/revoke", provider.uri()));
    let broker = connected_revoking_at(&b, &clock, endpoint.clone(), revocation).await;
    connect_account(&broker, &endpoint, "b").await;
    clock.advance(61 * MINUTE);
    let disconnect = tokio::spawn({
        let broker = broker.clone();
        async move { broker.disconnect("p", "a", false).await }
    });
    // The disconnect holds the turn once its revocation has reached the provider.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while revocations(&provider).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no revocation sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    endpoint.then(200, tokens("access-b2", "refresh-b2", 3600));
    let refreshed = broker.refresh_due(&|| false).await.unwrap();
    assert!(
        !disconnect.is_finished(),
        "the refresher waited for the disconnect"
    );
    assert_eq!(refreshed, 1);
    let token = broker.access_token("p", "b", MINUTE).await.unwrap();
    assert_eq!(token.access_token.as_str(), "access-b2");
    assert_eq!(
        endpoint.calls(),
        3,
        "a refresh of the busy connection was sent"
    );
    let _ = disconnect.await;
}

/// A provider without a revocation endpoint: the disconnect deletes oauthd's copy and
/// says the grant stays valid at the provider (where one is revoked it says so instead).
async fn a_disconnect_where_the_provider_offers_no_revocation_says_so(b: Backend) {
    let clock = clock();
    let broker = connected(&b, &clock, Scripted::new(Duration::ZERO)).await;
    let outcome = broker.disconnect("p", "a", false).await.unwrap();
    assert_eq!(outcome, Disconnected::NotOffered);
    assert!(
        outcome.describe("p").contains("offers no revocation"),
        "{}",
        outcome.describe("p")
    );
    assert!(
        broker.connection("p", "a").await.is_err(),
        "still connected"
    );
}

/// `rekey --prune` keeps the keys states' data was sealed with, and for a connect flow also
/// the key the broker sealed the flow's secrets with inside that data (the two can differ
/// when the key changed between the two seals).
async fn prune_keeps_the_keys_of_states_data_and_of_the_flows_inside(b: Backend) {
    use base64::Engine;
    use oauthd::vault::Vault;
    let texts: Vec<String> = (0..3)
        .map(|_| oauthd::vault::generate_key_text().unwrap().to_string())
        .collect();
    let key_of = |text: &str| Vault::from_text(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.key");
    // Key 0 seals; key 1 sealed the flow's secrets; key 2 nothing.
    std::fs::write(&path, texts.join("\n")).unwrap();
    let vault = Arc::new(
        VaultHandle::load(KeySource::File {
            path: path.clone(),
            create: false,
        })
        .unwrap(),
    );
    let states = StateService::new(b.store.clone(), policy(1000), clock(), vault);
    let flow = "connect:peer:default";
    let inner = key_of(&texts[1])
        .seal(&format!("state:{flow}:flow"), b"{}")
        .unwrap();
    let data = serde_json::json!({
        "sealed": base64::engine::general_purpose::STANDARD.encode(inner)
    });
    states
        .issue(ns(flow), None, Some(oauthd::states::JsonText::of(&data)))
        .await
        .unwrap();
    states
        .issue(
            ns("login"),
            None,
            Some(oauthd::states::JsonText::of(
                &serde_json::json!({"return_to": "/"}),
            )),
        )
        .await
        .unwrap();
    let now = clock().now_ms();
    let pruned = oauthd::rekey::prune(&path, b.store.as_ref(), now)
        .await
        .unwrap();
    assert_eq!((pruned.kept, pruned.removed.len()), (2, 1));
    // The file as it was is kept beside it, with the key that went.
    let first = pruned.before.expect("kept");
    let before = std::fs::read_to_string(&first).unwrap();
    assert!(oauthd::vault::key_ids(&before)
        .unwrap()
        .contains(&pruned.removed[0]));
    // A second prune in the same second keeps its own copy, not over the first.
    let added = oauthd::rekey::add_key(&path).unwrap();
    let again = oauthd::rekey::prune(&path, b.store.as_ref(), now)
        .await
        .unwrap();
    assert_eq!(again.removed, vec![added]);
    let second = again.before.expect("kept");
    assert_ne!(second, first);
    assert_eq!(std::fs::read_to_string(&first).unwrap(), before);
    assert!(
        oauthd::vault::key_ids(&std::fs::read_to_string(&second).unwrap())
            .unwrap()
            .contains(&again.removed[0])
    );
    let left = oauthd::vault::key_ids(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        left,
        vec![
            key_of(&texts[0]).current_key_id(),
            key_of(&texts[1]).current_key_id()
        ]
    );
}

backends!(
    prune_keeps_the_keys_of_states_data_and_of_the_flows_inside,
    an_apps_flow_finishes_only_in_the_browser_that_confirmed_it,
    a_disconnect_where_the_provider_offers_no_revocation_says_so,
    the_refresher_passes_a_connection_a_disconnect_is_on,
    a_refresh_that_finds_its_connection_deleted_revokes_what_it_got,
    a_refresh_outlives_the_caller_that_started_it,
    a_token_without_a_refresh_token_serves_until_it_expires,
    callers_queued_behind_a_refresh_take_its_answer,
    a_providers_error_text_never_carries_what_it_was_sent,
    a_disconnect_during_a_refresh_revokes_the_refreshed_tokens,
    a_state_under_its_legacy_key_verifies_until_revoked,
    a_refreshed_token_is_held_only_once_a_read_finds_it,
    a_huge_expires_in_is_years_not_the_past,
    a_token_response_written_loosely_keeps_its_rotated_refresh_token,
    a_lifetime_of_zero_is_not_a_refresh_at_every_call,
    a_malformed_token_response_never_carries_what_it_was_sent,
    expiry_and_the_grace_window_follow_the_clock,
    expired_states_never_count_against_the_cap,
    concurrent_callers_share_one_refresh,
    a_failed_refresh_backs_off_by_the_clock,
    a_clock_stepped_back_refreshes_what_was_written_before_the_step,
    an_instance_on_a_clock_behind_trusts_tokens_stored_ahead,
    invalid_grant_stops_refreshing_for_good,
    an_invalid_grant_after_a_lease_that_ran_out_says_what_likely_spent_the_token,
);

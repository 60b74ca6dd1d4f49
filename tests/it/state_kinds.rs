//! States beyond OAuth flows, through the state service on SQLite and a real redis-server:
//! codes with a limited number of tries, one live state per subject, sliding expiry,
//! verify without consuming, listing and revoking by subject and by id. Time moves by the
//! manual clock, never by waiting.

use crate::services::{app_key, clock, ns, policy, room, vault};
use crate::store_contract::Backend;
use oauthd::clock::Clock;
use oauthd::secret::SecretHash;
use oauthd::states::{JsonText, NewState, StateError, StateService};
use oauthd::store::{StateRow, StoreError, SubjectPage};
use std::sync::Arc;
use std::time::Duration;

fn service(b: &Backend) -> (Arc<StateService>, Clock) {
    let clock = clock();
    let states = StateService::new(b.store.clone(), policy(100_000), clock.clone(), vault());
    (Arc::new(states), clock)
}

fn with_code(code: &str, attempts: u32) -> NewState {
    NewState {
        ttl_seconds: Some(300),
        secret: Some((code.to_owned(), Some(attempts))),
        ..NewState::default()
    }
}

fn of_subject(subject: &str, replace: bool) -> NewState {
    NewState {
        subject: Some(subject.to_owned()),
        replace,
        ..NewState::default()
    }
}

/// 100 concurrent wrong codes against `max_attempts: 5`: exactly five are evaluated (4, 3,
/// 2, 1, 0 tries left, once each), the fifth deletes the state, the other 95 find nothing.
async fn concurrent_wrong_codes_use_up_exactly_the_allowed_attempts(b: Backend) {
    let (states, _) = service(&b);
    let issued = states
        .create(ns("2fa"), with_code("123456", 5), app_key())
        .await
        .unwrap();
    let tries = (0..100).map(|i| {
        let (states, state) = (states.clone(), issued.state.clone());
        tokio::spawn(async move {
            states
                .attempt(&state, &ns("2fa"), &format!("{i:06}x"))
                .await
        })
    });
    let mut left = Vec::new();
    let mut not_found = 0;
    for t in futures::future::join_all(tries).await {
        match t.unwrap() {
            Err(StateError::WrongSecret { attempts_left }) => left.push(attempts_left),
            Err(StateError::NotFound) => not_found += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    left.sort();
    assert_eq!(left, vec![0, 1, 2, 3, 4]);
    assert_eq!(not_found, 95);
    // The right code is too late: the state is gone.
    assert!(matches!(
        states.attempt(&issued.state, &ns("2fa"), "123456").await,
        Err(StateError::NotFound)
    ));
}

/// The right code racing wrong ones consumes the state exactly once.
async fn a_right_code_racing_wrong_ones_succeeds_once(b: Backend) {
    let (states, _) = service(&b);
    let issued = states
        .create(ns("2fa"), with_code("424242", 100), app_key())
        .await
        .unwrap();
    let tries = (0..40).map(|i| {
        let (states, state) = (states.clone(), issued.state.clone());
        let code = if i % 2 == 0 { "424242" } else { "000000" };
        tokio::spawn(async move { states.attempt(&state, &ns("2fa"), code).await })
    });
    let outcomes: Vec<_> = futures::future::join_all(tries).await;
    let won = outcomes
        .iter()
        .filter(|o| o.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(won, 1);
}

/// A state with a code is consumed only through its code; one without cannot be tried.
async fn a_state_with_a_code_is_consumed_only_with_it(b: Backend) {
    let (states, _) = service(&b);
    let guarded = states
        .create(ns("2fa"), with_code("777", 3), app_key())
        .await
        .unwrap();
    assert!(matches!(
        states.consume(&guarded.state, &ns("2fa")).await,
        Err(StateError::SecretRequired)
    ));
    let view = states
        .attempt(&guarded.state, &ns("2fa"), "777")
        .await
        .unwrap();
    assert_eq!(view.id, guarded.id());
    let plain = states.issue(ns("2fa"), None, None).await.unwrap();
    assert!(matches!(
        states.attempt(&plain.state, &ns("2fa"), "777").await,
        Err(StateError::NoSecret)
    ));
    // Left untouched by the refused attempt.
    states.consume(&plain.state, &ns("2fa")).await.unwrap();
    // A wrong try counts, under its own namespace only.
    let guarded = states
        .create(ns("2fa"), with_code("1", 3), app_key())
        .await
        .unwrap();
    assert!(matches!(
        states.attempt(&guarded.state, &ns("other"), "2").await,
        Err(StateError::NotFound)
    ));
    assert!(matches!(
        states.attempt(&guarded.state, &ns("2fa"), "2").await,
        Err(StateError::WrongSecret { attempts_left: 2 })
    ));
    let seen = states
        .verify(&guarded.state, &ns("2fa"), false)
        .await
        .unwrap();
    assert_eq!(seen.attempts_left, Some(2));
    // What verify holds in memory follows a wrong try at once.
    assert!(matches!(
        states.attempt(&guarded.state, &ns("2fa"), "3").await,
        Err(StateError::WrongSecret { attempts_left: 1 })
    ));
    let seen = states
        .verify(&guarded.state, &ns("2fa"), false)
        .await
        .unwrap();
    assert_eq!(seen.attempts_left, Some(1));
}

/// `replace` leaves exactly one live state for the subject, even when creates race; other
/// subjects keep theirs.
async fn replace_leaves_one_live_state_per_subject(b: Backend) {
    let (states, _) = service(&b);
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(
            states
                .create(ns("reset"), of_subject("alice", false), app_key())
                .await
                .unwrap(),
        );
    }
    let bob = states
        .create(ns("reset"), of_subject("bob", false), app_key())
        .await
        .unwrap();
    let racing = (0..10).map(|_| {
        let states = states.clone();
        tokio::spawn(async move {
            states
                .create(ns("reset"), of_subject("alice", true), app_key())
                .await
        })
    });
    let issued: Vec<_> = futures::future::join_all(racing)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let listed = states
        .subject_states(&ns("reset"), "alice", SubjectPage::default())
        .await
        .unwrap()
        .states;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let mut live = 0;
    for s in issued.iter().chain(&old) {
        match states.verify(&s.state, &ns("reset"), false).await {
            Ok(v) => {
                live += 1;
                assert_eq!(v.id, listed[0].id);
            }
            Err(StateError::NotFound) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(live, 1);
    assert_eq!(
        states
            .subject_states(&ns("reset"), "bob", SubjectPage::default())
            .await
            .unwrap()
            .states[0]
            .id,
        bob.id()
    );
    assert!(matches!(
        states
            .create(
                ns("reset"),
                NewState {
                    replace: true,
                    ..NewState::default()
                },
                app_key()
            )
            .await,
        Err(StateError::SubjectRequired)
    ));
}

/// A touch moves a sliding state's expiry to now + TTL, never past its lifetime; a verify
/// without touch changes nothing; an expired state answers as consume does.
async fn touch_slides_the_expiry_but_never_past_the_lifetime(b: Backend) {
    let (states, clock) = service(&b);
    let sliding = |lifetime| NewState {
        ttl_seconds: Some(60),
        sliding: Some(Some(lifetime)),
        subject: Some("alice".into()),
        ..NewState::default()
    };
    let issued = states
        .create(ns("session"), sliding(150), app_key())
        .await
        .unwrap();
    let created = issued.created_at_ms;
    let session = ns("session");
    clock.advance(Duration::from_secs(50));
    let v = states.verify(&issued.state, &session, true).await.unwrap();
    assert_eq!(v.expires_at_ms, created + 110_000);
    // What the subject's list says moved too.
    let listed = states
        .subject_states(&session, "alice", SubjectPage::default())
        .await
        .unwrap()
        .states;
    assert_eq!(listed[0].expires_at_ms, created + 110_000);
    clock.advance(Duration::from_secs(50));
    let v = states.verify(&issued.state, &session, true).await.unwrap();
    assert_eq!(v.expires_at_ms, created + 150_000, "capped at the lifetime");
    clock.advance(Duration::from_secs(49));
    let v = states.verify(&issued.state, &session, true).await.unwrap();
    assert_eq!(v.expires_at_ms, created + 150_000);
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        states.verify(&issued.state, &session, true).await,
        Err(StateError::Expired { .. })
    ));

    // Without touch, the expiry stays; expired, then unknown past the grace window.
    let plain = states
        .create(ns("session"), sliding(150), app_key())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(50));
    let v = states.verify(&plain.state, &session, false).await.unwrap();
    assert_eq!(v.expires_at_ms, plain.expires_at_ms);
    clock.advance(Duration::from_secs(10));
    assert!(matches!(
        states.verify(&plain.state, &session, false).await,
        Err(StateError::Expired { .. })
    ));
    clock.advance(Duration::from_secs(11 * 60));
    assert!(matches!(
        states.verify(&plain.state, &session, true).await,
        Err(StateError::NotFound)
    ));

    // A state that is not sliding keeps its expiry when touched.
    let fixed = states.issue(ns("session"), Some(60), None).await.unwrap();
    clock.advance(Duration::from_secs(30));
    let v = states.verify(&fixed.state, &session, true).await.unwrap();
    assert_eq!(v.expires_at_ms, fixed.expires_at_ms);
    // A lifetime shorter than the TTL, or longer than the namespace allows, is refused.
    for lifetime in [59, 31 * 24 * 3600] {
        assert!(matches!(
            states
                .create(ns("session"), sliding(lifetime), app_key())
                .await,
            Err(StateError::LifetimeOutOfRange { .. })
        ));
    }
}

/// Verify reads without consuming and answers only in the state's namespace.
async fn verify_reads_without_consuming_in_its_namespace_only(b: Backend) {
    let (states, _) = service(&b);
    let data = serde_json::json!({"user": 7});
    let issued = states
        .issue(ns("codes"), Some(60), Some(JsonText::of(&data)))
        .await
        .unwrap();
    for _ in 0..3 {
        let v = states
            .verify(&issued.state, &ns("codes"), false)
            .await
            .unwrap();
        assert_eq!(v.parsed_data(), Some(data.clone()));
        assert_eq!(v.id, issued.id());
    }
    assert!(matches!(
        states.verify(&issued.state, &ns("other"), false).await,
        Err(StateError::NotFound)
    ));
    assert!(matches!(
        states.verify(&issued.state, &ns("other"), true).await,
        Err(StateError::NotFound)
    ));
    let consumed = states.consume(&issued.state, &ns("codes")).await.unwrap();
    assert_eq!(consumed.parsed_data(), Some(data));
    assert!(matches!(
        states.verify(&issued.state, &ns("codes"), false).await,
        Err(StateError::NotFound)
    ));
}

/// Listing shows a subject's live states (oldest first, never expired ones); revoking by
/// id, by state and by subject each end what they name and nothing else.
async fn states_are_listed_and_revoked_by_subject_and_id(b: Backend) {
    let (states, clock) = service(&b);
    let sessions = ns("session");
    let short = NewState {
        ttl_seconds: Some(10),
        ..of_subject("alice", false)
    };
    let expiring = states
        .create(sessions.clone(), short, app_key())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let mut alice = Vec::new();
    for i in 0..3 {
        let request = NewState {
            data: Some(JsonText::of(&serde_json::json!({ "device": i }))),
            ..of_subject("alice", false)
        };
        alice.push(
            states
                .create(sessions.clone(), request, app_key())
                .await
                .unwrap(),
        );
        clock.advance(Duration::from_millis(5));
    }
    let other_ns = states
        .create(ns("session2"), of_subject("alice", false), app_key())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let listed = states
        .subject_states(&sessions, "alice", SubjectPage::default())
        .await
        .unwrap()
        .states;
    let ids: Vec<_> = listed.iter().map(|v| v.id).collect();
    assert_eq!(ids, alice.iter().map(|s| s.id()).collect::<Vec<_>>());
    assert_eq!(
        listed[1].parsed_data(),
        Some(serde_json::json!({ "device": 1 }))
    );
    assert!(!ids.contains(&expiring.id()));

    states
        .verify(&alice[0].state, &sessions, false)
        .await
        .unwrap();
    states.revoke_id(&sessions, &alice[0].id()).await.unwrap();
    assert!(matches!(
        states.verify(&alice[0].state, &sessions, false).await,
        Err(StateError::NotFound)
    ));
    assert!(matches!(
        states.revoke_id(&sessions, &alice[0].id()).await,
        Err(StateError::NothingToRevoke)
    ));
    // An id names a state in its own namespace only.
    assert!(matches!(
        states.revoke_id(&sessions, &other_ns.id()).await,
        Err(StateError::NothingToRevoke)
    ));
    assert!(matches!(
        states.consume(&alice[0].state, &sessions).await,
        Err(StateError::NotFound)
    ));
    states.revoke(&alice[1].state, &sessions).await.unwrap();
    assert!(matches!(
        states.revoke(&alice[1].state, &sessions).await,
        Err(StateError::NothingToRevoke)
    ));
    let bob = states
        .create(sessions.clone(), of_subject("bob", false), app_key())
        .await
        .unwrap();
    // Verified (and so held in memory) just before: revoking by subject still ends it.
    states
        .verify(&alice[2].state, &sessions, false)
        .await
        .unwrap();
    assert_eq!(states.revoke_subject(&sessions, "alice").await.unwrap(), 1);
    assert!(states
        .subject_states(&sessions, "alice", SubjectPage::default())
        .await
        .unwrap()
        .states
        .is_empty());
    assert!(matches!(
        states.verify(&alice[2].state, &sessions, false).await,
        Err(StateError::NotFound)
    ));
    // Other subjects and namespaces keep theirs.
    states.verify(&bob.state, &sessions, false).await.unwrap();
    states
        .verify(&other_ns.state, &ns("session2"), false)
        .await
        .unwrap();
    assert_eq!(
        states
            .subject_states(&sessions, "bob", SubjectPage::default())
            .await
            .unwrap()
            .states
            .len(),
        1
    );
}

/// A subject holds at most `max_per_subject` live states in a namespace: listing and
/// revoking it stay bounded. Other subjects, replace, and expiry make room as expected.
async fn a_subject_holds_at_most_its_cap_of_live_states(b: Backend) {
    let clock = clock();
    let mut rules = policy(100_000);
    rules.base.max_per_subject = 3;
    let states = StateService::new(b.store.clone(), rules, clock.clone(), vault());
    let short = |subject: &str| NewState {
        ttl_seconds: Some(60),
        ..of_subject(subject, false)
    };
    for _ in 0..3 {
        states
            .create(ns("session"), short("alice"), app_key())
            .await
            .unwrap();
        clock.advance(Duration::from_millis(10_500));
    }
    // The refusal says when a place frees: the first state expires at 60 s, and it is
    // 31.5 s now.
    let refused = states
        .create(ns("session"), short("alice"), app_key())
        .await;
    assert!(
        matches!(
            refused,
            Err(StateError::SubjectFull {
                max: 3,
                retry_after_secs: 29,
                ..
            })
        ),
        "{refused:?}"
    );
    // Another subject, another namespace: their own room.
    states
        .create(ns("session"), short("bob"), app_key())
        .await
        .unwrap();
    states
        .create(ns("other"), short("alice"), app_key())
        .await
        .unwrap();
    // Replace is always possible: it leaves one.
    states
        .create(ns("session"), of_subject("alice", true), app_key())
        .await
        .unwrap();
    for _ in 0..2 {
        states
            .create(ns("session"), short("alice"), app_key())
            .await
            .unwrap();
    }
    assert!(matches!(
        states
            .create(ns("session"), short("alice"), app_key())
            .await,
        Err(StateError::SubjectFull { .. })
    ));
    // Expired states do not count.
    let mut full = policy(100_000);
    full.base.max_per_subject = 2;
    let states = StateService::new(b.store.clone(), full, clock.clone(), vault());
    for _ in 0..2 {
        states
            .create(ns("2fa"), short("carol"), app_key())
            .await
            .unwrap();
    }
    assert!(states
        .create(ns("2fa"), short("carol"), app_key())
        .await
        .is_err());
    clock.advance(Duration::from_secs(61));
    states
        .create(ns("2fa"), short("carol"), app_key())
        .await
        .unwrap();
}

/// A subject at its cap in a namespace that is full too is told about the subject, on
/// both backends: an app that answers `too_many_subject_states` by revoking that user's
/// oldest states must not see `too_many_states` on one of them.
async fn a_full_subject_in_a_full_namespace_is_named_as_the_subject(b: Backend) {
    let mut rules = policy(2);
    rules.base.max_per_subject = 2;
    let states = StateService::new(b.store.clone(), rules, clock(), vault());
    for _ in 0..2 {
        states
            .create(ns("session"), of_subject("alice", false), app_key())
            .await
            .unwrap();
    }
    let refused = states
        .create(ns("session"), of_subject("alice", false), app_key())
        .await;
    assert!(
        matches!(refused, Err(StateError::SubjectFull { max: 2, .. })),
        "{refused:?}"
    );
    // Another subject in the same namespace meets the namespace's cap.
    let refused = states
        .create(ns("session"), of_subject("bob", false), app_key())
        .await;
    assert!(
        matches!(refused, Err(StateError::NamespaceFull { .. })),
        "{refused:?}"
    );
}

/// A state's data is sealed for its own row: sealed data moved into another state's row
/// (by someone who can write the database, and knows that state's value) does not open.
/// The consume or right code that took the row answers an error and puts the row back as
/// it was, so the state works again once its own data is back.
async fn a_states_data_opens_only_in_its_own_row_and_a_failed_open_keeps_the_state(b: Backend) {
    use oauthd::states::IssuedState;
    use oauthd::store::{Found, StateRow};
    use oauthd::vault::VaultError;
    let (states, clock) = service(&b);
    let data = |who: &str| NewState {
        data: Some(JsonText::of(&serde_json::json!({ "who": who }))),
        ..NewState::default()
    };
    let a = states
        .create(ns("login"), data("a"), app_key())
        .await
        .unwrap();
    let b_state = states
        .create(ns("login"), data("b"), app_key())
        .await
        .unwrap();
    let coded = states
        .create(
            ns("2fa"),
            NewState {
                data: Some(JsonText::of(&serde_json::json!({ "who": "c" }))),
                ..with_code("123456", 3)
            },
            app_key(),
        )
        .await
        .unwrap();
    let row = |found: Found| match found {
        Found::Row(row) => row,
        _ => panic!("no row"),
    };
    let a_row = row(b.store.read_state(a.state.hash(), "login").await.unwrap());
    let stored = a_row.data.clone().unwrap();
    assert!(
        stored.starts_with("sealed:") && !stored.contains("who"),
        "{stored}"
    );

    // Move A's data into the other rows behind the service's back.
    let now = clock.now_ms();
    let put = |state: &IssuedState, namespace: &'static str, data: Option<String>| {
        let store = b.store.clone();
        let hash = state.state.hash();
        async move {
            let found = row(store.read_state(hash, namespace).await.unwrap());
            assert!(store.revoke_state(hash, namespace, now).await.unwrap());
            let moved = StateRow {
                data,
                ..found.clone()
            };
            store.insert_state(moved, room(now)).await.unwrap();
            found.data
        }
    };
    let b_data = put(&b_state, "login", a_row.data.clone()).await;
    let c_data = put(&coded, "2fa", a_row.data.clone()).await;

    for _ in 0..2 {
        let consumed = states.consume(&b_state.state, &ns("login")).await;
        assert!(
            matches!(consumed, Err(StateError::Vault(VaultError::Corrupt))),
            "{consumed:?}"
        );
        let verified = states.verify(&b_state.state, &ns("login"), false).await;
        assert!(
            matches!(verified, Err(StateError::Vault(VaultError::Corrupt))),
            "{verified:?}"
        );
        let tried = states.attempt(&coded.state, &ns("2fa"), "123456").await;
        assert!(
            matches!(tried, Err(StateError::Vault(VaultError::Corrupt))),
            "{tried:?}"
        );
    }

    // Each row is still there, as it was: with its own data back, each answers its own.
    assert_eq!(put(&b_state, "login", b_data).await, a_row.data);
    assert_eq!(put(&coded, "2fa", c_data).await, a_row.data);
    let consumed = states.consume(&b_state.state, &ns("login")).await.unwrap();
    assert_eq!(
        consumed.parsed_data(),
        Some(serde_json::json!({"who": "b"}))
    );
    let tried = states
        .attempt(&coded.state, &ns("2fa"), "123456")
        .await
        .unwrap();
    assert_eq!(tried.parsed_data(), Some(serde_json::json!({"who": "c"})));
    let consumed = states.consume(&a.state, &ns("login")).await.unwrap();
    assert_eq!(
        consumed.parsed_data(),
        Some(serde_json::json!({"who": "a"}))
    );

    // Nor does a row moved to another subject: that subject's listing would show it.
    let session = states
        .create(
            ns("login"),
            NewState {
                subject: Some("alice".into()),
                ..data("alice's")
            },
            app_key(),
        )
        .await
        .unwrap();
    let found = row(b
        .store
        .read_state(session.state.hash(), "login")
        .await
        .unwrap());
    assert!(b
        .store
        .revoke_state(session.state.hash(), "login", now)
        .await
        .unwrap());
    let moved = StateRow {
        subject: Some("mallory".into()),
        ..found
    };
    b.store.insert_state(moved, room(now)).await.unwrap();
    let listed = states
        .subject_states(&ns("login"), "mallory", SubjectPage::default())
        .await;
    assert!(
        matches!(listed, Err(StateError::Vault(VaultError::Corrupt))),
        "{listed:?}"
    );
}

/// Where a store lets the start's look at stored data (`check_stored_data`) run, once:
/// right after a state left the store (a consume's take, or a right code), or as a state
/// that failed to open is put back. Either way the look finds the state out of the store.
#[derive(Clone, Copy, PartialEq, Debug)]
enum LookAt {
    Take,
    PutBack,
}

/// A store that runs the start's look at stored data at `at`, as a consume that came before
/// it can: a state whose data was stored in clear was then refused as altered for as long
/// as the process ran.
struct LookWhileOut {
    inner: Arc<dyn oauthd::store::Store>,
    at: LookAt,
    states: std::sync::OnceLock<std::sync::Weak<StateService>>,
    looked: std::sync::atomic::AtomicBool,
}

impl LookWhileOut {
    async fn look(&self, here: LookAt) {
        if here != self.at || self.looked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let states = self.states.get().and_then(std::sync::Weak::upgrade);
        let found = states.expect("the service").check_stored_data().await;
        assert_eq!(found.expect("the look").in_clear, 0, "the state was out");
    }
}

#[async_trait::async_trait]
impl oauthd::store::SweepStates for LookWhileOut {
    async fn sweep_expired(
        &self,
        now_ms: i64,
        purge_before_ms: i64,
        batch: usize,
        max_tombstones: u64,
    ) -> Result<oauthd::store::SweepCount, StoreError> {
        (self.inner)
            .sweep_expired(now_ms, purge_before_ms, batch, max_tombstones)
            .await
    }
}

#[async_trait::async_trait]
impl oauthd::store::StateStore for LookWhileOut {
    async fn insert_state(
        &self,
        row: StateRow,
        rules: oauthd::store::InsertRules,
    ) -> Result<oauthd::store::Inserted, StoreError> {
        // Every insert through here puts back a state that failed to open.
        self.look(LookAt::PutBack).await;
        self.inner.insert_state(row, rules).await
    }
    async fn take_state(
        &self,
        key_hash: SecretHash,
        filter: &oauthd::store::NamespaceFilter,
    ) -> Result<oauthd::store::Taken, StoreError> {
        let taken = self.inner.take_state(key_hash, filter).await;
        self.look(LookAt::Take).await;
        taken
    }
    async fn read_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
    ) -> Result<oauthd::store::Found, StoreError> {
        self.inner.read_state(key_hash, namespace).await
    }
    async fn touch_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<oauthd::store::Found, StoreError> {
        let inner = &self.inner;
        inner
            .touch_state(key_hash, namespace, now_ms, grace_ms)
            .await
    }
    async fn attempt_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        candidate: SecretHash,
        now_ms: i64,
    ) -> Result<oauthd::store::Attempted, StoreError> {
        let inner = &self.inner;
        let attempted = inner.attempt_state(key_hash, namespace, candidate, now_ms);
        let attempted = attempted.await;
        self.look(LookAt::Take).await;
        attempted
    }
    async fn revoke_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner.revoke_state(key_hash, namespace, now_ms).await
    }
    async fn revoke_state_id(
        &self,
        namespace: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<oauthd::store::Revoked, StoreError> {
        self.inner.revoke_state_id(namespace, id, now_ms).await
    }
    async fn subject_states(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
        page: SubjectPage,
    ) -> Result<oauthd::store::SubjectStates, StoreError> {
        let inner = &self.inner;
        inner.subject_states(namespace, subject, now_ms, page).await
    }
    async fn revoke_subject(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<oauthd::store::Revoked, StoreError> {
        self.inner.revoke_subject(namespace, subject, now_ms).await
    }
    async fn live_states_total(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.inner.live_states_total(now_ms).await
    }
    async fn states_with_data(
        &self,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<StateRow>, StoreError> {
        self.inner.states_with_data(prefix, now_ms).await
    }
    async fn state_data_prefixes(
        &self,
        now_ms: i64,
        chars: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.state_data_prefixes(now_ms, chars).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// A state whose data an oauthd from before data was sealed stored in clear, consumed (or
/// its code presented) before the start's look at stored data is done: it answers "not
/// checked yet", and once the look is done it is read, even where the look ran while the
/// state was out of the store (it was refused as altered from then on, 503 `vault_error`
/// at every consume, until a restart).
async fn data_in_clear_taken_before_the_start_looked_is_read_once_it_has(b: Backend) {
    use oauthd::secret::StateValue;
    let data = r#"{"return_to":"/after"}"#;
    for (at, code) in [
        (LookAt::Take, None),
        (LookAt::PutBack, None),
        (LookAt::Take, Some("493871")),
    ] {
        let store = Arc::new(LookWhileOut {
            inner: b.store.clone(),
            at,
            states: std::sync::OnceLock::new(),
            looked: Default::default(),
        });
        let clock = clock();
        let states = Arc::new(StateService::new(
            store.clone(),
            policy(100_000),
            clock.clone(),
            vault(),
        ));
        let _ = store.states.set(Arc::downgrade(&states));
        let state = StateValue::generate().unwrap();
        let now = clock.now_ms();
        let row = StateRow {
            key_hash: state.hash(),
            namespace: "oauth:legacy".into(),
            data: Some(data.into()),
            created_at_ms: now,
            expires_at_ms: now + 600_000,
            subject: None,
            secret: code.map(|code| oauthd::store::StateSecret {
                hash: state.code_hash(code),
                attempts_left: 3,
            }),
            sliding: None,
            created_by: None,
        };
        b.store.insert_state(row, room(now)).await.unwrap();

        let ns = ns("oauth:legacy");
        let present = || async {
            match code {
                None => states.consume(&state, &ns).await,
                Some(code) => states.attempt(&state, &ns, code).await,
            }
        };
        if code.is_some() {
            // Not tried before the look: a right code would say it was right.
            let early = present().await.err();
            assert!(
                matches!(early, Some(StateError::DataNotYetChecked)),
                "{early:?}"
            );
            states.check_stored_data().await.unwrap();
            // The look read the state where it was: it reads.
            let view = present().await.expect("read once the look is done");
            assert_eq!(
                view.parsed_data(),
                Some(serde_json::from_str(data).unwrap())
            );
            continue;
        }
        let first = present().await.err();
        assert!(
            matches!(first, Some(StateError::DataNotYetChecked)),
            "{at:?}: {first:?}"
        );
        let view = present().await.unwrap_or_else(|e| panic!("{at:?}: {e:?}"));
        assert_eq!(
            view.parsed_data(),
            Some(serde_json::from_str(data).unwrap())
        );
        // Consumed: once.
        assert!(matches!(present().await, Err(StateError::NotFound)));
    }
}

backends!(
    data_in_clear_taken_before_the_start_looked_is_read_once_it_has,
    a_states_data_opens_only_in_its_own_row_and_a_failed_open_keeps_the_state,
    a_subject_holds_at_most_its_cap_of_live_states,
    a_full_subject_in_a_full_namespace_is_named_as_the_subject,
    concurrent_wrong_codes_use_up_exactly_the_allowed_attempts,
    a_right_code_racing_wrong_ones_succeeds_once,
    a_state_with_a_code_is_consumed_only_with_it,
    replace_leaves_one_live_state_per_subject,
    touch_slides_the_expiry_but_never_past_the_lifetime,
    verify_reads_without_consuming_in_its_namespace_only,
    states_are_listed_and_revoked_by_subject_and_id,
);

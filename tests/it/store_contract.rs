//! The storage traits called directly, on a real SQLite file and a real redis-server: rules
//! both backends must keep, without an HTTP round trip in the way.

use oauthd::secret::{SecretHash, StateId};
use oauthd::store::{
    AccountIdentity, Attempted, ClaimRoom, ConnectionKey, ConnectionSave, ConnectionStatus,
    DeliveryFilter, DeliveryOutcome, DeliveryStatus, DeviceFlowRow, DeviceFlowStatus,
    DevicePollOutcome, InsertRules, Inserted, NamespaceFilter, NewDelivery, PollRecorded,
    RefreshFailure, Retried, Revoked, SealedTokens, StateRow, StateSecret, Taken, Told,
};
use std::sync::Arc;

fn tokens(access: &[u8], refresh: &[u8]) -> SealedTokens {
    SealedTokens {
        scopes: None,
        token_type: "Bearer".into(),
        access_token: access.to_vec(),
        refresh_token: Some(refresh.to_vec()),
        access_expires_at_ms: Some(10_000),
    }
}

/// One backend's store, with what keeps it alive.
pub struct Backend {
    pub store: Arc<dyn oauthd::store::Store>,
    _dir: tempfile::TempDir,
    _redis: Option<crate::common::redis::RedisServer>,
}

pub fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = oauthd::store::sqlite::SqliteStore::open(
        &dir.path().join("oauthd.db"),
        oauthd::store::sqlite::Durability::Full,
    )
    .unwrap();
    Backend {
        store: Arc::new(store),
        _dir: dir,
        _redis: None,
    }
}

#[cfg(feature = "redis")]
pub fn redis() -> Backend {
    let server = crate::common::redis::RedisServer::start();
    let target = match oauthd::store::target::parse(&server.url(), None, None).unwrap() {
        oauthd::store::target::StoreTarget::Redis(t) => t,
        other => panic!("{other:?}"),
    };
    let store = oauthd::store::redis::RedisStore::open(&target, std::time::Duration::from_secs(60))
        .unwrap();
    Backend {
        store: Arc::new(store),
        _dir: tempfile::tempdir().unwrap(),
        _redis: Some(server),
    }
}

/// A connect's save of `t` for `key`.
fn saved(key: &ConnectionKey, t: SealedTokens) -> ConnectionSave {
    ConnectionSave {
        key: key.clone(),
        tokens: t,
        identity: AccountIdentity::default(),
        told: Told::NOTHING,
        from_provider: true,
    }
}

/// Connection p/a, stored at t=1000 with tokens a1/r1.
async fn connected(b: &Backend) -> ConnectionKey {
    let key = ConnectionKey::new("p", "a");
    let stored = b
        .store
        .save_connection(saved(&key, tokens(b"a1", b"r1")), 1_000, Vec::new());
    stored.await.unwrap();
    key
}

/// Takes the free lease on `key` for the row read as `seen`, at `now`.
async fn lease(
    s: &dyn oauthd::store::Store,
    key: &ConnectionKey,
    seen: i64,
    now: i64,
) -> Option<i64> {
    s.acquire_refresh_lease(key, seen, now, 30_000)
        .await
        .unwrap()
}

/// A process that read the connection before another one refreshed it must not get the
/// refresh lease: it would refresh with the refresh token it read, already rotated out,
/// and a strict provider revokes the whole grant for that replay.
/// Imported tokens leave `last_refresh_at` unset (their lifetime is unknown), over a row a
/// refresh or a connect had set it on too; a connect and a refresh set it.
async fn imported_tokens_leave_no_time_of_a_refresh(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let read = || async { s.get_connection(&key).await.unwrap().unwrap() };
    assert_eq!(read().await.last_refresh_at_ms, Some(1_000));
    let imported = ConnectionSave {
        from_provider: false,
        ..saved(&key, tokens(b"a9", b"r9"))
    };
    s.save_connection(imported, 2_000, Vec::new())
        .await
        .unwrap();
    let row = read().await;
    assert_eq!((row.last_refresh_at_ms, row.updated_at_ms), (None, 2_000));
    let g = lease(s, &key, row.generation, 3_000)
        .await
        .expect("a free lease");
    assert!(s
        .save_refreshed(&key, g, tokens(b"a10", b"r10"), 4_000, Vec::new())
        .await
        .unwrap());
    assert_eq!(read().await.last_refresh_at_ms, Some(4_000));
}

async fn a_refresh_lease_is_refused_to_a_caller_that_read_an_older_row(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let seen = s.get_connection(&key).await.unwrap().unwrap();
    // The first process refreshes and lets go of the lease.
    let g = lease(s, &key, seen.generation, 2_000)
        .await
        .expect("a free lease");
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000, Vec::new())
        .await
        .unwrap());
    // The second one decided on the row it read before: refused.
    assert_eq!(lease(s, &key, seen.generation, 4_000).await, None);
    // Having read the row again, it sees the new tokens and could take the lease.
    let fresh = s.get_connection(&key).await.unwrap().unwrap();
    assert_eq!(fresh.refresh_token.as_deref(), Some(&b"r2"[..]));
    assert!(lease(s, &key, fresh.generation, 4_000).await.is_some());
}

/// The same for a process that read the connection while another held the lease: once
/// the holder stores its refresh and lets go, that read is stale too (it still carries
/// the refresh token the provider has just rotated out).
async fn a_row_read_during_someone_elses_lease_is_stale_once_they_let_go(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let first = s.get_connection(&key).await.unwrap().unwrap();
    let g = lease(s, &key, first.generation, 2_000).await.unwrap();
    let during = s.get_connection(&key).await.unwrap().unwrap();
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000, Vec::new())
        .await
        .unwrap());
    assert_eq!(
        lease(s, &key, during.generation, 4_000).await,
        None,
        "a lease for a row read during someone else's refresh"
    );
    // The same after a failed refresh.
    let now = s.get_connection(&key).await.unwrap().unwrap();
    let g = lease(s, &key, now.generation, 5_000).await.unwrap();
    let during = s.get_connection(&key).await.unwrap().unwrap();
    let failure = oauthd::store::RefreshFailure {
        status: oauthd::store::ConnectionStatus::Active,
        error: "down",
        retry_at_ms: None,
        now_ms: 6_000,
        told: Told::NOTHING,
        refresh_token: None,
    };
    assert!(s
        .save_refresh_failure(&key, g, failure, Vec::new())
        .await
        .unwrap());
    assert_eq!(lease(s, &key, during.generation, 7_000).await, None);
}

/// A refresher whose lease was on a connection since deleted and made again (the same
/// provider and account, connected anew) holds a generation of the old row: its save
/// and its failure are refused, not written over the new row's tokens.
async fn a_lease_on_a_deleted_connection_does_not_fence_its_successor(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let old = s.get_connection(&key).await.unwrap().unwrap();
    let stale = lease(s, &key, old.generation, 2_000).await.unwrap();
    let leased = s.get_connection(&key).await.unwrap().unwrap();
    assert!(s
        .delete_connection(&key, leased.generation, &leased.access_token, Vec::new())
        .await
        .unwrap());
    s.save_connection(saved(&key, tokens(b"new-a", b"new-r")), 5_000, Vec::new())
        .await
        .unwrap();
    let new = s.get_connection(&key).await.unwrap().unwrap();
    let current = lease(s, &key, new.generation, 6_000).await.unwrap();
    assert_ne!(stale, current, "the new row's lease repeats the old one's");
    assert!(!s
        .save_refreshed(&key, stale, tokens(b"old-a", b"old-r"), 7_000, Vec::new())
        .await
        .unwrap());
    let failure = RefreshFailure {
        status: ConnectionStatus::NeedsReauth,
        error: "invalid_grant",
        retry_at_ms: None,
        now_ms: 7_000,
        told: Told::NOTHING,
        refresh_token: None,
    };
    assert!(!s
        .save_refresh_failure(&key, stale, failure, Vec::new())
        .await
        .unwrap());
    let kept = s.get_connection(&key).await.unwrap().unwrap();
    assert_eq!(kept.access_token, b"new-a");
    assert_eq!(kept.status, ConnectionStatus::Active);
    // The lease taken on the new row still holds it.
    assert!(s
        .save_refreshed(&key, current, tokens(b"a3", b"r3"), 8_000, Vec::new())
        .await
        .unwrap());
}

/// A takeover of a lease that ran out unreleased is noted only for the lease as read
/// (its generation and end, once ended), and the note leaves the holder free to hold its
/// lease on or save what it has: a holder that does either first keeps the connection.
async fn a_takeover_is_noted_only_for_the_lease_that_ran_out_as_read(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let seen = s.get_connection(&key).await.unwrap().unwrap();
    // A lease of 300 ms from now: Redis ends it on its own clock.
    let start = chrono::Utc::now().timestamp_millis();
    let g = s
        .acquire_refresh_lease(&key, seen.generation, start, 300)
        .await
        .unwrap()
        .expect("a free lease");
    let lease_end = || async {
        s.get_connection(&key)
            .await
            .unwrap()
            .unwrap()
            .lease_until_ms
            .unwrap()
    };
    let until = lease_end().await;
    let note = |generation, until, now| s.note_lease_takeover(&key, generation, until, now);
    assert!(
        !note(g, until, start + 100).await.unwrap(),
        "noted while held"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let after = start + 400;
    assert!(
        !note(g - 1, until, after).await.unwrap(),
        "another generation's"
    );
    assert!(!note(g, until + 1, after).await.unwrap(), "another end's");
    assert!(note(g, until, after).await.unwrap());
    // The holder holds on: the lease read before has not run out any more.
    assert!(s
        .extend_refresh_lease(&key, g, after + 10, 300)
        .await
        .unwrap());
    assert!(
        !note(g, until, after + 20).await.unwrap(),
        "a lease held on"
    );
    assert_eq!(lease(s, &key, g, after + 20).await, None);
    // Run out again, and noted: the holder's save still lands.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let later = after + 800;
    let until = lease_end().await;
    assert!(note(g, until, later).await.unwrap());
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), later + 10, Vec::new())
        .await
        .unwrap());
    let saved = s.get_connection(&key).await.unwrap().unwrap();
    assert_eq!(saved.refresh_token.as_deref(), Some(&b"r2"[..]));
    assert!(!note(g, until, later + 20).await.unwrap(), "a lease let go");
    assert_eq!(lease(s, &key, g, later + 20).await, None);
    assert!(lease(s, &key, saved.generation, later + 20).await.is_some());
}

/// A store takes the first id it is offered and keeps it: later offers change nothing
/// (an oauthd that finds another id than it saw knows the store lost what it held).
async fn a_store_keeps_the_first_id_it_is_given(b: Backend) {
    let s = b.store.as_ref();
    assert_eq!(s.store_id("first").await.unwrap(), "first");
    assert_eq!(s.store_id("second").await.unwrap(), "first");
}

/// A refresh of `key` that failed at `now`: the lease taken on the row as it is, the
/// failure recorded (the connection `status` after it, a retry due a minute later, the
/// operator told).
async fn refresh_failed(
    s: &dyn oauthd::store::Store,
    key: &ConnectionKey,
    status: ConnectionStatus,
    now: i64,
) {
    let seen = s.get_connection(key).await.unwrap().unwrap();
    let generation = lease(s, key, seen.generation, now)
        .await
        .expect("a free lease");
    let failure = RefreshFailure {
        status,
        error: "failed",
        retry_at_ms: Some(now + 60_000),
        now_ms: now,
        told: Told::FAILING,
        refresh_token: None,
    };
    assert!(s
        .save_refresh_failure(key, generation, failure, Vec::new())
        .await
        .unwrap());
}

fn delivery(id: &str, target: &str, created: i64) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        event_id: format!("msg_{id}"),
        event_type: "connection.needs_reauth".into(),
        target: target.into(),
        body: r#"{"type":"connection.needs_reauth"}"#.into(),
        created_at_ms: created,
        deadline_ms: created + 60_000,
    }
}

async fn ids(s: &dyn oauthd::store::Store, filter: DeliveryFilter) -> Vec<String> {
    target_ids(s, filter, None).await
}

async fn target_ids(
    s: &dyn oauthd::store::Store,
    filter: DeliveryFilter,
    target: Option<&str>,
) -> Vec<String> {
    let rows = s.list_deliveries(filter, target, 100).await.unwrap();
    rows.into_iter().map(|d| d.id).collect()
}

/// An event is in the outbox exactly when the change it tells of was made: a refresh that
/// lost its lease stores neither its tokens nor its events.
async fn events_are_stored_with_their_change_and_only_with_it(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let row = s.get_connection(&key).await.unwrap().unwrap();
    let g = lease(s, &key, row.generation, 2_000).await.unwrap();
    let fenced_off = s
        .save_refreshed(
            &key,
            g + 1,
            tokens(b"x", b"y"),
            3_000,
            vec![delivery("d1", "t", 3_000)],
        )
        .await
        .unwrap();
    assert!(!fenced_off);
    assert!(ids(s, DeliveryFilter::All).await.is_empty());
    let failure = oauthd::store::RefreshFailure {
        status: oauthd::store::ConnectionStatus::Active,
        error: "down",
        retry_at_ms: Some(9_000),
        now_ms: 4_000,
        told: Told::FAILING,
        refresh_token: None,
    };
    assert!(s
        .save_refresh_failure(&key, g, failure, vec![delivery("d2", "t", 4_000)])
        .await
        .unwrap());
    let failing = s.get_connection(&key).await.unwrap().unwrap();
    assert_eq!(failing.failing_since_ms, Some(4_000));
    assert_eq!(failing.told, Told::FAILING);
    assert_eq!(ids(s, DeliveryFilter::All).await, vec!["d2"]);
    // Deleting a connection that is not there tells nothing.
    let gone = ConnectionKey::new("p", "nobody");
    // Nor does one whose row moved on since the caller read it (a refresh or reconnect
    // by another process), or that was deleted and made again (its generation starts
    // over; its sealed token does not repeat): it stays, with its newer tokens.
    let seen = s.get_connection(&key).await.unwrap().unwrap();
    let (g, sealed) = (seen.generation, seen.access_token.clone());
    assert!(!s
        .delete_connection(&gone, 0, b"", vec![delivery("d3", "t", 5_000)])
        .await
        .unwrap());
    assert!(!s
        .delete_connection(&key, g - 1, &sealed, vec![delivery("d3", "t", 5_000)])
        .await
        .unwrap());
    assert!(!s
        .delete_connection(&key, g, b"another seal", vec![delivery("d3", "t", 5_000)])
        .await
        .unwrap());
    assert!(s.get_connection(&key).await.unwrap().is_some());
    assert!(s
        .delete_connection(&key, g, &sealed, vec![delivery("d4", "t", 6_000)])
        .await
        .unwrap());
    assert_eq!(ids(s, DeliveryFilter::All).await, vec!["d4", "d2"]);
    assert_eq!(s.pending_deliveries().await.unwrap(), 2);
}

/// A claim takes a due delivery for the lease: nobody else gets it until the lease ends,
/// and a claimer whose lease ran out cannot record over the next attempt.
async fn deliveries_are_claimed_once_per_lease_and_finished_by_their_claim(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![delivery("a", "t", 1_000), delivery("b", "t", 1_500)])
        .await
        .unwrap();
    assert!(s
        .claim_deliveries(999, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap()
        .is_empty());
    let first = s
        .claim_deliveries(2_000, 10_000, &ClaimRoom::up_to(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].id.as_str(), first[0].attempts), ("a", 1));
    let second = s
        .claim_deliveries(2_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(
        second.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert!(s
        .finish_delivery("b", 1, DeliveryOutcome::Delivered, 3_000)
        .await
        .unwrap());
    assert!(s
        .claim_deliveries(11_999, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap()
        .is_empty());
    // "a"'s worker died: after the lease it is claimed again, as attempt 2.
    let again = s
        .claim_deliveries(12_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!((again[0].id.as_str(), again[0].attempts), ("a", 2));
    let late = DeliveryOutcome::Delivered;
    assert!(!s.finish_delivery("a", 1, late, 12_500).await.unwrap());
    let retry = DeliveryOutcome::Retry {
        at_ms: 20_000,
        error: "HTTP 500".into(),
    };
    assert!(s.finish_delivery("a", 2, retry, 13_000).await.unwrap());
    assert_eq!(ids(s, DeliveryFilter::Failed).await, vec!["a"]);
    assert!(s
        .claim_deliveries(19_999, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap()
        .is_empty());
    let third = s
        .claim_deliveries(20_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(third[0].attempts, 3);
    assert_eq!(third[0].attempts_before_retry, 0, "never retried by hand");
    assert_eq!(third[0].last_error.as_deref(), Some("HTTP 500"));
    let dead = DeliveryOutcome::Dead {
        error: "HTTP 404".into(),
    };
    assert!(s.finish_delivery("a", 3, dead, 21_000).await.unwrap());
    assert_eq!(
        s.pending_deliveries().await.unwrap(),
        0,
        "{:?}",
        s.list_deliveries(DeliveryFilter::All, None, 10).await
    );
    let rows = s
        .list_deliveries(DeliveryFilter::All, None, 10)
        .await
        .unwrap();
    let status: Vec<_> = rows.iter().map(|d| (d.id.as_str(), d.status)).collect();
    assert_eq!(
        status,
        [
            ("b", DeliveryStatus::Delivered),
            ("a", DeliveryStatus::Dead)
        ]
    );
    // Retried by hand: due at once, with a new deadline. One delivered already only when
    // asked to send it again (it may have gone through since it was listed as failing).
    let retry = |id: &'static str, again| s.retry_delivery(id, 30_000, 90_000, again);
    assert_eq!(retry("b", false).await.unwrap(), Retried::AlreadyDelivered);
    assert_eq!(retry("a", false).await.unwrap(), Retried::Due);
    assert_eq!(retry("nope", true).await.unwrap(), Retried::NotFound);
    let retried = s
        .claim_deliveries(30_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|d| (d.id.as_str(), d.deadline_ms))
            .collect::<Vec<_>>(),
        [("a", 90_000)],
        "the delivered one was sent again"
    );
    // Its backoff starts afresh: the three attempts before the retry are set apart, while
    // `attempts` still counts them (finishing needs its number).
    assert_eq!(
        (retried[0].attempts, retried[0].attempts_before_retry),
        (4, 3)
    );
    // Finished ones are pruned once old enough; pending ones never.
    assert_eq!(s.prune_deliveries(3_000).await.unwrap(), 0);
    assert_eq!(s.prune_deliveries(3_001).await.unwrap(), 1);
    assert_eq!(ids(s, DeliveryFilter::All).await, vec!["a"]);
    // Delivered this time: sent again only when asked to.
    let delivered = DeliveryOutcome::Delivered;
    let attempts = retried[0].attempts;
    assert!(s
        .finish_delivery("a", attempts, delivered, 31_000)
        .await
        .unwrap());
    assert_eq!(retry("a", false).await.unwrap(), Retried::AlreadyDelivered);
    assert_eq!(retry("a", true).await.unwrap(), Retried::Due);
    let again = s
        .claim_deliveries(30_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
}

/// Claimers racing for the same due deliveries (two instances on one store) split them:
/// each delivery is attempted by exactly one.
/// A retry set on a clock since stepped back (NTP fixing a clock that ran ahead) lay as
/// far off as the step: a target that failed once heard nothing again for that long. A
/// next attempt further off than the longest wait is taken as due; one within it is not.
async fn a_retry_set_before_the_clock_stepped_back_is_due(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![delivery("a", "t", 1_000), delivery("b", "t", 1_000)])
        .await
        .unwrap();
    let claimed = s
        .claim_deliveries(2_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    const DAY: i64 = 24 * 3600 * 1000;
    for (id, at_ms) in [("a", 3 * DAY), ("b", 3_000 + 50_000)] {
        let retry = DeliveryOutcome::Retry {
            at_ms,
            error: "HTTP 500".into(),
        };
        assert!(s.finish_delivery(id, 1, retry, 3_000).await.unwrap());
    }
    let room = ClaimRoom {
        longest_wait_ms: Some(60_000),
        ..ClaimRoom::up_to(10)
    };
    // Stepped back: "now" is 4 s, and "a" is due in three days, "b" in 49 s.
    let due = s.claim_deliveries(4_000, 10_000, &room).await.unwrap();
    let ids: Vec<_> = due.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    assert!(s
        .claim_deliveries(4_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap()
        .is_empty());
}

async fn racing_claimers_split_the_due_deliveries(b: Backend) {
    let s = b.store.clone();
    let all: Vec<NewDelivery> = (0..40)
        .map(|i| delivery(&format!("r{i:02}"), "t", 1_000))
        .collect();
    s.add_deliveries(all).await.unwrap();
    let claimers = (0..4).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s
                    .claim_deliveries(2_000, 60_000, &ClaimRoom::up_to(3))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| d.id));
            }
        })
    });
    let mut claimed: Vec<String> = Vec::new();
    for c in futures::future::join_all(claimers).await {
        claimed.extend(c.unwrap());
    }
    claimed.sort();
    let expected: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    assert_eq!(claimed, expected, "every delivery claimed exactly once");
}

/// A target running as many attempts as it may has its deliveries left for later; the
/// others' are claimed.
async fn a_claim_leaves_the_skipped_targets_deliveries_due(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![
        delivery("s1", "slow", 1_000),
        delivery("s2", "slow", 1_000),
        delivery("f1", "fast", 1_100),
    ])
    .await
    .unwrap();
    let room = ClaimRoom {
        limit: 10,
        per_target: 2,
        busy: [("slow".to_owned(), 2)].into(),
        longest_wait_ms: None,
    };
    let got = s.claim_deliveries(2_000, 10_000, &room).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["f1"]
    );
    let later = s
        .claim_deliveries(2_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    let mut ids: Vec<_> = later.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2"]);
}

/// What a claim of at most 4, 2 a target, takes while target "hangs" runs one attempt
/// (ids sorted).
async fn claimed_past_hangs(s: &dyn oauthd::store::Store) -> Vec<String> {
    let room = ClaimRoom {
        limit: 4,
        per_target: 2,
        busy: [("hangs".to_owned(), 1)].into(),
        longest_wait_ms: None,
    };
    let got = s.claim_deliveries(2_000, 10_000, &room).await.unwrap();
    let mut ids: Vec<_> = got.into_iter().map(|d| d.id).collect();
    ids.sort();
    ids
}

/// A claim takes no more of one target's deliveries than keep its running attempts
/// within `per_target`, however many of its older ones are due: a target with a backlog
/// (one that hangs) never fills the claim, and the others' deliveries behind it are
/// claimed.
async fn a_claim_takes_each_target_within_its_room_past_an_older_backlog(b: Backend) {
    let s = b.store.as_ref();
    let backlog: Vec<_> = (0..40)
        .map(|i| delivery(&format!("h{i:02}"), "hangs", 1_000 + i))
        .collect();
    s.add_deliveries(backlog).await.unwrap();
    s.add_deliveries(vec![delivery("ok1", "fine", 1_500)])
        .await
        .unwrap();
    assert_eq!(claimed_past_hangs(s).await, ["h00", "ok1"]);
}

/// However long a hanging target's backlog (a thousand deliveries due, older than
/// anything else), a claim still finds another target's delivery behind it, and a target
/// with room gets only as many as it has room for.
async fn a_claim_finds_the_others_behind_any_backlog(b: Backend) {
    let s = b.store.as_ref();
    for batch in 0..10 {
        let backlog: Vec<_> = (0..100)
            .map(|i| {
                delivery(
                    &format!("h{batch}-{i:03}"),
                    "hangs",
                    1_000 + batch * 100 + i,
                )
            })
            .collect();
        s.add_deliveries(backlog).await.unwrap();
    }
    s.add_deliveries(vec![delivery("ok1", "fine", 1_900)])
        .await
        .unwrap();
    let room = ClaimRoom {
        limit: 14,
        per_target: 2,
        busy: [("hangs".to_owned(), 2)].into(),
        longest_wait_ms: None,
    };
    let got = s.claim_deliveries(2_000, 10_000, &room).await.unwrap();
    let ids: Vec<_> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["ok1"]);
    assert_eq!(s.pending_deliveries().await.unwrap(), 1_001);
}

/// Past a backlog it cannot take, a claim still takes the oldest due deliveries of the
/// others first, none skipped over.
async fn a_claim_past_a_backlog_takes_the_others_oldest_first(b: Backend) {
    let s = b.store.as_ref();
    let mut due: Vec<_> = (0..16)
        .map(|i| delivery(&format!("h{i:02}"), "hangs", 1_000 + i))
        .collect();
    due.extend((1..=3).map(|i| delivery(&format!("f{i}"), "fine", 1_100 + i)));
    s.add_deliveries(due).await.unwrap();
    assert_eq!(claimed_past_hangs(s).await, ["f1", "f2", "h00"]);
}

/// A target's room is the store's, not one process's: claims that run nothing of their
/// own (two instances on one store) run at most `per_target` attempts a target between
/// them, until an attempt ends or its lease does. Each instance counted only its own, and
/// a target got two attempts at once from every instance.
async fn a_targets_room_is_shared_by_every_claimer(b: Backend) {
    let s = b.store.as_ref();
    let hooks: Vec<_> = (0..5)
        .map(|i| delivery(&format!("h{i}"), "hook", 1_000 + i))
        .collect();
    s.add_deliveries(hooks).await.unwrap();
    s.add_deliveries(vec![delivery("o1", "other", 1_100)])
        .await
        .unwrap();
    let room = || ClaimRoom {
        limit: 10,
        per_target: 2,
        busy: Default::default(),
        longest_wait_ms: Some(15_000),
    };
    let claim = |now: i64| async move {
        let got = s.claim_deliveries(now, 10_000, &room()).await.unwrap();
        let mut ids: Vec<_> = got.into_iter().map(|d| d.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(claim(2_000).await, ["h0", "h1", "o1"]);
    // Another instance: nothing of "hook" while two of its attempts run.
    assert_eq!(claim(2_100).await, Vec::<String>::new());
    // One ends: the next takes its place.
    for id in ["h0", "o1"] {
        assert!(s
            .finish_delivery(id, 1, DeliveryOutcome::Delivered, 2_200)
            .await
            .unwrap());
    }
    assert_eq!(claim(2_300).await, ["h2"]);
    // h1's lease ends (its instance was killed): its place is free, h2's is not. The
    // oldest due goes first.
    assert_eq!(claim(12_000).await, ["h3"]);
    assert_eq!(claim(12_001).await, Vec::<String>::new());
    // h1's attempt, whose lease ended, is recorded after all.
    assert!(s
        .finish_delivery("h1", 1, DeliveryOutcome::Delivered, 12_002)
        .await
        .unwrap());
    // The clock steps back further than any wait: a claim that ends further off than
    // that holds no place (h3's, made at 12,000), one within it does (h2's), on both
    // stores (Redis held them all until its clock caught up). h3 is due again: the
    // oldest due goes first, and there is room for one.
    assert_eq!(claim(1_500).await, ["h4"]);
    // Another instance's clock 3 s behind the first's: the first's claims, which end a
    // lease and 3 s ahead of its own now, still hold their places (they were dropped as
    // set on a clock stepped back, and the target got twice its room).
    let skewed: Vec<_> = (0..4)
        .map(|i| delivery(&format!("s{i}"), "skewed", 1_000 + i))
        .collect();
    s.add_deliveries(skewed).await.unwrap();
    let take = |now: i64| async move {
        let got = s.claim_deliveries(now, 10_000, &room()).await.unwrap();
        let mut ids: Vec<_> = got
            .into_iter()
            .map(|d| d.id)
            .filter(|id| id.starts_with('s'))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(take(5_000).await, ["s0", "s1"]);
    assert_eq!(take(2_000).await, Vec::<String>::new());
}

/// A signed-out session no longer counts as one: the next start prints a sign-in link.
async fn a_signed_out_session_leaves_no_admin_session_behind(b: Backend) {
    use oauthd::store::{AdminSecretKind, SecretUse};
    let s = b.store.as_ref();
    let session = SecretHash::of("a-session-value");
    assert!(!s.any_admin_session(1_000).await.unwrap());
    s.insert_admin_secret(session, AdminSecretKind::Session, 9_000_000_000_000)
        .await
        .unwrap();
    assert!(s.any_admin_session(1_000).await.unwrap());
    assert!(s
        .use_admin_secret((session, AdminSecretKind::Session), SecretUse::Take, 1_000)
        .await
        .unwrap());
    assert!(!s.any_admin_session(1_000).await.unwrap());
}

/// A new login link ends the earlier ones of the kinds it names, and no other: a start's
/// ends the starts' (a crash loop leaves one live), `oauthd admin link`'s ends them all;
/// sessions stay.
async fn a_new_login_link_ends_the_kinds_it_names(b: Backend) {
    use oauthd::store::{AdminSecretKind, SecretUse};
    let (command, start) = (AdminSecretKind::LoginLink, AdminSecretKind::StartLink);
    let s = b.store.as_ref();
    let far = 9_000_000_000_000;
    let session = SecretHash::of("a-session-value");
    s.insert_admin_secret(session, AdminSecretKind::Session, far)
        .await
        .unwrap();
    // One stored as an earlier oauthd stored them, beside nothing that names it.
    let earlier = SecretHash::of("link-0");
    s.insert_admin_secret(earlier, command, far).await.unwrap();
    let [first, second] = [SecretHash::of("link-1"), SecretHash::of("link-2")];
    let [started, restarted] = [SecretHash::of("start-1"), SecretHash::of("start-2")];
    let works = |h: SecretHash, kind| s.use_admin_secret((h, kind), SecretUse::Check, 1_000);
    s.replace_login_link(first, command, &[command, start], far)
        .await
        .unwrap();
    assert!(works(first, command).await.unwrap());
    assert!(!works(earlier, command).await.unwrap());
    s.replace_login_link(started, start, &[start], far)
        .await
        .unwrap();
    assert!(works(started, start).await.unwrap());
    assert!(
        works(first, command).await.unwrap(),
        "a start ended the command's link"
    );
    s.replace_login_link(restarted, start, &[start], far)
        .await
        .unwrap();
    assert!(!works(started, start).await.unwrap());
    assert!(works(restarted, start).await.unwrap());
    assert!(works(first, command).await.unwrap());
    s.replace_login_link(second, command, &[command, start], far)
        .await
        .unwrap();
    assert!(!works(first, command).await.unwrap());
    assert!(!works(restarted, start).await.unwrap());
    assert!(works(second, command).await.unwrap());
    assert!(works(session, AdminSecretKind::Session).await.unwrap());
}

/// An instance's note of its vault keys: the store stamps when it first told (by its own
/// clock, which on Redis is Redis's) and keeps that time when told again; a note that
/// holds no more, or is taken back, is not in use.
async fn a_vault_keys_note_keeps_its_first_time_until_it_ends(b: Backend) {
    use oauthd::store::VaultKeysNote;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let s = b.store.as_ref();
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let note = |instance: &str, keys: &[&str], since_ms, holds| VaultKeysNote {
        instance: instance.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        since_ms,
        holds,
        providers: vec![format!("p1={instance}1"), "p2=00".into()],
    };
    let before = now();
    let since = s
        .note_vault_keys(
            note("a", &["k1", "k0"], None, Duration::from_secs(60)),
            now(),
        )
        .await
        .unwrap();
    assert!((before - 5_000..=now() + 5_000).contains(&since), "{since}");
    let again = s
        .note_vault_keys(
            note("a", &["k2", "k1"], Some(since), Duration::from_secs(60)),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(again, since);
    s.note_vault_keys(note("b", &["k9"], None, Duration::ZERO), now())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let in_use = s.vault_keys_in_use(now()).await.unwrap();
    assert_eq!(in_use.len(), 1, "{in_use:?}");
    assert_eq!(in_use[0].instance, "a");
    assert_eq!(in_use[0].keys, ["k2", "k1"]);
    assert_eq!(
        in_use[0].providers.as_deref(),
        Some(&["p1=a1".to_owned(), "p2=00".to_owned()][..])
    );
    assert_eq!(in_use[0].since_ms, since);
    assert!(in_use[0].until_ms >= now() + 50_000, "{in_use:?}");
    s.forget_vault_keys("a").await.unwrap();
    assert!(s.vault_keys_in_use(now()).await.unwrap().is_empty());
}

/// Two oauthd starting at once: one reads its clock, the other reads a later one and
/// tells first (the first waited for the write lock). Stamped by the clock each read, the
/// one that told later would seem the earlier, and neither would give way to the other.
/// The store stamps a first note after every other that holds; an ended one, or one told
/// again, keeps its own.
async fn a_first_vault_keys_note_is_stamped_after_every_note_that_holds(b: Backend) {
    use oauthd::store::VaultKeysNote;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let s = b.store.as_ref();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let note = |instance: &str, since_ms, holds| VaultKeysNote {
        instance: instance.into(),
        keys: vec![format!("k-{instance}")],
        since_ms,
        holds,
        providers: Vec::new(),
    };
    let hour = Duration::from_secs(3600);
    // Told first, by a clock 10 s ahead of the store's (and of `now`).
    let ahead = now + 10_000;
    let told = s
        .note_vault_keys(note("ahead", Some(ahead), hour), now)
        .await;
    assert_eq!(told.unwrap(), ahead);
    // Its note ends at once: it counts no more.
    s.note_vault_keys(note("ended", Some(now + 60_000), Duration::ZERO), now)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = s.note_vault_keys(note("later", None, hour), now + 20);
    let later = later.await.unwrap();
    assert_eq!(later, ahead + 1);
    let in_use = s.vault_keys_in_use(now + 20).await.unwrap();
    let since = |i: &str| in_use.iter().find(|t| t.instance == i).map(|t| t.since_ms);
    assert_eq!(since("later"), Some(ahead + 1), "{in_use:?}");
    assert_eq!(since("ahead"), Some(ahead), "{in_use:?}");
    assert_eq!(since("ended"), None, "{in_use:?}");
    // Told again, each keeps its first time.
    let again = s
        .note_vault_keys(note("ahead", Some(ahead), hour), now)
        .await;
    assert_eq!(again.unwrap(), ahead);
    for instance in ["ahead", "later"] {
        s.forget_vault_keys(instance).await.unwrap();
    }
}

/// Notes Redis holds in another shape (an older oauthd's, one written by hand, a stamp no
/// clock gives) are kept while they hold, as ever, and pass over when a first note is
/// stamped: one with a stamp past what Lua's numbers hold made the next first note's
/// stamp negative (the newcomer then seemed the oldest of all).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn on_redis_a_first_vault_keys_note_passes_over_notes_of_another_shape() {
    use oauthd::store::VaultKeysNote;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let b = tokio::task::spawn_blocking(redis).await.unwrap();
    let server = b._redis.as_ref().unwrap();
    let odd = [
        ("odd-since", "99999999999999 abcdef0123 k2"),
        ("huge-since", "99999999999999 9223372036854775807 k3 |"),
    ];
    for (instance, text) in odd {
        let set = server.command(&format!("HSET oauthd:vault {instance} \"{text}\""));
        assert_eq!(set.as_deref(), Some(":1"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let note = VaultKeysNote {
        instance: "new".into(),
        keys: vec!["k1".into()],
        since_ms: None,
        holds: Duration::from_secs(60),
        providers: Vec::new(),
    };
    let since = b.store.note_vault_keys(note, now).await.unwrap();
    assert!((now - 5_000..=now + 5_000).contains(&since), "{since}");
    for (instance, _) in odd {
        let kept = server.command(&format!("HEXISTS oauthd:vault {instance}"));
        assert_eq!(kept.as_deref(), Some(":1"), "{instance}");
    }
}

/// State `n` of namespace "cap", expiring at `expires_at_ms`.
fn capped(n: u8, expires_at_ms: i64, subject: Option<&str>) -> StateRow {
    StateRow {
        key_hash: SecretHash([n; 32]),
        namespace: "cap".into(),
        data: None,
        created_at_ms: 1_000,
        expires_at_ms,
        subject: subject.map(str::to_owned),
        secret: None,
        sliding: None,
        created_by: None,
    }
}

/// Inserts `row` under a cap of 3 live states, at `now_ms`.
async fn insert_capped(s: &dyn oauthd::store::Store, row: StateRow, now_ms: i64) -> Inserted {
    insert_replacing(s, row, now_ms, false).await
}

async fn insert_replacing(
    s: &dyn oauthd::store::Store,
    row: StateRow,
    now_ms: i64,
    replace_subject: bool,
) -> Inserted {
    let rules = InsertRules {
        max_live: 3,
        now_ms,
        keep_until_ms: row.expires_at_ms + 60_000,
        replace_subject,
        max_per_subject: 100,
        max_total: 1000,
        max_tombstones: 1000,
        max_per_key: 1000,
    };
    s.insert_state(row, rules).await.unwrap()
}

/// Inserts `rows` at `now_ms`, each of which must be stored, then finds the namespace full.
async fn fill_up(s: &dyn oauthd::store::Store, what: &str, rows: Vec<StateRow>, now_ms: i64) {
    for row in rows {
        assert_eq!(
            insert_capped(s, row, now_ms).await,
            Inserted::Stored { replaced: vec![] },
            "{what}"
        );
    }
    // Always refused, so the same state serves every time.
    let probe = capped(0xff, 1_000_000, None);
    assert_eq!(
        insert_capped(s, probe, now_ms).await,
        Inserted::NamespaceFull,
        "the cap after {what}"
    );
}

/// The per-namespace cap sees every state that each path adds or removes, at once: each
/// step frees one place (or two), which the next inserts take, and the one after that is
/// refused.
async fn the_namespace_cap_counts_what_every_path_leaves_live(b: Backend) {
    let s = b.store.as_ref();
    let later = 1_000_000;
    let states = |numbers: &[u8]| numbers.iter().map(|&n| capped(n, later, None)).collect();
    fill_up(s, "three inserts", states(&[1, 2, 3]), 10_000).await;

    // Consumed.
    let exact = NamespaceFilter::Exact("cap".into());
    assert!(matches!(
        s.take_state(SecretHash([1; 32]), &exact).await.unwrap(),
        Taken::Row(_)
    ));
    fill_up(s, "a consume", states(&[4]), 10_000).await;

    // Revoked by value, then by id.
    assert!(s
        .revoke_state(SecretHash([2; 32]), "cap", 10_000)
        .await
        .unwrap());
    let mut guarded = capped(5, later, None);
    guarded.secret = Some(StateSecret {
        hash: SecretHash([0xee; 32]),
        attempts_left: 1,
    });
    fill_up(s, "a revoke", vec![guarded], 10_000).await;
    let id = StateId::of(&SecretHash([3; 32])).to_string();
    // Each revoke says which states it removed (verify's memory drops those).
    assert_eq!(
        s.revoke_state_id("cap", &id, 10_000).await.unwrap(),
        Revoked {
            live: 1,
            keys: vec![SecretHash([3; 32])]
        }
    );
    assert_eq!(
        s.revoke_state_id("cap", &id, 10_000).await.unwrap(),
        Revoked::default()
    );
    fill_up(
        s,
        "a revoke by id",
        vec![capped(6, later, Some("u"))],
        10_000,
    )
    .await;

    // A code guessed wrong until no try is left.
    let wrong = s
        .attempt_state(SecretHash([5; 32]), "cap", SecretHash([0; 32]), 10_000)
        .await
        .unwrap();
    assert!(
        matches!(wrong, Attempted::Wrong { attempts_left: 0 }),
        "{wrong:?}"
    );
    fill_up(s, "a spent code", vec![capped(7, later, Some("u"))], 10_000).await;

    // A subject signed out everywhere (6 and 7), then one replaced (8 by 10).
    let mut signed_out = s.revoke_subject("cap", "u", 10_000).await.unwrap();
    signed_out.keys.sort_by_key(|k| k.0);
    assert_eq!(
        signed_out,
        Revoked {
            live: 2,
            keys: vec![SecretHash([6; 32]), SecretHash([7; 32])]
        }
    );
    let freed = vec![capped(8, later, Some("v")), capped(9, 40_000, None)];
    fill_up(s, "a subject's revoke", freed, 10_000).await;
    let replacing = insert_replacing(s, capped(10, later, Some("v")), 10_000, true).await;
    assert_eq!(
        replacing,
        Inserted::Stored {
            replaced: vec![SecretHash([8; 32])]
        }
    );
    fill_up(s, "a replace", Vec::new(), 10_000).await;

    // Live now: 4, 9 (expires at 40,000) and 10. At 50,000 the insert that finds the
    // namespace full sets 9 aside and takes its place.
    let expiring = vec![capped(11, 55_000, None)];
    fill_up(s, "an expired state set aside", expiring, 50_000).await;

    // The sweeper removes 11 (expired at 55,000), which leaves a place the insert finds
    // without setting anything aside.
    s.sweep_expired(60_000, 0, 100, 1000).await.unwrap();
    fill_up(s, "a sweep", states(&[12]), 60_000).await;
}

/// State `n` of `namespace`, expiring at `expires_at_ms`.
fn state_in(namespace: &str, n: u8, expires_at_ms: i64) -> StateRow {
    StateRow {
        namespace: namespace.into(),
        ..capped(n, expires_at_ms, None)
    }
}

/// Room in every namespace, and in the store for `max_total` live states and
/// `max_tombstones` tombstones (kept a minute past expiry).
fn store_rules(row: &StateRow, now_ms: i64, max_total: u64, max_tombstones: u64) -> InsertRules {
    InsertRules {
        max_live: 100,
        now_ms,
        keep_until_ms: row.expires_at_ms + 60_000,
        replace_subject: false,
        max_per_subject: 100,
        max_total,
        max_tombstones,
        max_per_key: 1000,
    }
}

/// All namespaces together hold at most `max_total` live states: a consume or an expiry
/// in any of them makes room, at once.
async fn all_namespaces_together_hold_at_most_max_total_live_states(b: Backend) {
    let s = b.store.as_ref();
    let insert = |namespace: &'static str, n: u8, expires_at_ms: i64, now_ms: i64| {
        let row = state_in(namespace, n, expires_at_ms);
        let rules = store_rules(&row, now_ms, 3, 100);
        async move { s.insert_state(row, rules).await.unwrap() }
    };
    let stored = Inserted::Stored { replaced: vec![] };
    assert_eq!(insert("a", 1, 1_000_000, 10_000).await, stored);
    assert_eq!(insert("b", 2, 1_000_000, 10_000).await, stored);
    assert_eq!(insert("c", 3, 20_000, 10_000).await, stored);
    assert_eq!(insert("d", 4, 1_000_000, 10_000).await, Inserted::StoreFull);

    let taken = s
        .take_state(SecretHash([1; 32]), &NamespaceFilter::Exact("a".into()))
        .await
        .unwrap();
    assert!(matches!(taken, Taken::Row(_)), "{taken:?}");
    assert_eq!(insert("d", 4, 1_000_000, 10_000).await, stored);
    assert_eq!(insert("e", 5, 1_000_000, 10_000).await, Inserted::StoreFull);

    // State 3 expired at 20,000: it no longer counts, swept or not.
    assert_eq!(insert("e", 5, 1_000_000, 30_000).await, stored);
    assert_eq!(insert("f", 6, 1_000_000, 30_000).await, Inserted::StoreFull);
}

/// The states one API key created hold at most `max_per_key` live states in all
/// namespaces together; every way a state goes gives its place back (a take, a code's
/// match, a revoke by value, by id and by subject, a replace, an expiry and the sweep),
/// and states of another key, or oauthd's own, count for none of it.
async fn a_key_holds_at_most_max_per_key_live_states_however_they_go(b: Backend) {
    let s = b.store.as_ref();
    let row = |n: u8, by: Option<&str>, expires_at_ms: i64| StateRow {
        namespace: format!("ns{n}"),
        created_by: by.map(str::to_owned),
        ..capped(n, expires_at_ms, None)
    };
    let insert = |row: StateRow, now_ms: i64, replace: bool| {
        let rules = InsertRules {
            max_per_key: 2,
            replace_subject: replace,
            ..store_rules(&row, now_ms, 1000, 1000)
        };
        async move { s.insert_state(row, rules).await.unwrap() }
    };
    let stored = Inserted::Stored { replaced: vec![] };
    let put = |n: u8, by: Option<&'static str>, expires_at_ms: i64, now_ms: i64| {
        insert(row(n, by, expires_at_ms), now_ms, false)
    };
    let take = |n: u8| async move {
        let taken = s
            .take_state(
                SecretHash([n; 32]),
                &NamespaceFilter::Exact(format!("ns{n}")),
            )
            .await
            .unwrap();
        assert!(matches!(taken, Taken::Row(_)), "{taken:?}");
    };
    let far = 10_000_000;
    // Full with two; another key's and oauthd's own go in beside them.
    assert_eq!(put(1, Some("k1"), far, 10_000).await, stored);
    assert_eq!(put(2, Some("k1"), far, 10_000).await, stored);
    assert_eq!(put(3, Some("k1"), far, 10_000).await, Inserted::KeyFull);
    assert_eq!(put(4, Some("k2"), far, 10_000).await, stored);
    assert_eq!(put(5, None, far, 10_000).await, stored);
    let full = |n: u8| async move {
        assert_eq!(
            insert(row(n, Some("k1"), far), 10_000, false).await,
            Inserted::KeyFull,
            "state {n}"
        );
    };

    // A take.
    take(1).await;
    assert_eq!(put(6, Some("k1"), far, 10_000).await, stored);
    full(7).await;
    // A revoke by value.
    assert!(s
        .revoke_state(SecretHash([2; 32]), "ns2", 10_000)
        .await
        .unwrap());
    let code = SecretHash([99; 32]);
    let guarded = StateRow {
        secret: Some(StateSecret {
            hash: code,
            attempts_left: 3,
        }),
        ..row(7, Some("k1"), far)
    };
    assert_eq!(insert(guarded, 10_000, false).await, stored);
    full(8).await;
    // A code's match.
    let matched = s
        .attempt_state(SecretHash([7; 32]), "ns7", code, 10_000)
        .await
        .unwrap();
    assert!(matches!(matched, Attempted::Matched(_)), "{matched:?}");
    let of_alice = StateRow {
        subject: Some("alice".into()),
        ..row(8, Some("k1"), far)
    };
    assert_eq!(insert(of_alice.clone(), 10_000, false).await, stored);
    full(9).await;
    // A replace at the cap takes the subject's state's place.
    let again = StateRow {
        key_hash: SecretHash([9; 32]),
        ..of_alice
    };
    let replaced = insert(again, 10_000, true).await;
    assert_eq!(
        replaced,
        Inserted::Stored {
            replaced: vec![SecretHash([8; 32])]
        }
    );
    full(10).await;
    // A revoke by subject.
    let revoked = s.revoke_subject("ns8", "alice", 10_000).await.unwrap();
    assert_eq!(revoked.live, 1);
    assert_eq!(put(10, Some("k1"), 20_000, 10_000).await, stored);
    full(11).await;
    // A revoke by id.
    let id = oauthd::secret::StateId::of(&SecretHash([6; 32])).to_string();
    let revoked = s.revoke_state_id("ns6", &id, 10_000).await.unwrap();
    assert_eq!(revoked.live, 1);
    assert_eq!(put(11, Some("k1"), far, 10_000).await, stored);
    full(12).await;
    // State 10 expired at 20,000: it no longer counts, swept or not; nor once swept.
    assert_eq!(put(12, Some("k1"), far, 30_000).await, stored);
    assert_eq!(put(13, Some("k1"), far, 30_000).await, Inserted::KeyFull);
    assert_eq!(put(14, Some("k2"), far, 30_000).await, stored);
    // The sweep gives an expired state's place back, once.
    take(11).await;
    assert_eq!(put(15, Some("k1"), 40_000, 30_000).await, stored);
    s.sweep_expired(50_000, 0, 100, 1000).await.unwrap();
    assert_eq!(put(16, Some("k1"), far, 50_000).await, stored);
    assert_eq!(put(17, Some("k1"), far, 50_000).await, Inserted::KeyFull);
}

/// States made to expire at once cannot grow the store through their tombstones: past
/// `max_tombstones`, the tombstones of the states that expired first go (those answer
/// 404 instead of 410). Real time, since Redis expires its keys by itself.
async fn the_store_keeps_at_most_max_tombstones_the_latest_ones(b: Backend) {
    let s = b.store.as_ref();
    let now = chrono::Utc::now().timestamp_millis();
    for n in 21..=25u8 {
        let row = state_in("t", n, now + 300 + i64::from(n) * 10);
        let rules = store_rules(&row, now, 100, 2);
        assert!(matches!(
            s.insert_state(row, rules).await.unwrap(),
            Inserted::Stored { .. }
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let later = chrono::Utc::now().timestamp_millis();
    // SQLite's sweeper sets them aside; Redis' keys expired by themselves, and the next
    // insert keeps the tombstones in bounds.
    s.sweep_expired(later, later - 60_000, 100, 2)
        .await
        .unwrap();
    let row = state_in("t", 26, later + 60_000);
    let rules = store_rules(&row, later, 100, 2);
    assert!(matches!(
        s.insert_state(row, rules).await.unwrap(),
        Inserted::Stored { .. }
    ));
    let mut answers = Vec::new();
    for n in 21..=25u8 {
        let taken = s
            .take_state(SecretHash([n; 32]), &NamespaceFilter::Exact("t".into()))
            .await
            .unwrap();
        answers.push((n, matches!(taken, Taken::ExpiredTombstone { .. })));
    }
    let want = [
        (21, false),
        (22, false),
        (23, false),
        (24, true),
        (25, true),
    ];
    assert_eq!(answers, want, "which expired states still have a tombstone");
}

/// A subject's states come in pages in the order they were created (states made in the
/// same millisecond by their keys), each page bounded by its number of states and by the
/// bytes of data it holds beyond its first; following the pages lists every state once.
async fn a_subjects_states_are_listed_in_pages(b: Backend) {
    use oauthd::store::SubjectPage;
    let s = b.store.as_ref();
    // Created at 1,000, 2,000, 2,000, 2,000, 3,000, 4,000; each with 100 bytes of data.
    let made = [
        (0x50, 1_000),
        (0x90, 2_000),
        (0x10, 2_000),
        (0x30, 2_000),
        (0x20, 3_000),
        (0x80, 4_000),
    ];
    for (n, created_at_ms) in made {
        let row = StateRow {
            namespace: "list".into(),
            data: Some("d".repeat(100)),
            created_at_ms,
            ..capped(n, 1_000_000, Some("u"))
        };
        assert!(matches!(
            insert_capped_room(s, row, 10_000).await,
            Inserted::Stored { .. }
        ));
    }
    // Another subject's state is never listed.
    let other = StateRow {
        namespace: "list".into(),
        ..capped(0x40, 1_000_000, Some("v"))
    };
    insert_capped_room(s, other, 10_000).await;
    let want: Vec<u8> = vec![0x50, 0x10, 0x30, 0x90, 0x20, 0x80];

    for (max_rows, max_data_bytes, pages) in [
        (2, 10_000, 3),
        (1000, 250, 3),
        (4, 150, 6),
        (1000, 10_000, 1),
    ] {
        let mut page = SubjectPage {
            after: None,
            max_rows,
            max_data_bytes,
        };
        let mut seen = Vec::new();
        let mut count = 0;
        loop {
            let got = s.subject_states("list", "u", 10_000, page).await.unwrap();
            count += 1;
            assert!(!got.rows.is_empty() && got.rows.len() <= max_rows);
            seen.extend(got.rows.iter().map(|r| r.key_hash.0[0]));
            let Some(next) = got.next else { break };
            page.after = Some(next);
            assert!(count < 10, "pages never end");
        }
        assert_eq!(
            seen, want,
            "{max_rows} states, {max_data_bytes} bytes a page"
        );
        assert_eq!(
            count, pages,
            "{max_rows} states, {max_data_bytes} bytes a page"
        );
    }
}

/// A replace the caps refuse leaves the subject's states as they were: a "one session per
/// user" login refused for a full namespace or store does not sign the user out.
async fn a_refused_replace_leaves_the_subjects_states(b: Backend) {
    let s = b.store.as_ref();
    for (n, subject) in [(1, Some("u")), (2, None), (3, None)] {
        let row = StateRow {
            namespace: "r".into(),
            ..capped(n, 1_000_000, subject)
        };
        assert!(matches!(
            insert_capped_room(s, row, 10_000).await,
            Inserted::Stored { .. }
        ));
    }
    // Caps lowered under what is stored: even without u's state, two are left.
    for (max_live, max_total, refused) in [
        (2, 100, Inserted::NamespaceFull),
        (100, 2, Inserted::StoreFull),
    ] {
        let row = StateRow {
            namespace: "r".into(),
            ..capped(4, 1_000_000, Some("u"))
        };
        let rules = InsertRules {
            max_live,
            replace_subject: true,
            ..store_rules(&row, 10_000, max_total, 100)
        };
        assert_eq!(s.insert_state(row, rules).await.unwrap(), refused);
    }
    let kept = s
        .take_state(SecretHash([1; 32]), &NamespaceFilter::Exact("r".into()))
        .await
        .unwrap();
    assert!(
        matches!(kept, Taken::Row(_)),
        "the subject's state went: {kept:?}"
    );
}

/// Inserts `row` with room in its namespace, subject and the store, at `now_ms`.
async fn insert_capped_room(s: &dyn oauthd::store::Store, row: StateRow, now_ms: i64) -> Inserted {
    let rules = store_rules(&row, now_ms, 1000, 1000);
    s.insert_state(row, rules).await.unwrap()
}

/// The maintenance read of live states' data prefixes: each distinct prefix once, with how
/// many live states' data starts so; expired states and states without data are left out.
async fn live_states_data_prefixes_are_counted(b: Backend) {
    let s = b.store.as_ref();
    let later = 1_000_000;
    for (n, data, expires_at_ms) in [
        (1, Some("sealed:AQAAAAxx"), later),
        (2, Some("sealed:AQAAAAyy"), later),
        (3, Some("{\"a\":1}"), later),
        (4, Some("sealed:AQBBBBzz"), 10),
        (5, None, later),
    ] {
        let row = StateRow {
            data: data.map(str::to_owned),
            ..capped(n, expires_at_ms, None)
        };
        insert_replacing(s, row, 0, false).await;
    }
    let mut got = s.state_data_prefixes(100, 13).await.unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![("sealed:AQAAAA".to_owned(), 2), ("{\"a\":1}".to_owned(), 1)]
    );
}

/// `/metrics` counts connections through the store: by provider, status and whether their
/// refreshes fail, every connection once.
async fn connections_are_counted_by_provider_status_and_failing(b: Backend) {
    let s = b.store.as_ref();
    for (provider, account) in [("p", "a"), ("p", "b"), ("p", "c"), ("p", "d"), ("q", "a")] {
        let key = ConnectionKey::new(provider, account);
        s.save_connection(saved(&key, tokens(b"a1", b"r1")), 1_000, Vec::new())
            .await
            .unwrap();
    }
    for (account, status) in [
        ("b", ConnectionStatus::Active),
        ("c", ConnectionStatus::NeedsReauth),
    ] {
        refresh_failed(s, &ConnectionKey::new("p", account), status, 2_000).await;
    }
    let mut counts: Vec<(String, &str, bool, u64)> = s
        .count_connections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.provider, c.status.as_str(), c.failing, c.count))
        .collect();
    counts.sort();
    let want = [
        ("p", "active", false, 2),
        ("p", "active", true, 1),
        ("p", "needs_reauth", true, 1),
        ("q", "active", false, 1),
    ]
    .map(|(p, s, f, n)| (p.to_owned(), s, f, n));
    assert_eq!(counts, want);
}

/// The accounts one person connected under several names are found by the provider and
/// their account there: active ones only, sorted, and not those of a provider whose name
/// starts with or is the start of this one's.
async fn the_accounts_signed_in_as_one_sub_are_found(b: Backend) {
    let s = b.store.as_ref();
    for (provider, account, sub) in [
        ("p", "zed", Some("alice")),
        ("p", "b", Some("alice")),
        ("p", "c", Some("bob")),
        ("p", "d", None),
        ("p", "gone", Some("alice")),
        ("p2", "a", Some("alice")),
        ("pp", "a", Some("alice")),
    ] {
        let mut save = saved(&ConnectionKey::new(provider, account), tokens(b"a1", b"r1"));
        save.identity.sub = sub.map(str::to_owned);
        s.save_connection(save, 1_000, Vec::new()).await.unwrap();
    }
    refresh_failed(
        s,
        &ConnectionKey::new("p", "gone"),
        ConnectionStatus::NeedsReauth,
        2_000,
    )
    .await;
    assert_eq!(
        s.accounts_signed_in_as("p", "alice").await.unwrap(),
        ["b", "zed"]
    );
    assert_eq!(s.accounts_signed_in_as("p", "bob").await.unwrap(), ["c"]);
    assert!(s
        .accounts_signed_in_as("p", "carol")
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .accounts_signed_in_as("q", "alice")
        .await
        .unwrap()
        .is_empty());
}

/// A key is active by its id until it is revoked; a new key that takes its name is
/// another key. The name, where given, may not make a revoked key's id read as active.
async fn a_key_is_active_by_its_id_until_revoked(b: Backend) {
    let s = &b.store;
    let (_, old) = oauthd::apikeys::create(&**s, "music", Default::default(), 1_000)
        .await
        .unwrap();
    let active = |id: String, name: Option<&'static str>| async move {
        s.key_active(&id, name).await.unwrap()
    };
    assert!(active(old.id.clone(), Some("music")).await);
    assert!(active(old.id.clone(), None).await);
    assert!(!active("no-such-id".into(), Some("music")).await);
    assert!(!active("no-such-id".into(), None).await);
    assert!(s.revoke_key("music", 2_000).await.unwrap());
    let (_, new) = oauthd::apikeys::create(&**s, "music", Default::default(), 3_000)
        .await
        .unwrap();
    assert!(!active(old.id.clone(), Some("music")).await);
    assert!(!active(old.id.clone(), None).await);
    assert!(active(new.id.clone(), Some("music")).await);
    assert!(active(new.id.clone(), None).await);
    assert!(!active(new.id, Some("another")).await);
}

/// What the operator was told of a connection's trouble is kept as written: by a save
/// that carries it (an import) and by a failure, and dropped by a refresh.
async fn what_was_told_of_a_connection_is_kept_until_a_refresh_succeeds(b: Backend) {
    let s = b.store.as_ref();
    let key = ConnectionKey::new("p", "a");
    let told = || async { s.get_connection(&key).await.unwrap().unwrap() };
    let mut save = saved(&key, tokens(b"a1", b"r1"));
    save.told = Told::NEEDS_REAUTH;
    s.save_connection(save, 1_000, Vec::new()).await.unwrap();
    let row = told().await;
    assert_eq!(row.told, Told::NEEDS_REAUTH);
    for (at, status, told_now) in [
        (2_000, ConnectionStatus::Active, Told::FAILING),
        (2_500, ConnectionStatus::NeedsReauth, Told::NEEDS_REAUTH),
    ] {
        let row = told().await;
        let g = lease(s, &key, row.generation, at).await.unwrap();
        let failure = RefreshFailure {
            status,
            error: "refused",
            retry_at_ms: None,
            now_ms: at,
            told: told_now,
            refresh_token: None,
        };
        assert!(s
            .save_refresh_failure(&key, g, failure, Vec::new())
            .await
            .unwrap());
        assert_eq!(told().await.told, told_now);
    }
    let g = lease(s, &key, told().await.generation, 3_000)
        .await
        .unwrap();
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000, Vec::new())
        .await
        .unwrap());
    assert_eq!(told().await.told, Told::NOTHING);
    let mut save = saved(&key, tokens(b"a3", b"r3"));
    save.told = Told::FAILING;
    s.save_connection(save, 4_000, Vec::new()).await.unwrap();
    assert_eq!(told().await.told, Told::FAILING);
    // A connect's save says nothing was told.
    s.save_connection(saved(&key, tokens(b"a4", b"r4")), 5_000, Vec::new())
        .await
        .unwrap();
    assert_eq!(told().await.told, Told::NOTHING);
}

/// A failed refresh whose answer brought a new refresh token (its access token unfit to
/// hand out) keeps that one in place of the stored one, which a rotating provider retired;
/// one without leaves the stored one.
async fn a_failed_refresh_keeps_a_new_refresh_token_it_is_given(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    for (now, given, kept) in [
        (2_000, None, b"r1".to_vec()),
        (4_000, Some(b"r2".to_vec()), b"r2".to_vec()),
    ] {
        let row = s.get_connection(&key).await.unwrap().unwrap();
        let g = lease(s, &key, row.generation, now).await.unwrap();
        let failure = RefreshFailure {
            status: ConnectionStatus::Active,
            error: "malformed token response",
            retry_at_ms: Some(now + 5_000),
            now_ms: now + 1,
            told: Told::NOTHING,
            refresh_token: given,
        };
        assert!(s
            .save_refresh_failure(&key, g, failure, Vec::new())
            .await
            .unwrap());
        let after = s.get_connection(&key).await.unwrap().unwrap();
        assert_eq!(after.refresh_token, Some(kept));
        assert_eq!(after.access_token, b"a1");
        assert_eq!(after.failures, row.failures + 1);
    }
}

backends!(
    a_failed_refresh_keeps_a_new_refresh_token_it_is_given,
    the_accounts_signed_in_as_one_sub_are_found,
    what_was_told_of_a_connection_is_kept_until_a_refresh_succeeds,
    a_key_is_active_by_its_id_until_revoked,
    connections_are_counted_by_provider_status_and_failing,
    live_states_data_prefixes_are_counted,
    a_claim_leaves_the_skipped_targets_deliveries_due,
    a_claim_takes_each_target_within_its_room_past_an_older_backlog,
    a_claim_past_a_backlog_takes_the_others_oldest_first,
    a_targets_room_is_shared_by_every_claimer,
    a_claim_finds_the_others_behind_any_backlog,
    a_signed_out_session_leaves_no_admin_session_behind,
    a_new_login_link_ends_the_kinds_it_names,
    a_vault_keys_note_keeps_its_first_time_until_it_ends,
    a_first_vault_keys_note_is_stamped_after_every_note_that_holds,
    the_namespace_cap_counts_what_every_path_leaves_live,
    all_namespaces_together_hold_at_most_max_total_live_states,
    a_key_holds_at_most_max_per_key_live_states_however_they_go,
    the_store_keeps_at_most_max_tombstones_the_latest_ones,
    a_subjects_states_are_listed_in_pages,
    a_refused_replace_leaves_the_subjects_states,
    imported_tokens_leave_no_time_of_a_refresh,
    a_refresh_lease_is_refused_to_a_caller_that_read_an_older_row,
    a_row_read_during_someone_elses_lease_is_stale_once_they_let_go,
    a_lease_on_a_deleted_connection_does_not_fence_its_successor,
    a_takeover_is_noted_only_for_the_lease_that_ran_out_as_read,
    a_store_keeps_the_first_id_it_is_given,
    events_are_stored_with_their_change_and_only_with_it,
    deliveries_are_claimed_once_per_lease_and_finished_by_their_claim,
    a_retry_set_before_the_clock_stepped_back_is_due,
    racing_claimers_split_the_due_deliveries,
    a_device_poll_is_recorded_only_while_no_one_else_holds_the_flow,
    a_withdrawn_flow_ends_whoever_polls_it_and_its_poll_records_nothing_after,
    a_save_returns_the_row_it_replaced_as_it_was_then,
    a_connected_poll_stores_the_connection_and_ends_the_flow_in_one_write,
    a_failed_delivery_is_listed_behind_any_number_of_newer_ones,
    a_targets_newest_are_listed_behind_any_number_of_the_others,
    a_target_gone_is_recorded_replaced_and_forgotten,
    a_retry_by_hand_leaves_an_attempt_under_way_alone,
);

/// A retry by hand while an attempt is under way leaves the delivery to that attempt:
/// made due again, it would be sent a second time beside it, and the attempt's outcome
/// (dead, or a later retry) would be recorded over the retry. Once the attempt is
/// recorded, or its claim has run out, the retry goes ahead.
async fn a_retry_by_hand_leaves_an_attempt_under_way_alone(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![delivery("d1", "t", 1_000)])
        .await
        .unwrap();
    let room = ClaimRoom::up_to(10);
    let claimed = s.claim_deliveries(2_000, 10_000, &room).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        s.retry_delivery("d1", 3_000, 100_000, false).await.unwrap(),
        Retried::UnderWay { until_ms: 12_000 }
    );
    let dead = DeliveryOutcome::Dead {
        error: "HTTP 500".into(),
    };
    assert!(s
        .finish_delivery("d1", claimed[0].attempts, dead, 4_000)
        .await
        .unwrap());
    assert_eq!(
        s.retry_delivery("d1", 5_000, 100_000, false).await.unwrap(),
        Retried::Due
    );
    // A claim whose worker died ends with its lease.
    let again = s.claim_deliveries(6_000, 10_000, &room).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(matches!(
        s.retry_delivery("d1", 15_999, 100_000, false)
            .await
            .unwrap(),
        Retried::UnderWay { .. }
    ));
    assert_eq!(
        s.retry_delivery("d1", 16_001, 100_000, false)
            .await
            .unwrap(),
        Retried::Due
    );
    let due = s.claim_deliveries(16_002, 10_000, &room).await.unwrap();
    assert_eq!(due.len(), 1, "due at once");
}

/// `events list --failed` is how an operator finds what a receiver never got: a failure
/// older than a thousand newer deliveries is still listed.
async fn a_failed_delivery_is_listed_behind_any_number_of_newer_ones(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![delivery("old", "t", 1_000)])
        .await
        .unwrap();
    let claimed = s
        .claim_deliveries(1_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let dead = DeliveryOutcome::Dead {
        error: "HTTP 404".into(),
    };
    assert!(s.finish_delivery("old", 1, dead, 2_000).await.unwrap());
    for batch in 0..12 {
        let newer = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                delivery(&format!("new{n:04}"), "t", 5_000 + n)
            })
            .collect();
        s.add_deliveries(newer).await.unwrap();
    }
    assert_eq!(ids(s, DeliveryFilter::Failed).await, vec!["old"]);
    let newest = s
        .list_deliveries(DeliveryFilter::All, None, 3)
        .await
        .unwrap();
    let newest: Vec<&str> = newest.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(newest, ["new1199", "new1198", "new1197"]);
}

/// What a target's `410 Gone` leaves in the store: one record per target, the latest
/// over an earlier one, gone once forgotten; every process on the store reads the same.
async fn a_target_gone_is_recorded_replaced_and_forgotten(b: Backend) {
    use oauthd::store::GoneTarget;
    let s = b.store.as_ref();
    assert!(s.gone_targets().await.unwrap().is_empty());
    let gone = |target: &str, hash: &str, since_ms| GoneTarget {
        target: target.into(),
        url_hash: hash.into(),
        since_ms,
    };
    s.set_target_gone(gone("b", "h1", 1_000)).await.unwrap();
    s.set_target_gone(gone("a", "h1", 2_000)).await.unwrap();
    s.set_target_gone(gone("b", "h2", 3_000)).await.unwrap();
    assert_eq!(
        s.gone_targets().await.unwrap(),
        [gone("a", "h1", 2_000), gone("b", "h2", 3_000)]
    );
    assert!(s.clear_target_gone("a").await.unwrap());
    assert!(!s.clear_target_gone("a").await.unwrap());
    assert_eq!(s.gone_targets().await.unwrap(), [gone("b", "h2", 3_000)]);
}

/// Claims every due delivery and finishes each with `outcome`.
async fn finish_all_due(s: &dyn oauthd::store::Store, now_ms: i64, outcome: DeliveryOutcome) {
    let room = ClaimRoom::up_to(10_000);
    for d in s.claim_deliveries(now_ms, 10_000, &room).await.unwrap() {
        let done = s.finish_delivery(&d.id, d.attempts, outcome.clone(), now_ms);
        assert!(done.await.unwrap(), "{}", d.id);
    }
}

/// The page shows each target's last delivery and last failure, and `events list --target`
/// one target's: found behind any number of the other targets' newer deliveries, and
/// gone from the target's listing once pruned.
async fn a_targets_newest_are_listed_behind_any_number_of_the_others(b: Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![delivery("quiet-ok", "quiet", 1_000)])
        .await
        .unwrap();
    finish_all_due(s, 1_000, DeliveryOutcome::Delivered).await;
    s.add_deliveries(vec![delivery("quiet-dead", "quiet", 1_500)])
        .await
        .unwrap();
    let dead = DeliveryOutcome::Dead {
        error: "HTTP 404".into(),
    };
    finish_all_due(s, 1_500, dead).await;
    for batch in 0..12 {
        let newer = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                delivery(&format!("busy{n:04}"), "busy", 5_000 + n)
            })
            .collect();
        s.add_deliveries(newer).await.unwrap();
    }
    finish_all_due(s, 7_000, DeliveryOutcome::Delivered).await;

    let quiet = Some("quiet");
    assert_eq!(
        target_ids(s, DeliveryFilter::Delivered, quiet).await,
        ["quiet-ok"]
    );
    assert_eq!(
        target_ids(s, DeliveryFilter::Failed, quiet).await,
        ["quiet-dead"]
    );
    assert_eq!(
        target_ids(s, DeliveryFilter::All, quiet).await,
        ["quiet-dead", "quiet-ok"]
    );
    let busy = s
        .list_deliveries(DeliveryFilter::Delivered, Some("busy"), 2)
        .await
        .unwrap();
    let busy: Vec<_> = busy.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(busy, ["busy1199", "busy1198"]);
    assert!(target_ids(s, DeliveryFilter::Failed, Some("busy"))
        .await
        .is_empty());
    assert!(target_ids(s, DeliveryFilter::All, Some("nobody"))
        .await
        .is_empty());
    // All targets' delivered ones, newest first: the quiet target's is behind the rest.
    let delivered = s
        .list_deliveries(DeliveryFilter::Delivered, None, 1_201)
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1_201);
    assert_eq!(delivered[1_200].id, "quiet-ok");

    // Pruned (finished before 2,000: the quiet target's two) means gone from its listing.
    assert_eq!(s.prune_deliveries(2_000).await.unwrap(), 2);
    assert!(target_ids(s, DeliveryFilter::All, quiet).await.is_empty());
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A pending device flow `id` of p/a, due at `due`.
async fn device_flow(s: &dyn oauthd::store::Store, id: &str, due: i64) {
    device_flow_for(s, id, "a", due).await
}

/// A pending device flow `id` of p/`account`, due at `due`.
async fn device_flow_for(s: &dyn oauthd::store::Store, id: &str, account: &str, due: i64) {
    let row = DeviceFlowRow {
        id: id.into(),
        provider: "p".into(),
        account: account.into(),
        device_code: b"sealed-code".to_vec(),
        user_code: "ABCD-EFGH".into(),
        verification_uri: "https://p.example/device".into(),
        verification_uri_complete: Some("https://p.example/device?code=ABCD-EFGH".into()),
        interval_ms: 5_000,
        expires_at_ms: due + 600_000,
        status: DeviceFlowStatus::Pending,
        detail: None,
        error: None,
        next_poll_at_ms: due,
        created_at_ms: due,
        started_by: "cli".into(),
    };
    assert!(s.insert_device_flow(row, 10).await.unwrap());
}

/// Once a claim taken at `t0` for 200 ms has run out (in Redis's time too), another
/// claim of flow `id`, for a minute: when it was taken, and the claim.
async fn claimed_once_the_first_ran_out(
    s: &dyn oauthd::store::Store,
    id: &str,
    t0: i64,
) -> (i64, oauthd::store::ClaimedPoll) {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t1 = t0 + 300;
    let claimed = s.claim_device_poll(id, t1, 60_000).await.unwrap();
    (t1, claimed.expect("a claim once the first ran out"))
}

fn finished(status: DeviceFlowStatus) -> DevicePollOutcome {
    DevicePollOutcome::Finished {
        status,
        error: format!("{status}_code"),
        detail: status.to_string(),
    }
}

fn pending_again() -> DevicePollOutcome {
    DevicePollOutcome::Pending {
        interval_ms: 5_000,
        delay_ms: 0,
    }
}

fn connected_as(account: &str, access: &[u8]) -> DevicePollOutcome {
    DevicePollOutcome::Connected {
        save: Box::new(saved(
            &ConnectionKey::new("p", account),
            tokens(access, b"r"),
        )),
        detail: "connected".into(),
    }
}

/// A reconnect's save returns the row it replaced as it was then, not as the caller read it
/// before: a refresh saved in between holds the only live refresh token of the grant the
/// reconnect leaves behind (when it made the connection another account, that grant is
/// revoked, and it was the rotated-out one read before that was). A new connection
/// replaces nothing; a device flow's save answers the same.
async fn a_save_returns_the_row_it_replaced_as_it_was_then(b: Backend) {
    let s = b.store.as_ref();
    let key = ConnectionKey::new("p", "a");
    let was = s
        .save_connection(saved(&key, tokens(b"a1", b"r1")), 1_000, Vec::new())
        .await
        .unwrap();
    assert!(was.is_none(), "{was:?}");
    // Read by the reconnect; then refreshed, rotating r1 to r2.
    let read = s.get_connection(&key).await.unwrap().unwrap();
    let g = lease(s, &key, read.generation, 2_000).await.expect("lease");
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000, Vec::new())
        .await
        .unwrap());
    let bob = ConnectionSave {
        identity: AccountIdentity {
            sub: Some("bob".into()),
            ..AccountIdentity::default()
        },
        ..saved(&key, tokens(b"a3", b"r3"))
    };
    let was = s
        .save_connection(bob, 4_000, Vec::new())
        .await
        .unwrap()
        .expect("the row replaced");
    assert_eq!(was.refresh_token.as_deref(), Some(&b"r2"[..]));
    assert_eq!(was.identity.sub, None);
    assert_eq!(was.last_refresh_at_ms, Some(3_000));

    // A device flow's tokens for it: the row as the save above left it.
    let t0 = now_ms();
    device_flow(s, "f1", t0).await;
    let claim = s
        .claim_device_poll("f1", t0, 60_000)
        .await
        .unwrap()
        .unwrap();
    let recorded = s
        .finish_device_poll(
            "f1",
            Some(&claim.claim),
            connected_as("a", b"a4"),
            t0,
            Vec::new(),
        )
        .await
        .unwrap();
    let PollRecorded::Yes(Some(was)) = recorded else {
        panic!("{recorded:?}")
    };
    assert_eq!(was.refresh_token.as_deref(), Some(&b"r3"[..]));
    assert_eq!(was.identity.sub.as_deref(), Some("bob"));
    // A device flow's tokens for a new connection replace nothing.
    device_flow_for(s, "f2", "new", t0).await;
    let recorded = s
        .finish_device_poll("f2", None, connected_as("new", b"a5"), t0, Vec::new())
        .await
        .unwrap();
    assert!(matches!(recorded, PollRecorded::Yes(None)), "{recorded:?}");
}

/// A poll that ran past its claim's lease must not free the flow under the process that
/// claimed it next (a third would then poll beside it), nor end it: only the live claim,
/// or anyone while nobody holds one, records an outcome.
/// A flow whose connection was deleted is withdrawn whoever holds its claim (the delete
/// waits for no poll), and the poll under way records nothing after it, tokens or not.
async fn a_withdrawn_flow_ends_whoever_polls_it_and_its_poll_records_nothing_after(b: Backend) {
    let s = b.store.as_ref();
    let t0 = now_ms();
    device_flow(s, "f1", t0).await;
    let polling = s
        .claim_device_poll("f1", t0, 60_000)
        .await
        .unwrap()
        .unwrap();
    let withdrawn = DevicePollOutcome::Withdrawn {
        error: "connection_deleted".into(),
        detail: "deleted".into(),
    };
    let events = vec![delivery("d1", "t", t0)];
    assert!(s
        .finish_device_poll("f1", None, withdrawn, t0, events)
        .await
        .unwrap()
        .recorded());
    let flow = s.get_device_flow("f1").await.unwrap().unwrap();
    assert_eq!(flow.status, DeviceFlowStatus::Failed);
    assert_eq!(flow.error.as_deref(), Some("connection_deleted"));
    assert_eq!(ids(s, DeliveryFilter::All).await.len(), 1);
    let claim = Some(polling.claim.as_str());
    let tokens = connected_as("a", b"at-late");
    assert!(!s
        .finish_device_poll("f1", claim, tokens, t0, Vec::new())
        .await
        .unwrap()
        .recorded());
    let key = ConnectionKey::new("p", "a");
    assert!(s.get_connection(&key).await.unwrap().is_none());
}

async fn a_device_poll_is_recorded_only_while_no_one_else_holds_the_flow(b: Backend) {
    let s = b.store.as_ref();
    let t0 = now_ms();
    device_flow(s, "f1", t0).await;
    let first = s.claim_device_poll("f1", t0, 200).await.unwrap().unwrap();
    assert!(s.claim_device_poll("f1", t0, 200).await.unwrap().is_none());
    // Found expired by a process that holds no claim: not while one is live.
    let expired = finished(DeviceFlowStatus::Expired);
    assert!(!s
        .finish_device_poll("f1", None, expired, t0, Vec::new())
        .await
        .unwrap()
        .recorded());
    // The first claim runs out; another process claims the next poll.
    let (t1, second) = claimed_once_the_first_ran_out(s, "f1", t0).await;
    assert_ne!(first.claim, second.claim);
    let late = Some(first.claim.as_str());
    assert!(!s
        .finish_device_poll("f1", late, pending_again(), t1, Vec::new())
        .await
        .unwrap()
        .recorded());
    assert!(
        s.claim_device_poll("f1", t1, 60_000)
            .await
            .unwrap()
            .is_none(),
        "the late poll freed the flow under the second claim"
    );
    let failed = finished(DeviceFlowStatus::Failed);
    let events = vec![delivery("d1", "t", t1)];
    assert!(!s
        .finish_device_poll("f1", late, failed, t1, events)
        .await
        .unwrap()
        .recorded());
    let flow = s.get_device_flow("f1").await.unwrap().unwrap();
    assert_eq!(flow.status, DeviceFlowStatus::Pending);
    assert_eq!(flow.error, None);
    assert_eq!(flow.user_code, "ABCD-EFGH");
    assert!(ids(s, DeliveryFilter::All).await.is_empty());
    // The live claim records, and lets go.
    let live = Some(second.claim.as_str());
    assert!(s
        .finish_device_poll("f1", live, pending_again(), t1, Vec::new())
        .await
        .unwrap()
        .recorded());
    let third = s
        .claim_device_poll("f1", t1, 60_000)
        .await
        .unwrap()
        .unwrap();
    let denied = finished(DeviceFlowStatus::Denied);
    let events = vec![delivery("d2", "t", t1)];
    assert!(s
        .finish_device_poll("f1", Some(&third.claim), denied, t1, events)
        .await
        .unwrap()
        .recorded());
    let flow = s.get_device_flow("f1").await.unwrap().unwrap();
    assert_eq!(flow.status, DeviceFlowStatus::Denied);
    // Why, as a code apps read, kept with it.
    assert_eq!(flow.error.as_deref(), Some("denied_code"));
    assert!(flow.device_code.is_empty());
    // Nor is the code the person typed kept once the flow ended.
    assert_eq!(
        (flow.user_code.as_str(), flow.verification_uri_complete),
        ("", None)
    );
    assert_eq!(ids(s, DeliveryFilter::All).await, vec!["d2"]);
}

/// The provider has redeemed the device code once it hands out tokens: the connection and
/// the flow's end are one write, so no crash or failed write between them leaves the flow
/// pending, to be polled again with the spent code.
async fn a_connected_poll_stores_the_connection_and_ends_the_flow_in_one_write(b: Backend) {
    let s = b.store.as_ref();
    // p/a is connected already, and its refreshes fail: the device flow reconnects it.
    let key = connected(&b).await;
    refresh_failed(s, &key, ConnectionStatus::Active, 2_000).await;
    let t0 = now_ms();
    device_flow(s, "f1", t0).await;
    let first = s.claim_device_poll("f1", t0, 200).await.unwrap().unwrap();
    let (t1, second) = claimed_once_the_first_ran_out(s, "f1", t0).await;
    // Tokens in hand end the flow, even from a poll that outlived its claim.
    let events = vec![delivery("d1", "t", t1), delivery("d2", "t", t1)];
    assert!(s
        .finish_device_poll(
            "f1",
            Some(&first.claim),
            connected_as("a", b"a9"),
            t1,
            events
        )
        .await
        .unwrap()
        .recorded());
    let flow = s.get_device_flow("f1").await.unwrap().unwrap();
    assert_eq!(flow.status, DeviceFlowStatus::Connected);
    assert!(flow.device_code.is_empty());
    assert_eq!(
        (flow.user_code.as_str(), flow.verification_uri_complete),
        ("", None)
    );
    let conn = s
        .get_connection(&ConnectionKey::new("p", "a"))
        .await
        .unwrap()
        .expect("the connection, stored with the flow's end");
    assert_eq!(conn.access_token, b"a9");
    assert_eq!(conn.status, ConnectionStatus::Active);
    // A reconnect: the failing refreshes are behind it.
    assert_eq!(conn.failures, 0);
    assert_eq!(conn.last_error, None);
    assert_eq!(conn.retry_at_ms, None);
    assert_eq!(conn.failing_since_ms, None);
    assert_eq!(conn.told, Told::NOTHING);
    assert_eq!(conn.connected_at_ms, Some(t1));
    let mut got = ids(s, DeliveryFilter::All).await;
    got.sort();
    assert_eq!(got, vec!["d1", "d2"]);
    // Once ended, nothing more is stored for it, whoever asks.
    for claim in [Some(second.claim.as_str()), None] {
        let events = vec![delivery("d3", "t", t1)];
        assert!(!s
            .finish_device_poll("f1", claim, connected_as("a", b"a2"), t1, events)
            .await
            .unwrap()
            .recorded());
    }
    let conn = s
        .get_connection(&ConnectionKey::new("p", "a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.access_token, b"a9");
    // Nor for a flow that ended another way: no connection appears.
    device_flow(s, "f2", t1).await;
    let expired = finished(DeviceFlowStatus::Expired);
    assert!(s
        .finish_device_poll("f2", None, expired, t1, Vec::new())
        .await
        .unwrap()
        .recorded());
    assert!(!s
        .finish_device_poll("f2", None, connected_as("b", b"b1"), t1, Vec::new())
        .await
        .unwrap()
        .recorded());
    let key_b = ConnectionKey::new("p", "b");
    assert!(s.get_connection(&key_b).await.unwrap().is_none());
    assert_eq!(ids(s, DeliveryFilter::All).await.len(), 2);
}

/// SQLite keeps the counts in the writer, once per group commit: no trigger runs on each
/// insert or delete of a state (they were an eighth of a create + consume pair's work).
#[test]
fn sqlite_runs_no_trigger_on_each_state_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oauthd.db");
    drop(
        oauthd::store::sqlite::SqliteStore::open(&db, oauthd::store::sqlite::Durability::Full)
            .unwrap(),
    );
    let triggers: Vec<String> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'states'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(triggers, Vec::<String>::new());
}

/// On SQLite a create at its namespace's cap sets at most 1,000 of the namespace's expired
/// states aside, those that expired first, found through the namespace's own index
/// whatever other namespaces hold expired. It set every one aside in one write, and read
/// every expired state not yet swept, of every namespace, on each create refused at a
/// full namespace, holding the writer all the while.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_create_at_a_full_namespace_sets_a_bounded_number_aside() {
    use oauthd::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oauthd.db");
    let s =
        oauthd::store::sqlite::SqliteStore::open(&db, oauthd::store::sqlite::Durability::Normal)
            .unwrap();
    let row = |namespace: &str, n: u32, expires_at_ms: i64| {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&n.to_be_bytes());
        StateRow {
            key_hash: SecretHash(hash),
            namespace: namespace.into(),
            ..capped(0, expires_at_ms, None)
        }
    };
    let rules = |max_live: u64, now_ms: i64| InsertRules {
        max_live,
        now_ms,
        keep_until_ms: 10_000_000,
        replace_subject: false,
        max_per_subject: 100,
        max_total: 100_000,
        max_tombstones: 100_000,
        max_per_key: 100_000,
    };
    // 1,500 states of "full" that expire at 20 s, and 12,000 of "other" at 10 s.
    let (full, other) = (1_500u32, 12_000u32);
    let rows: Vec<StateRow> = (0..full)
        .map(|n| row("full", n, 20_000))
        .chain((full..full + other).map(|n| row("other", n, 10_000)))
        .collect();
    for chunk in rows.chunks(500) {
        let inserts = chunk
            .iter()
            .map(|r| s.insert_state(r.clone(), rules(100_000, 1_000)));
        for done in futures::future::join_all(inserts).await {
            assert_eq!(done.unwrap(), Inserted::Stored { replaced: vec![] });
        }
    }
    let count = |sql: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    let full_rows = "SELECT count(*) FROM states WHERE namespace = 'full'";
    let tombstones = "SELECT count(*) FROM expired_states WHERE namespace = 'full'";
    // All expired at 30 s, "other"'s first; "full" is at its cap of 1,500. 1,000 of its
    // are set aside for the create, the other 500 left, and none of "other"'s.
    let probe = row("full", 1_000_000, 1_000_000);
    assert_eq!(
        s.insert_state(probe, rules(1_500, 30_000)).await.unwrap(),
        Inserted::Stored { replaced: vec![] }
    );
    assert_eq!((count(full_rows), count(tombstones)), (501, 1_000));
    let others = "SELECT count(*) FROM states WHERE namespace = 'other'";
    assert_eq!(count(others), i64::from(other));
    let counted = "SELECT live FROM namespace_counts WHERE namespace = 'full'";
    assert_eq!(count(counted), 501);
}

/// On SQLite, after inserts racing for the last places of two namespaces, a consume by
/// namespace prefix (the broker's callback), a code tried right and one tried on an
/// expired state, and expired states set aside by an insert, the stored counts (the
/// store's totals too) are exactly the rows left.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_counts_are_the_rows_left_after_racing_inserts_and_every_kind_of_take() {
    use oauthd::store::StateStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oauthd.db");
    let s = oauthd::store::sqlite::SqliteStore::open(&db, oauthd::store::sqlite::Durability::Full)
        .unwrap();
    let row = |namespace: &str, n: u8, expires_at_ms: i64| StateRow {
        namespace: namespace.into(),
        ..capped(n, expires_at_ms, None)
    };
    let rules = |now_ms: i64| InsertRules {
        max_live: 3,
        now_ms,
        keep_until_ms: 2_000_000,
        replace_subject: false,
        max_per_subject: 100,
        max_total: 1000,
        max_tombstones: 1000,
        max_per_key: 1000,
    };
    let racing = (0..20u8).map(|n| {
        let namespace = if n < 10 { "oauth:p:a" } else { "other" };
        s.insert_state(row(namespace, n, 1_000_000), rules(10_000))
    });
    let results = futures::future::join_all(racing).await;
    let stored: Vec<u8> = (0..20u8)
        .filter(|&n| {
            matches!(
                results[n as usize].as_ref().unwrap(),
                Inserted::Stored { .. }
            )
        })
        .collect();
    assert_eq!(
        (stored.iter().filter(|&&n| n < 10).count(), stored.len()),
        (3, 6),
        "exactly three of each namespace's ten: {results:?}"
    );

    let prefix = NamespaceFilter::Prefix("oauth:p:".into());
    let taken = s
        .take_state(SecretHash([stored[0]; 32]), &prefix)
        .await
        .unwrap();
    assert!(matches!(taken, Taken::Row(_)), "{taken:?}");

    let code = SecretHash([0xc0; 32]);
    for (n, expires_at_ms) in [(30, 1_000_000), (31, 20_000)] {
        let mut guarded = row("codes", n, expires_at_ms);
        guarded.secret = Some(StateSecret {
            hash: code,
            attempts_left: 3,
        });
        assert_eq!(
            s.insert_state(guarded, rules(10_000)).await.unwrap(),
            Inserted::Stored { replaced: vec![] }
        );
    }
    let right = s
        .attempt_state(SecretHash([30; 32]), "codes", code, 10_000)
        .await
        .unwrap();
    assert!(matches!(right, Attempted::Matched(_)), "{right:?}");
    let late = s
        .attempt_state(SecretHash([31; 32]), "codes", code, 30_000)
        .await
        .unwrap();
    assert!(matches!(late, Attempted::Expired { .. }), "{late:?}");
    // Once "other"'s three have expired, an insert there sets them aside as tombstones.
    assert_eq!(
        s.insert_state(row("other", 40, 1_100_000), rules(1_050_000))
            .await
            .unwrap(),
        Inserted::Stored { replaced: vec![] }
    );
    drop(s);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let table = |sql: &str| -> Vec<(String, i64)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let counted = table(
        "SELECT namespace, live FROM namespace_counts WHERE live > 0 AND namespace NOT LIKE '*%'
         ORDER BY 1",
    );
    let rows = table("SELECT namespace, count(*) FROM states GROUP BY namespace ORDER BY 1");
    assert_eq!(counted, rows);
    assert_eq!(rows, vec![("oauth:p:a".into(), 2), ("other".into(), 1)]);
    // The store's totals too: all namespaces' states, and the tombstones kept.
    use crate::common::{count_rows, stored_total};
    assert_eq!(stored_total(&db, "*states"), count_rows(&db, "states"));
    assert_eq!(stored_total(&db, "*states"), 3);
    let tombstones = stored_total(&db, "*tombstones");
    assert_eq!(tombstones, count_rows(&db, "expired_states"));
    assert_eq!(tombstones, 3);
}

/// Deliveries an earlier version left due in its one due set (`od`, every target's) are
/// counted, and claimed once moved to their target's due set by the first claims. (And
/// the due sets lose ids whose delivery is gone.)
#[cfg(feature = "redis")]
#[test]
fn redis_moves_an_earlier_versions_due_deliveries_to_their_targets() {
    let b = redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(moves_an_earlier_versions_due_deliveries(&b));
}

#[cfg(feature = "redis")]
async fn moves_an_earlier_versions_due_deliveries(b: &Backend) {
    let s = b.store.as_ref();
    s.add_deliveries(vec![
        delivery("old1", "t", 1_000),
        delivery("old2", "u", 1_100),
    ])
    .await
    .unwrap();
    let server = b._redis.as_ref().expect("a redis-server");
    for command in [
        "DEL oauthd:od:t oauthd:od:u oauthd:odt",
        "ZADD oauthd:od 1000 old1 1100 old2",
    ] {
        assert!(server.command(command).is_some(), "{command}");
    }
    assert_eq!(s.pending_deliveries().await.unwrap(), 2);
    let got = s
        .claim_deliveries(2_000, 10_000, &ClaimRoom::up_to(10))
        .await
        .unwrap();
    let mut ids: Vec<_> = got.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["old1", "old2"]);
    assert_eq!(server.command("EXISTS oauthd:od").as_deref(), Some(":0"));
    for d in got {
        let done = s.finish_delivery(&d.id, d.attempts, DeliveryOutcome::Delivered, 3_000);
        assert!(done.await.unwrap());
    }
    assert_eq!(s.pending_deliveries().await.unwrap(), 0);
    assert_eq!(server.command("EXISTS oauthd:odt").as_deref(), Some(":0"));

    // Deliveries whose hash is gone (deleted by hand, evicted) leave their due set at the
    // first claim that finds them, instead of taking their target's room for good.
    let gone: Vec<_> = (1..=2)
        .map(|i| delivery(&format!("gone{i}"), "t", 4_000 + i))
        .collect();
    s.add_deliveries(gone).await.unwrap();
    s.add_deliveries(vec![delivery("next", "t", 4_100)])
        .await
        .unwrap();
    assert!(server
        .command("DEL oauthd:o:gone1 oauthd:o:gone2")
        .is_some());
    let room = ClaimRoom {
        limit: 10,
        per_target: 2,
        busy: Default::default(),
        longest_wait_ms: None,
    };
    let first = s.claim_deliveries(5_000, 10_000, &room).await.unwrap();
    assert!(first.is_empty(), "{first:?}");
    let then = s.claim_deliveries(5_000, 10_000, &room).await.unwrap();
    let ids: Vec<_> = then.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["next"]);
    assert_eq!(s.pending_deliveries().await.unwrap(), 1);
}

/// Deliveries an earlier version logged only in the log of all (`ol`) reach their
/// target's log (`ol:<target>`) a batch per claim, so `events list --target` and the page
/// find them; a pruned delivery leaves its target's log too.
#[cfg(feature = "redis")]
#[test]
fn redis_adds_an_earlier_versions_deliveries_to_their_targets_logs() {
    let b = redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(adds_an_earlier_versions_deliveries_to_target_logs(&b));
}

#[cfg(feature = "redis")]
async fn adds_an_earlier_versions_deliveries_to_target_logs(b: &Backend) {
    let s = b.store.as_ref();
    let server = b._redis.as_ref().expect("a redis-server");
    // 1,500 deliveries (more than a batch), some sharing a millisecond, over two targets.
    for batch in 0..15 {
        let older = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let target = if n % 2 == 0 { "t" } else { "u" };
                delivery(&format!("old{n:04}"), target, 1_000 + n / 3)
            })
            .collect();
        s.add_deliveries(older).await.unwrap();
    }
    assert!(server.command("DEL oauthd:ol:t oauthd:ol:u").is_some());
    assert!(target_ids(s, DeliveryFilter::All, Some("t"))
        .await
        .is_empty());
    let none = ClaimRoom {
        limit: 10,
        per_target: 0,
        busy: Default::default(),
        longest_wait_ms: None,
    };
    for _ in 0..2 {
        let claimed = s.claim_deliveries(1_000, 10_000, &none).await.unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
    }
    // The cursor stands at the log's last delivery.
    let filled = r#"EVAL "return string.match(redis.call('GET', KEYS[1]), ' old1499$') and 1 or 0" 1 oauthd:olf"#;
    assert_eq!(server.command(filled).as_deref(), Some(":1"));
    // An earlier version still running beside this one logs a new delivery in the log
    // only: the next claim adds it to its target's log too.
    s.add_deliveries(vec![delivery("from-old", "t", 2_000)])
        .await
        .unwrap();
    assert!(server.command("ZREM oauthd:ol:t from-old").is_some());
    let claimed = s.claim_deliveries(1_000, 10_000, &none).await.unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
    assert_eq!(
        server.command("ZSCORE oauthd:ol:t from-old").as_deref(),
        Some("$4")
    );
    assert!(server.command("ZREM oauthd:ol:t from-old").is_some());
    assert!(server.command("ZREM oauthd:ol from-old").is_some());
    for (target, count) in [("t", 750), ("u", 750)] {
        let listed = s
            .list_deliveries(DeliveryFilter::All, Some(target), 10_000)
            .await
            .unwrap();
        assert_eq!(listed.len(), count, "{target}");
        assert!(listed.iter().all(|d| d.target == target));
    }
    assert_eq!(server.command("ZCARD oauthd:ol:t").as_deref(), Some(":750"));

    // Pruning takes a delivery out of its target's log with the rest.
    s.add_deliveries(vec![delivery("done", "v", 3_000)])
        .await
        .unwrap();
    finish_all_due(s, 3_000, DeliveryOutcome::Delivered).await;
    assert_eq!(server.command("ZCARD oauthd:ol:v").as_deref(), Some(":1"));
    assert!(s.prune_deliveries(3_001).await.unwrap() >= 1);
    assert_eq!(server.command("ZCARD oauthd:ol:v").as_deref(), Some(":0"));
}

/// A delivery whose record cannot be read (a field written by hand, or by another
/// version) ends as dead at its first claim, with why, instead of failing every claim
/// that reaches it (each lease, for good) and holding the others back; listings skip it.
#[cfg(feature = "redis")]
#[test]
fn redis_ends_an_unreadable_delivery_and_claims_the_rest() {
    let b = redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ends_an_unreadable_delivery(&b));
}

#[cfg(feature = "redis")]
async fn ends_an_unreadable_delivery(b: &Backend) {
    let s = b.store.as_ref();
    let server = b._redis.as_ref().expect("a redis-server");
    s.add_deliveries(vec![
        delivery("bad", "t", 1_000),
        delivery("bad-attempts", "t", 1_010),
        delivery("odd-attempts", "t", 1_015),
        delivery("not-a-hash", "u", 1_020),
        delivery("good", "t", 1_100),
        delivery("other", "u", 1_200),
    ])
    .await
    .unwrap();
    // A field Rust cannot read; a count the claim's script cannot add to; a key that is
    // no hash at all.
    for command in [
        "HSET oauthd:o:bad created_at yesterday",
        "HSET oauthd:o:bad-attempts attempts x",
        // A number Lua reads, but no whole one `HINCRBY` adds to.
        "HSET oauthd:o:odd-attempts attempts 1.5",
        "DEL oauthd:o:not-a-hash",
        "SET oauthd:o:not-a-hash x",
    ] {
        assert!(server.command(command).is_some(), "{command}");
    }
    let room = ClaimRoom::up_to(10);
    let claimed = s.claim_deliveries(2_000, 10_000, &room).await.unwrap();
    let mut ids: Vec<_> = claimed.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["good", "other"]);
    for id in ["bad", "bad-attempts", "odd-attempts"] {
        let dead = format!(
            r#"EVAL "return redis.call('HGET', KEYS[1], 'status') == 'dead' and 1 or 0" 1 oauthd:o:{id}"#
        );
        assert_eq!(server.command(&dead).as_deref(), Some(":1"), "{id}");
    }
    for (set, id) in [
        ("t", "bad"),
        ("t", "bad-attempts"),
        ("t", "odd-attempts"),
        ("u", "not-a-hash"),
    ] {
        assert_eq!(
            server
                .command(&format!("ZSCORE oauthd:od:{set} {id}"))
                .as_deref(),
            Some("$-1"),
            "{id} left its due set"
        );
    }
    // Past the lease, nothing fails and nothing of it comes back.
    for d in claimed {
        let done = s.finish_delivery(&d.id, d.attempts, DeliveryOutcome::Delivered, 3_000);
        assert!(done.await.unwrap());
    }
    assert!(s
        .claim_deliveries(60_000, 10_000, &room)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.pending_deliveries().await.unwrap(), 0);
    let mut listed = ids_of(
        s.list_deliveries(DeliveryFilter::All, None, 10)
            .await
            .unwrap(),
    );
    listed.sort();
    assert_eq!(listed, ["good", "other"]);
    // Pruning goes past what is no delivery, and leaves it be; a finished_at that is no
    // number counts as long ago.
    assert!(server.command("HSET oauthd:o:good finished_at x").is_some());
    assert_eq!(s.prune_deliveries(i64::MAX).await.unwrap(), 5);
    assert_eq!(
        server.command("GET oauthd:o:not-a-hash").as_deref(),
        Some("$1")
    );
}

#[cfg(feature = "redis")]
fn ids_of(rows: Vec<oauthd::store::DeliveryRow>) -> Vec<String> {
    rows.into_iter().map(|d| d.id).collect()
}

/// A connection record that does not read (a field written by hand, or by another version
/// during a rolling upgrade) is skipped by the listing that oauthd's start and the
/// refresher read, instead of failing it: one bad record must not stop every account's
/// refreshes, or the start. The listing that rekey, key pruning and check read fails
/// instead: a record skipped there would have its key pruned, its tokens lost for good.
#[cfg(feature = "redis")]
#[test]
fn redis_lists_the_connections_that_read_past_one_that_does_not() {
    let b = redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let good = connected(&b).await;
        let server = b._redis.as_ref().expect("a redis-server");
        for command in [
            "HSET oauthd:c:p/bad provider p account bad status active token_type bearer access_token xx created 1 updated 1 generation notanumber",
            "ZADD oauthd:cs 0 p/bad",
        ] {
            assert!(server.command(command).is_some(), "{command}");
        }
        let listed = b.store.list_connections().await.unwrap();
        let keys: Vec<_> = listed.iter().map(|c| c.key()).collect();
        assert_eq!(keys, [good]);
        assert!(b.store.list_all_connections().await.is_err());
    });
}

/// A `redis_prefix` with glob characters (`t[1]:`) is matched as written: its own admin
/// sessions are listed and signed out (a SCAN pattern built from it as it is matched
/// `t1:` instead, so "sign out everywhere" signed out nobody), and another deployment's
/// under `t1:` are left alone.
#[cfg(feature = "redis")]
#[test]
fn redis_prefix_with_glob_characters_is_matched_as_written() {
    use oauthd::store::{AdminSecretKind, AdminStore};
    let server = crate::common::redis::RedisServer::start();
    let open = |prefix: &str| {
        let target =
            match oauthd::store::target::parse(&server.url(), Some(prefix.into()), None).unwrap() {
                oauthd::store::target::StoreTarget::Redis(t) => t,
                other => panic!("{other:?}"),
            };
        oauthd::store::redis::RedisStore::open(&target, std::time::Duration::from_secs(60)).unwrap()
    };
    let (ours, theirs) = (open("t[1]:"), open("t1:"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let far = 9_000_000_000_000;
        ours.insert_admin_secret(SecretHash([1; 32]), AdminSecretKind::Session, far)
            .await
            .unwrap();
        theirs
            .insert_admin_secret(SecretHash([2; 32]), AdminSecretKind::Session, far)
            .await
            .unwrap();
        let listed = ours.list_admin_sessions(1_000).await.unwrap();
        assert_eq!(listed, [(SecretHash([1; 32]), far)]);
        assert_eq!(ours.delete_admin_sessions(None).await.unwrap(), 1);
        assert!(ours.list_admin_sessions(1_000).await.unwrap().is_empty());
        assert_eq!(theirs.list_admin_sessions(1_000).await.unwrap().len(), 1);
    });
}

//! The storage traits called directly, on a real SQLite file and a real redis-server: rules
//! both backends must keep, without an HTTP round trip in the way.

use oauthd::store::{AccountIdentity, ConnectionKey, SealedTokens};
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

/// Connection p/a, stored at t=1000 with tokens a1/r1.
async fn connected(b: &Backend) -> ConnectionKey {
    let key = ConnectionKey::new("p", "a");
    let identity = AccountIdentity::default();
    let stored = b
        .store
        .save_connection(&key, tokens(b"a1", b"r1"), identity, 1_000);
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
async fn a_refresh_lease_is_refused_to_a_caller_that_read_an_older_row(b: Backend) {
    let (s, key) = (b.store.as_ref(), connected(&b).await);
    let seen = s.get_connection(&key).await.unwrap().unwrap();
    // The first process refreshes and lets go of the lease.
    let g = lease(s, &key, seen.generation, 2_000)
        .await
        .expect("a free lease");
    assert!(s
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000)
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
        .save_refreshed(&key, g, tokens(b"a2", b"r2"), 3_000)
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
    };
    assert!(s.save_refresh_failure(&key, g, failure).await.unwrap());
    assert_eq!(lease(s, &key, during.generation, 7_000).await, None);
}

backends!(
    a_refresh_lease_is_refused_to_a_caller_that_read_an_older_row,
    a_row_read_during_someone_elses_lease_is_stale_once_they_let_go,
);

//! API keys: how apps authenticate to oauthd.
//!
//! A key is shown once at creation and stored only as SHA-256: the key is 256 random
//! bits, so a fast hash is enough (no password hashing needed). A key may be limited to
//! namespace patterns.

use crate::clock::now_ms;
use crate::namespace::{check_pattern, pattern_matches, Namespace};
use crate::secret::{ApiKey, SecretHash};
use crate::store::{ApiKeyRecord, KeyStore, StoreError};

pub const MAX_KEY_NAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key name is 1 to {MAX_KEY_NAME_CHARS} letters, digits, '.', '_' or '-'")]
    BadName,
    #[error("namespace pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("the system random number generator failed")]
    Entropy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or(KeyError::BadName)
}

/// Creates a key and returns it with its record; the key itself is never stored.
pub async fn create(
    store: &dyn KeyStore,
    name: &str,
    namespaces: Vec<String>,
) -> Result<(ApiKey, ApiKeyRecord), KeyError> {
    check_name(name)?;
    for pattern in &namespaces {
        check_pattern(pattern).map_err(|e| KeyError::BadPattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
    }
    let key = ApiKey::generate().map_err(|_| KeyError::Entropy)?;
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        namespaces: (!namespaces.is_empty()).then_some(namespaces),
        created_at_ms: now_ms(),
        revoked_at_ms: None,
    };
    store.insert_key(record.clone(), key.hash()).await?;
    Ok((key, record))
}

/// The active key matching what a client presented, if any.
pub async fn authenticate(
    store: &dyn KeyStore,
    presented: &str,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    // Every stored key has the prefix: anything else can be refused without a lookup.
    if !presented.starts_with(crate::secret::API_KEY_PREFIX) {
        return Ok(None);
    }
    store.find_active_key(SecretHash::of(presented)).await
}

/// Whether the key may use this namespace.
pub fn may_use(record: &ApiKeyRecord, ns: &Namespace) -> bool {
    match &record.namespaces {
        None => true,
        Some(patterns) => patterns.iter().any(|p| pattern_matches(p, ns)),
    }
}

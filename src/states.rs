//! The state service: TTL policy, issuing and consuming states.
//!
//! Owns the rules (which TTL a namespace gets, when a state counts as expired, what a
//! namespace mismatch does); the store only keeps rows, the HTTP layer only translates.

use crate::clock::Clock;
use crate::metrics;
use crate::namespace::{pattern_matches, Namespace};
use crate::secret::StateValue;
use crate::store::{InsertRules, NamespaceFilter, StateRow, StateStore, StoreError, Taken};
use std::sync::Arc;
use std::time::Duration;

/// Default and maximum TTL for a namespace (or for all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlRule {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Most live (unconsumed, unexpired) states the namespace may hold: a flood of creates
    /// is refused (429) instead of filling the disk.
    pub max_states: u64,
}

#[derive(Debug, Clone)]
pub struct StatePolicy {
    pub base: TtlRule,
    /// Per-namespace rules keyed by pattern; the most specific (longest) match wins.
    pub overrides: Vec<(String, TtlRule)>,
    /// Largest `data` accepted, in bytes of compact JSON.
    pub max_data_bytes: usize,
    /// How long after expiry a consume still answers "expired" (410) rather than
    /// "unknown" (404), on every backend.
    pub expired_grace: Duration,
}

impl StatePolicy {
    /// A namespace's default TTL, in words ("60 minutes").
    pub fn default_ttl_text(&self, ns: &Namespace) -> String {
        ttl_text(self.rule_for(ns).default_ttl.as_secs())
    }

    pub fn rule_for(&self, ns: &Namespace) -> TtlRule {
        self.overrides
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, ns))
            .max_by_key(|(pattern, _)| (!pattern.ends_with('*'), pattern.len()))
            .map(|(_, rule)| *rule)
            .unwrap_or(self.base)
    }
}

/// Seconds in words, for people: "60 minutes", "1 minute", "90 seconds".
pub fn ttl_text(secs: u64) -> String {
    match secs {
        s if s % 60 == 0 && s >= 120 => format!("{} minutes", s / 60),
        60 => "1 minute".into(),
        1 => "1 second".into(),
        s => format!("{s} seconds"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "unknown state: never issued in this namespace, already consumed, or expired long ago"
    )]
    NotFound,
    #[error("the state has expired")]
    Expired { namespace: String },
    #[error("ttl_seconds must be between 1 and {max} for namespace {namespace}")]
    TtlOutOfRange { namespace: String, max: u64 },
    #[error("data is {size} bytes of JSON; at most {max} are accepted")]
    DataTooLarge { size: usize, max: usize },
    #[error("namespace {namespace} already holds {max} live states (states.max_states); consume or let some expire first")]
    NamespaceFull { namespace: String, max: u64 },
    #[error("the system random number generator failed")]
    Entropy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct IssuedState {
    pub state: StateValue,
    pub namespace: Namespace,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug)]
pub struct ConsumedState {
    pub namespace: String,
    pub data: Option<serde_json::Value>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

pub struct StateService {
    store: Arc<dyn StateStore>,
    policy: StatePolicy,
    clock: Clock,
}

impl StateService {
    pub fn new(store: Arc<dyn StateStore>, policy: StatePolicy, clock: Clock) -> Self {
        StateService {
            store,
            policy,
            clock,
        }
    }

    pub fn policy(&self) -> &StatePolicy {
        &self.policy
    }

    fn grace_ms(&self) -> i64 {
        i64::try_from(self.policy.expired_grace.as_millis()).unwrap_or(i64::MAX)
    }

    /// Issues a new state. `ttl_seconds` defaults to the namespace's rule.
    pub async fn issue(
        &self,
        namespace: Namespace,
        ttl_seconds: Option<u64>,
        data: Option<serde_json::Value>,
    ) -> Result<IssuedState, StateError> {
        let state = StateValue::generate().map_err(|_| StateError::Entropy)?;
        self.issue_value(state, namespace, ttl_seconds, data).await
    }

    /// Issues a state value the caller generated (it needed the value before the data).
    pub async fn issue_value(
        &self,
        state: StateValue,
        namespace: Namespace,
        ttl_seconds: Option<u64>,
        data: Option<serde_json::Value>,
    ) -> Result<IssuedState, StateError> {
        let rule = self.policy.rule_for(&namespace);
        let ttl = match ttl_seconds {
            None => rule.default_ttl,
            Some(s) if s >= 1 && s <= rule.max_ttl.as_secs() => Duration::from_secs(s),
            Some(_) => {
                return Err(StateError::TtlOutOfRange {
                    namespace: namespace.to_string(),
                    max: rule.max_ttl.as_secs(),
                })
            }
        };
        let data = match data {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let text = v.to_string();
                if text.len() > self.policy.max_data_bytes {
                    return Err(StateError::DataTooLarge {
                        size: text.len(),
                        max: self.policy.max_data_bytes,
                    });
                }
                Some(text)
            }
        };
        let created_at_ms = self.clock.now_ms();
        let expires_at_ms = created_at_ms.saturating_add(ttl.as_millis() as i64);
        let stored = self
            .store
            .insert_state(
                StateRow {
                    key_hash: state.hash(),
                    namespace: namespace.to_string(),
                    data,
                    created_at_ms,
                    expires_at_ms,
                },
                InsertRules {
                    max_live: rule.max_states,
                    now_ms: created_at_ms,
                    keep_until_ms: expires_at_ms.saturating_add(self.grace_ms()),
                },
            )
            .await?;
        if !stored {
            log::warn!(
                "namespace {namespace} is full ({} live states): create refused",
                rule.max_states
            );
            return Err(StateError::NamespaceFull {
                namespace: namespace.to_string(),
                max: rule.max_states,
            });
        }
        metrics::state_created(namespace.as_str());
        log::debug!(
            "state {state} issued in {namespace}, ttl {}s",
            ttl.as_secs()
        );
        Ok(IssuedState {
            state,
            namespace,
            created_at_ms,
            expires_at_ms,
        })
    }

    /// Consumes a state of `namespace` exactly once.
    ///
    /// Only a state of that namespace is touched: one presented under another namespace
    /// stays as it is and answers `NotFound`, exactly like a state that never existed, so
    /// a caller that may not use a namespace can neither burn its states nor learn that
    /// they exist. (Up to 0.1 a mismatch burned the state and answered 409.) An expired
    /// state is gone afterwards, whatever the outcome.
    pub async fn consume(
        &self,
        state: &StateValue,
        namespace: &Namespace,
    ) -> Result<ConsumedState, StateError> {
        let filter = NamespaceFilter::Exact(namespace.to_string());
        let consumed = self.take(state, &filter).await?;
        metrics::state_consumed(Some(&consumed.namespace), "ok");
        log::debug!("state {state} consumed in {namespace}");
        Ok(consumed)
    }

    /// Consumes a state whose namespace starts with `prefix` (the broker's callback knows
    /// the provider, not the account); states of other namespaces are untouched.
    pub async fn consume_prefixed(
        &self,
        state: &StateValue,
        prefix: &str,
    ) -> Result<ConsumedState, StateError> {
        let consumed = self
            .take(state, &NamespaceFilter::Prefix(prefix.to_owned()))
            .await?;
        metrics::state_consumed(Some(&consumed.namespace), "ok");
        Ok(consumed)
    }

    /// Takes the state; records the outcomes decided here (unknown, expired). An unknown
    /// state is counted under the namespace it was presented for.
    async fn take(
        &self,
        state: &StateValue,
        filter: &NamespaceFilter,
    ) -> Result<ConsumedState, StateError> {
        let now = self.clock.now_ms();
        let unknown = || {
            log::debug!("state {state}: unknown");
            let presented = match filter {
                NamespaceFilter::Exact(ns) => Some(ns.as_str()),
                NamespaceFilter::Prefix(_) => None,
            };
            metrics::state_consumed(presented, "unknown");
            StateError::NotFound
        };
        // Past expiry plus the grace window a state is as unknown as one never issued,
        // whether or not the backend has forgotten it yet.
        let expired = |namespace: String, expired_at: Option<i64>| {
            if expired_at.is_some_and(|at| at.saturating_add(self.grace_ms()) <= now) {
                return unknown();
            }
            log::debug!("state {state}: expired");
            metrics::state_consumed(Some(&namespace), "expired");
            StateError::Expired { namespace }
        };
        let row = match self.store.take_state(state.hash(), filter).await? {
            Taken::Missing => return Err(unknown()),
            Taken::ExpiredTombstone {
                namespace,
                expired_at_ms,
            } => return Err(expired(namespace, expired_at_ms)),
            Taken::Row(row) => row,
        };
        if row.expires_at_ms <= now {
            return Err(expired(row.namespace, Some(row.expires_at_ms)));
        }
        let data = match row.data {
            None => None,
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::unavailable("reading a state's data", e))?,
            ),
        };
        Ok(ConsumedState {
            namespace: row.namespace,
            data,
            created_at_ms: row.created_at_ms,
            expires_at_ms: row.expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(d: u64, m: u64) -> TtlRule {
        TtlRule {
            default_ttl: Duration::from_secs(d),
            max_ttl: Duration::from_secs(m),
            max_states: 100_000,
        }
    }

    #[test]
    fn most_specific_namespace_rule_wins() {
        let policy = StatePolicy {
            base: rule(3600, 86400),
            overrides: vec![
                ("oauth:*".into(), rule(1800, 3600)),
                ("oauth:spotify".into(), rule(600, 900)),
                ("*".into(), rule(100, 200)),
            ],
            max_data_bytes: 1024,
            expired_grace: Duration::from_secs(60),
        };
        let ns = |s| Namespace::parse(s).unwrap();
        assert_eq!(policy.rule_for(&ns("oauth:spotify")), rule(600, 900));
        assert_eq!(policy.rule_for(&ns("oauth:tidal")), rule(1800, 3600));
        assert_eq!(policy.rule_for(&ns("2fa")), rule(100, 200));
        let no_overrides = StatePolicy {
            overrides: vec![],
            ..policy
        };
        assert_eq!(no_overrides.rule_for(&ns("2fa")), rule(3600, 86400));
    }
}

//! Which TTL and limits a namespace's states get: `[states]` and the namespace tables.

use crate::namespace::{pattern_matches, Namespace};
use std::time::Duration;

/// Default and maximum TTL for a namespace (or for all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlRule {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Most live (unconsumed, unexpired) states the namespace may hold: a flood of creates
    /// is refused (429) instead of filling the disk.
    pub max_states: u64,
    /// Most live states one subject may hold in the namespace: listing and revoking a
    /// subject stay bounded, and one user cannot fill the namespace.
    pub max_per_subject: u64,
    /// Tries of its code a state with a secret allows when the create does not say (the
    /// wrong one that uses the last deletes it).
    pub max_attempts: u32,
    /// Most tries a create may ask for (`max_attempts_ceiling`).
    pub attempts_ceiling: u32,
    /// Whether `sliding` states may be created, and the longest any may live.
    pub sliding: bool,
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct StatePolicy {
    pub base: TtlRule,
    /// Per-namespace rules keyed by pattern; the most specific (longest) match wins.
    pub overrides: Vec<(String, TtlRule)>,
    /// Largest `data` accepted, in bytes of compact JSON.
    pub max_data_bytes: usize,
    /// Live states all namespaces together may hold (connect flows included); as many
    /// tombstones of expired states are kept at most.
    pub max_total_states: u64,
    /// Live states the states one API key created may hold, in all namespaces together:
    /// a key limited to namespace patterns can make up namespaces, each with a cap of its
    /// own, and could otherwise fill the store for every other app.
    pub max_states_per_key: u64,
    /// How long after expiry a consume still answers "expired" (410) rather than
    /// "unknown" (404), on every backend.
    pub expired_grace: Duration,
    /// How long a state read by verify answers from memory: a consume or revoke made by
    /// another process is seen by verify within this long (by this process at once).
    pub verify_cache: Duration,
}

impl StatePolicy {
    /// A namespace's default TTL, in words ("60 minutes").
    pub fn default_ttl_text(&self, ns: &Namespace) -> String {
        ttl_text(self.rule_for(ns).default_ttl.as_secs())
    }

    /// The longest TTL a create through the API may ask for: the bound the API's
    /// description gives. oauthd's own namespaces' rules are not the API's; `[states]`'s
    /// own counts unless a `"*"` pattern overrides it for every namespace.
    pub fn longest_ttl(&self) -> Duration {
        let every = self.overrides.iter().any(|(pattern, _)| pattern == "*");
        let base = if every {
            Duration::ZERO
        } else {
            self.base.max_ttl
        };
        self.overrides
            .iter()
            .filter(|(pattern, _)| {
                !crate::namespace::RESERVED_PREFIXES
                    .iter()
                    .any(|p| pattern.starts_with(p))
            })
            .map(|(_, rule)| rule.max_ttl)
            .fold(base, Duration::max)
    }

    pub fn rule_for(&self, ns: &Namespace) -> TtlRule {
        self.matching(ns)
            .map(|(_, rule)| *rule)
            .unwrap_or(self.base)
    }

    /// The config table `ns`'s rule comes from, as the file spells it: a namespace's own
    /// table (which takes what it leaves out from `[states]`), or `[states]`.
    pub fn table_for(&self, ns: &Namespace) -> String {
        match self.matching(ns) {
            Some((pattern, _)) => format!(
                "[states.namespaces.\"{pattern}\"], or [states] where that table leaves it out"
            ),
            None => "[states]".to_owned(),
        }
    }

    /// The table whose `max_ttl_seconds` bounds `ns`: the pattern that matches it, else
    /// one of its own (whose other limits are `[states]`'s, as now).
    pub fn ttl_table_for(&self, ns: &Namespace) -> String {
        let pattern = match self.matching(ns) {
            Some((pattern, _)) => pattern.as_str(),
            None => ns.as_str(),
        };
        format!("[states.namespaces.\"{pattern}\"]")
    }

    fn matching(&self, ns: &Namespace) -> Option<&(String, TtlRule)> {
        self.overrides
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, ns))
            .max_by_key(|(pattern, _)| (!pattern.ends_with('*'), pattern.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(d: u64, m: u64) -> TtlRule {
        TtlRule {
            default_ttl: Duration::from_secs(d),
            max_ttl: Duration::from_secs(m),
            max_states: 100_000,
            max_per_subject: 1000,
            max_attempts: 5,
            attempts_ceiling: 100,
            sliding: true,
            max_lifetime: Duration::from_secs(86400),
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
            max_total_states: 1_000_000,
            max_states_per_key: 1_000_000,
            expired_grace: Duration::from_secs(60),
            verify_cache: Duration::from_secs(1),
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

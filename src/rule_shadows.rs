//! Namespace tables that leave out a limit a broader table sets. Only the most specific
//! table that matches a namespace applies, and what it leaves out comes from `[states]`:
//! a `"bridge:sess"` table written to change a default TTL quietly lifts the maximum and
//! the `sliding = false` of `"bridge:*"` for that namespace. Said at start and by `check`.

use crate::config::NamespaceConfig;
use crate::namespace::pattern_covers;
use crate::states::TtlRule;
use std::collections::BTreeMap;

/// One sentence per table whose rule is looser than a broader table's on a value it
/// leaves out.
pub fn looser_than_broader(
    tables: &BTreeMap<String, NamespaceConfig>,
    rules: &[(String, TtlRule)],
) -> Vec<String> {
    let mut said = Vec::new();
    for (pattern, rule) in rules {
        let Some(own) = tables.get(pattern) else {
            continue;
        };
        // The broader tables, the most specific first: the first that sets a value is
        // the one the operator would expect it from.
        let mut broader: Vec<(&String, &NamespaceConfig)> = tables
            .iter()
            .filter(|(other, _)| pattern_covers(other, pattern))
            .collect();
        broader.sort_by_key(|(other, _)| std::cmp::Reverse(other.len()));
        let from = |read: &fn(&NamespaceConfig) -> Option<u64>| {
            broader
                .iter()
                .find_map(|(other, table)| read(table).map(|v| (other.as_str(), v)))
        };
        // Each limit as a number, larger being looser (`sliding`: 1 allowed, 0 not).
        type Read = fn(&NamespaceConfig) -> Option<u64>;
        let limits: [(&str, bool, u64, Read); 7] = [
            (
                "max_ttl_seconds",
                own.max_ttl_seconds.is_some(),
                rule.max_ttl.as_secs(),
                |t| t.max_ttl_seconds,
            ),
            (
                "max_states",
                own.max_states.is_some(),
                rule.max_states,
                |t| t.max_states,
            ),
            (
                "max_states_per_subject",
                own.max_states_per_subject.is_some(),
                rule.max_per_subject,
                |t| t.max_states_per_subject,
            ),
            (
                "max_attempts",
                own.max_attempts.is_some(),
                u64::from(rule.max_attempts),
                |t| t.max_attempts.map(u64::from),
            ),
            (
                "max_attempts_ceiling",
                own.max_attempts_ceiling.is_some(),
                u64::from(rule.attempts_ceiling),
                |t| t.max_attempts_ceiling.map(u64::from),
            ),
            (
                "sliding",
                own.sliding.is_some(),
                u64::from(rule.sliding),
                |t| t.sliding.map(u64::from),
            ),
            // A lifetime bounds sliding states only.
            (
                "max_lifetime_seconds",
                own.max_lifetime_seconds.is_some() || !rule.sliding,
                rule.max_lifetime.as_secs(),
                |t| t.max_lifetime_seconds,
            ),
        ];
        let show = |name: &str, v: u64| match name {
            "sliding" => (v == 1).to_string(),
            _ => v.to_string(),
        };
        let looser: Vec<String> = limits
            .iter()
            .filter(|(_, own_set, _, _)| !own_set)
            .filter_map(|(name, _, here, read)| {
                let (other, there) = from(read)?;
                (*here > there).then(|| {
                    format!(
                        "{name} is {} there (from [states]), not {} as in [states.namespaces.\"{other}\"]",
                        show(name, *here),
                        show(name, there)
                    )
                })
            })
            .collect();
        if !looser.is_empty() {
            said.push(format!(
                "[states.namespaces.\"{pattern}\"] leaves out what a broader table that matches the same namespaces sets, and only the most specific table applies: {}; write them in its table if they should hold there",
                looser.join("; ")
            ));
        }
    }
    said
}

//! `[states]` and its namespace tables: the rules creates are held to and the sweeper's pace.

use super::{invalid, ConfigError};
use crate::namespace::check_pattern;
use crate::states::{StatePolicy, TtlRule};
use crate::store::sweeper::SweepPolicy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Ten years: beyond this a "state" is not a state, and milliseconds stay far from overflow.
const TTL_CEILING_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Most wrong codes a state may ever be allowed: the highest `max_attempts_ceiling`.
pub const MAX_ATTEMPTS_CEILING: u32 = 100;
/// Tries of its code a state gets when neither its create nor the config says.
const DEFAULT_ATTEMPTS: u32 = 5;
/// The TTL a state gets when its create names none and the config sets no default: 60
/// minutes, long enough for a user who is slow at the provider's login and 2FA.
const DEFAULT_TTL_SECONDS: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatesConfig {
    /// Unset: 3600, or `max_ttl_seconds` when that is lower.
    pub default_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: u64,
    pub expired_grace_seconds: u64,
    /// How long a state read by verify answers from memory (0: read the store every time).
    pub verify_cache_seconds: u64,
    pub sweep_interval_seconds: u64,
    pub sweep_batch: usize,
    pub sweep_per_second: u32,
    pub sweep_min_per_second: u32,
    pub max_data_bytes: usize,
    /// Live states one namespace may hold.
    pub max_states: u64,
    /// Live states all namespaces together may hold; as many tombstones of expired
    /// states are kept at most.
    pub max_total_states: u64,
    /// Live states one subject may hold in a namespace (bounds listing and revoking it).
    pub max_states_per_subject: u64,
    /// Live states the states one API key created may hold, in all namespaces together;
    /// unset: `default_max_states_per_key` of `max_total_states`.
    pub max_states_per_key: Option<u64>,
    /// Tries of its code a state created with a `secret` allows, unless the create says;
    /// unset: 5, or `max_attempts_ceiling` when lower.
    pub max_attempts: Option<u32>,
    /// Most tries a create may ask for.
    pub max_attempts_ceiling: u32,
    /// Whether creates may ask for `sliding` states, and the latest a sliding state may
    /// live to, counted from its creation.
    pub sliding: bool,
    /// Unset: `DEFAULT_MAX_LIFETIME_SECONDS`, or a namespace's default TTL when longer.
    pub max_lifetime_seconds: Option<u64>,
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

impl Default for StatesConfig {
    fn default() -> Self {
        StatesConfig {
            default_ttl_seconds: None,
            max_ttl_seconds: 86400,
            expired_grace_seconds: 86400,
            verify_cache_seconds: 1,
            sweep_interval_seconds: 60,
            sweep_batch: 200,
            sweep_per_second: 20_000,
            sweep_min_per_second: 1_000,
            max_data_bytes: 16 * 1024,
            max_states: 100_000,
            max_total_states: 250_000,
            max_states_per_subject: 1000,
            max_states_per_key: None,
            max_attempts: None,
            max_attempts_ceiling: MAX_ATTEMPTS_CEILING,
            sliding: true,
            max_lifetime_seconds: None,
            namespaces: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub default_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: Option<u64>,
    pub max_states: Option<u64>,
    pub max_states_per_subject: Option<u64>,
    pub max_attempts: Option<u32>,
    pub max_attempts_ceiling: Option<u32>,
    pub sliding: Option<bool>,
    pub max_lifetime_seconds: Option<u64>,
}

impl StatesConfig {
    /// The checked `[states]`: what creates are held to, how the sweeper paces itself, and
    /// what to say of namespace tables looser than a broader one.
    pub(super) fn policies(&self) -> Result<(StatePolicy, SweepPolicy, Vec<String>), ConfigError> {
        let s = self;
        // A default given nowhere follows a lower maximum, as a namespace's does: setting
        // only `max_ttl_seconds = 600` is not an error about a default nobody wrote.
        let default_ttl = s
            .default_ttl_seconds
            .unwrap_or(DEFAULT_TTL_SECONDS.min(s.max_ttl_seconds));
        // Likewise the tries a create gets when it does not say, below a lower ceiling.
        let default_attempts = s
            .max_attempts
            .unwrap_or(DEFAULT_ATTEMPTS.min(s.max_attempts_ceiling));
        let base = ttl_rule(
            "states",
            &NamespaceConfig {
                default_ttl_seconds: Some(default_ttl),
                max_ttl_seconds: Some(s.max_ttl_seconds),
                max_states: Some(s.max_states),
                max_states_per_subject: Some(s.max_states_per_subject),
                max_attempts: Some(default_attempts),
                max_attempts_ceiling: Some(s.max_attempts_ceiling),
                sliding: Some(s.sliding),
                max_lifetime_seconds: Some(lifetime_or_default(
                    s.max_lifetime_seconds,
                    default_ttl,
                )),
            },
        )?;
        let mut overrides = Vec::new();
        for (pattern, ns) in &s.namespaces {
            let key = format!("states.namespaces.{pattern:?}");
            check_pattern(pattern).map_err(|e| invalid(&key, e.to_string()))?;
            let max = ns.max_ttl_seconds.unwrap_or(s.max_ttl_seconds);
            let ns_default_ttl = ns.default_ttl_seconds.unwrap_or(default_ttl.min(max));
            let ceiling = ns.max_attempts_ceiling.unwrap_or(s.max_attempts_ceiling);
            let resolved = NamespaceConfig {
                default_ttl_seconds: Some(ns_default_ttl),
                max_ttl_seconds: Some(max),
                max_states: Some(ns.max_states.unwrap_or(s.max_states)),
                max_states_per_subject: Some(
                    ns.max_states_per_subject
                        .unwrap_or(s.max_states_per_subject),
                ),
                max_attempts: Some(ns.max_attempts.unwrap_or(default_attempts.min(ceiling))),
                max_attempts_ceiling: Some(ceiling),
                sliding: Some(ns.sliding.unwrap_or(s.sliding)),
                max_lifetime_seconds: Some(lifetime_or_default(
                    ns.max_lifetime_seconds.or(s.max_lifetime_seconds),
                    ns_default_ttl,
                )),
            };
            overrides.push((pattern.clone(), ttl_rule(&key, &resolved)?));
        }
        let rule_warnings = crate::rule_shadows::looser_than_broader(&s.namespaces, &overrides);
        if s.sweep_interval_seconds == 0 {
            return Err(invalid(
                "states.sweep_interval_seconds",
                "must be at least 1",
            ));
        }
        if !(100..=1_000_000).contains(&s.sweep_per_second) {
            return Err(invalid(
                "states.sweep_per_second",
                "must be between 100 and 1000000",
            ));
        }
        if !(1..=s.sweep_per_second).contains(&s.sweep_min_per_second) {
            return Err(invalid(
                "states.sweep_min_per_second",
                format!(
                    "must be between 1 and states.sweep_per_second ({})",
                    s.sweep_per_second
                ),
            ));
        }
        if !(1..=100_000).contains(&s.sweep_batch) {
            return Err(invalid(
                "states.sweep_batch",
                "must be between 1 and 100000",
            ));
        }
        if s.expired_grace_seconds > TTL_CEILING_SECONDS {
            return Err(invalid(
                "states.expired_grace_seconds",
                "must be at most ten years",
            ));
        }
        if s.verify_cache_seconds > 60 {
            return Err(invalid("states.verify_cache_seconds", "must be at most 60"));
        }
        if !(1..=100_000_000).contains(&s.max_total_states) {
            return Err(invalid(
                "states.max_total_states",
                "must be between 1 and 100000000",
            ));
        }
        let max_states_per_key = s
            .max_states_per_key
            .unwrap_or_else(|| crate::states::default_max_states_per_key(s.max_total_states));
        if !(1..=100_000_000).contains(&max_states_per_key) {
            return Err(invalid(
                "states.max_states_per_key",
                "must be between 1 and 100000000",
            ));
        }
        if !(1..=1024 * 1024).contains(&s.max_data_bytes) {
            return Err(invalid(
                "states.max_data_bytes",
                "must be between 1 and 1048576",
            ));
        }
        Ok((
            StatePolicy {
                base,
                overrides,
                max_data_bytes: s.max_data_bytes,
                max_total_states: s.max_total_states,
                max_states_per_key,
                expired_grace: Duration::from_secs(s.expired_grace_seconds),
                verify_cache: Duration::from_secs(s.verify_cache_seconds),
            },
            SweepPolicy {
                interval: Duration::from_secs(s.sweep_interval_seconds),
                grace: Duration::from_secs(s.expired_grace_seconds),
                batch: s.sweep_batch,
                per_second: s.sweep_per_second,
                min_per_second: s.sweep_min_per_second,
                max_tombstones: s.max_total_states,
            },
            rule_warnings,
        ))
    }
}

/// A sliding state's longest life when none is set: 30 days.
const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 30 * 86400;

/// `max_lifetime_seconds` as set, else the default, raised to the rule's default TTL: a
/// lifetime nobody wrote never makes a rule whose sliding states cannot be made (one that
/// was written does, and is refused).
fn lifetime_or_default(set: Option<u64>, default_ttl: u64) -> u64 {
    set.unwrap_or(DEFAULT_MAX_LIFETIME_SECONDS.max(default_ttl))
}

/// Checks one namespace rule, every value given (`policies` fills in the defaults).
fn ttl_rule(key: &str, values: &NamespaceConfig) -> Result<TtlRule, ConfigError> {
    let default = values.default_ttl_seconds.unwrap_or(0);
    let max = values.max_ttl_seconds.unwrap_or(0);
    let max_states = values.max_states.unwrap_or(0);
    let max_per_subject = values.max_states_per_subject.unwrap_or(0);
    if !(1..=100_000).contains(&max_per_subject) {
        return Err(invalid(
            format!("{key}.max_states_per_subject"),
            "must be between 1 and 100000",
        ));
    }
    let max_attempts = values.max_attempts.unwrap_or(0);
    let attempts_ceiling = values.max_attempts_ceiling.unwrap_or(0);
    let max_lifetime = values.max_lifetime_seconds.unwrap_or(0);
    if !(1..=MAX_ATTEMPTS_CEILING).contains(&attempts_ceiling) {
        return Err(invalid(
            format!("{key}.max_attempts_ceiling"),
            format!("must be between 1 and {MAX_ATTEMPTS_CEILING}"),
        ));
    }
    default_fits(
        key,
        ("max_attempts", max_attempts.into(), DEFAULT_ATTEMPTS.into()),
        ("max_attempts_ceiling", attempts_ceiling.into()),
    )?;
    if !(1..=TTL_CEILING_SECONDS).contains(&max_lifetime) {
        return Err(invalid(
            format!("{key}.max_lifetime_seconds"),
            format!("must be between 1 and {TTL_CEILING_SECONDS}"),
        ));
    }
    if max_states == 0 || max_states > 100_000_000 {
        return Err(invalid(
            format!("{key}.max_states"),
            "must be between 1 and 100000000",
        ));
    }
    if max == 0 || max > TTL_CEILING_SECONDS {
        return Err(invalid(
            format!("{key}.max_ttl_seconds"),
            format!("must be between 1 and {TTL_CEILING_SECONDS}"),
        ));
    }
    default_fits(
        key,
        ("default_ttl_seconds", default, DEFAULT_TTL_SECONDS),
        ("max_ttl_seconds", max),
    )?;
    let sliding = values.sliding.unwrap_or(false);
    if sliding && default > max_lifetime {
        return Err(invalid(
            format!("{key}.max_lifetime_seconds"),
            format!("must be at least default_ttl_seconds ({default}) while sliding states are allowed (one created without ttl_seconds could never be made): raise it, lower default_ttl_seconds, or set sliding = false"),
        ));
    }
    Ok(TtlRule {
        default_ttl: Duration::from_secs(default),
        max_ttl: Duration::from_secs(max),
        max_states,
        max_per_subject,
        max_attempts,
        attempts_ceiling,
        sliding,
        max_lifetime: Duration::from_secs(max_lifetime),
    })
}

/// Refuses table `key`'s default (its name, value, and what `[states]` has when nobody
/// sets it) at 0 or above its limit (name and value). Left out, a default is never above
/// its table's limit: the error says what it would be.
fn default_fits(
    key: &str,
    (name, value, unset): (&str, u64, u64),
    (limit_name, limit): (&str, u64),
) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(
            format!("{key}.{name}"),
            format!("must be between 1 and {limit_name} ({limit})"),
        ));
    }
    if value > limit {
        let left_out = if key == "states" {
            format!("the lower of {unset} and {limit_name}")
        } else {
            format!("[states]' {name}, held to this table's {limit_name}")
        };
        return Err(invalid(
            format!("{key}.{name}"),
            format!("is {value}, more than {limit_name} ({limit}): lower it, or leave it out (then it is {left_out})"),
        ));
    }
    Ok(())
}

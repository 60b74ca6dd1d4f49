//! `[proxy]`, `[events]` and `[limits]`: each table with its defaults and its checks.

use super::{invalid, within, ConfigError};
use serde::Deserialize;
use std::time::Duration;

/// `[proxy]`: bounds on one request through `/v1/proxy/…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout_seconds: u64,
    pub read_timeout_seconds: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let p = crate::proxy::ProxyPolicy::default();
        ProxyConfig {
            max_request_bytes: p.max_request_bytes as u64,
            max_response_bytes: p.max_response_bytes,
            timeout_seconds: p.timeout.as_secs(),
            read_timeout_seconds: p.read_timeout.as_secs(),
        }
    }
}

impl ProxyConfig {
    pub(super) fn policy(&self) -> Result<crate::proxy::ProxyPolicy, ConfigError> {
        let within = |key: &str, v: u64, range| within("proxy", key, v, range);
        const GIB: u64 = 1024 * 1024 * 1024;
        Ok(crate::proxy::ProxyPolicy {
            max_request_bytes: within("max_request_bytes", self.max_request_bytes, 0..=GIB)?
                as usize,
            max_response_bytes: within(
                "max_response_bytes",
                self.max_response_bytes,
                1024..=64 * GIB,
            )?,
            timeout: Duration::from_secs(within("timeout_seconds", self.timeout_seconds, 1..=600)?),
            read_timeout: Duration::from_secs(within(
                "read_timeout_seconds",
                self.read_timeout_seconds,
                1..=3600,
            )?),
        })
    }
}

/// `[events]`: when a failing refresh is worth telling, and how deliveries are retried.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub refresh_failing_after_seconds: u64,
    pub retry_for_seconds: u64,
    pub retry_min_seconds: u64,
    pub retry_max_seconds: u64,
    pub keep_days: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let p = crate::notify::EventsPolicy::default();
        EventsConfig {
            refresh_failing_after_seconds: p.failing_after.as_secs(),
            retry_for_seconds: p.retry_for.as_secs(),
            retry_min_seconds: p.retry_min.as_secs(),
            retry_max_seconds: p.retry_max.as_secs(),
            keep_days: p.keep.as_secs() / 86400,
        }
    }
}

impl EventsConfig {
    pub(super) fn policy(&self) -> Result<crate::notify::EventsPolicy, ConfigError> {
        let e = self;
        let within = |key: &str, v: u64, range| within("events", key, v, range);
        let min = within("retry_min_seconds", e.retry_min_seconds, 1..=3600)?;
        let max = within("retry_max_seconds", e.retry_max_seconds, 1..=86400)?;
        if max < min {
            return Err(invalid(
                "events.retry_max_seconds",
                "must be at least events.retry_min_seconds",
            ));
        }
        Ok(crate::notify::EventsPolicy {
            failing_after: Duration::from_secs(within(
                "refresh_failing_after_seconds",
                e.refresh_failing_after_seconds,
                0..=30 * 86400,
            )?),
            retry_for: Duration::from_secs(within(
                "retry_for_seconds",
                e.retry_for_seconds,
                1..=30 * 86400,
            )?),
            retry_min: Duration::from_secs(min),
            retry_max: Duration::from_secs(max),
            keep: Duration::from_secs(86400 * within("keep_days", e.keep_days, 1..=365)?),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub public_per_minute: u32,
    pub failed_auth_per_minute: u32,
    /// Connect and device flow starts, imports and disconnects one API key may ask for per minute.
    pub connection_changes_per_minute: u32,
    pub trusted_proxies: Vec<crate::ip_range::IpRange>,
    /// Device flows one API key (or the page) may have pending at once.
    pub max_device_flows_per_key: u32,
    /// Connections one key limited to accounts may reach before it may start flows or
    /// import for another account (0: no cap).
    pub max_connections_per_key: u32,
    /// Open connections from one client address (an IPv6 /64), trusted proxies aside
    /// (0: no cap).
    pub max_connections_per_address: u32,
    /// How long a request body may take to arrive, whole.
    pub body_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            public_per_minute: 120,
            failed_auth_per_minute: 30,
            connection_changes_per_minute: 60,
            trusted_proxies: Vec::new(),
            max_device_flows_per_key: 20,
            max_connections_per_key: 1000,
            max_connections_per_address: 256,
            body_seconds: 30,
        }
    }
}

impl LimitsConfig {
    /// Checks the bounds, and gives `body_seconds` back once it is in range.
    pub(super) fn check(&self) -> Result<u64, ConfigError> {
        if !(1..=10_000).contains(&self.max_device_flows_per_key) {
            return Err(invalid(
                "limits.max_device_flows_per_key",
                "must be between 1 and 10000",
            ));
        }
        if self.max_connections_per_key > 1_000_000 {
            return Err(invalid(
                "limits.max_connections_per_key",
                "must be at most 1000000 (0: no cap)",
            ));
        }
        if self.max_connections_per_address > 1_000_000 {
            return Err(invalid(
                "limits.max_connections_per_address",
                "must be at most 1000000 (0: no cap)",
            ));
        }
        within("limits", "body_seconds", self.body_seconds, 1..=3600)
    }
}

//! Wall-clock time in the forms oauthd stores (unix milliseconds) and shows (RFC 3339).

use chrono::{DateTime, SecondsFormat, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-21T08:35:59.123Z`.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

//! When a connection's token is refreshed: the pure rules (no I/O), apart from the
//! machinery that runs them. A caller's `min_ttl` counts at most half the token's lifetime;
//! the background refresher renews tokens before they expire and refresh tokens before
//! they die of disuse; failures back off exponentially.

use crate::store::{ConnectionRow, ConnectionStatus};
use std::time::Duration;

/// The first wait after a failed refresh; each failure after it doubles it.
const BACKOFF_FIRST_MS: i64 = 5_000;
/// The background refresher renews a token this long before it expires (or at half its
/// lifetime, for short-lived tokens).
const PROACTIVE_MS: i64 = 5 * 60_000;
/// Refresh tokens that die when idle are used this long before they would.
const KEEP_ALIVE_MARGIN_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest wait between refreshes that fail.
pub(super) const BACKOFF_MAX_MS: i64 = 10 * 60_000;

/// Whether `row`'s token was obtained on a clock more than a minute ahead of `now`
/// once this process's clock was seen to step back (`Clock::stepped_back`): its expiry was
/// counted on the later clock and says nothing of the time left, so it is refreshed rather
/// than trusted. Without a step seen, a row ahead is another instance's, on a clock ahead
/// of this one's: refreshing it would have the two refresh each other's tokens for good.
pub(super) fn obtained_before_step(row: &ConnectionRow, now: i64, stepped_back: bool) -> bool {
    stepped_back && crate::clock::is_ahead(obtained_at(row), now)
}

/// When `row`'s token was obtained, as the clock of the process that stored it read: its
/// last refresh, else the (re)connect or import that stored it (an import leaves
/// `last_refresh_at` unset). Not `updated_at`, which a failed refresh moves on.
pub(super) fn obtained_at(row: &ConnectionRow) -> i64 {
    row.last_refresh_at_ms
        .or(row.connected_at_ms)
        .unwrap_or(row.updated_at_ms)
}

/// Until when a failed refresh is not tried again: its backoff, unless the failure was
/// stored on a clock since stepped back (a backoff counted after the step holds).
pub(super) fn backing_off_until(row: &ConnectionRow, now: i64, stepped_back: bool) -> Option<i64> {
    let stored_ahead = stepped_back && crate::clock::is_ahead(row.updated_at_ms, now);
    row.retry_at_ms.filter(|&r| r > now && !stored_ahead)
}

/// Half the lifetime the provider gave the row's access token, when known.
pub(super) fn half_life_ms(row: &ConnectionRow) -> Option<i64> {
    match (row.access_expires_at_ms, row.last_refresh_at_ms) {
        (Some(expires), Some(issued)) if expires > issued => {
            Some(expires.saturating_sub(issued) / 2)
        }
        _ => None,
    }
}

/// Whether a token expiring at `expires_at_ms` still has `min_ttl` at `now`, where
/// `min_ttl` counts at most half the token's lifetime: asking an hour of a provider whose
/// tokens live 30 minutes would otherwise refresh on every call. A token without a known
/// expiry is good until it is refused.
pub(super) fn lasts(
    expires_at_ms: Option<i64>,
    half_life_ms: Option<i64>,
    min_ttl: Duration,
    now: i64,
) -> bool {
    let wanted = i64::try_from(min_ttl.as_millis()).unwrap_or(i64::MAX);
    let needed = half_life_ms.map_or(wanted, |half| wanted.min(half));
    expires_at_ms.is_none_or(|at| at.saturating_sub(now) >= needed)
}

/// Whether the background refresher should refresh this connection now: its token is
/// within 5 minutes of expiry (or half its lifetime, when shorter), or its refresh token
/// would die of disuse within a week (or half the idle limit, when shorter).
pub(super) fn due_for_refresh(
    row: &ConnectionRow,
    idle_expiry: Option<Duration>,
    now: i64,
    stepped_back: bool,
) -> bool {
    if row.status != ConnectionStatus::Active || backing_off_until(row, now, stepped_back).is_some()
    {
        return false;
    }
    if row.refresh_token.is_none() {
        // Nothing to refresh with: due once its access token has expired, when the
        // refresh records that only the user can renew it (`needs_reauth`, told to
        // `[[notify]]` targets) rather than at an app's next call, which may never come.
        return row.access_expires_at_ms.is_some_and(|at| at <= now);
    }
    if obtained_before_step(row, now, stepped_back) {
        return true;
    }
    let expiring = row.access_expires_at_ms.is_some_and(|at| {
        let lifetime = row
            .last_refresh_at_ms
            .map_or(PROACTIVE_MS, |r| at.saturating_sub(r));
        at.saturating_sub(now) <= PROACTIVE_MS.min(lifetime / 2)
    });
    let idle = idle_expiry.is_some_and(|idle| {
        let idle_ms = idle.as_millis() as i64;
        let keep_alive_after = (idle_ms - KEEP_ALIVE_MARGIN_MS).max(idle_ms / 2);
        // The refresh token's last use or arrival: a refresh, else the (re)connect or
        // import that brought it (an app's import hands in a refresh token of its own).
        let used = row
            .last_refresh_at_ms
            .or(row.connected_at_ms)
            .unwrap_or(row.created_at_ms);
        used + keep_alive_after <= now
    });
    expiring || idle
}

/// How long to wait after `failures` refreshes in a row failed.
pub(super) fn backoff_ms(failures: i64) -> i64 {
    let shift = failures.clamp(0, 20) as u32;
    BACKOFF_FIRST_MS
        .saturating_mul(1i64 << shift)
        .min(BACKOFF_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountIdentity, Told};

    const HOUR: i64 = 3600 * 1000;
    const DAY: i64 = 24 * HOUR;

    /// A SmartThings-like connection: 24 h tokens, last refreshed `refreshed_ago` ago.
    fn row(refreshed_ago: i64, now: i64) -> ConnectionRow {
        let refreshed = now - refreshed_ago;
        ConnectionRow {
            provider: "st".into(),
            account: "home".into(),
            status: ConnectionStatus::Active,
            scopes: None,
            token_type: "Bearer".into(),
            access_token: vec![1],
            refresh_token: Some(vec![2]),
            access_expires_at_ms: Some(refreshed + DAY),
            created_at_ms: refreshed,
            updated_at_ms: refreshed,
            last_refresh_at_ms: Some(refreshed),
            last_error: None,
            failures: 0,
            retry_at_ms: None,
            lease_until_ms: None,
            generation: 1,
            identity: AccountIdentity::default(),
            connected_at_ms: None,
            failing_since_ms: None,
            told: Told::NOTHING,
        }
    }

    #[test]
    fn tokens_are_renewed_five_minutes_before_expiry() {
        let now = 1_000 * DAY;
        assert!(!due_for_refresh(&row(HOUR, now), None, now, false));
        assert!(!due_for_refresh(
            &row(DAY - 6 * 60_000, now),
            None,
            now,
            false
        ));
        assert!(due_for_refresh(
            &row(DAY - 4 * 60_000, now),
            None,
            now,
            false
        ));
        // Short-lived tokens: at half their lifetime.
        let mut short = row(0, now);
        short.last_refresh_at_ms = Some(now - 2_000);
        short.access_expires_at_ms = Some(now + 2_000);
        assert!(due_for_refresh(&short, None, now, false));
        short.access_expires_at_ms = Some(now + 3_000);
        assert!(!due_for_refresh(&short, None, now, false));
    }

    #[test]
    fn idle_refresh_tokens_are_kept_alive_a_week_before_they_would_die() {
        let now = 1_000 * DAY;
        let idle = Some(Duration::from_secs(30 * 24 * 3600));
        // A token that never expires (provider said nothing), idle for 22 days: not yet.
        let mut r = row(22 * DAY, now);
        r.access_expires_at_ms = None;
        assert!(!due_for_refresh(&r, idle, now, false));
        let mut r = row(24 * DAY, now);
        r.access_expires_at_ms = None;
        assert!(due_for_refresh(&r, idle, now, false));
        assert!(
            !due_for_refresh(&r, None, now, false),
            "no idle limit, no keep-alive"
        );
    }

    /// An import leaves `last_refresh_at` unset: what it brought counts from the import
    /// (`connected_at`), not from the row's creation (an idle refresh token kept alive at
    /// once, spending the one the app just handed in), nor from `updated_at`, which a
    /// failed refresh moves on (tokens stored ahead of a clock stepped back since then
    /// taken as stored now).
    #[test]
    fn an_imports_tokens_count_from_the_import() {
        let now = 1_000 * DAY;
        let idle = Some(Duration::from_secs(30 * 24 * 3600));
        let mut imported = row(24 * DAY, now);
        imported.access_expires_at_ms = None;
        imported.last_refresh_at_ms = None;
        imported.connected_at_ms = Some(now - HOUR);
        assert!(!due_for_refresh(&imported, idle, now, false));
        imported.connected_at_ms = None;
        assert!(
            due_for_refresh(&imported, idle, now, false),
            "no import time known"
        );
        let mut ahead = row(0, now);
        ahead.last_refresh_at_ms = None;
        ahead.connected_at_ms = Some(now + DAY);
        ahead.updated_at_ms = now;
        assert_eq!(obtained_at(&ahead), now + DAY);
        assert!(obtained_before_step(&ahead, now, true));
    }

    #[test]
    fn nothing_is_refreshed_that_cannot_or_must_not_be() {
        let now = 1_000 * DAY;
        let due = row(DAY, now);
        assert!(due_for_refresh(&due, None, now, false));
        let mut r = due.clone();
        r.status = ConnectionStatus::NeedsReauth;
        assert!(!due_for_refresh(&r, None, now, false));
        // Without a refresh token: only once the access token has expired (the refresh
        // then says the connection needs the user).
        let mut r = row(HOUR, now);
        r.refresh_token = None;
        assert!(!due_for_refresh(&r, None, now, false));
        r.access_expires_at_ms = Some(now);
        assert!(due_for_refresh(&r, None, now, false));
        r.access_expires_at_ms = None;
        assert!(!due_for_refresh(&r, None, now, false), "never expires");
        let mut r = due.clone();
        r.retry_at_ms = Some(now + 1);
        assert!(!due_for_refresh(&r, None, now, false), "backing off");
    }

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_ten_minutes() {
        assert_eq!(backoff_ms(0), 5_000);
        assert_eq!(backoff_ms(1), 10_000);
        assert_eq!(backoff_ms(3), 40_000);
        assert_eq!(backoff_ms(50), 600_000);
    }
}

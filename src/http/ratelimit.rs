//! Per-client rate limits: a fixed one-minute window per IP address.
//!
//! Applied to the public routes (callbacks, connect forms, sign-in) and to failed API-key
//! attempts. The client address is the TCP peer, or the last address in
//! `X-Forwarded-For` that is not a trusted proxy, when the peer itself is one.

use super::problem::ApiError;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it, finished windows are dropped first.
const MAX_TRACKED: usize = 10_000;

pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    /// `per_minute` 0 disables the limit.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `ip` may try again, when it is over its budget now.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let windows = self.windows.lock().ok()?;
        let (start, count) = windows.get(&ip)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*count >= self.per_minute).then(|| left.as_secs().max(1))
    }

    /// Counts one attempt by `ip`; `Err(seconds)` when it went over the budget.
    pub fn hit(&self, ip: IpAddr) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let Ok(mut windows) = self.windows.lock() else {
            return Ok(());
        };
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if entry.1 > self.per_minute {
            Err(WINDOW.saturating_sub(entry.0.elapsed()).as_secs().max(1))
        } else {
            Ok(())
        }
    }
}

/// The client's address, believing `X-Forwarded-For` only from trusted proxies.
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req.headers().get("x-forwarded-for")?.to_str().ok()?;
    forwarded
        .split(',')
        .rev()
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .find(|a| !trusted_proxies.contains(a))
        .or(Some(peer))
}

pub fn too_many(retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this address; try again in {retry_after} s"),
    )
    .retry_after(retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_address_and_per_minute() {
        let l = RateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.hit(a).is_ok());
        }
        assert!(l.blocked(a).is_some());
        assert!(l.hit(a).is_err());
        assert!(l.blocked(b).is_none());
        assert!(l.hit(b).is_ok());
        assert!(RateLimiter::new(0).hit(a).is_ok(), "0 disables the limit");
    }
}

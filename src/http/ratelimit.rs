//! Rate limits: a fixed one-minute window per client address, or per API key.
//!
//! Per address on the public routes (callbacks, connect forms, sign-in) and for failed
//! API-key attempts; per key on the requests that change connections or call a provider
//! for the caller (import, disconnect, device flow start). The client address is the TCP peer or, when the peer is a trusted proxy, the
//! nearest address in `X-Forwarded-For` that is not one; IPv6 clients count per /64 (one
//! host usually holds a whole /64). A full table drops finished windows, then the oldest
//! windows of addresses still under their budget: it is never wiped, so flooding it with
//! new addresses does not lift a block.

use super::problem::ApiError;
use crate::ip_range::IpRange;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once.
const MAX_TRACKED: usize = 10_000;

/// What one budget is kept for: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
            v4 => ClientKey(v4),
        }
    }
}

/// A budget per minute for each `K`: a client address (the default) or an API key's id.
pub struct RateLimiter<K = ClientKey> {
    per_minute: u32,
    max_tracked: usize,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq + Ord + Clone> RateLimiter<K> {
    /// `per_minute` 0 disables the limit.
    pub fn new(per_minute: u32) -> RateLimiter<K> {
        RateLimiter::with_capacity(per_minute, MAX_TRACKED)
    }

    fn with_capacity(per_minute: u32, max_tracked: usize) -> RateLimiter<K> {
        RateLimiter {
            per_minute,
            max_tracked: max_tracked.max(8),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `key` may try again, when it has used its budget up now (counts
    /// nothing: the admin sign-in looks before it tries a token, and counts failures).
    pub fn blocked(&self, key: impl Into<K>) -> Option<u64> {
        if self.per_minute == 0 {
            return None;
        }
        let windows = self.windows.lock().ok()?;
        let (start, count) = windows.get(&key.into())?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*count >= self.per_minute).then(|| left.as_secs().max(1))
    }

    /// Counts one attempt by `key` (an address, or what else the budget is kept for);
    /// `Err(seconds)` when it went over the budget.
    pub fn hit(&self, key: impl Into<K>) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let Ok(mut windows) = self.windows.lock() else {
            return Ok(());
        };
        let key = key.into();
        if windows.len() >= self.max_tracked && !windows.contains_key(&key) {
            self.make_room(&mut windows);
        }
        let entry = windows.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.per_minute {
            Err(WINDOW.saturating_sub(entry.0.elapsed()).as_secs().max(1))
        } else {
            Ok(())
        }
    }

    /// Drops finished windows; when that is not enough, the oldest eighth of the table,
    /// addresses under their budget first (a blocked address stays blocked).
    fn make_room(&self, windows: &mut HashMap<K, (Instant, u32)>) {
        windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
        if windows.len() < self.max_tracked {
            return;
        }
        let mut order: Vec<(bool, Instant, K)> = windows
            .iter()
            .map(|(k, (start, n))| (*n >= self.per_minute, *start, k.clone()))
            .collect();
        order.sort_unstable();
        for (_, _, key) in order.into_iter().take(self.max_tracked / 8) {
            windows.remove(&key);
        }
    }
}

/// The client's address, believing `X-Forwarded-For` only from trusted proxies.
///
/// Walks the forwarded addresses from the nearest hop outwards, skipping trusted proxies;
/// the first other entry is the client. An entry that is not an address (or a missing
/// header) ends the walk at the last trusted hop: the client is then counted under that
/// hop's address, never under no limit at all. `None` only when the peer is unknown.
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpRange]) -> Option<IpAddr> {
    // On a dual-stack listener an IPv4 proxy arrives as ::ffff:a.b.c.d.
    let peer = req.peer_addr()?.ip().to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|t| t.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let headers: Vec<&[u8]> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.as_bytes())
        .collect();
    let mut client = peer;
    for entry in headers.iter().rev().flat_map(|h| h.rsplit(|b| *b == b',')) {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(forwarded_address) else {
            break;
        };
        client = ip;
        if !trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// A request's try at a secret the operator chose (the admin token, the metrics token),
/// kept against a budget of refused tries. Such a secret may be guessable, so a client
/// past the budget is not even checked (it waits, right or wrong). With `new` (sign-ins,
/// whose login links still work past it) a refusal is charged to the client's address and
/// to the connection's own, when that is a trusted proxy's:
/// anyone who reaches oauthd from that address directly (a local process, a web page
/// rebound to 127.0.0.1) can write any `X-Forwarded-For`, and a fresh address per guess
/// must not make a fresh budget. Behind a proxy, all tries share its budget.
pub struct SecretTry<'a> {
    budget: &'a RateLimiter,
    charged: Vec<IpAddr>,
}

impl<'a> SecretTry<'a> {
    pub fn new(budget: &'a RateLimiter, req: &HttpRequest, trusted_proxies: &[IpRange]) -> Self {
        let client = client_ip(req, trusted_proxies);
        let peer = req.peer_addr().map(|a| a.ip().to_canonical());
        let charged = client
            .into_iter()
            .chain(peer.filter(|p| Some(*p) != client))
            .collect();
        SecretTry { budget, charged }
    }

    /// A try charged to the client's address alone, for a secret whose holder has no other
    /// way in (the metrics token: a scraper locked out goes dark). A local process that
    /// writes its own `X-Forwarded-For` through a trusted proxy's address gets a budget
    /// per address it names; nobody can use up another client's.
    pub fn of_client(
        budget: &'a RateLimiter,
        req: &HttpRequest,
        trusted_proxies: &[IpRange],
    ) -> Self {
        let charged = client_ip(req, trusted_proxies).into_iter().collect();
        SecretTry { budget, charged }
    }

    /// Seconds until the secret may be tried from here again, when the budget is used up.
    pub fn blocked(&self) -> Option<u64> {
        self.charged
            .iter()
            .filter_map(|ip| self.budget.blocked(*ip))
            .max()
    }

    /// Counts a refused try against every address it is charged to.
    pub fn refused(&self) {
        for ip in &self.charged {
            let _ = self.budget.hit(*ip);
        }
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies
/// write it (`198.51.100.7:4711`, `[2001:db8::1]:4711`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

pub fn too_many(retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this address; try again in {retry_after} s"),
    )
    .retry_after(retry_after)
}

/// 429 for an unknown or revoked API key from an address past
/// `limits.failed_auth_per_minute`: the key is refused either way, and "too many requests"
/// alone sent the app's owner looking for a load that is not there.
pub fn too_many_refused_keys(retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "the API key is unknown or revoked, and this address sent too many such in the last \
             minute (limits.failed_auth_per_minute): check the app's key (`oauthd keys list`); \
             try again in {retry_after} s"
        ),
    )
    .retry_after(retry_after)
}

/// 429 for an API key past `limits.connection_changes_per_minute`.
pub fn too_many_changes(retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this API key changed connections or started connect or device flows too often in the last \
             minute (limits.connection_changes_per_minute); try again in {retry_after} s"
        ),
    )
    .retry_after(retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_address_and_per_minute() {
        let l: RateLimiter = RateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.hit(a).is_ok());
        }
        assert!(l.blocked(a).is_some());
        assert!(l.hit(a).is_err());
        assert!(l.blocked(b).is_none());
        assert!(l.hit(b).is_ok());
        assert!(
            RateLimiter::<ClientKey>::new(0).hit(a).is_ok(),
            "0 disables the limit"
        );
    }

    #[test]
    fn a_budget_may_be_kept_per_api_key() {
        let l: RateLimiter<String> = RateLimiter::new(2);
        assert!(l.hit("key-a".to_owned()).is_ok());
        assert!(l.hit("key-a".to_owned()).is_ok());
        let wait = l.hit("key-a".to_owned()).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(l.hit("key-b".to_owned()).is_ok());
    }

    #[test]
    fn forwarded_entries_with_ports_and_mapped_addresses_parse() {
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(forwarded_address(" 198.51.100.7:4711"), Some(v4));
        assert_eq!(forwarded_address("::ffff:198.51.100.7"), Some(v4));
        assert_eq!(
            forwarded_address("[2001:db8::1]:4711"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(forwarded_address("unknown"), None);
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let l: RateLimiter = RateLimiter::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.hit(a).is_ok());
        assert!(l.hit(b).is_ok());
        assert!(l.hit(a).is_err());
        assert!(l.blocked(b).is_some());
        assert!(l.hit(other).is_ok());
    }

    #[test]
    fn a_full_table_keeps_blocked_addresses() {
        let l: RateLimiter = RateLimiter::with_capacity(2, 64);
        let bad: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..3 {
            let _ = l.hit(bad);
        }
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.hit(ip);
            assert!(l.windows.lock().unwrap().len() <= 64);
        }
        assert!(l.blocked(bad).is_some(), "the flood lifted the block");
    }
}

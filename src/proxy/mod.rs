//! The credential-injecting proxy: a request to `/v1/proxy/{provider}/{account}/{path}`
//! goes to the provider's API base with `Authorization: Bearer <fresh token>`, and the
//! answer streams back. This module sends one attempt; `http/proxy.rs` takes the caller's
//! request apart, asks the broker for tokens (and for another one after a `401`) and
//! streams the answer.
//!
//! Never: a redirect followed, a host other than the base's, the caller's credentials or
//! cookies passed on (see `headers`), a path outside the base (see `path`).

mod clients;
pub mod headers;
pub mod path;

use crate::broker::AccessToken;
use bytes::Bytes;
use clients::ClientSetup;
use std::time::Duration;
use url::Url;

/// `[proxy]` in the config file: sizes and times that bound one proxied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Largest request body; it is held in memory so that a retry after a refresh can
    /// send it again.
    pub max_request_bytes: usize,
    /// Largest answer streamed back; a longer one is cut off.
    pub max_response_bytes: u64,
    /// How long the provider's API may take to start answering (status and headers).
    pub timeout: Duration,
    /// Longest silence while the answer's body streams.
    pub read_timeout: Duration,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            max_request_bytes: 10 * 1024 * 1024,
            max_response_bytes: 100 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the provider's API did not answer within {0} s")]
    Timeout(u64),
    #[error("the provider's API could not be reached: {0}")]
    Unreachable(String),
    #[error("the provider's answer is larger than the proxy's limit of {0} bytes (proxy.max_response_bytes)")]
    TooLarge(u64),
    #[error("the provider's API answered 101 Switching Protocols, which the proxy never asks for")]
    Upgraded,
}

/// One attempt at the provider's API.
pub struct Outgoing<'a> {
    /// Whose token it carries: each account's requests go over connections of its own
    /// (see `clients`).
    pub provider: &'a str,
    pub account: &'a str,
    pub method: &'a str,
    pub url: &'a Url,
    /// The caller's headers that `headers::forwards_request` let through.
    pub headers: &'a [(String, Vec<u8>)],
    pub body: Bytes,
}

pub struct Proxy {
    pub policy: ProxyPolicy,
    clients: ClientSetup,
    /// Request bodies held in memory at once, in KiB, across every proxied request:
    /// four full-size bodies or 64 MiB, whichever is more. Past it, 503 `proxy_busy`.
    budget_kib: u32,
    /// What proxied requests' bodies hold of it now.
    held: std::sync::Mutex<Held>,
}

/// KiB of the budget held, in all and by each API key (keys holding none are left out:
/// see `key_share`).
#[derive(Default)]
struct Held {
    total: u32,
    by_key: std::collections::HashMap<String, u32>,
}

/// The most one key's requests may hold, in KiB of `budget_kib`, while `others` other keys
/// hold some: a share that leaves room for one more key (half the budget for a key alone,
/// a third each for two, ...). An app that starts many uploads and stalls them, with one
/// key or a few, leaves room for the next app's (tenants share one oauthd).
fn key_share(budget_kib: u32, others: usize) -> u32 {
    let parts = u32::try_from(others).unwrap_or(u32::MAX).saturating_add(2);
    budget_kib / parts
}

/// Why a body found no room.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoom {
    /// The key's requests hold their share of the budget.
    KeyShare,
    /// The budget is spent.
    Budget,
}

/// Methods the proxy passes on; CONNECT and TRACE (which echoes the token back) are not.
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Room for one request's body in the shared budget (in KiB, rounded up once for the
/// whole body, not for each chunk), counted against its key's share; released when
/// dropped.
pub struct BodyRoom<'a> {
    proxy: &'a Proxy,
    key_id: String,
    /// KiB held.
    kib: u32,
    bytes: usize,
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        if self.kib == 0 {
            return;
        }
        let mut held = self.proxy.held();
        held.total = held.total.saturating_sub(self.kib);
        if let Some(n) = held.by_key.get_mut(&self.key_id) {
            *n = n.saturating_sub(self.kib);
            if *n == 0 {
                held.by_key.remove(&self.key_id);
            }
        }
    }
}

impl Proxy {
    /// Failing to build the client (no TLS roots, say) is a start-up error.
    pub fn new(policy: ProxyPolicy) -> Result<Proxy, String> {
        let clients = ClientSetup::new(&policy)?;
        let budget_kib = (policy.max_request_bytes.saturating_mul(4) / 1024).max(64 * 1024);
        Ok(Proxy {
            policy,
            clients,
            budget_kib: u32::try_from(budget_kib).unwrap_or(u32::MAX),
            held: Default::default(),
        })
    }

    /// What bodies hold (a poisoned lock only means a thread panicked while counting).
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty claim on the body budget for a request of the API key `key_id`, to grow
    /// as the body arrives.
    pub fn body_room(&self, key_id: &str) -> BodyRoom<'_> {
        BodyRoom {
            proxy: self,
            key_id: key_id.to_owned(),
            kib: 0,
            bytes: 0,
        }
    }

    /// Claims room for `bytes` more of a body; refused when the key's requests hold
    /// their share, or the budget is spent (the caller answers 503 and its claim is
    /// released). A body sent in one-byte chunks holds what its bytes need, not a KiB
    /// for each chunk.
    pub fn claim<'a>(&'a self, room: &mut BodyRoom<'a>, bytes: usize) -> Result<(), NoRoom> {
        let total = room.bytes.saturating_add(bytes);
        let kib = u32::try_from(total.div_ceil(1024)).unwrap_or(u32::MAX);
        let more = kib.saturating_sub(room.kib);
        if more > 0 {
            let mut held = self.held();
            let key_holds = held.by_key.get(&room.key_id).copied();
            let others = held.by_key.len() - usize::from(key_holds.is_some());
            let share = key_share(self.budget_kib, others);
            if key_holds.unwrap_or(0).saturating_add(more) > share {
                return Err(NoRoom::KeyShare);
            }
            if held.total.saturating_add(more) > self.budget_kib {
                return Err(NoRoom::Budget);
            }
            held.total += more;
            *held.by_key.entry(room.key_id.clone()).or_default() += more;
            room.kib = kib;
        }
        room.bytes = total;
        Ok(())
    }

    /// Sends one attempt with `token`; returns the provider's answer once its status and
    /// headers arrived (the body streams later).
    pub async fn send(
        &self,
        out: &Outgoing<'_>,
        token: &AccessToken,
    ) -> Result<reqwest::Response, ProxyError> {
        let method = reqwest::Method::from_bytes(out.method.as_bytes())
            .map_err(|_| ProxyError::Unreachable("unsupported method".into()))?;
        let head = method == reqwest::Method::HEAD;
        let client = self
            .clients
            .client(out.provider, out.account, &token.access_token)
            .map_err(ProxyError::Unreachable)?;
        let mut request = client.request(method, out.url.clone());
        for (name, value) in out.headers {
            request = request.header(name.as_str(), value.as_slice());
        }
        // Not kept for another request: a server that sends a body with its answer to
        // HEAD (some frameworks do) would have that body, arriving late, read as the
        // answer to the next request on the connection (the same account's: see
        // `clients`), a framework's bug the account's next call should not pay for.
        if head {
            request = request.header(reqwest::header::CONNECTION, "close");
        }
        // Zeroed once the request is done with it, as the token it carries is.
        let mut bearer =
            reqwest::header::HeaderValue::from_maybe_shared(crate::secret::wiped_concat(&[
                "Bearer ",
                &token.access_token,
            ]))
            .map_err(|_| {
                ProxyError::Unreachable("the access token is not a valid header value".into())
            })?;
        bearer.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, bearer);
        // An empty body where the method gives one meaning goes with `Content-Length: 0`
        // (RFC 9110, 8.6): without, the request said no length at all, which front ends
        // (Google's) answer with 411.
        if !out.body.is_empty() {
            request = request.body(out.body.clone());
        } else if matches!(out.method, "POST" | "PUT" | "PATCH") {
            request = request.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        match tokio::time::timeout(self.policy.timeout, request.send()).await {
            Err(_) => Err(ProxyError::Timeout(self.policy.timeout.as_secs())),
            Ok(Err(e)) if e.is_timeout() => Err(ProxyError::Timeout(self.policy.timeout.as_secs())),
            // Without the URL: it may carry the caller's query.
            Ok(Err(e)) => Err(ProxyError::Unreachable(describe(&e))),
            // Upgrade is a hop-by-hop header the caller never gets to send: a 101 handed
            // back would tell the caller's client (or a proxy in front) that the
            // connection now speaks another protocol while oauthd goes on in HTTP/1.1.
            Ok(Ok(resp)) if resp.status() == reqwest::StatusCode::SWITCHING_PROTOCOLS => {
                Err(ProxyError::Upgraded)
            }
            Ok(Ok(resp)) => {
                if resp
                    .content_length()
                    .is_some_and(|n| n > self.policy.max_response_bytes)
                {
                    return Err(ProxyError::TooLarge(self.policy.max_response_bytes));
                }
                Ok(resp)
            }
        }
    }
}

/// What went wrong, without the URL reqwest puts in its messages.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "no valid answer"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_memory_share_one_budget() {
        let proxy = Proxy::new(ProxyPolicy {
            max_request_bytes: 32 * 1024 * 1024,
            ..ProxyPolicy::default()
        })
        .unwrap();
        // Four full-size bodies fit (128 MiB), two of one key (its half) and one of each of
        // two others; a fifth byte does not.
        let mut rooms: Vec<BodyRoom<'_>> = Vec::new();
        for key in ["a", "a", "b", "c"] {
            let mut room = proxy.body_room(key);
            assert_eq!(proxy.claim(&mut room, 32 * 1024 * 1024), Ok(()));
            rooms.push(room);
        }
        let mut more = proxy.body_room("d");
        assert_eq!(proxy.claim(&mut more, 1), Err(NoRoom::Budget));
        // A finished request gives its room back.
        rooms.pop();
        assert_eq!(proxy.claim(&mut more, 1024), Ok(()));
        // Small bodies: never less than 64 MiB in all, half of it for a key alone, a third
        // for a second one.
        let small = Proxy::new(ProxyPolicy {
            max_request_bytes: 1024,
            ..ProxyPolicy::default()
        })
        .unwrap();
        let mut room = small.body_room("a");
        assert_eq!(small.claim(&mut room, 32 * 1024 * 1024), Ok(()));
        assert_eq!(small.claim(&mut room, 1), Err(NoRoom::KeyShare));
        let mut other = small.body_room("b");
        assert_eq!(small.claim(&mut other, 21 * 1024 * 1024), Ok(()));
        assert_eq!(small.claim(&mut other, 1024 * 1024), Err(NoRoom::KeyShare));
    }

    #[test]
    fn keys_holding_room_leave_room_for_one_more() {
        let proxy = Proxy::new(ProxyPolicy::default()).unwrap();
        let mib = 1024 * 1024;
        // Two keys stalling uploads: half, then a third of the budget (64 MiB).
        let mut a = proxy.body_room("a");
        assert_eq!(proxy.claim(&mut a, 32 * mib), Ok(()));
        let mut b = proxy.body_room("b");
        assert_eq!(proxy.claim(&mut b, 21 * mib), Ok(()));
        assert_eq!(proxy.claim(&mut b, mib), Err(NoRoom::KeyShare));
        // A third key still finds the rest, as much as a quarter.
        let mut c = proxy.body_room("c");
        assert_eq!(proxy.claim(&mut c, 10 * mib), Ok(()));
        assert_eq!(key_share(64 * 1024, 0), 32 * 1024);
        assert_eq!(key_share(64 * 1024, 2), 16 * 1024);
        drop((a, b, c));
        assert!(proxy.held().by_key.is_empty());
    }

    #[test]
    fn one_key_holds_at_most_half_the_budget() {
        let proxy = Proxy::new(ProxyPolicy::default()).unwrap();
        let half = 32 * 1024 * 1024;
        // Many bodies of one key, stalled part way: half the budget, then no more.
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut room = proxy.body_room("tenant");
            assert_eq!(proxy.claim(&mut room, half / 4), Ok(()));
            stalled.push(room);
        }
        let mut fifth = proxy.body_room("tenant");
        assert_eq!(proxy.claim(&mut fifth, 1), Err(NoRoom::KeyShare));
        // Another key's requests still find room (a third, beside the first key's), and
        // the first key's again once its requests end.
        let mut other = proxy.body_room("app");
        assert_eq!(proxy.claim(&mut other, half / 2), Ok(()));
        drop(stalled);
        assert_eq!(proxy.claim(&mut fifth, half / 2), Ok(()));
        assert!(proxy.held().by_key.values().all(|kib| *kib == 16 * 1024));
        drop((fifth, other));
        assert!(proxy.held().by_key.is_empty());
    }

    #[test]
    fn a_body_in_small_chunks_holds_the_room_its_bytes_need() {
        let proxy = Proxy::new(ProxyPolicy::default()).unwrap();
        let free = |p: &Proxy| p.budget_kib - p.held().total;
        let budget = free(&proxy);
        let mut room = proxy.body_room("a");
        for _ in 0..3000 {
            assert_eq!(proxy.claim(&mut room, 1), Ok(()));
        }
        // 3,000 bytes: 3 KiB, not a KiB for each of the 3,000 chunks.
        assert_eq!(budget - free(&proxy), 3);
        assert_eq!(proxy.claim(&mut room, 1024), Ok(()));
        assert_eq!(budget - free(&proxy), 4);
        drop(room);
        assert_eq!(free(&proxy), budget);
    }
}

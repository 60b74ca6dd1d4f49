//! At most `[limits] max_connections_per_address` open connections from one client address
//! (an IPv6 /64 counting as one), the trusted proxies aside. Every connection must keep
//! asking to stay open (`next_request`), but one address could still hold as many as it
//! kept busy, each a file descriptor, until new clients were refused. Past the cap a new
//! connection is closed as soon as it is accepted.

use super::ratelimit::ClientKey;
use crate::ip_range::IpRange;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The open connections of each address, shared by the workers.
pub struct OpenConnections {
    max: u32,
    trusted: Vec<IpRange>,
    open: Mutex<HashMap<ClientKey, u32>>,
}

/// One connection counted; uncounted when dropped (with the connection).
pub struct Slot {
    of: Arc<OpenConnections>,
    key: ClientKey,
}

impl OpenConnections {
    pub fn new(max: u32, trusted: Vec<IpRange>) -> Arc<OpenConnections> {
        Arc::new(OpenConnections {
            max,
            trusted,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `peer`: `Err` with its address when that address holds
    /// the most it may; `Ok(None)` when it is not counted (no cap, a trusted proxy).
    pub fn take(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<Option<Slot>, ClientKey> {
        let Some(ip) = peer.map(|p| p.ip().to_canonical()) else {
            return Ok(None);
        };
        if self.max == 0 || self.trusted.iter().any(|t| t.contains(&ip)) {
            return Ok(None);
        }
        let key = ClientKey::from(ip);
        let Ok(mut open) = self.open.lock() else {
            return Ok(None);
        };
        let held = open.entry(key).or_insert(0);
        if *held >= self.max {
            return Err(key);
        }
        *held += 1;
        Ok(Some(Slot {
            of: Arc::clone(self),
            key,
        }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.of.open.lock() {
            if let Some(held) = open.get_mut(&self.key) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_and_gets_room_back_when_one_closes() {
        let open = OpenConnections::new(2, vec![IpRange::parse("10.0.0.2").unwrap()]);
        let from = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 40000));
        let a = open.take(from("192.0.2.1")).unwrap();
        let _b = open.take(from("192.0.2.1")).unwrap();
        assert!(open.take(from("192.0.2.1")).is_err());
        // Another address, one of the same IPv6 /64, a trusted proxy.
        assert!(open.take(from("192.0.2.2")).unwrap().is_some());
        let _c = open.take(from("2001:db8::1")).unwrap();
        let _d = open.take(from("2001:db8::2")).unwrap();
        assert!(open.take(from("2001:db8::3")).is_err());
        for _ in 0..5 {
            assert!(open.take(from("10.0.0.2")).unwrap().is_none());
        }
        drop(a);
        assert!(open.take(from("192.0.2.1")).unwrap().is_some());
        assert!(OpenConnections::new(0, Vec::new())
            .take(from("192.0.2.1"))
            .unwrap()
            .is_none());
    }
}

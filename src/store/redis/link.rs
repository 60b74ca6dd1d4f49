//! The connection to Redis, renewed when the client library would not mend it. The library
//! reconnects after an I/O error only. A reconnect that Redis refused (its password
//! changed, then changed back; an ACL user switched off, then on) stays its answer to
//! every later call, and a connection to a primary that a failover turned into a replica
//! stays open and answers every write `READONLY`, also once oauthd's address (a virtual
//! IP, a DNS name, a proxy that follows the primary) leads to the new primary: every
//! request answered 503 until oauthd was restarted. Either has the connection made
//! afresh, at most once a second.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Upper bound on one Redis round trip (including a reconnect attempt) before a 503.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two renewals.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How every connection to Redis is made and kept.
pub fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

pub struct Link {
    client: redis::Client,
    current: RwLock<ConnectionManager>,
    renewed: Mutex<Option<Instant>>,
}

impl Link {
    pub fn new(client: redis::Client, connected: ConnectionManager) -> Link {
        Link {
            client,
            current: RwLock::new(connected),
            renewed: Mutex::new(None),
        }
    }

    /// The connection to send on (a handle: cheap to clone).
    pub fn get(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Looks at an error a call got: a refused login or a replica's `READONLY`, which the
    /// library does not mend itself, has the connection renewed (made when next used).
    /// `runtime` is the store's, whose tasks the connection runs on.
    pub fn after(&self, e: &redis::RedisError, runtime: &tokio::runtime::Runtime) {
        // Not the library's other errors that call for a new connection (`Parse`): they
        // are also a value that did not read, on a connection that works.
        let why = match (e.kind(), e.code()) {
            (redis::ErrorKind::AuthenticationFailed, _) => {
                "Redis refused oauthd's login on a reconnect: connecting afresh"
            }
            (_, Some("READONLY")) => {
                "Redis answered as a read-only replica (a failover, or an address that leads \
                 to a replica): connecting afresh, at most once a second, until the address \
                 leads to a primary"
            }
            _ => return,
        };
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
            if renewed.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
                return;
            }
            *renewed = Some(Instant::now());
        }
        let _entered = runtime.enter();
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config()) {
            Ok(fresh) => {
                log::info!("{why}");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
            }
            Err(e) => log::warn!("cannot make a new connection to Redis: {e}"),
        }
    }
}

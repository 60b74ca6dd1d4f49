//! The HTTP clients the proxy sends with: one per account and token on each worker thread,
//! so that no connection to a provider's API carries two accounts' requests, nor those of
//! a connection deleted and made again under the same name (another person's, maybe).
//!
//! A connection kept for the next request is only as sound as the API's last answer on it:
//! an API that sends more than it was asked for (a body after a `204` or a `304`, more
//! bytes than its `Content-Length`, a body with its answer to `HEAD`) has the rest read as
//! the next request's answer. With one pool for every account of a provider, that next
//! request could be another account's, and the answer another account's data. What an API
//! gets wrong on an account's connections now reaches that account alone.
//!
//! Per thread, because hyper runs a pooled connection on the runtime that opened it, and
//! actix-web runs one runtime per worker thread: with one client for all workers, a call
//! handled on one worker went out over a connection on the other and came back (two thread
//! hand-offs each way; measured: p50 of a proxied call at two connections 0.6-0.9 ms, see
//! bench/README).

use super::ProxyPolicy;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients kept on one thread at most; fewer when the open-file limit is low (see
/// `sizes`). Past it, the client that sent least recently goes, and its idle
/// connections close with it. With `IDLE_PER_CLIENT`, this bounds the idle connections a
/// worker holds (1,024), whatever an API key's calls do: any key may import tokens under
/// as many account names as it likes. Past it, calls that go round more accounts than it
/// on one worker open a connection each (measured: with 16 kept, 17 accounts called in
/// turn opened 162 connections in 170 calls).
const MOST: usize = 64;

/// Idle connections one client keeps for its next calls (fewer with a low open-file limit);
/// a burst opens as many as it needs, and closes those past this as they finish.
const IDLE_PER_CLIENT: usize = 16;

/// A client unused this long goes when another is made. Its idle connections are not used
/// past it, and are closed within twice it (hyper looks for them once every `IDLE`).
const IDLE: Duration = Duration::from_secs(15);

/// What each client is built from: the proxy's timeouts and one TLS set-up, whose roots
/// are read once (reading them took about 30 ms a client).
pub struct ClientSetup {
    /// Clients kept on a thread at most, and idle connections each keeps (`sizes`).
    most: usize,
    idle_per_client: usize,
    connect_timeout: Duration,
    read_timeout: Duration,
    tls: rustls::ClientConfig,
}

/// A client kept on this thread for one account and token.
struct Kept {
    provider: String,
    account: String,
    /// The token's `fingerprint`: a connection deleted and made again under the account's
    /// name, or refreshed, gets connections of its own; the old token's client goes once
    /// unused.
    token: u64,
    /// The timeouts it was built with: another setup's (a test's, say) builds its own.
    timeouts: (Duration, Duration),
    client: reqwest::Client,
    used: Instant,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

impl ClientSetup {
    /// Reads the TLS roots and builds a client once: failing (no roots, say) is a start-up
    /// error.
    pub fn new(policy: &ProxyPolicy) -> Result<ClientSetup, String> {
        let (most, idle_per_client) = sizes();
        let setup = ClientSetup {
            most,
            idle_per_client,
            connect_timeout: policy.timeout.min(Duration::from_secs(10)),
            read_timeout: policy.read_timeout,
            tls: tls_config()?,
        };
        setup.build()?;
        Ok(setup)
    }

    /// This thread's client for `provider`'s `account`, sending `token`.
    pub fn client(
        &self,
        provider: &str,
        account: &str,
        token: &str,
    ) -> Result<reqwest::Client, String> {
        let timeouts = (self.connect_timeout, self.read_timeout);
        let token = fingerprint(token);
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let now = Instant::now();
            if let Some(k) = kept.iter_mut().find(|k| {
                k.token == token
                    && k.provider == provider
                    && k.account == account
                    && k.timeouts == timeouts
            }) {
                k.used = now;
                return Ok(k.client.clone());
            }
            kept.retain(|k| now.duration_since(k.used) < IDLE);
            if kept.len() >= self.most {
                let oldest = kept.iter().enumerate().min_by_key(|(_, k)| k.used);
                if let Some((oldest, _)) = oldest {
                    kept.swap_remove(oldest);
                }
            }
            let client = self.build()?;
            kept.push(Kept {
                provider: provider.to_owned(),
                account: account.to_owned(),
                token,
                timeouts,
                client: client.clone(),
                used: now,
            });
            Ok(client)
        })
    }

    fn build(&self) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            // reqwest keeps every one for 90 s: measured, 171 descriptors held after 200
            // concurrent calls to one slow API.
            .pool_max_idle_per_host(self.idle_per_client)
            .pool_idle_timeout(IDLE)
            .user_agent(concat!("oauthd/", env!("CARGO_PKG_VERSION"), " (proxy)"))
            .build()
            .map_err(|e| {
                format!(
                    "cannot set up the HTTP client for the proxy: {}",
                    crate::oauth::with_causes(&e)
                )
            })
    }
}

/// Clients a thread keeps at most, and idle connections each keeps: `MOST` of
/// `IDLE_PER_CLIENT`, or fewer, so that the idle connections of all worker threads (one a
/// core) stay within a quarter of the open-file limit (16 cores at 1,024: one client of 16).
fn sizes() -> (usize, usize) {
    use rustix::process::{getrlimit, Resource};
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    sizes_for(limit, workers)
}

fn sizes_for(limit: u64, workers: usize) -> (usize, usize) {
    let per_worker = limit / 4 / u64::try_from(workers).unwrap_or(u64::MAX).max(1);
    let per_worker = usize::try_from(per_worker).unwrap_or(usize::MAX).max(1);
    let most = (per_worker / IDLE_PER_CLIENT).clamp(1, MOST);
    (most, (per_worker / most).clamp(1, IDLE_PER_CLIENT))
}

/// A token told from others without keeping it: a keyed hash whose key is made anew by
/// each process.
fn fingerprint(token: &str) -> u64 {
    static KEY: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    std::hash::BuildHasher::hash_one(&*KEY, token)
}

/// The roots reqwest would trust (the system's, which `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// replace, and the bundled Mozilla set), TLS 1.2 and 1.3, HTTP/1.1.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A file `SSL_CERT_FILE` names that is not there, or that holds no certificate
    // rustls can read, is said at start: the API's TLS would then fail with "unknown
    // issuer", far from the cause. A system store often holds a few old certificates
    // rustls cannot parse; those are left out, as reqwest leaves them out.
    let native = rustls_native_certs::load_native_certs();
    let (read, mut unreadable) = (native.certs.len(), 0);
    for cert in native.certs {
        if roots.add(cert).is_err() {
            unreadable += 1;
        }
    }
    for e in &native.errors {
        log::warn!("proxy: some of the system's TLS roots could not be read: {e}");
    }
    // A DER file, or any other not in PEM form, reads as no certificate and no error.
    let named = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty()));
    if named && read == 0 && native.errors.is_empty() {
        log::warn!(
            "proxy: SSL_CERT_FILE or SSL_CERT_DIR names no certificate in PEM form: only the \
             bundled Mozilla roots are trusted"
        );
    }
    if unreadable > 0 {
        log::warn!(
            "proxy: {unreadable} of the {read} certificates of the system's TLS roots could \
             not be parsed, and are left out"
        );
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| format!("cannot set up TLS for the proxy: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accounts this thread keeps a client for, in the order kept.
    fn kept() -> Vec<String> {
        KEPT.with(|k| {
            k.borrow()
                .iter()
                .map(|k| format!("{}/{}", k.provider, k.account))
                .collect()
        })
    }

    #[test]
    fn each_account_and_token_has_a_client_of_its_own_on_a_thread() {
        let setup = ClientSetup::new(&ProxyPolicy::default()).unwrap();
        setup.client("spotify", "default", "t1").unwrap();
        setup.client("spotify", "default", "t1").unwrap();
        setup.client("spotify", "kitchen", "t2").unwrap();
        setup.client("tidal", "default", "t3").unwrap();
        assert_eq!(
            kept(),
            ["spotify/default", "spotify/kitchen", "tidal/default"]
        );
        // The same name with another token: deleted and made again, or refreshed.
        setup.client("spotify", "default", "t4").unwrap();
        assert_eq!(kept().len(), 4);
        // Another thread keeps its own.
        let there = std::thread::scope(|s| {
            s.spawn(|| {
                setup.client("spotify", "default", "t1").unwrap();
                kept()
            })
            .join()
            .unwrap()
        });
        assert_eq!(there, ["spotify/default"]);
        // Other timeouts (a proxy set up anew) build another.
        let slower = ClientSetup::new(&ProxyPolicy {
            read_timeout: Duration::from_secs(90),
            ..ProxyPolicy::default()
        })
        .unwrap();
        slower.client("spotify", "default", "t1").unwrap();
        assert_eq!(kept().len(), 5);
    }

    #[test]
    fn idle_connections_stay_within_a_quarter_of_the_open_file_limit() {
        for (limit, workers, sizes) in [
            (65_536, 2, (64, 16)),
            (u64::MAX, 2, (64, 16)),
            (1024, 2, (8, 16)),
            (1024, 16, (1, 16)),
            (4096, 32, (2, 16)),
            (100, 2, (1, 12)),
            (0, 2, (1, 1)),
        ] {
            assert_eq!(sizes_for(limit, workers), sizes, "{limit} {workers}");
            let (most, idle) = sizes;
            let held = (most * idle * workers) as u64;
            assert!(limit < 8 || held <= limit / 4, "{limit} {workers}");
        }
    }

    #[test]
    fn clients_unused_for_a_while_or_past_the_most_go() {
        let setup = ClientSetup::new(&ProxyPolicy::default()).unwrap();
        for n in 0..setup.most {
            setup.client("spotify", &format!("a{n}"), "t").unwrap();
        }
        // a0 sends again: a1 is now the one that sent least recently.
        setup.client("spotify", "a0", "t").unwrap();
        setup.client("spotify", "one-more", "t").unwrap();
        let now = kept();
        assert_eq!(now.len(), setup.most);
        assert!(!now.contains(&"spotify/a1".to_owned()), "{now:?}");
        assert!(now.contains(&"spotify/a0".to_owned()), "{now:?}");
        // Clients unused for `IDLE` go when the next is made.
        KEPT.with(|k| {
            for k in k.borrow_mut().iter_mut().filter(|k| k.account != "a0") {
                k.used -= IDLE;
            }
        });
        setup.client("tidal", "default", "t").unwrap();
        assert_eq!(kept(), ["spotify/a0", "tidal/default"]);
    }
}

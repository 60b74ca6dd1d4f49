//! The access log: one line per answer, `CLIENT "METHOD PATH" STATUS BYTES MILLISms`,
//! written under the log target `oauthd::access` when the answer's last byte is out (or
//! the client left). Paths only, never query strings: callbacks carry codes and states
//! there.
//!
//! Which answers are logged at `info` is the `access_log` setting: `"errors"` (the
//! default) logs 4xx and 5xx answers at `info` and the rest at `debug`, so that apps that
//! ask for a token before every call they make do not write a line each (measured: a quarter
//! to a third of the token API's CPU, and a journal that drops lines past its rate limit);
//! `"all"` logs every answer at `info`; `"off"` logs none. A line is put together only when
//! its level is logged.
//!
//! At most `access_log_per_second` lines are written a second (default 100; 0 for no
//! limit). Past it, lines are counted by status instead, and one summary line says how many
//! were left out: a client hammering oauthd with a wrong key cannot push the journal past its
//! rate limit, which would drop oauthd's own warnings with the access lines.

use super::ratelimit::client_ip;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The log target of access lines (`RUST_LOG=oauthd::access=warn` silences them too).
pub const TARGET: &str = "oauthd::access";

/// `access_log` in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogPolicy {
    /// Every answer at `info`.
    All,
    /// 4xx and 5xx answers at `info`, the others at `debug` (default).
    #[default]
    Errors,
    /// No access lines at all.
    Off,
}

impl AccessLogPolicy {
    /// The level an answer with `status` is logged at, if any.
    fn level(self, status: StatusCode) -> Option<log::Level> {
        let failed = status.is_client_error() || status.is_server_error();
        match self {
            AccessLogPolicy::Off => None,
            AccessLogPolicy::All => Some(log::Level::Info),
            AccessLogPolicy::Errors if failed => Some(log::Level::Info),
            AccessLogPolicy::Errors => Some(log::Level::Debug),
        }
    }
}

/// What the access log needs of the server's settings (app data).
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub policy: AccessLogPolicy,
    /// Proxies whose `X-Forwarded-For` names the client (as for the rate limits).
    pub trusted_proxies: Vec<IpAddr>,
    /// Lines left a second, shared by every worker.
    pub budget: Arc<Budget>,
}

impl AccessLog {
    /// The line for an answer to `req` with `status`, when its level is logged.
    pub fn line(&self, req: &HttpRequest, status: StatusCode) -> Option<Line> {
        let level = self.policy.level(status)?;
        if !log::log_enabled!(target: TARGET, level) || !self.budget.admit(status.as_u16()) {
            return None;
        }
        Some(Line {
            level,
            client: client_ip(req, &self.trusted_proxies),
            request: format!("{} {}", req.method(), req.path()),
            status: status.as_u16(),
            bytes: 0,
        })
    }
}

/// One answer's line until its body is done with.
pub struct Line {
    level: log::Level,
    client: Option<IpAddr>,
    /// Method and path.
    request: String,
    status: u16,
    bytes: u64,
}

impl Line {
    /// Counts body bytes sent.
    pub fn sent(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
    }

    /// Writes the line; `elapsed` is from the request's arrival at the middleware.
    pub fn write(&self, elapsed: Duration) {
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        log::log!(
            target: TARGET,
            self.level,
            "{client} \"{}\" {} {} {:.3}ms",
            self.request,
            self.status,
            self.bytes,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}

/// How many access lines are written a second; the rest are counted and summed up.
#[derive(Debug)]
pub struct Budget {
    /// 0: no limit.
    per_second: u32,
    started: Instant,
    window: Mutex<Window>,
}

/// The current second's count, and what it left out.
#[derive(Debug, Default)]
struct Window {
    /// Seconds since `started`.
    second: u64,
    written: u32,
    /// Lines left out, by status, in the order first left out.
    left_out: Vec<(u16, u64)>,
}

/// What one second left out, for its summary line.
#[derive(Debug, PartialEq, Eq)]
struct LeftOut(Vec<(u16, u64)>);

impl Budget {
    pub fn new(per_second: u32) -> Self {
        Budget {
            per_second,
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// True when the limit is on (a ticker should call `flush`).
    pub fn limited(&self) -> bool {
        self.per_second > 0
    }

    /// Whether a line for an answer with `status` may be written now.
    fn admit(&self, status: u16) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let (admitted, ended) = self.admit_at(self.now(), status);
        if let Some(left_out) = ended {
            left_out.write(self.per_second);
        }
        admitted
    }

    /// Writes the summary of a second that has ended with lines left out; called about
    /// once a second, so that the last one of a burst is not held back until the next line.
    pub fn flush(&self) {
        if let Some(left_out) = self.ended_before(self.now()) {
            left_out.write(self.per_second);
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// `admit` at `second`; also hands back the summary of the second that ended, if any.
    fn admit_at(&self, second: u64, status: u16) -> (bool, Option<LeftOut>) {
        // A poisoned lock only means a thread panicked while counting: the counts are fine.
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let ended = window.start(second);
        if window.written < self.per_second {
            window.written += 1;
            return (true, ended);
        }
        match window.left_out.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => window.left_out.push((status, 1)),
        }
        (false, ended)
    }

    /// The summary of the window if it is older than `second`.
    fn ended_before(&self, second: u64) -> Option<LeftOut> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.start(second)
    }
}

impl Window {
    /// Moves on to `second` when it is a later one; what the old one left out, if anything.
    fn start(&mut self, second: u64) -> Option<LeftOut> {
        if second <= self.second {
            return None;
        }
        self.second = second;
        self.written = 0;
        let left_out = std::mem::take(&mut self.left_out);
        (!left_out.is_empty()).then_some(LeftOut(left_out))
    }
}

impl LeftOut {
    fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn write(&self, per_second: u32) {
        let by_status = self
            .0
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        log::info!(
            target: TARGET,
            "{} access lines left out in one second ({by_status}): at most {per_second} \
             are written a second (access_log_per_second)",
            self.total()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_info_and_the_rest_debug_unless_all_or_off() {
        use log::Level::{Debug, Info};
        let cases = [
            (AccessLogPolicy::Errors, 200, Some(Debug)),
            (AccessLogPolicy::Errors, 302, Some(Debug)),
            (AccessLogPolicy::Errors, 401, Some(Info)),
            (AccessLogPolicy::Errors, 503, Some(Info)),
            (AccessLogPolicy::All, 200, Some(Info)),
            (AccessLogPolicy::All, 404, Some(Info)),
            (AccessLogPolicy::Off, 200, None),
            (AccessLogPolicy::Off, 500, None),
        ];
        for (policy, status, level) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(policy.level(status), level, "{policy:?} {status}");
        }
        assert_eq!(AccessLogPolicy::default(), AccessLogPolicy::Errors);
    }

    #[test]
    fn a_second_writes_its_budget_and_counts_the_rest_by_status() {
        let budget = Budget::new(2);
        assert_eq!(budget.admit_at(0, 401), (true, None));
        assert_eq!(budget.admit_at(0, 401), (true, None));
        assert_eq!(budget.admit_at(0, 401), (false, None));
        assert_eq!(budget.admit_at(0, 429), (false, None));
        assert_eq!(budget.admit_at(0, 401), (false, None));
        // Nothing to sum up while the second lasts.
        assert_eq!(budget.ended_before(0), None);
        // The next second starts afresh and hands back what the last one left out.
        let (admitted, ended) = budget.admit_at(1, 200);
        assert!(admitted);
        let ended = ended.expect("a summary");
        assert_eq!(ended, LeftOut(vec![(401, 2), (429, 1)]));
        assert_eq!(ended.total(), 3);
        // A second that left nothing out has nothing to say; a flush after a burst does.
        assert_eq!(budget.ended_before(2), None);
        for _ in 0..3 {
            budget.admit_at(5, 500);
        }
        assert_eq!(budget.ended_before(5), None);
        assert_eq!(budget.ended_before(6), Some(LeftOut(vec![(500, 1)])));
        // A clock read late on another thread does not go back to an older second.
        assert_eq!(budget.admit_at(4, 500), (true, None));
    }

    #[test]
    fn no_limit_admits_every_line() {
        let budget = Budget::new(0);
        assert!(!budget.limited());
        assert!((0..10_000).all(|_| budget.admit(401)));
    }
}

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

use super::ratelimit::client_ip;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use std::net::IpAddr;
use std::time::Duration;

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
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    pub policy: AccessLogPolicy,
    /// Proxies whose `X-Forwarded-For` names the client (as for the rate limits).
    pub trusted_proxies: Vec<IpAddr>,
}

impl AccessLog {
    /// The line for an answer to `req` with `status`, when its level is logged.
    pub fn line(&self, req: &HttpRequest, status: StatusCode) -> Option<Line> {
        let level = self.policy.level(status)?;
        if !log::log_enabled!(target: TARGET, level) {
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
}

//! The process's logger: env_logger (`RUST_LOG`, `info` when unset), except for the lines
//! actix-http writes for connections that ended before a request reached oauthd, which
//! the access log takes (`http::access_log::from_http_layer`).

/// Sets the logger up; once, at the start. `RUST_LOG` unset, the daemon logs from `info`
/// and a terminal command from `warn`: a command's own words are its output, and the
/// broker's progress lines (a flow started, a refresh done) only crowd them.
pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
            .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct Logger {
    inner: env_logger::Logger,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !crate::http::from_http_layer(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// At most `lines` lines of one kind a second (or a minute), and then one line saying how
/// many more there were: an outage fails every request, and a journal past its rate limit
/// drops oauthd's other lines with these.
pub struct Budget {
    what: &'static str,
    lines: u32,
    /// The length of a period, in seconds.
    period: u64,
    /// The period counted (since the epoch), and the lines asked for in it.
    used: std::sync::Mutex<(u64, u32)>,
}

impl Budget {
    /// `what` names the lines in the count of those left out ("storage faults").
    pub const fn new(what: &'static str, per_second: u32) -> Budget {
        Budget {
            what,
            lines: per_second,
            period: 1,
            used: std::sync::Mutex::new((0, 0)),
        }
    }

    pub const fn per_minute(what: &'static str, per_minute: u32) -> Budget {
        Budget {
            lines: per_minute,
            period: 60,
            ..Budget::new(what, per_minute)
        }
    }

    /// Logs `line` at WARN if this period's budget has room.
    pub fn warn(&self, line: std::fmt::Arguments<'_>) {
        self.log(log::Level::Warn, line);
    }

    /// Logs `line` at ERROR if this period's budget has room.
    pub fn error(&self, line: std::fmt::Arguments<'_>) {
        self.log(log::Level::Error, line);
    }

    fn log(&self, level: log::Level, line: std::fmt::Arguments<'_>) {
        let period = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / self.period);
        let Ok(mut used) = self.used.lock() else {
            return;
        };
        if used.0 != period {
            // Said when the next line comes, which may be long after: the period is named.
            if used.1 > self.lines {
                let length = if self.period == 1 { "second" } else { "minute" };
                let from = used.0.saturating_mul(self.period);
                log::log!(
                    level,
                    "{} {} were left out of the log in the {length} from {}",
                    used.1 - self.lines,
                    self.what,
                    crate::clock::rfc3339(
                        i64::try_from(from.saturating_mul(1000)).unwrap_or(i64::MAX)
                    )
                );
            }
            *used = (period, 0);
        }
        used.1 += 1;
        if used.1 <= self.lines {
            log::log!(level, "{line}");
        }
    }
}

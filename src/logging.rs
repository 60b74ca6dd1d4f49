//! The process's logger: env_logger (`RUST_LOG`, `info` when unset), except for the lines
//! actix-http writes for connections that ended before a request reached oauthd, which
//! the access log takes (`http::access_log::from_http_layer`).

/// Sets the logger up; once, at the start. `RUST_LOG` unset, the daemon logs from `info`
/// and a terminal command from `warn`: a command's own words are its output, and the
/// broker's progress lines (a flow started, a refresh done) only crowd them. An empty
/// `RUST_LOG` counts as unset, as an empty `OAUTHD_*` variable does (a compose file's
/// `RUST_LOG: ${RUST_LOG:-}`): read as it is, it left every line out, warnings too.
pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if std::env::var_os("RUST_LOG").is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
        builder.parse_filters(default);
    }
    let inner = builder.build();
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
/// drops oauthd's other lines with these. The count is written by `flush_budgets`, which
/// the daemon calls every second, so the end of a burst is said when it ends, not with the
/// next line of its kind (which may come hours later, or never).
pub struct Budget {
    what: &'static str,
    lines: u32,
    /// The length of a period, in seconds.
    period: u64,
    used: std::sync::Mutex<Used>,
    /// Whether it is in `IN_USE`.
    listed: std::sync::atomic::AtomicBool,
}

/// The period counted (since the epoch), the lines asked for in it, and the level of the
/// last of them.
#[derive(Clone, Copy)]
struct Used {
    period: u64,
    asked: u32,
    level: log::Level,
}

/// Every budget that has been asked for a line, for `flush_budgets`.
static IN_USE: std::sync::Mutex<Vec<&'static Budget>> = std::sync::Mutex::new(Vec::new());

/// Writes the count of lines each budget left out in a period that has ended.
pub fn flush_budgets() {
    for budget in in_use() {
        budget.flush(budget.period_now());
    }
}

/// Writes the counts of lines left out so far, also in the current period (when the
/// daemon stops).
pub fn flush_budgets_at_stop() {
    for budget in in_use() {
        budget.flush(budget.period_now().saturating_add(1));
    }
}

fn in_use() -> Vec<&'static Budget> {
    IN_USE.lock().map(|l| l.clone()).unwrap_or_default()
}

impl Budget {
    /// `what` names the lines in the count of those left out ("storage faults").
    pub const fn new(what: &'static str, per_second: u32) -> Budget {
        Budget {
            what,
            lines: per_second,
            period: 1,
            used: std::sync::Mutex::new(Used {
                period: 0,
                asked: 0,
                level: log::Level::Warn,
            }),
            listed: std::sync::atomic::AtomicBool::new(false),
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
    pub fn warn(&'static self, line: std::fmt::Arguments<'_>) {
        self.log(log::Level::Warn, line);
    }

    /// Logs `line` at ERROR if this period's budget has room.
    pub fn error(&'static self, line: std::fmt::Arguments<'_>) {
        self.log(log::Level::Error, line);
    }

    fn period_now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / self.period)
    }

    fn log(&'static self, level: log::Level, line: std::fmt::Arguments<'_>) {
        if !self.listed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut list) = IN_USE.lock() {
                list.push(self);
            }
        }
        let period = self.period_now();
        let Ok(mut used) = self.used.lock() else {
            return;
        };
        if used.period != period {
            self.say_left_out(&used);
            *used = Used {
                period,
                asked: 0,
                level,
            };
        }
        used.asked += 1;
        used.level = level;
        if used.asked <= self.lines {
            log::log!(level, "{line}");
        }
    }

    /// Says what periods before `period` left out, once.
    fn flush(&self, period: u64) {
        let Ok(mut used) = self.used.lock() else {
            return;
        };
        if used.period < period {
            self.say_left_out(&used);
            used.asked = used.asked.min(self.lines);
        }
    }

    fn say_left_out(&self, used: &Used) {
        if used.asked <= self.lines {
            return;
        }
        let length = if self.period == 1 { "second" } else { "minute" };
        let from = used.period.saturating_mul(self.period);
        log::log!(
            used.level,
            "{} {} were left out of the log in the {length} from {}",
            used.asked - self.lines,
            self.what,
            crate::clock::rfc3339(i64::try_from(from.saturating_mul(1000)).unwrap_or(i64::MAX))
        );
    }
}

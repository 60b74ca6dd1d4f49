//! The process's logger: env_logger (`RUST_LOG`, `info` when unset), except for the lines
//! actix-http writes for connections that ended before a request reached oauthd, which
//! the access log takes (`http::access_log::from_http_layer`).

/// Sets the logger up; once, at the start.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
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

/// At most `per_second` warnings a second of one kind, and then one line saying how many
/// more there were: an outage fails every request, and a journal past its rate limit drops
/// oauthd's other lines with these.
pub struct Budget {
    what: &'static str,
    per_second: u32,
    /// The second counted (since the epoch), and the lines asked for in it.
    used: std::sync::Mutex<(u64, u32)>,
}

impl Budget {
    /// `what` names the lines in the count of those left out ("storage faults").
    pub const fn new(what: &'static str, per_second: u32) -> Budget {
        Budget {
            what,
            per_second,
            used: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Logs `line` at WARN if this second's budget has room.
    pub fn warn(&self, line: std::fmt::Arguments<'_>) {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Ok(mut used) = self.used.lock() else {
            return;
        };
        if used.0 != second {
            if used.1 > self.per_second {
                log::warn!(
                    "{} more {} in the second before",
                    used.1 - self.per_second,
                    self.what
                );
            }
            *used = (second, 0);
        }
        used.1 += 1;
        if used.1 <= self.per_second {
            log::warn!("{line}");
        }
    }
}

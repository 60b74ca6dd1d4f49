//! How a command lives as a Unix process: its output to a closed pipe, Ctrl-C and SIGTERM,
//! a file-size limit, and the environment it reads.

/// Ends a command whose output cannot be written. A reader that closed the pipe gets
/// exit status 141, what a shell reports for a tool that SIGPIPE stopped: the command did
/// not finish (an import stops at the line it was on), and `set -o pipefail` sees it.
/// Any other failure (a full disk) is said, with exit 1.
pub(crate) fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    say!("oauthd: writing the output: {e}");
    std::process::exit(1)
}

/// The exit code of a command that Ctrl-C or SIGTERM ended (a shell's, for SIGINT).
pub(crate) const INTERRUPTED: u8 = 130;

/// How long after the first signal a second one is taken for a person insisting.
const SECOND_SIGNAL_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Ctrl-C, SIGTERM (`timeout`, a stopping unit) or SIGHUP (a terminal or SSH session gone)
/// sets `stop`, which the command under way looks at to end cleanly (a copy removes its
/// partial file, `rekey` takes its new key out again, a refresh is saved); a second Ctrl-C
/// or SIGTERM, `SECOND_SIGNAL_AFTER` or more after, ends the process at once, with the
/// code it would have had (130 for Ctrl-C). A signal ignored when the command began
/// (`nohup`) stays ignored.
pub(crate) fn stop_on_signal(stop: &'static std::sync::atomic::AtomicBool) {
    let (ready, listening) = std::sync::mpsc::channel::<()>();
    let watch = move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let mut signals = Signals::listen();
            let _ = ready.send(());
            signals.next().await;
            let first = std::time::Instant::now();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            loop {
                let (name, code) = signals.next().await;
                // A terminal or SSH session that goes away sends SIGHUP more than once (the
                // shell's, then the kernel's as the session ends), and systemd may send one
                // after SIGTERM: only a later Ctrl-C or SIGTERM, a person insisting, ends
                // the work at once.
                if name == "SIGHUP" || first.elapsed() < SECOND_SIGNAL_AFTER {
                    continue;
                }
                std::process::exit(i32::from(code));
            }
        });
    };
    if std::thread::Builder::new()
        .name("oauthd-signals".into())
        .spawn(watch)
        .is_ok()
    {
        // Listening before the work starts: a signal a moment later is not the default
        // end, which would leave what the work was doing half-done.
        let _ = listening.recv_timeout(std::time::Duration::from_secs(2));
    }
}

/// The first of SIGINT, SIGTERM and SIGHUP: its name and the exit code a process ended
/// by it has (128 + its number). One ignored when the command began (`nohup`, a shell's
/// background job) stays ignored: it would otherwise cut short work meant to outlive it.
pub(crate) fn interrupted() -> impl std::future::Future<Output = (&'static str, u8)> {
    let mut signals = Signals::listen();
    async move { signals.next().await }
}

/// SIGINT, SIGTERM and SIGHUP, listened to from when made (a signal a moment later is not
/// the default end), each unless ignored when the command began.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let ignored = ignored_signals();
        let listen = |kind: SignalKind, number: u32| {
            (ignored & (1 << (number - 1)) == 0)
                .then(|| signal(kind).ok())
                .flatten()
        };
        Signals {
            int: listen(SignalKind::interrupt(), 2),
            term: listen(SignalKind::terminate(), 15),
            hup: listen(SignalKind::hangup(), 1),
        }
    }

    /// The next signal: its name and exit code.
    async fn next(&mut self) -> (&'static str, u8) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.int) => ("SIGINT", 130),
            _ = next(&mut self.term) => ("SIGTERM", 143),
            _ = next(&mut self.hup) => ("SIGHUP", 129),
        }
    }
}

/// The signals this process ignores, as the kernel tells (`SigIgn` in /proc/self/status:
/// bit n-1 for signal n); none where it cannot be read.
fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .unwrap_or(0)
}

/// A file-size limit reached (systemd's `LimitFSIZE=`, `ulimit -f`) sends SIGXFSZ, whose
/// default action ends the process without a word in the log; caught (by a handler that
/// only sets a flag nobody reads), the write fails with EFBIG instead, which the daemon
/// answers with 503 and recovers from as from a full disk (`store::sqlite::room`), and a
/// command reports as an error.
pub(super) fn catch_file_size_signal() {
    let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, caught) {
        log::warn!("could not catch SIGXFSZ (a file-size limit then ends oauthd): {e}");
    }
}

/// The open-file limit `oauthd serve` raises its own to, when the hard limit allows:
/// `dist/oauthd.service`'s (`LimitNOFILE`).
const OPEN_FILES: u64 = 65_536;

/// Raises the soft open-file limit to `OPEN_FILES` (or the hard limit, when lower), as a
/// unit's `LimitNOFILE` does: run by hand, the soft limit is often 1,024, and every client
/// connection, proxied call and idle connection to a provider's API holds a descriptor.
/// Past the limit, new connections are refused with "Too many open files". A limit set
/// higher is left as it is.
pub(super) fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let Some(soft) = now.current else { return };
    let wanted = now.maximum.map_or(OPEN_FILES, |hard| hard.min(OPEN_FILES));
    let mut limit = soft;
    if soft < wanted {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: now.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                log::info!("open-file limit raised from {soft} to {wanted}");
                limit = wanted;
            }
            Err(e) => {
                log::warn!("the open-file limit ({soft}) could not be raised to {wanted}: {e}")
            }
        }
    }
    if limit < 4096 {
        log::warn!(
            "the open-file limit is {limit}: each client connection and proxied call holds \
             one; raise it (LimitNOFILE, ulimit -Hn) for more than a few hundred at once"
        );
    }
}

/// The variables clap reads itself (`--db`, `--config`, `--listen`) are taken as the
/// others are: trimmed, and empty as unset. Clap would refuse an empty one as a flag given
/// without its value, even for commands that use neither.
pub(super) fn tidy_env() {
    for name in ["OAUTHD_DB", "OAUTHD_CONFIG", "OAUTHD_LISTEN"] {
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let Some(text) = value.to_str() else {
            continue;
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            std::env::remove_var(name);
        } else if trimmed.len() != text.len() {
            std::env::set_var(name, trimmed);
        }
    }
}

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

/// Ctrl-C or SIGTERM (`timeout`, a stopping unit) sets `stop`, which the command under
/// way looks at to end cleanly (a copy removes its partial file, `rekey` takes its new key
/// out again); a second one ends the process at once, with 130.
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
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let _ = ready.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            std::process::exit(i32::from(INTERRUPTED));
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

/// A file-size limit reached (systemd's `LimitFSIZE=`, `ulimit -f`) sends SIGXFSZ, whose
/// default action ends the process without a word in the log; caught (by a handler that
/// only sets a flag nobody reads), the write fails with EFBIG instead, which the daemon
/// answers with 503 and recovers from as from a full disk, and a command reports as an
/// error.
pub(super) fn catch_file_size_signal() {
    let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, caught) {
        log::warn!("could not catch SIGXFSZ (a file-size limit then ends oauthd): {e}");
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

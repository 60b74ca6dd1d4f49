//! Work that outlives the request that started it and must end before oauthd stops:
//! device-flow pollers and leased refreshes. Both run on the daemon's runtime (an HTTP
//! worker's runtime ends with the worker, and its tasks with it), and the stop waits for
//! them.

use super::Broker;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Leased refreshes running now.
#[derive(Default)]
pub(super) struct Refreshing(Arc<AtomicUsize>);

/// One leased refresh: counted until dropped.
pub(super) struct Running(Arc<AtomicUsize>);

impl Refreshing {
    pub(super) fn enter(&self) -> Running {
        self.0.fetch_add(1, Ordering::SeqCst);
        Running(self.0.clone())
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Broker {
    /// Whether this broker serves (its background work runs on the daemon's runtime), as
    /// opposed to a terminal command's, which ends with the command.
    pub(super) fn serving(&self) -> bool {
        self.runtime.get().is_some()
    }

    /// Runs device drivers and leased refreshes on `runtime` from now on: the daemon's,
    /// which lives until the stop has waited for them.
    pub fn run_background_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.runtime.set(runtime);
    }

    /// Whether oauthd has begun to stop (`stop_background`).
    pub(super) fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Sleeps `d`, or until oauthd begins to stop, whichever comes first.
    pub(super) async fn sleep_unless_stopping(&self, d: Duration) {
        let mut stop = self.stopping.subscribe();
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|stopping| *stopping) => {}
        }
    }

    pub(super) fn spawn_background<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.runtime.get() {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Runs `task` in the background, counted as a refresh under way: a stop (and a
    /// command's end) waits for it.
    pub(super) fn spawn_counted<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = self.refreshing.enter();
        self.spawn_background(async move {
            let _running = running;
            task.await
        })
    }

    /// Stops device drivers once the poll each has under way, if any, is recorded, and
    /// waits for leased refreshes to store what their provider answered: at most a lease's
    /// length (`provider_answer_wait` + `provider_timeout` + 5 s), since each gives up by
    /// the end of its lease or claim. Pending device flows stay pending, for the next start
    /// or another process. The first call sets the deadline: a later one waits no longer
    /// than it allows.
    pub async fn stop_background(&self) {
        self.stopping.send_replace(true);
        // No refresh takes a lease, and no device flow a claim, once the stop began: each
        // under way ends by a lease's length from now (and a moment for the one it was
        // taking).
        let by = *self
            .stop_deadline
            .get_or_init(|| Instant::now() + self.longest_stop());
        let drivers = || self.device_drivers.lock().map_or(0, |d| d.len());
        // A stop that takes a while says what it waits for, every `SAY_EVERY`, so that
        // nobody takes it for a hang and kills it. Two calls wait (the HTTP server's stop
        // and the start's end): one says the progress, and whichever ends first says how
        // the stop ended.
        const SAY_EVERY: Duration = Duration::from_secs(10);
        let mut voice = ProgressVoice {
            token: &self.stop_voice,
            held: false,
        };
        let mut say_at = Instant::now() + SAY_EVERY;
        loop {
            let now = Instant::now();
            if now >= by || (drivers() == 0 && self.refreshing.count() == 0) {
                break;
            }
            if voice.take() && now >= say_at {
                log::info!("{}", self.stop_progress());
                say_at = now + SAY_EVERY;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.stop_summed.swap(true, Ordering::AcqRel) {
            return;
        }
        match drivers() {
            0 => {}
            n => log::warn!("device flows: {n} poll(s) still under way at the stop; their flows are polled again after the start"),
        }
        match self.refreshing.count() {
            0 => {}
            n => log::error!("{n} refresh(es) still under way at the stop, past their lease: what their provider answers is lost"),
        }
    }

    /// What a stop under way still waits for, for the log.
    pub fn stop_progress(&self) -> String {
        let refreshes = self.refreshing.count();
        let polls = self.device_drivers.lock().map_or(0, |d| d.len());
        let left = self.stop_deadline.get().map_or(0, |by| {
            by.saturating_duration_since(Instant::now()).as_secs()
        });
        if refreshes == 0 && polls == 0 {
            return "still stopping: finishing requests in flight".into();
        }
        format!(
            "still stopping: waiting for {refreshes} refresh(es) a provider is answering and {polls} device poll(s), {left} s more at most; killed now, a refresh token the provider has rotated would be lost (the account then needs connecting again)"
        )
    }
}

/// The right to say a stop's progress, held by one waiting call at a time (`token`):
/// given back when the call that holds it is dropped, for another to take.
struct ProgressVoice<'a> {
    token: &'a AtomicBool,
    held: bool,
}

impl ProgressVoice<'_> {
    /// Whether this call holds it, taking it when no other does.
    fn take(&mut self) -> bool {
        if !self.held {
            self.held = !self.token.swap(true, Ordering::AcqRel);
        }
        self.held
    }
}

impl Drop for ProgressVoice<'_> {
    fn drop(&mut self) {
        if self.held {
            self.token.store(false, Ordering::Release);
        }
    }
}

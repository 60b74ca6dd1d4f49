//! The single writer thread: drains queued write jobs into one transaction per cycle
//! (group commit) and answers each job only after its transaction committed.
//!
//! There is no fixed wait window: a lone request commits at once; under load, whatever
//! queued up while the previous commit ran goes into the next one. A job runs inside
//! a savepoint when it makes several changes, so a failing job leaves no half-done
//! writes in the group.
//!
//! A connection that cannot write (the file or its filesystem went read-only, an I/O
//! error) is not given up on: the writer marks itself read-only and, before each later
//! group, at most once a second, swaps in a fresh connection. The first group that commits
//! clears the mark; no restart is needed. A full disk, and a write lock another process
//! holds past the busy timeout, are marked the same way (and logged once): the first group
//! that commits a change clears the mark, and `/readyz` tries a write of its own while one
//! is set, so that a load balancer that stopped sending writes still sees it end.
//!
//! The writer also watches for other processes' commits (`ChangeWatch`): every change this
//! process makes goes through its connection, so its `PRAGMA data_version` moves only when
//! another process (the CLI, another oauthd on the file) committed. It looks after a group
//! when the last look is `LOOK_EVERY` old, and a ticker wakes it for that when idle.

use super::classify;
use super::live_counts::{Emptied, LiveCounts, Tx};
use crate::store::change_watch::LOOK_EVERY;
use crate::store::{ChangeWatch, StoreError};
use rusqlite::{Connection, ErrorCode, MAIN_DB};
use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction: bounds how long one commit holds the lock.
const MAX_GROUP: usize = 512;
/// Jobs that may wait in the queue; further callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 8192;
/// Least time between two attempts to reopen a connection that cannot write.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Least time between two logged full disks.
const FULL_SAID_EVERY: Duration = Duration::from_secs(60);

/// How long after the last write that found no room the full-disk mark ends with a write
/// that goes through, where the filesystem cannot tell whether there is room
/// (`room::Room::Unsure`): a mark that never ended would take a writable instance out of a
/// load balancer for good.
const FULL_QUIET: Duration = Duration::from_secs(60);

/// Opens a new connection to the database, configured like the first one.
pub type Reopen = Box<dyn Fn() -> rusqlite::Result<Connection> + Send>;

/// What the writer's queue carries.
enum Msg {
    Job(Box<dyn WriteJob>),
    /// Time to look for other processes' changes (sent while the writer idles).
    Look,
}

trait WriteJob: Send {
    /// Runs the job inside the open transaction and keeps its result for `complete`;
    /// false when the caller already gave up (so nothing was run). Notes in `faults` what
    /// its failure said about the connection.
    fn execute(&mut self, tx: &Tx, faults: &mut Faults) -> bool;
    /// Answers the caller how the transaction ended, with the result kept by `execute`;
    /// false when the caller was gone.
    fn complete(self: Box<Self>, ended: Result<(), StoreError>) -> bool;
    /// Answers the caller without running (no transaction could be started).
    fn abort(self: Box<Self>, err: StoreError);
}

/// A job's work until it runs, then its result until the transaction ends: one allocation
/// carries both.
enum Stage<T, F> {
    Queued(F),
    Ran(Result<T, StoreError>),
    Taken,
}

struct FnJob<T, F> {
    context: &'static str,
    /// Run inside a savepoint: needed only when the job makes several changes.
    atomic: bool,
    stage: Stage<T, F>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Tx) -> rusqlite::Result<T> + Send,
{
    fn execute(&mut self, tx: &Tx, faults: &mut Faults) -> bool {
        if self.reply.is_closed() {
            return false;
        }
        let Stage::Queued(work) = std::mem::replace(&mut self.stage, Stage::Taken) else {
            return false;
        };
        let context = self.context;
        let atomic = self.atomic;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if atomic {
                in_savepoint(tx, work)
            } else {
                work(tx)
            }
        }));
        let Ok(result) = ran else {
            // A bug in the job: what it wrote cannot be trusted. The whole transaction is
            // undone (its group fails) and the writer goes on; a panic that ended the
            // thread would fail every later write, for good.
            log::error!("a database write ({context}) panicked; its transaction was rolled back");
            let _ = tx.execute_batch("ROLLBACK");
            self.stage = Stage::Ran(Err(StoreError::unavailable(
                context,
                "the write failed inside oauthd (see its log)",
            )));
            return true;
        };
        self.stage = Stage::Ran(result.map_err(|e| {
            faults.note(&e);
            classify(context, e)
        }));
        true
    }

    fn complete(self: Box<Self>, ended: Result<(), StoreError>) -> bool {
        let result = match self.stage {
            Stage::Ran(result) => ended.and(result),
            // Never ran: `execute` returned false and the job was not kept.
            Stage::Queued(_) | Stage::Taken => Err(StoreError::unavailable(
                self.context,
                "the write was not run",
            )),
        };
        self.reply.send(result).is_ok()
    }

    fn abort(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

fn in_savepoint<T>(tx: &Tx, work: impl FnOnce(&Tx) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    tx.prepare_cached("SAVEPOINT job")?.execute([])?;
    let counts = tx.snapshot();
    let result = work(tx);
    if tx.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): nothing to undo.
        return result;
    }
    if result.is_err() {
        let undone = tx
            .prepare_cached("ROLLBACK TO job")
            .and_then(|mut s| s.execute([]));
        if let Err(e) = undone {
            // The job's writes cannot be undone alone: the whole transaction is, so they
            // are not committed with the rest of its group (which fails with it).
            let _ = tx.execute_batch("ROLLBACK");
            return Err(e);
        }
        tx.restore(counts);
    }
    tx.prepare_cached("RELEASE job")?.execute([])?;
    result
}

/// Runs a statement without parameters from the connection's statement cache: a group's
/// BEGIN and COMMIT are not parsed again for every group.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// What a group's failures said about the connection and its disk.
#[derive(Default)]
struct Faults {
    /// The database's file, whose size a failed write is judged by against the file-size
    /// limit.
    db: Option<std::path::PathBuf>,
    /// The connection cannot write (it is replaced; a fresh one may).
    cannot_write: bool,
    /// The disk (or the process's file-size limit) had no room for the write.
    disk_full: bool,
    /// Another process held the write lock past the busy timeout.
    locked: bool,
}

impl Faults {
    fn of(conn: &Connection) -> Faults {
        Faults {
            db: conn.path().map(std::path::PathBuf::from),
            ..Faults::default()
        }
    }

    /// Before `classify` of the same error, which reads what this finds of the limit.
    fn note(&mut self, e: &rusqlite::Error) {
        let code = e.sqlite_error_code();
        // EFBIG, the file-size limit reached, leaves the connection as able to write as a
        // full disk does.
        let by_limit = matches!(code, Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull))
            && self.db.as_deref().is_some_and(super::room::failed_by_limit);
        match code {
            Some(ErrorCode::SystemIoFailure) if by_limit => self.disk_full = true,
            Some(ErrorCode::ReadOnly | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
                self.cannot_write = true
            }
            Some(ErrorCode::DiskFull) => self.disk_full = true,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => self.locked = true,
            _ => {}
        }
    }
}

/// How long a caller waits for its write to be answered before it gets a 503: past two
/// busy timeouts (a group queued behind one that waited for the lock waits for its own),
/// so that only a writer stuck in the filesystem (a frozen or stalled disk, a network
/// filesystem gone) makes callers give up, rather than hang with the connection held.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// How long one group may take before `/readyz` says the writer is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(12);

/// How long a write that went through tells `/readyz` the database can be written: past
/// it, with nothing written since, `/readyz` takes the write lock itself (a lock another
/// process holds shows only to a write).
const WROTE_LATELY: Duration = Duration::from_secs(5);

/// Since when the writer has been in its current group, if it is in one, and when a
/// write last went through.
struct Busy {
    base: Instant,
    /// Milliseconds since `base` at which the group began, plus one; 0 while idle.
    since: AtomicU64,
    /// Milliseconds since `base` at which a group last committed a change, plus one; 0
    /// before the first.
    wrote: AtomicU64,
}

impl Busy {
    fn new() -> Busy {
        Busy {
            base: Instant::now(),
            since: AtomicU64::new(0),
            wrote: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn begin(&self) {
        self.since.store(self.now() + 1, Ordering::Release);
    }

    fn wrote_now(&self) {
        self.wrote.store(self.now() + 1, Ordering::Release);
    }

    /// Whether a write went through within `within`.
    fn wrote_within(&self, within: Duration) -> bool {
        match self.wrote.load(Ordering::Acquire) {
            0 => false,
            at => u128::from(self.now().saturating_sub(at - 1)) < within.as_millis(),
        }
    }

    fn end(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// How long the current group has taken so far, if one is under way.
    fn for_how_long(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            began => Some(Duration::from_millis(self.now().saturating_sub(began - 1))),
        }
    }
}

/// How long `check_writable` waits for its probe while another process holds the lock.
const LOCKED_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Writer {
    queue: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    read_only: Arc<AtomicBool>,
    disk_full: Arc<AtomicBool>,
    /// Set while the disk is marked full and its filesystem says there is no room: then
    /// `/readyz` answers without writing.
    short: Arc<AtomicBool>,
    locked: Arc<AtomicBool>,
    moved: Arc<AtomicBool>,
    busy: Arc<Busy>,
    /// `ANSWER_WITHIN`, `STUCK_AFTER` and `WROTE_LATELY` (shorter in tests).
    answer_within: Duration,
    stuck_after: Duration,
    wrote_lately: Duration,
}

impl Writer {
    /// Jobs waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Starts the writer thread on `conn`; `reopen` replaces it when it cannot write.
    /// `name` (the database path) is for the log; `watch` hears of other processes'
    /// commits. The OS refusing a thread is an error, not a writer that silently never
    /// writes.
    pub fn start(
        conn: Connection,
        reopen: Reopen,
        path: &std::path::Path,
        watch: Arc<ChangeWatch>,
    ) -> std::io::Result<Writer> {
        let name = path.display().to_string();
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let read_only = Arc::new(AtomicBool::new(conn_is_read_only(&conn)));
        crate::metrics::STORAGE_READ_ONLY.set(read_only.load(Ordering::Acquire).into());
        let disk_full = Arc::new(AtomicBool::new(false));
        let short = Arc::new(AtomicBool::new(false));
        let locked = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicBool::new(false));
        crate::metrics::STORAGE_DISK_FULL.set(0);
        let busy = Arc::new(Busy::new());
        let link = Link {
            files: Files::of(path),
            moved: moved.clone(),
            conn: Some(conn),
            reopen,
            name,
            read_only: read_only.clone(),
            disk_full: disk_full.clone(),
            short: short.clone(),
            locked: locked.clone(),
            full_said: None,
            last_full: None,
            last_reopen: None,
            watch,
            data_version: None,
            last_look: None,
            emptied: RefCell::new(Emptied::after_open()),
            busy: busy.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("oauthd-sqlite-writer".into())
            .spawn(move || writer_loop(link, rx))?;
        // Holds only a weak handle: the queue still closes when the Writer is dropped.
        let ticks = queue.downgrade();
        std::thread::Builder::new()
            .name("oauthd-sqlite-watch".into())
            .spawn(move || loop {
                std::thread::sleep(LOOK_EVERY);
                let Some(queue) = ticks.upgrade() else { break };
                // A full queue means the writer is busy, and looks after its groups.
                let _ = queue.try_send(Msg::Look);
            })?;
        Ok(Writer {
            queue,
            thread: Some(thread),
            read_only,
            disk_full,
            short,
            locked,
            moved,
            busy,
            answer_within: ANSWER_WITHIN,
            stuck_after: STUCK_AFTER,
            wrote_lately: WROTE_LATELY,
        })
    }

    /// Set while the writer cannot write, cleared by its next commit.
    pub fn read_only_mark(&self) -> Arc<AtomicBool> {
        self.read_only.clone()
    }

    /// One small write (taken out again) whatever the marks say: what `oauthd check` asks,
    /// in a process of its own whose writer has written nothing yet. Waits for the write
    /// lock up to the busy timeout.
    pub async fn probe_write(&self, context: &'static str) -> Result<(), StoreError> {
        self.submit(context, false, |tx: &Tx| {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES ('probe', 1)")?
                .execute([])?;
            tx.prepare_cached("DELETE FROM meta WHERE name = 'probe'")?
                .execute([])
                .map(|_| ())
        })
        .await
    }

    /// Asks the writer whether it can write now: when it could not, this is what makes it
    /// try a fresh connection (at most once a second) even while no request writes.
    pub async fn check_writable(&self, context: &'static str) -> Result<(), StoreError> {
        if self.moved.load(Ordering::Acquire) {
            return Err(moved_error(context));
        }
        if let Some(taken) = self.busy.for_how_long().filter(|t| *t >= self.stuck_after) {
            return Err(StoreError::unavailable(
                context,
                format!(
                    "the database writer has been in one write for {} s: the disk or filesystem does not answer (frozen, stalled, or a network filesystem gone)",
                    taken.as_secs()
                ),
            ));
        }
        let marked = [&self.read_only, &self.disk_full, &self.locked];
        let unmarked = !marked.iter().any(|m| m.load(Ordering::Acquire));
        if unmarked {
            if self.busy.wrote_within(self.wrote_lately) {
                return Ok(());
            }
            // Nothing written lately: the write lock taken and let go, writing nothing (no
            // sync, nothing another process's caches see), waited for a second at most. A
            // lock another process holds fails it at the busy timeout, which marks it (the
            // next /readyz says so); slower than a second is no fault found (a disk that
            // stalls is the stuck check's).
            let taken = self.submit(context, false, |_: &Tx| Ok(()));
            return match tokio::time::timeout(LOCKED_PROBE_WAIT, taken).await {
                Ok(done) => done,
                Err(_) => Ok(()),
            };
        }
        // Full, and the filesystem says so (the writer looks every `LOOK_EVERY`): no write,
        // which could only take freed blocks from the requests' writes. Read-only as well:
        // the probe below, which reopens the connection.
        if self.short.load(Ordering::Acquire) && !self.read_only.load(Ordering::Acquire) {
            return Err(full(context));
        }
        // A write that needs what a request's needs: the write lock, a writable file (else
        // SQLITE_READONLY), and room: 64 KiB of new pages appended to the WAL, more than a
        // request writes (a page or two fit in what a failed commit left allocated). A
        // second, small write takes it out again. Its commit clears the marks, the
        // full-disk one where there is room.
        let probe =
            |sql: &'static str| move |tx: &Tx| tx.prepare_cached(sql)?.execute([]).map(|_| ());
        if !self.read_only.load(Ordering::Acquire) && !self.disk_full.load(Ordering::Acquire) {
            // Locked only: one small write, waited for a second at most. A probe waits for
            // the busy timeout (5 s) behind the writes queued before it, past a load
            // balancer's check timeout; one given up on is skipped by the writer (nobody
            // waits for it), and the next /readyz sends another, which commits at once
            // when the lock is free and clears the mark.
            let wrote = self.submit(context, false, move |tx: &Tx| {
                probe("INSERT OR REPLACE INTO meta (name, value) VALUES ('probe', 1)")(tx)?;
                probe("DELETE FROM meta WHERE name = 'probe'")(tx)
            });
            return match tokio::time::timeout(LOCKED_PROBE_WAIT, wrote).await {
                Ok(done) => done,
                Err(_) => Err(StoreError::Busy { context }),
            };
        }
        self.submit(
            context,
            false,
            probe("INSERT OR REPLACE INTO meta (name, value) VALUES ('probe', randomblob(65536))"),
        )
        .await?;
        self.submit(
            context,
            false,
            probe("DELETE FROM meta WHERE name = 'probe'"),
        )
        .await?;
        // Written, and yet not ready while the full-disk mark stays: the write fitted in
        // what the -wal file already holds, with no room to spare (`Link::mark_room`).
        if self.disk_full.load(Ordering::Acquire) {
            return Err(full(context));
        }
        Ok(())
    }

    /// Runs `work`, which makes at most one change (a single statement is atomic by
    /// itself), in the next group transaction; returns its result once committed.
    pub async fn run<T, F>(&self, context: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(context, false, work).await
    }

    /// Like `run`, for work that makes several changes: all of them or none commit.
    pub async fn run_atomic<T, F>(&self, context: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(context, true, work).await
    }

    async fn submit<T, F>(
        &self,
        context: &'static str,
        atomic: bool,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(FnJob {
            context,
            atomic,
            stage: Stage::Queued(work),
            reply,
        });
        let gone = || StoreError::unavailable(context, "the database writer has stopped");
        let answered = async {
            self.queue.send(Msg::Job(job)).await.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        };
        // A job given up on stays queued: the writer runs it when it can, for nobody.
        match tokio::time::timeout(self.answer_within, answered).await {
            Ok(answered) => answered,
            Err(_) => Err(StoreError::unavailable(
                context,
                format!(
                    "the database did not answer within {} s (the disk or filesystem is stalled, or another process held the lock that long): the change may or may not be made",
                    self.answer_within.as_secs()
                ),
            )),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has finished what was queued.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn conn_is_read_only(conn: &Connection) -> bool {
    conn.is_readonly(MAIN_DB).unwrap_or(true)
}

/// A full disk's error, or the file-size limit's when that is what leaves no room.
fn full(context: &'static str) -> StoreError {
    if super::room::size_limited() {
        StoreError::SizeLimit { context }
    } else {
        StoreError::Full { context }
    }
}

/// What oauthd answers while the database's files are not the ones it opened.
fn moved_error(context: &'static str) -> StoreError {
    StoreError::Moved { context }
}

/// The database's files as opened (device and inode of each that was there): a file
/// deleted or replaced under oauthd (an `rm` of the `-wal`, a restore by `mv` while it
/// runs) leaves oauthd writing where nothing will read it again, or two processes each
/// with its own `-shm`.
struct Files {
    paths: [std::path::PathBuf; 3],
    opened: [Option<(u64, u64)>; 3],
}

impl Files {
    fn of(path: &std::path::Path) -> Files {
        // SQLite keeps the -wal and -shm files beside the file a link leads to.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let paths = ["", "-wal", "-shm"].map(|suffix| crate::paths::with_suffix(&path, suffix));
        let opened = paths.clone().map(|p| Files::id(&p));
        Files { paths, opened }
    }

    /// Takes the files as they are now for the ones opened: after a reopen, which may
    /// have made new -wal and -shm files (closing the last connection deletes them).
    fn reset(&mut self) {
        self.opened = self.paths.clone().map(|p| Files::id(&p));
    }

    fn id(path: &std::path::Path) -> Option<(u64, u64)> {
        Files::look(path).ok().flatten()
    }

    /// The file's device and inode; `None` when there is no file there, an error when
    /// that cannot be told (the directory's permissions taken away: the file may be there
    /// as it was, and is not to be said deleted).
    fn look(path: &std::path::Path) -> std::io::Result<Option<(u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some((m.dev(), m.ino()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How to copy out what this process still holds of the database and its `-wal` file
    /// when a name no longer leads to the file opened (an `rm`): from `/proc/PID/fd/N`
    /// while oauthd runs, and from the name where it still does. A shell command line, or
    /// `None` where a file opened is found neither way.
    fn rescue(&self, to: &std::path::Path) -> Option<String> {
        let pid = std::process::id();
        let held: Vec<(std::path::PathBuf, (u64, u64))> = std::fs::read_dir("/proc/self/fd")
            .ok()?
            .flatten()
            .filter_map(|fd| Some((fd.path(), Files::id(&fd.path())?)))
            .collect();
        let mut copies = Vec::new();
        for ((path, opened), suffix) in self.paths.iter().zip(self.opened).zip(["", "-wal"]) {
            let Some(opened) = opened else { continue };
            let from = if Files::id(path) == Some(opened) {
                crate::paths::shell_word(path)
            } else {
                let (fd, _) = held.iter().find(|(_, id)| *id == opened)?;
                let n = fd.file_name()?.to_string_lossy().into_owned();
                format!("/proc/{pid}/fd/{n}")
            };
            copies.push(format!(
                "cp {from} {}",
                crate::paths::shell_word(&crate::paths::with_suffix(to, suffix))
            ));
        }
        Some(copies.join(" && "))
    }

    /// The first file that is no longer the one opened; one not there at the open (a
    /// `-wal` made later) is taken as it is now.
    fn changed(&mut self) -> Option<&std::path::Path> {
        for (path, opened) in self.paths.iter().zip(self.opened.iter_mut()) {
            // Not told (permission denied on the directory): its writes say how they fail.
            let Ok(now) = Files::look(path) else { continue };
            match opened {
                None => *opened = now,
                Some(was) if now != Some(*was) => return Some(path),
                Some(_) => {}
            }
        }
        None
    }
}

/// The writer thread's connection and what it needs to replace it.
struct Link {
    files: Files,
    /// Set while `files` are not the ones opened: every write is refused.
    moved: Arc<AtomicBool>,
    /// `None` after a reopen failed: each group is refused until one succeeds.
    conn: Option<Connection>,
    reopen: Reopen,
    name: String,
    read_only: Arc<AtomicBool>,
    /// Set while writes fail for want of room; cleared by the next commit that changed rows
    /// once there is room (`mark_room`).
    disk_full: Arc<AtomicBool>,
    /// Set while `disk_full` is and the filesystem says it has no room (`room::Room::Short`).
    short: Arc<AtomicBool>,
    /// Set while another process holds the write lock past the busy timeout; cleared alike.
    locked: Arc<AtomicBool>,
    /// When a full disk was last logged.
    full_said: Option<Instant>,
    /// When a write last found no room.
    last_full: Option<Instant>,
    last_reopen: Option<Instant>,
    watch: Arc<ChangeWatch>,
    /// `PRAGMA data_version` at the last look (`None`: not looked on this connection).
    data_version: Option<i64>,
    last_look: Option<Instant>,
    /// Namespaces the groups since the last sweep may have left without live states.
    emptied: RefCell<Emptied>,
    /// When the current group began, and when a write last went through.
    busy: Arc<Busy>,
}

impl Link {
    fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    fn mark_writable(&mut self) {
        if self.read_only.swap(false, Ordering::AcqRel) {
            crate::metrics::STORAGE_READ_ONLY.set(0);
            log::info!("database {} is writable again", self.name);
        }
    }

    fn mark_read_only(&mut self) {
        if !self.read_only.swap(true, Ordering::AcqRel) {
            crate::metrics::STORAGE_READ_ONLY.set(1);
            log::error!(
                "database {} cannot be written (read-only filesystem, the file, its -wal \
                 and -shm files or its directory not writable by this user, or an I/O error \
                 such as a file-size limit): writes and /readyz answer \
                 503 until it can; each write or /readyz tries a fresh connection, at most \
                 once every {}s",
                self.name,
                REOPEN_EVERY.as_secs()
            );
        }
    }

    fn mark_disk_full(&mut self) {
        self.last_full = Some(Instant::now());
        self.look_at_room();
        if !self.disk_full.swap(true, Ordering::AcqRel) {
            crate::metrics::STORAGE_DISK_FULL.set(1);
            // At the edge of full, writes that fit and writes that do not take turns: said
            // at most once a minute.
            if self
                .full_said
                .is_some_and(|t| t.elapsed() < FULL_SAID_EVERY)
            {
                return;
            }
            self.full_said = Some(Instant::now());
            log::error!(
                "database {}: the disk is full (or the process's file-size limit reached): \
                 writes that find no room and /readyz answer 503 until there is room again \
                 ({} MiB free, a quarter of a filesystem under {} MiB); nothing \
                 acknowledged is lost, and no restart is needed",
                self.name,
                super::room::ROOM >> 20,
                (4 * super::room::ROOM) >> 20
            );
        }
    }

    /// While the disk is marked full: what its filesystem says of its room, for `/readyz`.
    fn look_at_room(&mut self) -> super::room::Room {
        let room = super::room::room(&self.files.paths[0]);
        self.short
            .store(room == super::room::Room::Short, Ordering::Release);
        room
    }

    /// After a commit: a full disk's mark waits for room as well, as a write that fits in
    /// what the -wal file already holds goes through at the edge of full; where the
    /// filesystem cannot tell, for `FULL_QUIET` with no write finding none.
    fn mark_room(&mut self) {
        use super::room::Room;
        if !self.disk_full.load(Ordering::Acquire) {
            return;
        }
        let quiet = self.last_full.is_none_or(|t| t.elapsed() >= FULL_QUIET);
        match self.look_at_room() {
            Room::Enough => {}
            Room::Unsure if quiet => {}
            Room::Unsure | Room::Short => return,
        }
        self.short.store(false, Ordering::Release);
        if self.disk_full.swap(false, Ordering::AcqRel) {
            crate::metrics::STORAGE_DISK_FULL.set(0);
            log::info!("database {}: there is room to write again", self.name);
        }
    }

    fn mark_locked(&mut self) {
        if !self.locked.swap(true, Ordering::AcqRel) {
            log::error!(
                "database {}: another process holds its write lock (an sqlite3 shell left in \
                 a transaction, a copy tool): writes and /readyz answer 503 after waiting for \
                 it, until it lets go; nothing acknowledged is lost, and no restart is needed",
                self.name
            );
            // Who has the file open, once per lock: a look through /proc, on a thread of
            // its own (the writer answers the writes queued meanwhile), said only while the
            // lock is still held.
            let (name, path) = (self.name.clone(), self.files.paths[0].clone());
            let locked = self.locked.clone();
            let _ = std::thread::Builder::new()
                .name("oauthd-lock-holders".into())
                .spawn(move || {
                    let open = super::copy::lock_suspects(&path);
                    if !open.is_empty() && locked.load(Ordering::Acquire) {
                        log::error!(
                            "database {name}: the file is held open{open}: one of them holds \
                             its write lock"
                        );
                    }
                });
        }
    }

    fn mark_unlocked(&mut self) {
        if self.locked.swap(false, Ordering::AcqRel) {
            log::info!("database {}: the write lock is free again", self.name);
        }
    }

    /// When read-only, replaces the connection with a fresh one (at most once per
    /// `REOPEN_EVERY`), read-only or not: the next commit tells whether it can write, and a
    /// read-only one makes writes fail at once with "read-only" instead of an I/O error.
    /// The old one is closed first: a connection opened while it still maps a read-only
    /// `-shm` file shares that mapping and could never write.
    fn heal(&mut self) {
        if !self.is_read_only() || self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return;
        }
        self.last_reopen = Some(Instant::now());
        self.conn = None;
        // A fresh connection's data_version says nothing about what changed meanwhile.
        self.data_version = None;
        match (self.reopen)() {
            Ok(fresh) => {
                self.conn = Some(fresh);
                self.files.reset();
            }
            Err(e) => log::warn!("database {}: reopening failed: {e}", self.name),
        }
    }
}

impl Link {
    /// Marks the store moved while a file is not the one opened, and says so once; the
    /// mark goes when the files are back.
    fn look_at_files(&mut self) {
        // With no connection open (a reopen failed) SQLite may have deleted the -wal and
        // -shm files itself, as the last connection's close does; the next reopen takes
        // the files as they are then.
        if self.conn.is_none() {
            return;
        }
        match self.files.changed().map(std::path::Path::to_owned) {
            Some(file) => {
                if !self.moved.swap(true, Ordering::AcqRel) {
                    let db = &self.files.paths[0];
                    // The directory gone: the copy goes into the first directory above it
                    // that oauthd may write, else the temporary directory.
                    let gone = gone_directory(db);
                    let writable = |a: &Path| {
                        a.is_dir() && rustix::fs::access(a, rustix::fs::Access::WRITE_OK).is_ok()
                    };
                    let beside = gone.and_then(|g| {
                        let dir = g.ancestors().skip(1).find(|a| writable(a));
                        let dir = dir.map_or_else(std::env::temp_dir, Path::to_owned);
                        Some(dir.join(db.file_name()?))
                    });
                    let copy = crate::paths::with_suffix(
                        beside.as_deref().unwrap_or(db),
                        &format!(".rescued-{}", std::process::id()),
                    );
                    // What it held is lost when it stops: say how to keep it first.
                    let keep = match self.files.rescue(&copy) {
                        Some(cp) => format!(
                            "; or keep what oauthd holds: before stopping it, `{cp}`, then stop it{} and `oauthd restore --db {}{} {}`",
                            match (gone, db.parent()) {
                                (Some(_), Some(dir)) => format!(
                                    ", `mkdir -p {}`",
                                    crate::paths::shell_word(dir)
                                ),
                                _ => String::new(),
                            },
                            crate::paths::shell_word(db),
                            if db.exists() { "" } else { " --create" },
                            crate::paths::shell_word(&copy)
                        ),
                        None => String::new(),
                    };
                    if let Some(dir) = gone {
                        log::error!(
                            "database {}: its directory {} is gone (moved, renamed or deleted while oauthd had the database open): what oauthd wrote now would be lost at its next start, so writes and /readyz answer 503. If it was moved, move it back to {} and oauthd carries on by itself{keep}",
                            self.name,
                            dir.display(),
                            dir.display()
                        );
                        return;
                    }
                    // A database file put in place while the -wal beside it is still the
                    // old database's: started on as they are, SQLite replays the old
                    // -wal's pages into the new file, which that damages.
                    let start_again = if file == *db {
                        format!(
                            "; or stop oauthd and start it on the new file without what it held, after moving {} and {} aside (they are the replaced database's: replayed into the new file, they damage it). `oauthd restore` puts a copy in place that way",
                            crate::paths::shell_word(&crate::paths::with_suffix(db, "-wal")),
                            crate::paths::shell_word(&crate::paths::with_suffix(db, "-shm"))
                        )
                    } else {
                        "; or stop oauthd and start it again on the files as they are now, without what it held".to_owned()
                    };
                    log::error!(
                        "database {}: {} was deleted or replaced while oauthd had it open (an rm, a restore by mv while oauthd ran): what oauthd wrote to it now would be lost at its next start, so writes and /readyz answer 503. Put the files oauthd opened back and it carries on by itself{keep}{start_again}",
                        self.name,
                        file.display()
                    );
                }
            }
            None => {
                if self.moved.swap(false, Ordering::AcqRel) {
                    log::info!(
                        "database {}: its files are the ones opened again",
                        self.name
                    );
                }
            }
        }
    }

    /// Looks for other processes' commits when the last look is `LOOK_EVERY` old. A
    /// change (or a connection not looked on before) bumps the watch's generation; a
    /// failed look confirms nothing, so caches fall back to their age bound.
    fn look(&mut self) {
        if self.last_look.is_some_and(|t| t.elapsed() < LOOK_EVERY) {
            return;
        }
        self.look_at_files();
        if self.disk_full.load(Ordering::Acquire) {
            self.look_at_room();
        }
        let Some(conn) = &self.conn else { return };
        // Inside a transaction (a COMMIT that failed and left it open) the pragma would
        // read that transaction's old snapshot: confirm nothing then.
        if !conn.is_autocommit() {
            return;
        }
        let began = Instant::now();
        self.last_look = Some(began);
        match conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)) {
            Ok(version) => {
                let changed = self.data_version != Some(version);
                self.data_version = Some(version);
                self.watch.record(began, changed);
            }
            Err(e) => log::debug!("database {}: looking for changes: {e}", self.name),
        }
    }
}

fn writer_loop(mut link: Link, mut rx: mpsc::Receiver<Msg>) {
    let busy = link.busy.clone();
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        busy.begin();
        group.extend(job_of(first));
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(msg) => group.extend(job_of(msg)),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            write_group(&mut link, &mut group);
        }
        link.look();
        busy.end();
    }
    link.merge_at_stop();
    log::debug!("database writer stopped");
}

impl Link {
    /// Merges the `-wal` into the database file as far as no reader holds it back (PASSIVE:
    /// it never waits). SQLite merges it when the last connection to the file closes,
    /// which is not the writer's while another is open, here (one the read pool opens in
    /// the background) or in another program: a process ending before that one closes left
    /// its writes in the `-wal`, and the file alone without them. Not when the files are
    /// no longer the ones opened (looked at again here, not 250 ms ago): the old `-wal`'s
    /// pages would go into a file another process uses with another `-wal`.
    fn merge_at_stop(&mut self) {
        self.look_at_files();
        let Some(conn) = &self.conn else { return };
        if self.moved.load(Ordering::Acquire) || conn_is_read_only(conn) {
            return;
        }
        // A read in another oauthd on the file holds a merge back for a moment: tried a few
        // times before saying so (a read held open, by an sqlite3 shell say, holds it for
        // as long as it stays open).
        let mut merged = Ok((0, 0));
        for pause in [0, 20, 40, 80, 160] {
            std::thread::sleep(Duration::from_millis(pause));
            merged = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            });
            if !matches!(merged, Ok((log, done)) if done < log) {
                break;
            }
        }
        match merged {
            Ok((log, merged)) if merged < log => log::warn!(
                "the database's -wal file could not all be merged into {} as oauthd ended: \
                 another program was reading it; a copy of the file alone lacks what is in \
                 the -wal until it is merged (`oauthd backup` copies both)",
                self.files.paths[0].display()
            ),
            Ok(_) => {}
            Err(e) => log::warn!(
                "the database's -wal file was not merged into {} as oauthd ended ({e}): a copy \
                 of the file alone lacks what is in the -wal until it is merged (`oauthd \
                 backup` copies both; the next start merges it)",
                self.files.paths[0].display()
            ),
        }
    }
}

/// The directory of the database at `db` that is gone (moved or renamed away, with the
/// files in it), named as far up as it is gone; `None` while the database's directory is
/// there.
fn gone_directory(db: &Path) -> Option<&Path> {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())?;
    dir.ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
}

fn job_of(msg: Msg) -> Option<Box<dyn WriteJob>> {
    match msg {
        Msg::Job(job) => Some(job),
        Msg::Look => None,
    }
}

fn write_group(link: &mut Link, group: &mut Vec<Box<dyn WriteJob>>) {
    if link.moved.load(Ordering::Acquire) {
        for job in group.drain(..) {
            job.abort(moved_error("writing"));
        }
        return;
    }
    link.heal();
    let Some(conn) = &link.conn else {
        let err = StoreError::unavailable("opening the database", "it could not be reopened");
        for job in group.drain(..) {
            job.abort(err.clone());
        }
        return;
    };
    let changes_before = conn.total_changes();
    let (outcome, unanswered) = commit_group(conn, group, &link.watch, &link.emptied);
    match outcome {
        // A group that changed nothing wrote nothing to disk: it proves nothing.
        Outcome::Committed if conn.total_changes() != changes_before => {
            link.busy.wrote_now();
            link.mark_writable();
            link.mark_unlocked();
            link.mark_room();
        }
        Outcome::Committed => {}
        Outcome::CannotWrite => link.mark_read_only(),
        Outcome::DiskFull => link.mark_disk_full(),
        Outcome::Locked => link.mark_locked(),
        Outcome::Failed => {}
    }
    // Answered once marked: a `/readyz` asked right after the answer finds the mark.
    if let Some((err, jobs)) = unanswered {
        for job in jobs {
            job.abort(err.clone());
        }
    }
}

/// Jobs a group could not begin, with the error to answer them with once the writer's
/// marks are set.
type Unanswered = Option<(StoreError, Vec<Box<dyn WriteJob>>)>;

/// How a group ended, for the writer's read-only mark.
enum Outcome {
    /// Every transaction committed and no job found the connection unable to write.
    Committed,
    /// A failure said the connection cannot write.
    CannotWrite,
    /// A failure said there was no room on the disk.
    DiskFull,
    /// Another process held the write lock too long.
    Locked,
    /// Something else failed.
    Failed,
}

/// Runs the group in as few transactions as failures allow. A job that committed for a
/// caller who was gone by then makes `watch` drop every cached value (nobody else will).
/// Jobs left when a transaction could not begin are returned, to be answered by the caller.
fn commit_group(
    conn: &Connection,
    group: &mut Vec<Box<dyn WriteJob>>,
    watch: &ChangeWatch,
    emptied: &RefCell<Emptied>,
) -> (Outcome, Unanswered) {
    let mut faults = Faults::of(conn);
    let mut failed = false;
    let outcome = |faults: &Faults, failed: bool| {
        if faults.cannot_write {
            Outcome::CannotWrite
        } else if faults.disk_full {
            Outcome::DiskFull
        } else if faults.locked {
            Outcome::Locked
        } else if failed {
            Outcome::Failed
        } else {
            Outcome::Committed
        }
    };
    let mut jobs = group.drain(..);
    while jobs.len() > 0 {
        if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
            faults.note(&e);
            let err = classify("starting a write transaction", e);
            log::warn!("{err}");
            return (outcome(&faults, true), Some((err, jobs.collect())));
        }
        let mut done: Vec<Box<dyn WriteJob>> = Vec::with_capacity(jobs.len());
        let mut rolled_back = false;
        let counts = RefCell::new(LiveCounts::default());
        let tx = Tx::new(conn, &counts, emptied);
        for mut job in jobs.by_ref() {
            if job.execute(&tx, &mut faults) {
                done.push(job);
            }
            if conn.is_autocommit() {
                // SQLite ended the transaction itself; what ran so far is undone.
                rolled_back = true;
                break;
            }
        }
        let ended = if rolled_back {
            Err(StoreError::unavailable(
                "writing",
                "the transaction was rolled back by the database",
            ))
        } else {
            let counted = tx.write_counts();
            counted
                .and_then(|()| run_cached(conn, "COMMIT"))
                .map_err(|e| {
                    faults.note(&e);
                    let _ = run_cached(conn, "ROLLBACK");
                    classify("committing", e)
                })
        };
        if let Err(e) = &ended {
            failed = true;
            crate::store::FAULTS_LOGGED
                .warn(format_args!("write group of {} failed: {e}", done.len()));
        }
        let mut unseen = false;
        for job in done {
            unseen |= !job.complete(ended.clone());
        }
        if unseen && ended.is_ok() {
            watch.changed_unseen();
        }
    }
    (outcome(&faults, failed), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_gone_is_named_as_far_up_as_it_is_gone() {
        let home = tempfile::tempdir().unwrap();
        let db = home.path().join("srv/oauthd/data/oauthd.db");
        assert_eq!(gone_directory(&db), Some(home.path().join("srv").as_path()));
        std::fs::create_dir_all(home.path().join("srv")).unwrap();
        assert_eq!(
            gone_directory(&db),
            Some(home.path().join("srv/oauthd").as_path())
        );
        std::fs::create_dir_all(home.path().join("srv/oauthd/data")).unwrap();
        assert_eq!(gone_directory(&db), None);
        assert_eq!(gone_directory(Path::new("oauthd.db")), None);
    }
    use std::time::Duration;

    /// Asks `check_writable` every 100 ms until it says ready, `tries` times at most.
    async fn ready_within(writer: &Writer, tries: usize) {
        let mut ready = writer.check_writable("test").await;
        for _ in 0..tries {
            if ready.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            ready = writer.check_writable("test").await;
        }
        ready.unwrap();
    }

    /// A writer on a new WAL database at `path` holding `schema`.
    fn test_writer(path: &std::path::Path, schema: &str) -> Writer {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(&format!("PRAGMA journal_mode=WAL; {schema}"))
            .unwrap();
        let reopen_path = path.to_owned();
        Writer::start(
            conn,
            Box::new(move || Connection::open(&reopen_path)),
            path,
            Arc::new(ChangeWatch::default()),
        )
        .unwrap()
    }

    /// A writer stuck in the filesystem (a frozen disk: here a job that does not return)
    /// answered nobody, ever, and `/readyz` said ready: the callers queued behind it held
    /// their connections until the per-address cap shut every app out. They get a 503 in
    /// bounded time now, and the writable check says the writer is stuck; both recover
    /// once it moves again; a write given up on before it ran is not made.
    #[tokio::test(flavor = "multi_thread")]
    async fn callers_of_a_stuck_writer_get_an_answer_and_readiness_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let schema = "CREATE TABLE t (x INTEGER); CREATE TABLE meta (name TEXT PRIMARY KEY, value)";
        let mut writer = test_writer(&path, schema);
        writer.answer_within = Duration::from_millis(400);
        writer.stuck_after = Duration::from_millis(200);
        let writer = Arc::new(writer);
        let stuck = writer.clone();
        let stalled = tokio::spawn(async move {
            stuck
                .run("test", |_| {
                    std::thread::sleep(Duration::from_millis(3000));
                    Ok(())
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        let behind = writer
            .run("test", |c| {
                c.execute("INSERT INTO t VALUES (1)", []).map(|_| ())
            })
            .await;
        assert!(behind.is_err(), "answered {behind:?}");
        assert!(
            asked.elapsed() < Duration::from_millis(2000),
            "{:?}",
            asked.elapsed()
        );
        let ready = writer.check_writable("test").await;
        assert!(
            ready
                .as_ref()
                .is_err_and(|e| e.to_string().contains("in one write for")),
            "{ready:?}"
        );
        assert!(
            stalled.await.unwrap().is_err(),
            "the stuck caller waited past its bound"
        );
        // Moving again (the job returns at 3 s): ready, with nothing else done.
        ready_within(&writer, 40).await;
        let count: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 0, "a write its caller gave up on was made");
    }

    /// With nothing written lately, readiness said 200 while another process held the
    /// lock until a request's write found out. Past `wrote_lately` it takes the lock itself
    /// now (writing nothing), and says so once the busy timeout has passed.
    #[tokio::test(flavor = "multi_thread")]
    async fn readiness_with_nothing_written_lately_writes_to_find_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let mut writer = test_writer(
            &path,
            "CREATE TABLE t (x INTEGER); CREATE TABLE meta (name TEXT PRIMARY KEY, value)",
        );
        writer.wrote_lately = Duration::from_millis(300);
        writer
            .run("test", |c| {
                c.execute("INSERT INTO t VALUES (1)", []).map(|_| ())
            })
            .await
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);")
            .unwrap();
        // Written a moment ago: taken as it is.
        writer.check_writable("test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut held = writer.check_writable("test").await;
        for _ in 0..80 {
            if held.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = writer.check_writable("test").await;
        }
        assert!(held.is_err(), "ready while another process holds the lock");
        other.execute_batch("COMMIT").unwrap();
        ready_within(&writer, 80).await;
    }

    /// A file that cannot be looked at (its directory's permissions taken away: here a
    /// path through a plain file, which fails the same way with another error) is not
    /// said deleted or replaced: that sent operators through a restore of files intact.
    /// One that is gone is.
    #[test]
    fn a_file_that_cannot_be_looked_at_is_not_taken_for_one_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let unreadable = plain.join("o.db");
        let gone = dir.path().join("gone.db");
        let mut files = Files {
            paths: [unreadable, gone.clone(), dir.path().join("none")],
            opened: [Some((1, 1)), None, None],
        };
        assert_eq!(files.changed(), None);
        files.opened[1] = Some((1, 2));
        assert_eq!(files.changed(), Some(gone.as_path()));
    }

    /// A job that panics (a bug) fails, with its group, and the writer goes on: it used
    /// to end the thread, and every later write failed for good.
    #[tokio::test]
    async fn a_job_that_panics_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let writer = test_writer(&path, "CREATE TABLE t (x INTEGER)");
        let panicked = writer
            .run("test", |c| -> rusqlite::Result<()> {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("a bug in a job")
            })
            .await;
        assert!(panicked.is_err());
        writer
            .run("test", |c| {
                c.execute("INSERT INTO t VALUES (2)", []).map(|_| ())
            })
            .await
            .unwrap();
        let rows: Vec<i64> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT x FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, [2], "the panicked job's write was not committed");
    }

    #[tokio::test]
    async fn a_change_committed_for_a_caller_who_left_makes_the_caches_drop_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER)")
            .unwrap();
        let watch = Arc::new(ChangeWatch::default());
        let reopen_path = path.clone();
        let writer = Writer::start(
            conn,
            Box::new(move || Connection::open(&reopen_path)),
            &path,
            watch.clone(),
        )
        .unwrap();
        // The first look (a connection not looked on before counts as a change).
        while watch.confirmed_at().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = watch.generation();

        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let mut call = Box::pin(writer.run("test", move |c| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            c.execute("INSERT INTO t VALUES (1)", []).map(|_| ())
        }));
        // The caller waits until its job runs, then leaves (a cancelled request).
        while started.try_recv().is_err() {
            tokio::select! {
                _ = &mut call => panic!("answered before the job was let go"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        drop(call);
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while watch.generation() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            watch.generation(),
            before + 1,
            "nobody dropped what was cached"
        );
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the change committed");

        // A caller who stays drops what it changed itself: no drop of everything.
        writer
            .run("test", |c| {
                c.execute("INSERT INTO t VALUES (2)", []).map(|_| ())
            })
            .await
            .unwrap();
        tokio::time::sleep(LOOK_EVERY * 2).await;
        assert_eq!(watch.generation(), before + 1);
    }
    #[tokio::test]
    async fn the_counts_of_a_job_that_failed_and_was_undone_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let writer = test_writer(
            &path,
            "CREATE TABLE namespace_counts (namespace TEXT PRIMARY KEY, live INTEGER NOT NULL)",
        );
        let failed = writer
            .run_atomic("test", |tx| {
                tx.states_changed("kept", None, 1);
                tx.states_changed("undone", None, 5);
                Err::<(), _>(rusqlite::Error::QueryReturnedNoRows)
            })
            .await;
        assert!(failed.is_err());
        writer
            .run("test", |tx| {
                tx.states_changed("kept", None, 2);
                Ok(())
            })
            .await
            .unwrap();
        let stored =
            crate::store::sqlite::live_counts::tests::stored(&Connection::open(&path).unwrap());
        assert_eq!(stored, vec![("*states".into(), 2), ("kept".into(), 2)]);
    }

    /// A command's writes were left in the `-wal` when another connection to the file was
    /// still open as the writer stopped (one the read pool was opening in the background
    /// as the command ended): SQLite merges the `-wal` into the file only when the last
    /// connection closes, and the process ended before that one did. The file alone (moved,
    /// or copied, without its `-wal`) lacked the schema and the key the command made. The
    /// writer now merges what it can as it stops.
    #[tokio::test]
    async fn what_the_writer_wrote_is_in_the_file_when_it_stops_beside_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let writer = test_writer(&path, "CREATE TABLE t (x INTEGER)");
        writer
            .run("test", |c| {
                c.execute("INSERT INTO t VALUES (7)", []).map(|_| ())
            })
            .await
            .unwrap();
        // Another connection that has read the database (and so holds it open, as SQLite
        // counts).
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(writer);
        // The file alone, as a move or copy without the -wal leaves it.
        let alone = dir.path().join("alone.db");
        std::fs::copy(&path, &alone).unwrap();
        drop(other);
        let rows: Vec<i64> = Connection::open(&alone)
            .unwrap()
            .prepare("SELECT x FROM t")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default();
        assert_eq!(rows, [7], "the file alone lacks what the writer wrote");
    }
}

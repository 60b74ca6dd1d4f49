//! The single writer thread: drains queued write jobs into one transaction per cycle
//! (group commit) and answers each job only after its transaction committed.
//!
//! There is no fixed wait window: a lone request commits at once; under load, whatever
//! queued up while the previous commit ran goes into the next one. A job runs inside
//! a savepoint when it makes several changes, so a failing job leaves no half-done
//! writes in the group.

use super::classify;
use crate::store::StoreError;
use rusqlite::Connection;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction: bounds how long one commit holds the lock.
const MAX_GROUP: usize = 512;
/// Jobs that may wait in the queue; further callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 8192;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

trait WriteJob: Send {
    /// Runs the job inside the open transaction; returns what to do once the transaction
    /// ends, or `None` when the caller already gave up (so nothing was written).
    fn execute(self: Box<Self>, conn: &Connection) -> Option<Completion>;
    /// Answers the caller without running (no transaction could be started).
    fn abort(self: Box<Self>, err: StoreError);
}

struct FnJob<T, F> {
    context: &'static str,
    /// Run inside a savepoint: needed only when the job makes several changes.
    atomic: bool,
    work: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn execute(self: Box<Self>, conn: &Connection) -> Option<Completion> {
        let FnJob {
            context,
            atomic,
            work,
            reply,
        } = *self;
        if reply.is_closed() {
            return None;
        }
        let result = if atomic {
            in_savepoint(conn, work)
        } else {
            work(conn)
        };
        let result = result.map_err(|e| classify(context, e));
        Some(Box::new(move |ended: Result<(), StoreError>| {
            let _ = reply.send(ended.and(result));
        }))
    }

    fn abort(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let result = work(conn);
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): nothing to undo.
        return result;
    }
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
    }
    conn.prepare_cached("RELEASE job")?.execute([])?;
    result
}

pub struct Writer {
    queue: mpsc::Sender<Box<dyn WriteJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(conn: Connection) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("oauthd-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .ok();
        Writer { queue, thread }
    }

    /// Runs `work`, which makes at most one change (a single statement is atomic by
    /// itself), in the next group transaction; returns its result once committed.
    pub async fn run<T, F>(&self, context: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(context, false, work).await
    }

    /// Like `run`, for work that makes several changes: all of them or none commit.
    pub async fn run_atomic<T, F>(&self, context: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
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
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(FnJob {
            context,
            atomic,
            work,
            reply,
        });
        let gone = || StoreError::unavailable(context, "the database writer has stopped");
        self.queue.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
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

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&conn, &mut group);
    }
    log::debug!("database writer stopped");
}

fn commit_group(conn: &Connection, group: &mut Vec<Box<dyn WriteJob>>) {
    let mut jobs = group.drain(..);
    while jobs.len() > 0 {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = classify("starting a write transaction", e);
            log::warn!("{err}");
            for job in jobs.by_ref() {
                job.abort(err.clone());
            }
            return;
        }
        let mut done: Vec<Completion> = Vec::new();
        let mut rolled_back = false;
        for job in jobs.by_ref() {
            done.extend(job.execute(conn));
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
            conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                classify("committing", e)
            })
        };
        if let Err(e) = &ended {
            log::warn!("write group of {} failed: {e}", done.len());
        }
        for complete in done {
            complete(ended.clone());
        }
    }
}

//! The SQLite backend (the default): one WAL-mode file, an r2d2 pool for reads and a
//! single writer thread that commits queued writes in groups.
//!
//! Why one writer: SQLite allows one writer at a time, and writers that each open their
//! own transaction poll for the lock instead of queueing (measured: p99 up to 0.5 s and
//! "database is locked" failures under `synchronous=FULL`). One thread draining a queue
//! into one transaction per cycle has no lock contention and pays one commit per group.

mod admin;
mod connections;
pub mod copy;
mod device;
mod file_reads;
mod keys;
mod live_counts;
mod open_error;
mod outbox;
pub mod room;
mod schema;
mod serving;
mod states;
pub mod tokens_since;
mod transfer;
mod unmarked;
mod values;
mod workspace;
mod writer;

use super::{ChangeWatch, StoreError, VaultKeysInUse, VaultKeysNote};
use r2d2::{ManageConnection, Pool};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, MAIN_DB};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use writer::Writer;

pub(super) use file_reads::open_unchanged;
pub use file_reads::{backup_mark, copied_to_mark, state_data_heads, token_key_ids, BackupMark};
use open_error::check_parent;
pub use open_error::OpenError;
use schema::{check_schema_read_only, migrate, oauthds_version, MIGRATIONS};
pub use schema::{databases_beside, schema_versions};

/// How often, and how far apart, a stop tries to merge the -wal into the database file.
const STOP_MERGE_TRIES: u32 = 20;
const STOP_MERGE_PAUSE: Duration = Duration::from_millis(100);

/// How long a statement waits for a lock held by another process before failing (503).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READ_POOL_SIZE: u32 = 4;

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=NORMAL`: survives a crash of oauthd; the last commits may be lost if
    /// the machine loses power or the filesystem fails (measured: an ext4 filesystem
    /// going read-only after an error lost every commit of the last seconds).
    Normal,
    /// `synchronous=FULL` (default): survives power loss and a filesystem going read-only.
    /// With group commit the cost is one fsync per group, not per request (measured: no
    /// difference in throughput beyond run-to-run noise, see bench/README.md).
    #[default]
    Full,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Whether the database on `conn` has a table named `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

/// Every note of vault keys in `meta` (`vault:<instance>`), ended or not.
fn vault_notes(conn: &Connection) -> rusqlite::Result<Vec<VaultKeysInUse>> {
    let rows = conn
        .prepare_cached("SELECT name, value FROM meta WHERE name LIKE 'vault:%'")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .iter()
        .filter_map(|(name, value)| VaultKeysInUse::from_text(name.strip_prefix("vault:")?, value))
        .collect())
}

/// The file SQLite keeps beside a database (`-wal`, `-journal`): beside the file a link
/// leads to.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    crate::paths::with_suffix(&file, suffix)
}

/// Whether the file at `path` is an SQLite database in WAL mode (its header's read and
/// write versions are 2), read from its first bytes.
fn in_wal_mode(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| header.starts_with(b"SQLite format 3\0") && header[18..20] == [2, 2])
}

/// Whether opening a database may upgrade its schema: only `oauthd serve` does, so that a
/// newer binary's command run before the upgrade (`check`, a listing, `keys create
/// --create`) does not change the schema under the oauthd that serves it, which would then
/// refuse it. A new, empty database gets its schema either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    Allowed,
    Refused,
}

pub struct SqliteStore {
    pool: Pool<ReadManager>,
    writer: Writer,
    path: PathBuf,
    /// Other processes' commits, as the writer sees them.
    watch: Arc<ChangeWatch>,
}

/// The read pool's connection manager: SQLite's, careful with one thing. SQLite shares
/// one mapping of the `-shm` file among the connections of a process, read-only when the
/// file was read-only as the first of them mapped it, and any connection still holding it
/// (even one opened read-write after the file was fixed) hands it to the writer's fresh
/// connection, which then cannot write. So while the writer cannot write, a new connection
/// does not read the schema when opened (`tune` would), and no connection is kept after
/// it was used.
struct ReadManager {
    inner: SqliteConnectionManager,
    durability: Durability,
    /// The writer's mark: set while it cannot write.
    writer_read_only: Arc<AtomicBool>,
}

impl ReadManager {
    fn writer_read_only(&self) -> bool {
        self.writer_read_only.load(Ordering::Acquire)
    }
}

impl ManageConnection for ReadManager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = self.inner.connect()?;
        if !self.writer_read_only() {
            tune(&conn, self.durability)?;
        }
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.writer_read_only() || conn.is_readonly(MAIN_DB).unwrap_or(true)
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path`, applies pending schema files
    /// and starts the writer thread.
    ///
    /// A database this process cannot write (read-only filesystem, file mode) still opens
    /// when its schema is current: reads are served, writes answer 503 and the writer
    /// retries until it can write. Only a pending schema change makes that fatal.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, OpenError> {
        Self::open_with(path, durability, Upgrade::Allowed)
    }

    /// `open`, upgrading the schema of an existing database only when `upgrade` allows.
    pub fn open_with(
        path: &Path,
        durability: Durability,
        upgrade: Upgrade,
    ) -> Result<SqliteStore, OpenError> {
        // Named in full in what it says: a relative path run from another directory names
        // another database, and the message should show which.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let path = absolute.as_path();
        check_parent(path)?;
        if path.is_dir() {
            return Err(OpenError::IsDirectory {
                path: path.to_owned(),
            });
        }
        let created = !path.exists();
        if created {
            // SQLite would take a -wal file without its database for a stale one of the new
            // database and empty it: the data of one deleted (an `rm oauthd.db`) gone too.
            // SQLite keeps it beside the file a link leads to, there even when the link
            // leads nowhere now.
            let target = std::fs::read_link(path)
                .map(|t| crate::paths::dir_of(path).join(t))
                .unwrap_or_else(|_| path.to_owned());
            let wal = crate::paths::with_suffix(&target, "-wal");
            if let Some(bytes) = std::fs::metadata(&wal)
                .ok()
                .map(|m| m.len())
                .filter(|&n| n > 0)
            {
                return Err(OpenError::WalWithoutDatabase {
                    path: path.to_owned(),
                    bytes,
                });
            }
        }
        // Read before SQLite opens it (which makes a -wal file of its own).
        let wal_left_behind = !created && in_wal_mode(path) && !beside(path, "-wal").exists();
        // A rollback journal beside it: a transaction cut short (on a new database, a first
        // start killed while it made its tables), which SQLite takes back as it opens.
        let journal_left = !created && beside(path, "-journal").exists();
        let open_err = |e: &dyn std::fmt::Display| OpenError::open(path, e);
        // A file that is there and is no database (a config file given as --db) is a
        // configuration error, and is left as it is.
        let sqlite_err = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => OpenError::NotADatabase {
                path: path.to_owned(),
            },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => OpenError::Damaged {
                path: path.to_owned(),
                message: e.to_string(),
            },
            _ => open_err(&e),
        };
        if created {
            // Made here with mode 600, never by SQLite with the umask's (0644 under the
            // usual 022): a reader that opened it before a chmod would keep its handle, and
            // read all that is written after. SQLite gives the -wal and -shm files the
            // database file's mode.
            match crate::paths::create_private(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(open_err(&e)),
            }
        }
        // An empty file (made with `touch`, perhaps with a loose mode, for `copy --to`) is
        // a new database too: private as one made here.
        let empty = !created && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
        let mut conn = Connection::open_with_flags(path, open_flags()).map_err(sqlite_err)?;
        if created || empty {
            // Made by another process in the meantime, perhaps: private all the same.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_err(&e))?;
        }
        configure(&conn)
            .and_then(|()| tune(&conn, durability))
            .map_err(sqlite_err)?;
        let schema = oauthds_version(&conn, path, sqlite_err)?;
        let found = schema.number;
        if !created && found == 0 && wal_left_behind {
            return Err(OpenError::WalLeftBehind {
                path: path.to_owned(),
            });
        }
        // Where the file is (device, inode, path), for the serving marks it holds.
        let here = serving::Place::of(path);
        if wal_left_behind && found > 0 {
            if let Some(served) =
                serving::without_its_wal(&conn, here.as_ref()).map_err(sqlite_err)?
            {
                let since = served.since_ms;
                return Err(OpenError::CopiedWithoutWal {
                    path: path.to_owned(),
                    pid: served
                        .pid
                        .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                    since: chrono::DateTime::from_timestamp_millis(since)
                        .map_or_else(|| since.to_string(), |t| t.to_rfc3339()),
                });
            }
        }
        if found > 0 {
            serving::refuse_a_copy_of_served(&conn, path, here.as_ref())?;
        }
        if !created && found == 0 && journal_left {
            log::warn!(
                "database {}: an earlier start ended (killed, or the power cut) before it had made its tables; they are made now",
                path.display()
            );
        } else if !created && found == 0 {
            log::warn!(
                "database {} was there but empty (no tables): oauthd starts on it as on a new database. If oauthd served it before, its data is not here: a copy of a running oauthd's database made without its -wal file, or a backup cut short, is empty like this",
                path.display()
            );
        }
        // A new database gets its tables before WAL mode: a first start killed before its
        // tables were made left a file in WAL mode with none, which every later start took
        // for a database whose -wal was left behind, and refused. Made in the rollback
        // journal's mode and in one transaction (`migrate`), what a kill leaves is taken
        // back by SQLite at the next open, or is a database with all its tables.
        let new_database = found == 0;
        if !new_database {
            to_wal_mode(&conn, path, &sqlite_err)?;
        }
        if conn.is_readonly(MAIN_DB).unwrap_or(true) {
            check_schema_read_only(found, path)?;
        } else {
            let known = MIGRATIONS.len() as i64;
            if found > 0 && found < known {
                if upgrade == Upgrade::Refused {
                    return Err(OpenError::Older {
                        path: path.to_owned(),
                        found,
                        known,
                    });
                }
                // An older oauthd still serving it (a new one started beside it, as in a
                // rolling upgrade): the upgrade waits for it to stop. Another start of this
                // same binary is not one (two instances upgraded together would each have
                // refused the other). Only processes this user may look into are seen.
                let oauthds = copy::holders(path).oauthds().other_programs();
                if !oauthds.is_empty() {
                    return Err(OpenError::UpgradeUnderOauthd {
                        path: path.to_owned(),
                        found,
                        known,
                        by: oauthds.to_string(),
                    });
                }
            }
            if !schema.marked {
                conn.pragma_update(None, "user_version", found)
                    .map_err(sqlite_err)?;
                log::warn!(
                    "database {}: it holds oauthd's schema version {found} but did not say so (a copy restored from `sqlite3 .dump`, which does not carry SQLite's user_version); marked it as such",
                    path.display()
                );
            }
            if let Err(e) = migrate(&mut conn, path) {
                // A database made here that got no table (the disk full at the first
                // start): not left behind as a file that is no database of anyone's.
                // Unless another process holds the lock: it may be making it now.
                let no_table = !e.lock_held()
                    && conn
                        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .is_ok_and(|n| n == 0);
                drop(conn);
                if (created || empty) && no_table {
                    discard_unmade(path, created);
                }
                return Err(e);
            }
            if new_database {
                to_wal_mode(&conn, path, &sqlite_err)?;
            }
            // A terminal command does not wait past a moment: with another process holding
            // the write lock (an sqlite3 shell left in a transaction) every command would
            // stall for the busy timeout here, and the writer says what holds it when a
            // write needs it. `oauthd serve` waits as for any write: its totals bound the
            // creates it takes.
            let serving = upgrade == Upgrade::Allowed;
            conn.busy_timeout(if serving { BUSY_TIMEOUT } else { RECOUNT_WAIT })
                .map_err(sqlite_err)?;
            if let Err(e) = live_counts::recount_totals(&conn, serving) {
                // Not fatal: the totals stay as they were until the next open.
                let _ = conn.execute_batch("ROLLBACK");
                let locked = matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                );
                if locked && !serving {
                    log::debug!("database {}: not counting the store's states afresh: another process holds the write lock", path.display());
                } else {
                    log::warn!(
                        "database {}: could not count the store's states afresh: {e}",
                        path.display()
                    );
                }
            }
            if let Err(e) = serving::forget_gone(&conn, !wal_left_behind) {
                log::debug!(
                    "database {}: marks of oauthds gone left for now: {e}",
                    path.display()
                );
            }
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
        }

        let opener = manager(path);
        let watch = Arc::new(ChangeWatch::default());
        let writer = Writer::start(
            conn,
            Box::new(move || {
                let conn = opener.connect()?;
                tune(&conn, durability)?;
                Ok(conn)
            }),
            path,
            watch.clone(),
        )
        .map_err(|e| open_err(&format!("cannot start the writer thread: {e}")))?;
        let manager = ReadManager {
            inner: manager(path),
            durability,
            writer_read_only: writer.read_only_mark(),
        };
        let pool = Pool::builder()
            .max_size(READ_POOL_SIZE)
            .min_idle(Some(1))
            // A connection to a local file does not go stale, and the check (an empty
            // statement through the parser) was a measurable part of a point read.
            .test_on_check_out(false)
            .connection_timeout(BUSY_TIMEOUT)
            .build(manager)
            .map_err(|e| open_err(&e))?;
        Ok(SqliteStore {
            pool,
            writer,
            path: path.to_owned(),
            watch,
        })
    }

    /// Runs a point read (one row by primary key, from the page cache almost always) on
    /// the calling thread when a pooled connection is idle, else as `read` does. In WAL
    /// mode a reader never waits for the writer, so this costs microseconds; the hop to
    /// the blocking pool it saves cost more than the read itself (bench/README.md).
    async fn point_read<T, F>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        match self.pool.try_get() {
            Some(conn) => f(&conn).map_err(|e| classify(context, e)),
            None => self.read(context, f).await,
        }
    }

    /// Runs a read on a pooled connection, off the async threads.
    async fn read<T, F>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .get()
                .map_err(|e| StoreError::unavailable(context, e))?;
            f(&conn).map_err(|e| classify(context, e))
        })
        .await
        .map_err(|e| StoreError::unavailable(context, e))?
    }

    /// Merges the -wal into the database file as far as no reader holds it back.
    async fn checkpoint(&self, context: &'static str) -> Result<(), StoreError> {
        self.read(context, |conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        })
        .await
    }
}

#[async_trait::async_trait]
impl super::Store for SqliteStore {
    fn describe(&self) -> String {
        format!("database {}", self.path.display())
    }

    async fn warnings(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn integrity(&self) -> Result<String, String> {
        let verdict: String = self
            .read("checking database integrity", |conn| {
                conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            })
            .await
            .map_err(|e| e.to_string())?;
        if verdict != "ok" {
            // One line (SQLite's verdict spans several), saying what to do about it as the
            // start says of a damaged database.
            let verdict = verdict.lines().collect::<Vec<_>>().join("; ");
            return Err(format!(
                "database {path} is damaged (integrity_check: {verdict}): restore the last copy (`oauthd restore`, with oauthd stopped), or save what SQLite still reads with `sqlite3 {path} .recover`",
                path = self.path.display()
            ));
        }
        self.writer
            .probe_write("checking the database is writable")
            .await
            .map_err(|e| match e {
                StoreError::Busy { .. } => format!(
                    "database {} passes integrity_check, but another process holds its write \
                     lock (an sqlite3 shell left in a transaction, a copy tool{}): oauthd's \
                     writes wait for it, then answer 503, until it ends that transaction",
                    self.path.display(),
                    match copy::lock_suspects(&self.path) {
                        by if by.is_empty() => by,
                        by => format!("; the file is held open{by}"),
                    }
                ),
                StoreError::ReadOnly { .. } => format!(
                    "database {} passes integrity_check, but {e} for this user: make the \
                     file, its -wal and -shm files and its directory writable (or the \
                     file system, where it is mounted read-only)",
                    self.path.display()
                ),
                StoreError::Full { .. } => {
                    let wal = crate::paths::with_suffix(&self.path, "-wal");
                    let wal_size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    // Up to `WAL_SIZE_LIMIT` is a -wal file's usual size between checkpoints.
                    let past_usual = wal_size > WAL_SIZE_LIMIT.unsigned_abs();
                    let wal = match wal_size / (1024 * 1024) {
                        _ if !past_usual => String::new(),
                        mib => format!(
                            " (its -wal file holds {mib} MiB: a reader that held checkpoints \
                             off let it grow, and with the disk full it cannot shrink, as the \
                             checkpoint that empties it needs room to grow the database)"
                        ),
                    };
                    format!(
                        "database {} passes integrity_check, but {e}: free space on its file \
                         system{wal}",
                        self.path.display()
                    )
                }
                e => format!(
                    "database {} passes integrity_check, but {e}",
                    self.path.display()
                ),
            })?;
        Ok(format!(
            "database {} passes integrity_check",
            self.path.display()
        ))
    }

    async fn mark_served(&self, now_ms: i64) -> Result<(), StoreError> {
        let place = serving::Place::of(&self.path);
        self.writer
            .run("noting that oauthd serves the database", move |conn| {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('served_at', ?1)",
                )?
                .execute([now_ms.to_string()])?;
                match &place {
                    Some(place) => serving::mark(conn, now_ms, place),
                    None => Ok(()),
                }
            })
            .await?;
        // Into the database file, so that a copy of it made without the -wal says so.
        self.checkpoint("checkpointing the serving mark").await
    }

    async fn settle(&self) -> Result<(), StoreError> {
        // On a connection of its own, closed at once: one left in the read pool by a
        // terminal command can outlive its end, and leave the -wal and -shm files behind.
        const CONTEXT: &str = "merging what was written into the database file";
        let opener = manager(&self.path);
        tokio::task::spawn_blocking(move || {
            let conn = opener
                .connect()
                .map_err(|e| StoreError::unavailable(CONTEXT, e))?;
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(|e| classify(CONTEXT, e))
        })
        .await
        .map_err(|e| StoreError::unavailable(CONTEXT, e))?
    }

    async fn mark_stopped(&self) -> Result<(), StoreError> {
        self.writer
            .run("noting that oauthd stopped serving the database", |conn| {
                serving::unmark(conn)
            })
            .await?;
        // SQLite merges the -wal into the file when its last connection closes, which is
        // not oauthd's while another program has the file open (an `sqlite3` shell, a
        // monitoring script): the file alone would lack what oauthd wrote, and keep its
        // mark. Merged here, it is whole after every clean stop that nothing writes past.
        // PASSIVE, tried for up to 2 s: a FULL checkpoint holds off every writer while it
        // waits for readers, and a second oauthd on the file answered 503 for 5 s.
        // What it could not merge, the writer tries once more as it ends, and says.
        self.read("checkpointing the database at the stop", |conn| {
            for _ in 0..STOP_MERGE_TRIES {
                let (log, merged) =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    })?;
                if merged >= log {
                    break;
                }
                std::thread::sleep(STOP_MERGE_PAUSE);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn was_served(&self) -> Result<bool, StoreError> {
        self.read("reading whether oauthd served the database", |conn| {
            conn.prepare_cached("SELECT 1 FROM meta WHERE name = 'served_at'")?
                .exists([])
        })
        .await
    }

    // Kept in `meta` as `store_id`; read first, so that the writer is asked only once.
    async fn store_id(&self, candidate: &str) -> Result<String, StoreError> {
        const READ: &str = "SELECT value FROM meta WHERE name = 'store_id'";
        let held = self
            .read("reading the store's id", |conn| {
                conn.prepare_cached(READ)?
                    .query_row([], |r| r.get::<_, String>(0))
                    .optional()
            })
            .await?;
        if let Some(id) = held {
            return Ok(id);
        }
        let candidate = candidate.to_owned();
        self.writer
            .run("giving the store its id", move |conn| {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('store_id', ?1)",
                )?
                .execute([candidate])?;
                conn.prepare_cached(READ)?.query_row([], |r| r.get(0))
            })
            .await
    }

    // Kept in `meta` as `vault:<instance>` = `VaultKeysInUse::to_text`. One file
    // is on one machine: this process's clock is the store's. `now_ms` was read before
    // the write lock was had: another process may have told since with a later clock.
    async fn note_vault_keys(&self, note: VaultKeysNote, now_ms: i64) -> Result<i64, StoreError> {
        self.writer
            .run_atomic("telling which vault keys this oauthd uses", move |conn| {
                conn.prepare_cached(
                    "DELETE FROM meta WHERE name LIKE 'vault:%'
                     AND CAST(substr(value, 1, instr(value, ' ') - 1) AS INTEGER) < ?1",
                )?
                .execute([now_ms])?;
                let since_ms = match note.since_ms {
                    Some(since) => since,
                    None => super::first_told(now_ms, &note.instance, &vault_notes(conn)?),
                };
                let keys = VaultKeysInUse {
                    instance: note.instance,
                    keys: note.keys,
                    since_ms,
                    until_ms: now_ms
                        .saturating_add(note.holds.as_millis().try_into().unwrap_or(i64::MAX)),
                    providers: Some(note.providers),
                };
                conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
                    .execute([format!("vault:{}", keys.instance), keys.to_text()])?;
                Ok(since_ms)
            })
            .await
    }

    async fn vault_keys_in_use(&self, now_ms: i64) -> Result<Vec<VaultKeysInUse>, StoreError> {
        self.read("reading which vault keys other oauthds use", move |conn| {
            let mut told = vault_notes(conn)?;
            told.retain(|k| k.until_ms >= now_ms);
            Ok(told)
        })
        .await
    }

    async fn forget_vault_keys(&self, instance: &str) -> Result<(), StoreError> {
        let name = format!("vault:{instance}");
        self.writer
            .run(
                "forgetting which vault keys this oauthd used",
                move |conn| {
                    conn.prepare_cached("DELETE FROM meta WHERE name = ?1")?
                        .execute([name])
                        .map(|_| ())
                },
            )
            .await
    }
}

/// Opens connections configured like the first one: for the read pool, and for the writer
/// when it replaces a connection that could not write.
fn manager(path: &Path) -> SqliteConnectionManager {
    SqliteConnectionManager::file(path)
        .with_flags(open_flags())
        .with_init(|c| configure(c))
}

fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Puts the database in WAL mode, as oauthd keeps it.
fn to_wal_mode(
    conn: &Connection,
    path: &Path,
    sqlite_err: &dyn Fn(rusqlite::Error) -> OpenError,
) -> Result<(), OpenError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sqlite_err)?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    Err(OpenError::open(
        path,
        &format!("could not switch to WAL mode (got {mode})"),
    ))
}

/// What every connection is set to when opened; none of it reads the database.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Settings that read the schema, so maps the `-shm` file: the durability asked for, and a
/// 16 MiB page cache (SQLite's default of 2 MB missed on a table of tens of thousands of
/// states: bench/README.md). Without them a connection syncs fully (SQLite's default).
fn tune(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", durability.pragma())?;
    conn.pragma_update(None, "cache_size", -16 * 1024)?;
    // A -wal that a long reader grew (no checkpoint could finish meanwhile) comes back to
    // this size once writes restart it from its start; it stayed at its largest until a
    // clean stop. Above the 4 MB it reaches between two checkpoints, so that it is not
    // cut and grown again each time.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
}

/// The size a -wal file is brought back to when it restarts (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 8 << 20;

/// `path` as an SQLite `file:` URI with `query` (`immutable=1`, `mode=ro`): absolute, and
/// escaped as a URI path (`%`, `?` and `#` in a name included).
fn file_uri(path: &Path, query: &str) -> Result<String, String> {
    let path = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut uri = url::Url::from_file_path(&path)
        .map_err(|()| format!("{}: not a path SQLite can be given", path.display()))?;
    uri.set_query(Some(query));
    Ok(uri.into())
}

/// How long the count of states at a terminal command's open waits for another process's
/// write lock.
const RECOUNT_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Maps a SQLite error to the storage error the HTTP layer turns into a 503.
/// Set when SQLite first finds the database damaged, at any read or write: a damaged file
/// does not mend while oauthd runs, and `/readyz` answers 503 from then on, where a read of
/// the pages it looks at could still succeed. One database per process.
pub(crate) static DAMAGED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn classify(context: &'static str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            DAMAGED.store(true, std::sync::atomic::Ordering::Relaxed);
            StoreError::Damaged { context }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy { context },
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure) if room::size_limited() => {
            StoreError::SizeLimit { context }
        }
        Some(ErrorCode::DiskFull) => StoreError::Full { context },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { context },
        _ => StoreError::unavailable(context, e),
    }
}

/// Takes back a database the first open made, or an empty file it began to fill, once
/// its tables could not be made: the file removed (or emptied again, when it was there
/// before), and its -wal and -shm files with it. What cannot be removed is said.
fn discard_unmade(path: &Path, created: bool) {
    let mut left = Vec::new();
    for suffix in ["-wal", "-shm"] {
        let file = beside(path, suffix);
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                left.push(format!("{} ({e})", file.display()));
            }
        }
    }
    // What SQLite made: the file a link leads to (the link itself stays, as it was).
    let made = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let own = if created {
        std::fs::remove_file(&made)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&made)
            .and_then(|f| f.set_len(0))
    };
    if let Err(e) = own {
        left.push(format!("{} ({e})", made.display()));
    }
    if !left.is_empty() {
        log::error!(
            "the database could not be made, and what was begun could not all be taken back: delete {} before starting again",
            left.join(", ")
        );
    }
}

//! Whole copies of the database, for `oauthd backup` and `oauthd restore`. A copy is made
//! by `VACUUM INTO`: one read transaction, so writers never restart it (SQLite's online
//! backup starts over whenever another process writes, and under a steady load never
//! ends), into a new 0600 file that takes its final name only once it is checked whole.
//! A copy carries no instance's note of its vault keys: those say which oauthd serves
//! this store now, not what a restored one would be.

use super::{oauthds_version, OpenError, MIGRATIONS};
use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path} is empty (no tables): not a copy of oauthd's database")]
    Empty { path: PathBuf },
    #[error("{path} has schema version {found}, newer than this oauthd understands ({known}): restore it with a newer oauthd")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{path}: no such file")]
    Missing { path: PathBuf },
    #[error("a process has {path} open (an oauthd serving it, or a command or an sqlite3 shell using it): stop every oauthd serving it first, then restore")]
    InUse { path: PathBuf },
}

impl CopyError {
    fn file(path: &Path, e: impl std::fmt::Display) -> CopyError {
        CopyError::File {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }
}

/// What a copy holds.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub version: i64,
    pub bytes: u64,
}

/// Where `restore` put the files it replaced (the database, and its `-wal` and `-shm`
/// files when there were any), or `None` when there was no database.
#[derive(Debug, Clone)]
pub struct Restored {
    pub copied: Copied,
    pub replaced: Option<PathBuf>,
}

/// Writes a consistent copy of the database at `db` to `to`, replacing a file there once
/// the copy is whole.
pub fn backup(db: &Path, to: &Path) -> Result<Copied, CopyError> {
    let source = open_read_only(db)?;
    let version = version_to_copy(&source, db)?;
    let partial = partial_name(to, "partial");
    let copied = write_copy(&source, &partial, version, None)?;
    drop(source);
    if let Err(e) = std::fs::rename(&partial, to) {
        let _ = std::fs::remove_file(&partial);
        return Err(CopyError::file(to, e));
    }
    sync_dir(to)?;
    Ok(copied)
}

/// Puts a copy of the database `backup` in place of the one at `db`. The files it replaces
/// are kept beside it, renamed `<db>.replaced-<stamp>` (with `-wal` and `-shm` after it,
/// so that they still open as one database): left in place, a `-wal` file would be
/// played over the restored copy at the next start and undo the restore. Refused while
/// any process has `db` open; none can open it until the copy is in place.
pub fn restore(backup: &Path, db: &Path, stamp: &str) -> Result<Restored, CopyError> {
    let source = open_read_only(backup)?;
    let version = version_to_copy(&source, backup)?;
    let held = hold_exclusively(db)?;
    let owner = std::fs::metadata(db).ok().map(|m| (m.uid(), m.gid()));
    let partial = partial_name(db, "restoring");
    let copied = write_copy(&source, &partial, version, owner)?;
    drop(source);
    let replaced = if db.exists() {
        let aside = PathBuf::from(format!("{}.replaced-{stamp}", db.display()));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", db.display()));
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(CopyError::file(&from, format!("cannot move it aside: {e}")));
                }
            }
        }
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&partial, db).map_err(|e| CopyError::file(db, e))?;
    sync_dir(db)?;
    drop(held);
    Ok(Restored { copied, replaced })
}

fn open_read_only(path: &Path) -> Result<Connection, CopyError> {
    if !path.is_file() {
        return Err(CopyError::Missing {
            path: path.to_owned(),
        });
    }
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| CopyError::Open(OpenError::open(path, &e)))
}

/// The schema version a copy of `conn` gets: its own, or for one that lost it (a dump),
/// the one its schema is.
fn version_to_copy(conn: &Connection, path: &Path) -> Result<i64, CopyError> {
    let found = oauthds_version(conn, path, |e| OpenError::open(path, &e))?.number;
    let known = MIGRATIONS.len() as i64;
    if found == 0 {
        return Err(CopyError::Empty {
            path: path.to_owned(),
        });
    }
    if found > known {
        return Err(CopyError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    Ok(found)
}

/// `.<name>.<what>-<pid>` beside `path`.
fn partial_name(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "oauthd.db".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Copies `source` into the new file `partial` (0600, given `owner`), and checks it.
fn write_copy(
    source: &Connection,
    partial: &Path,
    version: i64,
    owner: Option<(u32, u32)>,
) -> Result<Copied, CopyError> {
    let _ = std::fs::remove_file(partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| CopyError::file(partial, e))?;
    let owned = match owner {
        Some((uid, gid)) => file
            .metadata()
            .and_then(|mine| {
                if (mine.uid(), mine.gid()) == (uid, gid) {
                    Ok(())
                } else {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                }
            })
            .map_err(|e| {
                CopyError::file(
                    partial,
                    format!("cannot give it the database's owner (uid {uid}, gid {gid}): {e}"),
                )
            }),
        None => Ok(()),
    };
    drop(file);
    match owned.and_then(|()| fill(source, partial, version)) {
        Ok(bytes) => Ok(Copied { version, bytes }),
        Err(e) => {
            let _ = std::fs::remove_file(partial);
            Err(e)
        }
    }
}

/// `VACUUM INTO` the empty file `partial`, then: the schema version set, the vault notes
/// dropped, the whole checked and synced. Returns its size.
fn fill(source: &Connection, partial: &Path, version: i64) -> Result<u64, CopyError> {
    let name = partial
        .to_str()
        .ok_or_else(|| CopyError::file(partial, "the path is not UTF-8"))?;
    source
        .execute("VACUUM INTO ?1", [name])
        .map_err(|e| CopyError::file(partial, format!("copying: {e}")))?;
    let copy = Connection::open(partial).map_err(|e| CopyError::file(partial, e))?;
    let damaged = |detail: String| CopyError::Damaged {
        path: partial.to_owned(),
        detail,
    };
    copy.pragma_update(None, "user_version", version)
        .map_err(|e| damaged(e.to_string()))?;
    // `meta` is there from schema version 10.
    let has_meta = copy
        .prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| damaged(e.to_string()))?;
    if has_meta {
        copy.execute("DELETE FROM meta WHERE name LIKE 'vault:%'", [])
            .map_err(|e| damaged(e.to_string()))?;
    }
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| damaged(e.to_string()))?;
    if check != "ok" {
        return Err(damaged(check));
    }
    drop(copy);
    let file = std::fs::File::open(partial).map_err(|e| CopyError::file(partial, e))?;
    file.sync_all().map_err(|e| CopyError::file(partial, e))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

fn sync_dir(path: &Path) -> Result<(), CopyError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CopyError::file(dir, e))
}

/// An exclusive lock on the database at `db` (`None` when there is none), held until the
/// connection is dropped: refused while any other connection has it open, since in WAL
/// mode each keeps a shared lock on the file for as long as it is open (an oauthd killed
/// without a clean stop holds none). A file SQLite cannot open as a database is no
/// database in use.
fn hold_exclusively(db: &Path) -> Result<Option<Connection>, CopyError> {
    if !db.exists() {
        return Ok(None);
    }
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE) else {
        return Ok(None);
    };
    let locked = conn
        .busy_timeout(std::time::Duration::ZERO)
        .and_then(|()| conn.pragma_update(None, "locking_mode", "EXCLUSIVE"))
        .and_then(|()| conn.execute_batch("BEGIN EXCLUSIVE"));
    match locked {
        Ok(()) => Ok(Some(conn)),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) =>
        {
            Err(CopyError::InUse {
                path: db.to_owned(),
            })
        }
        Err(_) => Ok(None),
    }
}

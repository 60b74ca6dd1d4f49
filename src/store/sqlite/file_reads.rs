//! Reads of a database file that change nothing (no -wal or -shm file made beside it):
//! what terminal commands learn of a database before, or without, opening it as a store.

use super::{beside, file_uri, has_table, OpenError};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// A copy `oauthd backup` made: of which database, and when (unix ms). Kept in the copy's
/// `meta` as `backup_of` (`<ms> <path>`), taken out by `oauthd restore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMark {
    pub made_at_ms: i64,
    pub of: String,
}

impl BackupMark {
    pub(crate) const NAME: &'static str = "backup_of";

    pub(crate) fn to_text(&self) -> String {
        format!("{} {}", self.made_at_ms, self.of)
    }

    /// The mark the database `conn` holds, if any.
    pub(crate) fn read(conn: &Connection) -> rusqlite::Result<Option<BackupMark>> {
        if !has_table(conn, "meta")? {
            return Ok(None);
        }
        let text: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                [BackupMark::NAME],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.and_then(|text| BackupMark::from_text(&text)))
    }

    fn from_text(text: &str) -> Option<BackupMark> {
        let (ms, of) = text.split_once(' ')?;
        Some(BackupMark {
            made_at_ms: ms.parse().ok()?,
            of: of.to_owned(),
        })
    }
}

/// The mark of a copy `oauthd backup` made, if the database at `path` is one; read without
/// changing anything (a database of a schema before `meta` holds none).
pub fn backup_mark(path: &Path) -> Result<Option<BackupMark>, OpenError> {
    let conn = open_unchanged(path)?;
    BackupMark::read(&conn).map_err(|e| OpenError::open(path, &e))
}

/// The mark `oauthd copy` left in the database at `path` if it was copied from (see
/// `TransferStore::copied_to`); read without changing anything.
pub fn copied_to_mark(path: &Path) -> Result<Option<String>, OpenError> {
    let conn = open_unchanged(path)?;
    if !has_table(&conn, "meta").map_err(|e| OpenError::open(path, &e))? {
        return Ok(None);
    }
    conn.query_row("SELECT value FROM meta WHERE name = 'copied_to'", [], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| OpenError::open(path, &e))
}

/// The ids of the vault keys the tokens in the database at `path`, and the codes of its
/// device flows pending at `now_ms`, were sealed with, each once; read without changing
/// anything (no -wal or -shm file is made beside it).
pub fn token_key_ids(path: &Path, now_ms: i64) -> Result<Vec<String>, OpenError> {
    let conn = open_unchanged(path)?;
    let read = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<Vec<Vec<u8>>> {
        conn.prepare(sql)?
            .query_map(params, |r| r.get(0))?
            .collect()
    };
    let mut sealed = read(
        "SELECT access_token FROM connections
         UNION ALL SELECT refresh_token FROM connections WHERE refresh_token IS NOT NULL",
        &[],
    )
    .map_err(|e| OpenError::open(path, &e))?;
    // Pending device flows' codes, in a database of a schema that has them.
    if has_table(&conn, "device_flows").map_err(|e| OpenError::open(path, &e))? {
        let pending = read(
            "SELECT device_code FROM device_flows WHERE status = 'pending' AND expires_at > ?1",
            &[&now_ms],
        );
        sealed.extend(pending.map_err(|e| OpenError::open(path, &e))?);
    }
    let mut ids: Vec<String> = sealed
        .iter()
        .filter_map(|sealed| crate::vault::sealed_key_id(sealed))
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The first `chars` characters of the data of the states live at `now_ms` in the
/// database at `path`, each with how many states' data begins so; read without changing
/// anything.
pub fn state_data_heads(
    path: &Path,
    now_ms: i64,
    chars: usize,
) -> Result<Vec<(String, u64)>, OpenError> {
    let conn = open_unchanged(path)?;
    let chars = i64::try_from(chars).unwrap_or(i64::MAX);
    let read = || -> rusqlite::Result<Vec<(String, u64)>> {
        conn.prepare(
            "SELECT substr(data, 1, ?2), count(*) FROM states
             WHERE expires_at > ?1 AND data IS NOT NULL GROUP BY 1",
        )?
        .query_map(rusqlite::params![now_ms, chars], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.try_into().unwrap_or(0)))
        })?
        .collect()
    };
    read().map_err(|e| OpenError::open(path, &e))
}

/// The database at `path`, opened to read without changing anything.
pub(crate) fn open_unchanged(path: &Path) -> Result<Connection, OpenError> {
    // Without a journal beside it, read as `immutable`: opened read-only as it is, a database
    // in WAL mode gets -wal and -shm files that stay, and the open after this one would
    // no longer see that it came without its -wal (`OpenError::CopiedWithoutWal`).
    let journal = ["-wal", "-journal"]
        .iter()
        .any(|suffix| beside(path, suffix).exists());
    if journal {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    } else {
        let uri = file_uri(path, "immutable=1").map_err(|e| OpenError::open(path, &e))?;
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .map_err(|e| OpenError::open(path, &e))
}

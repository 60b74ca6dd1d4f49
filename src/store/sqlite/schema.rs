//! oauthd's schema: the numbered files in `sql/`, which version a database is at (and
//! whether it is oauthd's at all), and bringing it up to date.

use super::{open_unchanged, unmarked, OpenError};
use rusqlite::Connection;
use std::path::Path;

/// Numbered schema files, applied in order; `PRAGMA user_version` holds the last applied.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/0001_init.sql"),
    include_str!("../../../sql/0002_broker.sql"),
    include_str!("../../../sql/0003_device.sql"),
    include_str!("../../../sql/0004_namespace_counts.sql"),
    include_str!("../../../sql/0005_identity_and_starters.sql"),
    include_str!("../../../sql/0006_state_kinds.sql"),
    include_str!("../../../sql/0007_outbox.sql"),
    include_str!("../../../sql/0008_counts_by_the_writer.sql"),
    include_str!("../../../sql/0009_store_totals.sql"),
    include_str!("../../../sql/0010_meta.sql"),
    include_str!("../../../sql/0011_delivery_retried_by_hand.sql"),
    include_str!("../../../sql/0012_deliveries_by_target.sql"),
    include_str!("../../../sql/0013_gone_targets.sql"),
    include_str!("../../../sql/0014_delivery_outcomes_by_target.sql"),
    include_str!("../../../sql/0015_lease_takeover_noted.sql"),
    include_str!("../../../sql/0016_key_last_used.sql"),
    include_str!("../../../sql/0017_device_flow_error.sql"),
    include_str!("../../../sql/0018_states_by_key.sql"),
    include_str!("../../../sql/0019_states_by_namespace.sql"),
];

/// The schema version of the database at `path`, and the one this oauthd uses; read
/// without changing anything.
pub fn schema_versions(path: &Path) -> Result<(i64, i64), OpenError> {
    let conn = open_unchanged(path)?;
    let found = oauthds_version(&conn, path, |e| OpenError::open(path, &e))?;
    Ok((found.number, MIGRATIONS.len() as i64))
}

/// oauthd's databases in the directory of `path`, where there is no file (a --db
/// mistyped, or one relative to another directory): at most `most`, by name. Read without
/// changing anything; files that do not start as SQLite's do are not opened.
pub fn databases_beside(path: &Path, most: usize) -> Vec<std::path::PathBuf> {
    const LOOKED_AT: usize = 200;
    let Ok(entries) = std::fs::read_dir(crate::paths::dir_of(path)) else {
        return Vec::new();
    };
    // Not through a link, never waiting (a FIFO put in a file's place), a regular file.
    let sqlite = |p: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut header = [0u8; 16];
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(p)
            .and_then(|mut f| {
                if !f.metadata()?.is_file() {
                    return Err(std::io::ErrorKind::InvalidInput.into());
                }
                std::io::Read::read_exact(&mut f, &mut header)
            })
            .is_ok_and(|()| &header == b"SQLite format 3\0")
    };
    let mut found: Vec<std::path::PathBuf> = entries
        .flatten()
        .take(LOOKED_AT)
        .map(|e| e.path())
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()) && sqlite(p))
        .filter(|p| schema_versions(p).is_ok_and(|(found, _)| found > 0))
        .collect();
    found.sort();
    found.truncate(most);
    found
}

/// oauthd's schema version of a database, and whether the file says so (`user_version`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Version {
    pub(super) number: i64,
    pub(super) marked: bool,
}

/// The schema version of oauthd's database on `conn` (0 for an empty one, which oauthd
/// makes its own), or `Foreign` for another application's. oauthd sets its schema version
/// in the same transaction as each schema file, and its first makes `states` (keyed by
/// `key_hash`), `expired_states` and `api_keys`: tables without a version, or a version
/// without those, are not oauthd's (Home Assistant's recorder has a `states` table too).
/// oauthd's tables without a version are a copy that lost it (`sqlite3 .dump`): their
/// version is the one whose schema they hold exactly, else `Unversioned`.
/// Checked before anything is written, the switch to WAL mode included.
pub(super) fn oauthds_version(
    conn: &Connection,
    path: &Path,
    sqlite_err: impl Fn(rusqlite::Error) -> OpenError,
) -> Result<Version, OpenError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&sqlite_err)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%'
             ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(&sqlite_err)?;
    let marked = |number| Version {
        number,
        marked: true,
    };
    if tables.is_empty() && version == 0 {
        return Ok(marked(0));
    }
    let has = |name: &str| tables.iter().any(|t| t == name);
    let keyed = conn
        .prepare("SELECT 1 FROM pragma_table_info('states') WHERE name = 'key_hash'")
        .and_then(|mut s| s.exists([]))
        .map_err(&sqlite_err)?;
    let oauthds = keyed && has("expired_states") && has("api_keys");
    if version > 0 && oauthds {
        return Ok(marked(version));
    }
    if version == 0 && oauthds {
        return match unmarked::version_of_schema(conn, MIGRATIONS).map_err(&sqlite_err)? {
            Some(number) => Ok(Version {
                number,
                marked: false,
            }),
            None => Err(OpenError::Unversioned {
                path: path.to_owned(),
            }),
        };
    }
    let mut shown: Vec<String> = tables.iter().take(5).map(|t| format!("{t:?}")).collect();
    if tables.len() > 5 {
        shown.push(format!("{} more", tables.len() - 5));
    }
    Err(OpenError::Foreign {
        path: path.to_owned(),
        tables: match shown.len() {
            0 => format!("schema version {version}"),
            _ => format!("the tables {}", shown.join(", ")),
        },
    })
}

/// On a database this process cannot write: fine when no schema change is pending.
pub(super) fn check_schema_read_only(found: i64, path: &Path) -> Result<(), OpenError> {
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(OpenError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    if found < known {
        return Err(OpenError::ReadOnlyNeedsMigration {
            path: path.to_owned(),
            found,
            known,
        });
    }
    log::error!(
        "database {} is read-only for this process (read-only filesystem, or the file, its \
         -wal and -shm files or its directory not writable by this user): reads work, writes \
         fail until it can be written (oauthd serve answers them 503 and tries again at each \
         write or /readyz, at most once a second)",
        path.display()
    );
    Ok(())
}

/// What a failure to apply schema `version` is said as.
fn migrate_error(path: &Path, version: usize) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            OpenError::Migrate {
                path: path.to_owned(),
                version,
                message: "another process holds the database's write lock (an sqlite3 shell \
                          left in a transaction, a copy tool); its schema needs upgrading, \
                          which waits for it to let go: end that process's transaction and \
                          start again"
                    .to_owned(),
                locked: true,
            }
        }
        _ => OpenError::Migrate {
            path: path.to_owned(),
            version,
            message: e.to_string(),
            locked: false,
        },
    }
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), OpenError> {
    let known = MIGRATIONS.len() as i64;
    // A schema up to date needs no write lock: a start or a command goes on while another
    // process holds it (an sqlite3 shell left in a transaction), which the writer then
    // says, rather than failing here as a migration.
    let found: Option<i64> = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .ok();
    match found {
        Some(found) if found == known => return Ok(()),
        Some(found) if found > known => {
            return Err(OpenError::TooNew {
                path: path.to_owned(),
                found,
                known,
            })
        }
        _ => {}
    }
    // A new database gets every version in one transaction: a start killed while it made
    // them leaves no tables at all (taken back by SQLite at the next open), never some of
    // them, which the terminal commands would refuse as an older schema to upgrade.
    if found == Some(0) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(migrate_error(path, 1))?;
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(migrate_error(path, 1))?;
        // Made by another process meanwhile: the versions one at a time, below.
        if current == 0 {
            for (index, sql) in MIGRATIONS.iter().enumerate() {
                tx.execute_batch(sql)
                    .map_err(migrate_error(path, index + 1))?;
            }
            tx.pragma_update(None, "user_version", known)
                .map_err(migrate_error(path, MIGRATIONS.len()))?;
            tx.commit().map_err(migrate_error(path, MIGRATIONS.len()))?;
            log::info!(
                "database {}: made its schema (version {known})",
                path.display()
            );
            return Ok(());
        }
    }
    // The versions applied, first and last: said in one line when all went well.
    let mut applied: Option<(usize, usize)> = None;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index + 1;
        let fail = migrate_error(path, version);
        // IMMEDIATE: a second process opening the same file waits instead of migrating twice.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&fail)?;
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&fail)?;
        if current > known {
            return Err(OpenError::TooNew {
                path: path.to_owned(),
                found: current,
                known,
            });
        }
        if current >= version as i64 {
            continue;
        }
        tx.execute_batch(sql).map_err(&fail)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        log::debug!(
            "database {}: applied schema version {version}",
            path.display()
        );
        applied = Some((applied.map_or(version, |(first, _)| first), version));
    }
    match applied {
        Some((1, last)) => log::info!(
            "database {}: made its schema (version {last})",
            path.display()
        ),
        Some((first, last)) => log::info!(
            "database {}: upgraded its schema from version {} to {last}",
            path.display(),
            first - 1
        ),
        None => {}
    }
    Ok(())
}

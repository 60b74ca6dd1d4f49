//! Opening the store a command names: SQLite (made, upgraded or refused by command) or
//! Redis, with errors that say where the path came from.

use super::Fatal;
use crate::config::Settings;
use crate::store::sqlite::SqliteStore;
use crate::store::target::StoreTarget;
use crate::store::Store;
use std::sync::Arc;

/// Whether a command may create a missing SQLite database, and upgrade an older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    /// `serve`: creates a missing database and upgrades an older schema.
    Serve,
    /// `keys create --create`: creates a missing database; an older one is refused, as by
    /// every command but `serve` (none upgrades it under the oauthd still serving it).
    Create,
    /// `copy --to`: creates a missing database for the copy (not a first start: nothing
    /// is said of it here); an older one is refused.
    CopyInto,
    Refuse,
}

/// The store `settings` name; a database that cannot be used is said with where its path
/// came from when that is the default beside a config file that names none.
pub(super) fn open_store(settings: &Settings, missing: Missing) -> Result<Arc<dyn Store>, Fatal> {
    open_named_store(settings, missing).map_err(|Fatal(message, code)| {
        match settings.db_default_note() {
            Some(note) => Fatal(format!("{message}\n  ({note})"), code),
            None => Fatal(message, code),
        }
    })
}

fn open_named_store(settings: &Settings, missing: Missing) -> Result<Arc<dyn Store>, Fatal> {
    match &settings.store {
        StoreTarget::Sqlite => {
            // A path that cannot be looked at now (no permission) is not "no database"; one
            // through a file is (`check_parent` names it).
            let exists = match settings.db.try_exists() {
                Ok(exists) => exists,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => false,
                Err(e) => return Err(Fatal(format!("database {}: {e}", settings.db.display()), 1)),
            };
            if missing == Missing::Refuse && !exists {
                let shown = std::path::absolute(&settings.db).unwrap_or(settings.db.clone());
                return Err(Fatal(
                    format!(
                        "no database at {}: `oauthd serve` makes one on its first start (`keys create --create` too). Check --db (or OAUTHD_DB, or `db` in the config file, which is relative to that file)",
                        shown.display()
                    ),
                    2,
                ));
            }
            // An empty file is no more oauthd's database than a missing one: only `serve`
            // and `keys create --create` make its schema.
            if missing == Missing::Refuse {
                if let Ok((0, _)) = crate::store::sqlite::schema_versions(&settings.db) {
                    return Err(Fatal(empty_database(&settings.db), 2));
                }
            }
            if missing == Missing::Serve && exists {
                refuse_a_backup(settings, "serving it")?;
            }
            // A path that cannot work is a configuration error (exit 2: the systemd unit
            // does not restart for it); a file that cannot be opened now may be later.
            // Only `serve` upgrades a schema.
            let upgrade = match missing {
                Missing::Serve => crate::store::sqlite::Upgrade::Allowed,
                Missing::Create | Missing::CopyInto | Missing::Refuse => {
                    crate::store::sqlite::Upgrade::Refused
                }
            };
            // A --db mistyped: oauthd's database beside where it points, looked for before
            // the new one is made.
            let beside = if exists || missing == Missing::CopyInto {
                Vec::new()
            } else {
                crate::store::sqlite::databases_beside(&settings.db, 3)
            };
            let store = SqliteStore::open_with(&settings.db, settings.durability, upgrade)
                .map_err(|e| Fatal(e.to_string(), if e.is_configuration() { 2 } else { 1 }))?;
            if !exists && missing != Missing::CopyInto {
                let mistyped = match beside.as_slice() {
                    [] => String::new(),
                    found => format!(
                        "; oauthd's database {} lies beside it: is --db mistyped?",
                        found
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                log::warn!(
                    "created a new, empty database at {}: right on a first start; if oauthd ran before, it was given another database path (--db and OAUTHD_DB are taken from the working directory, `db` in a config file from that file's directory), so its keys, connections and states are not here{mistyped}",
                    std::path::absolute(&settings.db)
                        .unwrap_or(settings.db.clone())
                        .display()
                );
            }
            if matches!(missing, Missing::Create | Missing::CopyInto) && !exists {
                give_to_directory_owner(&settings.db);
            }
            Ok(Arc::new(store))
        }
        StoreTarget::Redis(target) => open_redis(settings, target),
    }
}

/// Refuses what would use the refresh tokens of a copy `oauthd backup` made (`doing`:
/// "serving it"): beside its database, a refresh with the same refresh token makes a
/// provider that rotates them take the second use for a stolen token and end the grant for
/// both, and a revocation ends it for both (exit 2). Nothing for Redis.
pub(super) fn refuse_a_backup(settings: &Settings, doing: &str) -> Result<(), Fatal> {
    // Also at the path of the database it was made of: that is every container's path,
    // and a copy tried out in a second container would run beside its database.
    match a_backup(settings) {
        Some((db, mark)) => Err(Fatal(backup_refusal(&db, &mark, doing), 2)),
        None => Ok(()),
    }
}

/// The settings' SQLite database (its full path) with the mark of the copy `oauthd backup`
/// made when it is one; `None` otherwise, for Redis, and for a file that does not read
/// (the open that follows says why).
fn a_backup(settings: &Settings) -> Option<(std::path::PathBuf, crate::store::sqlite::BackupMark)> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return None;
    }
    let db = std::path::absolute(&settings.db).unwrap_or(settings.db.clone());
    let mark = crate::store::sqlite::backup_mark(&db).ok().flatten()?;
    Some((db, mark))
}

/// Says so when a command that changes the database (`doing`: "a key made here") runs on a
/// copy `oauthd backup` made: a `--db` that names the copy by mistake (a key made there is
/// not in the database oauthd serves, whose apps get 401 with it). Nothing for Redis.
pub(super) fn note_a_backup(settings: &Settings, doing: &str) {
    if let Some((db, mark)) = a_backup(settings) {
        say!(
            "Note: {} is a copy `oauthd backup` made of {} at {}: {doing} is in this copy only, not in {} (check --db if that is the database you meant).",
            db.display(),
            mark.of,
            crate::clock::rfc3339(mark.made_at_ms),
            mark.of
        );
    }
}

/// Refuses `rekey` on a copy `oauthd backup` made: it would rotate the key file `key_file`,
/// which the oauthd serving the database the copy was made of may read too, and a prune
/// after it takes out keys that database still needs. A copy is rekeyed once restored.
pub(super) fn refuse_rekey_of_a_backup(
    settings: &Settings,
    key_file: &std::path::Path,
) -> Result<(), Fatal> {
    match a_backup(settings) {
        Some((db, mark)) => Err(Fatal(
            format!(
                "{} is a copy `oauthd backup` made of {} at {}: a rekey on it would rotate the key file {}, which an oauthd serving {} may read too (a prune after it takes out keys that database still needs). Nothing changed. Rekey the database oauthd serves, or restore the copy first (`oauthd restore`)",
                db.display(),
                mark.of,
                crate::clock::rfc3339(mark.made_at_ms),
                key_file.display(),
                mark.of
            ),
            2,
        )),
        None => Ok(()),
    }
}

fn backup_refusal(
    db: &std::path::Path,
    mark: &crate::store::sqlite::BackupMark,
    doing: &str,
) -> String {
    let copy = crate::paths::shell_word(db);
    // Named by when the copy was made, so that the move replaces no other file.
    let aside = crate::paths::shell_word(&crate::paths::with_suffix(
        db,
        &format!(".backup-{}", mark.made_at_ms / 1000),
    ));
    format!(
        "{} is a copy `oauthd backup` made of {} at {}, and holds that database's refresh tokens: {doing} would use them beside it (a provider that rotates refresh tokens takes a second use for a stolen token and ends the grant for both; a revocation ends it for both). To put this copy in that database's place, stop the oauthd serving it and run `oauthd restore --db <that database> {copy}`; to serve it where it is (that database lost, a move to another machine): `mv {copy} {aside} && oauthd restore --db {copy} --create {aside}`",
        db.display(),
        mark.of,
        crate::clock::rfc3339(mark.made_at_ms),
    )
}

/// A database `keys create --create` made as root in another user's directory (the
/// service's, made for it beforehand) is given to that user with its -wal and -shm files,
/// as `restore --create` gives a copy: a file of root's, mode 600, the service could not
/// open.
fn give_to_directory_owner(db: &std::path::Path) {
    let Some(dir) = owner_other_than_root(crate::paths::dir_of(db)) else {
        return;
    };
    for suffix in ["", "-wal", "-shm"] {
        give(&crate::paths::with_suffix(db, suffix), dir, "its directory");
    }
}

/// The key file a command run as root made beside a database of the user who owns its
/// directory (the service's) is given to that user, as `keys create --create` gives the
/// database: a file of root's, mode 600, the service could not read, and its start failed.
/// Only where that user owns the directory too: in a shared one (`/tmp`) anyone may own a
/// file named as the database, and would get the key.
pub(super) fn give_key_file_to_database_owner(key_file: &std::path::Path, db: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = owner_other_than_root(crate::paths::dir_of(db)) else {
        return;
    };
    if std::fs::symlink_metadata(db).is_ok_and(|m| m.uid() == dir.0) {
        give(key_file, dir, "its directory");
    }
}

/// The owner of `path` (uid, gid) when this process runs as root and it is another user.
fn owner_other_than_root(path: &std::path::Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

fn give(path: &std::path::Path, (uid, gid): (u32, u32), whose: &str) {
    if path.symlink_metadata().is_err() {
        return;
    }
    // Not through a link: the directory's owner could have put one in the file's place
    // meanwhile (to have root give them /etc/shadow).
    if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        log::warn!(
            "could not give {} to the owner of {whose} (uid {uid}): {e}; chown it to the user oauthd runs as",
            path.display(),
        );
    }
}

/// What commands say of an existing database file without oauthd's tables.
pub(super) fn empty_database(path: &std::path::Path) -> String {
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!(
        "database {} is empty (no tables): `oauthd serve` makes its schema on its first start (`keys create --create` too). If oauthd served it before, its data is not here: a copy of a running oauthd's database made without its -wal file, or a backup cut short, is empty like this (`oauthd backup` makes a copy that is whole)",
        shown.display()
    )
}

#[cfg(feature = "redis")]
fn open_redis(
    settings: &Settings,
    target: &crate::store::target::RedisTarget,
) -> Result<Arc<dyn Store>, Fatal> {
    let store = crate::store::redis::RedisStore::open(target, settings.sweep.grace)
        .map_err(|e| Fatal(e.message, if e.configuration { 2 } else { 1 }))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
fn open_redis(
    _settings: &Settings,
    target: &crate::store::target::RedisTarget,
) -> Result<Arc<dyn Store>, Fatal> {
    Err(Fatal(
        format!(
            "store {}: this oauthd was built without Redis support; rebuild it with the cargo feature `redis` (cargo build --release --features redis)",
            target.display()
        ),
        2,
    ))
}

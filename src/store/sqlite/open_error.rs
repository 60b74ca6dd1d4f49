//! Why a database does not open, said so that the operator knows what to do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create database {path}: its directory {dir} does not exist (create it first, e.g. `mkdir -p {dir}`)")]
    NoParent { path: PathBuf, dir: PathBuf },
    #[error("cannot create database {path}: {dir} is not a directory")]
    ParentNotDir { path: PathBuf, dir: PathBuf },
    #[error("database {path} is a directory: --db (OAUTHD_DB, `db`) names the database file in it, e.g. {}", path.join("oauthd.db").display())]
    IsDirectory { path: PathBuf },
    #[error("{path} is not an SQLite database: --db (OAUTHD_DB, `db`) names oauthd's database file; a config file goes with --config")]
    NotADatabase { path: PathBuf },
    #[error("{path} is an SQLite database, but not oauthd's (it holds {tables} and no oauthd schema): --db (OAUTHD_DB, `db`) names oauthd's own database file; nothing was changed in it")]
    Foreign { path: PathBuf, tables: String },
    #[error("{path} holds oauthd's tables but no schema version (SQLite's user_version is 0, as in a copy restored from `sqlite3 .dump`, which does not carry it), and its schema is not one any oauthd schema version makes, so it cannot be upgraded safely: restore a copy made with `oauthd backup` (or the database file itself, with its -wal file); nothing was changed in it")]
    Unversioned { path: PathBuf },
    #[error("database {path} is in WAL mode but holds no tables, and no {path}-wal is beside it: oauthd's data is in that -wal file, left behind when the database was moved or copied after oauthd stopped without a clean stop. Put the -wal file (and the -shm file) beside it and start again; to start afresh instead (or if this file is what the first start of an earlier oauthd left when it was killed or could not make its tables), delete {path}. Nothing was changed in it")]
    WalLeftBehind { path: PathBuf },
    #[error("database {path} was copied or moved without {path}-wal while oauthd served it (pid {pid}, since {since}) or after oauthd was killed: what oauthd wrote since its last checkpoint is in that -wal file, and this file alone is the database as it was then. Put the -wal file (and the -shm file) beside it and start again; copy a database that is served with `oauthd backup`. A whole copy made while it was served (`sqlite3 .backup`, `VACUUM INTO`) has no -wal file either, and is refused the same way; take it as it is as below. If the -wal file is lost, take this older copy as it is: move it aside and restore it, `mv {0} {0}.older && oauthd restore --db {0} --create {0}.older`. Nothing was changed in it", crate::paths::shell_word(path))]
    CopiedWithoutWal {
        path: PathBuf,
        pid: String,
        since: String,
    },
    #[error("database {path} is a copy of {original}, which is served now{by}: it was copied with its -wal file while served (cp -a, rsync, a file-level backup tool). Served or changed beside it, the copy would refresh the same connections with the same refresh tokens, and a provider that rotates them ends the connection in one of the two. Stop the oauthd that serves {original} first (and whatever else holds it open), and this copy opens as the database; to copy a database while it is served, use `oauthd backup`. Nothing was changed in it")]
    CopyOfServed {
        path: PathBuf,
        original: String,
        by: String,
    },
    #[error("database {path} does not exist, but its -wal file does ({bytes} bytes): the database was deleted or moved without it, and a new database made here would discard it. Put the database file back beside it, or restore a copy (`oauthd restore --db {} --create COPY`); to start afresh instead, move the -wal and -shm files aside. Nothing was changed", crate::paths::shell_word(path))]
    WalWithoutDatabase { path: PathBuf, bytes: u64 },
    #[error("database {path} is damaged ({message}): restore the last copy (`oauthd restore`, with oauthd stopped), or save what SQLite still reads with `sqlite3 {path} .recover`; nothing was changed in it")]
    Damaged { path: PathBuf, message: String },
    #[error("cannot open database {path}: {message} ({hint})")]
    Open {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("database {path} has schema version {found}, newer than this oauthd understands ({known}): run a newer oauthd")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database {path} has schema version {found}; this oauthd uses {known} and upgrades it when `oauthd serve` starts (back it up first: an older oauthd refuses it once upgraded). Start the new oauthd first, or run this command with the oauthd that serves the database")]
    Older {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database {path} has schema version {found}, which this oauthd upgrades to {known}, but another oauthd, of another program file than this one, has it open{by}: upgraded under an older oauthd, each would misread what the other writes (its states' data, its keys' counts). Stop every older oauthd on the database, and start this one again (under systemd it tries again by itself); nothing was changed in it")]
    UpgradeUnderOauthd {
        path: PathBuf,
        found: i64,
        known: i64,
        by: String,
    },
    #[error("database {path} is read-only for this user and needs schema version {known} (it has {found}): make it, its -wal and -shm files and its directory writable, then start again")]
    ReadOnlyNeedsMigration {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot migrate database {path} to schema version {version}: {message}")]
    Migrate {
        path: PathBuf,
        version: usize,
        message: String,
        /// Another process held the write lock (it may be making this database now).
        locked: bool,
    },
}

impl OpenError {
    /// The path or the file's version can never work as configured: trying again later
    /// will not help (a file that cannot be opened now, or migrated, may be later).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            OpenError::NoParent { .. }
                | OpenError::ParentNotDir { .. }
                | OpenError::IsDirectory { .. }
                | OpenError::NotADatabase { .. }
                | OpenError::Damaged { .. }
                | OpenError::WalLeftBehind { .. }
                | OpenError::CopiedWithoutWal { .. }
                | OpenError::CopyOfServed { .. }
                | OpenError::WalWithoutDatabase { .. }
                | OpenError::Foreign { .. }
                | OpenError::Unversioned { .. }
                | OpenError::TooNew { .. }
                | OpenError::Older { .. }
        )
    }
}

impl OpenError {
    /// Whether a schema version failed for want of the write lock: another process holds
    /// it, and may be making this database now.
    pub(super) fn lock_held(&self) -> bool {
        matches!(self, OpenError::Migrate { locked: true, .. })
    }

    pub(super) fn open(path: &Path, e: &dyn std::fmt::Display) -> OpenError {
        OpenError::Open {
            path: path.to_owned(),
            message: e.to_string(),
            hint: write_hint(path),
        }
    }
}

/// Why the database may not open, as far as the filesystem tells: whom it belongs to and
/// who asks, where this user may not read it or write it.
fn write_hint(path: &Path) -> String {
    use std::io::ErrorKind;
    let may_not = |what: &str| match crate::paths::ownership(path) {
        Some(whose) => format!("{whose}, who may not {what}"),
        None => format!("this user may not {what}"),
    };
    if std::fs::File::open(path).is_err_and(|e| e.kind() == ErrorKind::PermissionDenied) {
        return format!(
            "{}: run oauthd as its owner, or chown the file (and its -wal and -shm files) to the user oauthd runs as (`oauthd backup` and `restore` make files of mode 600)",
            may_not("read it")
        );
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if e.kind() == ErrorKind::ReadOnlyFilesystem => {
            "its filesystem is read-only, and SQLite cannot create the -wal and -shm files it needs there".into()
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => format!(
            "{}: chown the file and its directory to the user oauthd runs as",
            may_not("write it nor create its -wal and -shm files in its directory")
        ),
        _ => match super::room::free_bytes(path) {
            // SQLite needs room for its -wal and -shm files to open the database at all.
            Ok(super::room::Free { any_user: free, .. }) if free < 1024 * 1024 => format!(
                "the filesystem holding it is full ({} KiB free): make room, and oauthd opens it",
                free / 1024
            ),
            _ => "is the file and its directory writable by this user?".into(),
        },
    }
}

pub(super) fn check_parent(path: &Path) -> Result<(), OpenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    // Only a directory that is not there is a configuration error: one that cannot be
    // looked at now (no permission, a network filesystem not answering) may be later.
    use std::io::ErrorKind;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(OpenError::NoParent {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
        // A file where the path needs a directory.
        Ok(_) => Err(OpenError::ParentNotDir {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotADirectory => Err(OpenError::ParentNotDir {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
        Err(e) => Err(OpenError::open(
            path,
            &format!("its directory {}: {e}", dir.display()),
        )),
    }
}

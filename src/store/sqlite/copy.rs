//! Whole copies of the database, for `oauthd backup` and `oauthd restore`. A copy is made
//! by `VACUUM INTO`: one read transaction, so writers never restart it (SQLite's online
//! backup starts over whenever another process writes, and under a steady load never
//! ends), into a new 0600 file that takes its final name only once it is checked whole.
//! A copy carries no instance's note of its vault keys: those say which oauthd serves
//! this store now, not what a restored one would be.

use super::workspace::Workspace;
use super::{oauthds_version, BackupMark, OpenError, MIGRATIONS};
use crate::paths::{dir_of, with_suffix};
use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set (by the command's signal watcher, on Ctrl-C or SIGTERM) to stop a copy under way:
/// its statements are interrupted, and the partial file is removed as after any failure.
/// What is past the copy (moving files into place) is not stopped half-way.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// `Stopped` for a statement `STOP` interrupted, else what `otherwise` makes of the error.
fn stopped_or(
    e: rusqlite::Error,
    otherwise: impl FnOnce(rusqlite::Error) -> CopyError,
) -> CopyError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) {
        CopyError::Stopped
    } else {
        otherwise(e)
    }
}

/// How many of SQLite's virtual machine steps run between two looks at `STOP`.
const STOP_LOOK_EVERY: std::ffi::c_int = 10_000;

/// Makes `conn`'s statements stop when `STOP` is set.
fn stoppable(conn: &Connection, path: &Path) -> Result<(), CopyError> {
    conn.progress_handler(STOP_LOOK_EVERY, Some(|| STOP.load(Ordering::Relaxed)))
        .map_err(|e| CopyError::file(path, e))
}

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
    /// What was to be copied does not read whole: a database (`backup`) or a copy
    /// (`restore`) that is damaged. Nothing was made.
    #[error("{path} is damaged ({detail}), so no whole copy of it can be made; nothing was changed. {}", damaged_advice(path, *restoring))]
    SourceDamaged {
        path: PathBuf,
        detail: String,
        restoring: bool,
    },
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    /// A path given that cannot be one: a directory, one in a directory that is not
    /// there, a file that is not a copy to replace.
    #[error("{path}: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error("{path}: no such file")]
    Missing { path: PathBuf },
    #[error("no database at {path}: restore puts a copy in place of a database; to make it there (a new machine), say --create")]
    NoDatabase { path: PathBuf },
    #[error("{path} {what}: restore replaces only oauthd's database (or an empty file), and would have moved this one aside as if it were; check --db (or OAUTHD_DB, or `db` in the config file)")]
    NotTheDatabase { path: PathBuf, what: String },
    #[error("{path} is not a copy of oauthd's database: name a file made by `oauthd backup` (the database it replaces is --db)")]
    NotACopy { path: PathBuf },
    #[error("interrupted: the partial copy was removed, and nothing was changed")]
    Stopped,
    #[error("{path} is the database itself: name the copy")]
    Same { path: PathBuf },
    /// The copy to restore is a database served now, or a copy of one taken with its -wal.
    #[error("{what}: restored, it would be served beside the original, refreshing the same connections with the same refresh tokens, and a provider that rotates them ends the connection in one of the two. Stop the oauthd that serves {original} first, then restore; to move a database that is served, copy it with `oauthd backup` and start the copy only once the original serves no more. Nothing was changed")]
    SourceServed { what: String, original: String },
    #[error("a process has {path} open{by} (an oauthd serving it, or a command or an sqlite3 shell using it): stop every oauthd serving it first, then restore")]
    InUse { path: PathBuf, by: Holders },
}

/// What to do about a damaged database (`restoring`: a copy to restore) at `path`.
fn damaged_advice(path: &Path, restoring: bool) -> String {
    let recover = format!("`sqlite3 {} .recover`", crate::paths::shell_word(path));
    if restoring {
        format!("Restore another copy (an older backup); what SQLite still reads of this one can be saved with {recover}")
    } else {
        format!("Restore the last copy (`oauthd restore`, with oauthd stopped), or save what SQLite still reads with {recover}")
    }
}

/// The processes found holding a file open, for a message: ` (pid 12 oauthd, pid 40
/// sqlite3)`, or nothing when none could be named. Each with the name of the program it
/// runs, where it can be read.
#[derive(Debug, Default)]
pub struct Holders(Vec<(u32, String, Option<String>)>);

impl Holders {
    /// Those running oauthd (a serving one, or a command on the file), told by the program
    /// they run, not by their name, which a script picks itself (`oauthd-litestream`): a
    /// backup tool, a replication tool or an `sqlite3` shell reading the file serves
    /// nothing.
    pub(super) fn oauthds(self) -> Holders {
        Holders(
            self.0
                .into_iter()
                .filter(|(_, _, program)| runs_oauthd(program))
                .collect(),
        )
    }

    /// Those that run another program file than this process: an older oauthd, whose
    /// binary an upgrade replaced (a running binary cannot be written over in place), and
    /// not another start of this same one. One whose program cannot be looked into counts.
    pub(super) fn other_programs(self) -> Holders {
        let file = |exe: &str| std::fs::metadata(exe).ok().map(|m| (m.dev(), m.ino()));
        let own = file("/proc/self/exe");
        Holders(
            self.0
                .into_iter()
                .filter(|(pid, _, _)| own.is_none() || file(&format!("/proc/{pid}/exe")) != own)
                .collect(),
        )
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a process runs oauthd, told by the program it runs.
fn runs_oauthd(program: &Option<String>) -> bool {
    program.as_deref().is_some_and(|p| p.starts_with("oauthd"))
}

impl std::fmt::Display for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (pid, name, program)) in self.0.iter().enumerate() {
            let sep = if i == 0 { " by " } else { ", " };
            // The program's file name whole: the process's own name is cut at 15 bytes.
            let name = program
                .as_ref()
                .filter(|p| p.starts_with(name.as_str()))
                .unwrap_or(name);
            write!(f, "{sep}pid {pid} {name:?}")?;
        }
        Ok(())
    }
}

/// Who has the file at `path` open, for a message about its write lock: ` by pid 40
/// "sqlite3", pid 12 "oauthd"`, or nothing when none is seen. Other programs first: an
/// oauthd takes the lock for a commit (a command's, such as a rekey's, may be long).
pub(super) fn lock_suspects(path: &Path) -> String {
    let mut ordered = holders(path).0;
    ordered.sort_by_key(|(_, _, program)| runs_oauthd(program));
    Holders(ordered).to_string()
}

/// The other processes that have the file at `path` open, found in `/proc` by the file's
/// device and inode: a lock says nothing of a connection in rollback mode that is not
/// reading now (a database an operator put in that mode, or one an older oauthd
/// restored), which would go on writing to the file moved aside. Processes this user may not look into are
/// not seen (run as root to see all).
pub(super) fn holders(path: &Path) -> Holders {
    let Ok(file) = std::fs::metadata(path) else {
        return Holders::default();
    };
    let me = std::process::id();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Holders::default();
    };
    let mut found = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let open = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino())
        });
        if open {
            let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            // "/usr/bin/oauthd", or "… (deleted)" for a binary replaced since it started.
            let program = std::fs::read_link(process.path().join("exe"))
                .ok()
                .and_then(|exe| Some(exe.file_name()?.to_string_lossy().into_owned()));
            found.push((pid, name.trim().to_owned(), program));
        }
    }
    Holders(found)
}

impl CopyError {
    fn file(path: &Path, e: impl std::fmt::Display) -> CopyError {
        CopyError::File {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }

    fn refused(path: &Path, detail: &str) -> CopyError {
        CopyError::Refused {
            path: path.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// What a copy holds.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub version: i64,
    pub bytes: u64,
}

/// Where `restore` put the files it replaced: the database (`None` when there was none,
/// its `-wal` and `-shm` files beside it named the same way), and every file it moved
/// aside (the leftovers of a database deleted without them, where there was none).
#[derive(Debug, Clone)]
pub struct Restored {
    pub copied: Copied,
    pub replaced: Option<PathBuf>,
    pub moved: Vec<PathBuf>,
}

/// What `backup` made, and where it kept the database it replaced, when that was one
/// without a backup's mark (oauthd's database itself, named by mistake, or an old copy).
#[derive(Debug)]
pub struct BackedUp {
    pub copied: Copied,
    pub kept: Option<PathBuf>,
}

/// Writes a consistent copy of the database at `db` to `to`, replacing a file there once
/// the copy is whole; only a copy of oauthd's database (or an empty file) is replaced, and
/// one without a backup's mark is kept beside it, renamed `<to>.replaced-<stamp>`.
pub fn backup(db: &Path, to: &Path) -> Result<BackedUp, CopyError> {
    if same_file(db, to) {
        return Err(CopyError::Same {
            path: to.to_owned(),
        });
    }
    let source = open_source(db)?;
    let version = version_to_copy(&source, db)?;
    // A copy taken whole while its original is served: a backup of it would merge its
    // -wal into it (the last connection to close it does), as any write would.
    let here = super::serving::Place::of(db);
    super::serving::refuse_a_copy_of_served(&source, db, here.as_ref()).map_err(CopyError::Open)?;
    // A link names where the copy goes; the link stays. Only a link that may be trusted
    // is followed: one another local user planted where the copy is written (`/tmp`)
    // would have it replace a file of their choosing, another oauthd's database. What is
    // used from here on is the path resolved, so no link made meanwhile is followed.
    let to = &trusted(to)?;
    if to.is_dir() {
        return Err(CopyError::refused(
            to,
            "is a directory: name the file the copy goes to",
        ));
    }
    directory_exists(to)?;
    // A backup of a backup names the database the first was made of, and when.
    let marked = BackupMark::read(&source).map_err(|e| CopyError::file(db, e))?;
    // The two paths the wrong way round are said first, whatever lies beside the target:
    // after a crash the database has a -wal file holding its last writes, and advice
    // about that file must not come before the slip that led here.
    let replace = replaceable(to, marked.is_some());
    if matches!(replace, Replaceable::NotACopy) {
        return Err(wrong_way_round(db, to));
    }
    let by = holders(to);
    if !by.0.is_empty() {
        return Err(CopyError::refused(
            to,
            &format!("is open{by}: a file in use is never replaced; name another file"),
        ));
    }
    if with_suffix(to, "-wal").exists() && !empty_wal_left_behind(to) {
        return Err(CopyError::refused(
            to,
            &format!(
                "has a -wal file beside it that holds writes not yet merged into it (no \
                 process has it open: a database that stopped without closing, its process \
                 killed or the machine stopped). Never delete that -wal file: it holds the \
                 last writes. Run `oauthd check --db {}` once to merge them (as oauthd's \
                 start does). A backup never replaces such a file: name another one",
                to.display()
            ),
        ));
    }
    let keep = match replace {
        Replaceable::Yes => false,
        Replaceable::Unmarked => true,
        Replaceable::NotACopy => return Err(wrong_way_round(db, to)),
        Replaceable::Other => {
            return Err(CopyError::refused(
                to,
                "exists and is not a copy of oauthd's database: name a new file, or remove it first",
            ));
        }
    };
    let workspace = Workspace::new(to, "partial").map_err(|e| CopyError::file(to, e))?;
    let partial = workspace.file();
    let mark = marked.unwrap_or_else(|| BackupMark {
        made_at_ms: chrono::Utc::now().timestamp_millis(),
        of: std::path::absolute(db)
            .unwrap_or_else(|_| db.to_owned())
            .display()
            .to_string(),
    });
    let (copied, _held) = write_copy(&source, partial, version, None, Some(&mark))?;
    drop(source);
    // A database without the mark may be one a slip named (`backup --db copy.db
    // oauthd.db`, the copy made with `cp`): kept, never lost.
    let kept = if keep {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let aside = PathBuf::from(format!(
            "{}.replaced-{stamp}-{}",
            to.display(),
            std::process::id()
        ));
        std::fs::hard_link(to, &aside).map_err(|e| {
            CopyError::file(
                to,
                format!("cannot keep it aside: {e}; nothing was changed"),
            )
        })?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(partial, to).map_err(|e| CopyError::file(to, e))?;
    sync_dir(to)?;
    Ok(BackedUp { copied, kept })
}

/// The refusal of a backup from a copy (`db`) over oauthd's database (`to`).
fn wrong_way_round(db: &Path, to: &Path) -> CopyError {
    CopyError::refused(
        to,
        &format!(
            "is oauthd's database, not a copy `oauthd backup` made of one (it holds no \
             backup mark), and {} is such a copy: are the two files the wrong way \
             round? `--db` names the database to copy. A backup never replaces a \
             database with a copy, which would lose what was written to it since. \
             To put a copy back, stop oauthd and use `oauthd restore`",
            db.display()
        ),
    )
}

/// `path` with its links resolved, when each may be trusted (`resolve_trusted`); else the
/// refusal, naming the first that may not.
fn trusted(path: &Path) -> Result<PathBuf, CopyError> {
    crate::paths::resolve_trusted(path).map_err(|u| {
        let owner = u.owner.map_or_else(|| "?".to_owned(), |o| o.to_string());
        CopyError::refused(
            path,
            &format!(
                "leads through {}, a link owned by uid {owner}, neither root nor the user \
                 running oauthd nor the owner of a directory only they may write to: name \
                 the file it leads to if you trust it, or another path",
                u.link.display()
            ),
        )
    })
}

/// Refuses a path whose directory is not there, naming the directory (the partial file's
/// name, which the copy would fail on, is of no help).
fn directory_exists(path: &Path) -> Result<(), CopyError> {
    let dir = dir_of(path);
    if dir.is_dir() {
        return Ok(());
    }
    Err(CopyError::refused(
        path,
        &format!(
            "its directory {} does not exist: make it first (mkdir -p), or name another",
            dir.display()
        ),
    ))
}

/// Whether two paths name one file (the same path, a link, a hard link).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether a file may be replaced by a backup.
enum Replaceable {
    /// None there, an empty one, an earlier copy `oauthd backup` made, or a database too
    /// old for the mark (schema 9 and before, whose copies cannot carry one).
    Yes,
    /// oauthd's database without a backup's mark, replaced by a copy of a database: an
    /// old copy, or the database itself named by a slip. Kept aside.
    Unmarked,
    /// oauthd's database itself (no backup mark), to be replaced by a copy (the source
    /// holds one): a slip of the arguments' order.
    NotACopy,
    /// Anything else: a key file, a `-wal` file, another application's data.
    Other,
}

/// What the file at `path` is to a backup (`from_copy`: the source is itself a copy
/// `oauthd backup` made). Replaced: none or an empty one, an earlier copy (it carries a
/// backup's mark), a database too old for the mark (schema 9 and before: its copies
/// cannot carry one either). Replaced and kept aside: oauthd's database without the mark,
/// unless the source is a copy, which is refused (the two paths the wrong way round).
/// Read without changing anything: opened read-only as it is, a copy a command had put in
/// WAL mode got -wal and -shm files that stayed beside the new copy, and the next backup
/// refused it.
fn replaceable(path: &Path, from_copy: bool) -> Replaceable {
    if !path.exists() || std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Replaceable::Yes;
    }
    let Ok(conn) = super::open_unchanged(path) else {
        return Replaceable::Other;
    };
    let oauthds =
        oauthds_version(&conn, path, |e| OpenError::open(path, &e)).is_ok_and(|v| v.number > 0);
    let markable = super::has_table(&conn, "meta").unwrap_or(true);
    match BackupMark::read(&conn) {
        _ if !oauthds => Replaceable::Other,
        Ok(Some(_)) => Replaceable::Yes,
        _ if from_copy => Replaceable::NotACopy,
        _ if !markable => Replaceable::Yes,
        _ => Replaceable::Unmarked,
    }
}

/// Whether the file starts as every SQLite database does.
fn is_sqlite_file(path: &Path) -> bool {
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut header)
        })
        .is_ok_and(|()| &header == b"SQLite format 3\0")
}

/// Whether a file that does not start as SQLite's databases do is one with a damaged
/// header: a whole number of 512-byte pages (every database is) whose first 16 bytes, the
/// magic, are zero (a first page lost) or whose bytes 21-23 still hold the three values
/// every SQLite header has there (64, 32, 32: a torn magic). What a crash or a disk leaves
/// of a database, not a program or an image.
fn damaged_header(path: &Path) -> bool {
    let mut header = [0u8; 100];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut header)?;
        f.metadata()
    });
    let Ok(meta) = read else {
        return false;
    };
    let pages = meta.len() % 512 == 0;
    let magic_zeroed = header.get(..16).is_some_and(|m| m.iter().all(|&b| b == 0));
    let fractions = header.get(21..24) == Some(&[64, 32, 32][..]);
    pages && (magic_zeroed || fractions)
}

/// Whether the file's first 4 KiB read as text (UTF-8 without NUL bytes): a key file or
/// a config file, never a database, however damaged.
fn is_text(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .is_ok_and(|_| {
            let text = match std::str::from_utf8(&head) {
                Ok(text) => text,
                // Cut inside a character at 4 KiB: the part before it.
                Err(e) if e.error_len().is_none() => {
                    std::str::from_utf8(head.get(..e.valid_up_to()).unwrap_or_default())
                        .unwrap_or_default()
                }
                Err(_) => return false,
            };
            !text.contains('\0')
        })
}

/// Refuses to restore over a file that is not oauthd's database: a slip of `--db` (the key
/// file beside it, another application's database) would move it aside, called the
/// database replaced. A damaged database of oauthd's is what restores are for: an SQLite
/// file whose tables cannot be read, or a file that does not even start as one but is no
/// text either (a zeroed first page), is replaced.
fn may_restore_over(db: &Path) -> Result<(), CopyError> {
    let refuse = |what: &str| {
        Err(CopyError::NotTheDatabase {
            path: db.to_owned(),
            what: what.to_owned(),
        })
    };
    match std::fs::metadata(db) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => return refuse("is a directory"),
        Ok(m) if m.len() == 0 => return Ok(()),
        Ok(_) => {}
    }
    if !is_sqlite_file(db) {
        // A header that does not open is damage too (a zeroed first page); text is not,
        // nor any other file (a program, an image, a file a link led to).
        if is_text(db) {
            return refuse("is a text file, not a database (the key file? a config file?)");
        }
        if !damaged_header(db) {
            return refuse("does not start as a database, nor as one whose header was damaged (if it is oauthd's, damaged past that, move it aside yourself and restore with --create)");
        }
        return Ok(());
    }
    let opened = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| OpenError::open(db, &e))
        .and_then(|c| oauthds_version(&c, db, |e| OpenError::open(db, &e)));
    match opened {
        Err(OpenError::Foreign { .. }) => {
            refuse("holds another application's tables, not oauthd's")
        }
        _ => Ok(()),
    }
}

/// The files of the database at `db`: itself, and those SQLite keeps beside it.
const SUFFIXES: [&str; 4] = ["", "-wal", "-shm", "-journal"];

/// Puts a copy of the database `backup` in place of the one at `db` (made there when
/// `create`; refused when missing otherwise). The files it replaces are kept beside it,
/// renamed `<db>.replaced-<stamp>` (with `-wal` and `-shm` after it, so that they still
/// open as one database): left in place, a `-wal` file would be played over the restored
/// copy at the next start and undo the restore, whether or not the database file itself
/// is there. Refused while any process has `db` open; none can open it until the copy is
/// in place. A failure part-way puts back what was moved.
pub fn restore(backup: &Path, db: &Path, stamp: &str, create: bool) -> Result<Restored, CopyError> {
    // A database reached through a link is restored where the link points, when every
    // link on the way may be trusted: the file a link another user planted leads to is
    // theirs to choose.
    let db = &trusted(db)?;
    if !db.exists() && !create {
        return Err(CopyError::NoDatabase {
            path: db.to_owned(),
        });
    }
    directory_exists(db)?;
    if same_file(backup, db) {
        return Err(CopyError::Same {
            path: backup.to_owned(),
        });
    }
    may_restore_over(db)?;
    let not_a_copy = || CopyError::NotACopy {
        path: backup.to_owned(),
    };
    // A copy this user may not read is said to be that, not taken for another file.
    if let Err(e) = std::fs::File::open(backup) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            let whose = crate::paths::ownership(backup).unwrap_or_else(|| e.to_string());
            return Err(CopyError::File {
                path: backup.to_owned(),
                detail: format!(
                    "{whose}, who may not read it: run restore as root, or as the owner of the copy (`oauthd backup` makes copies of mode 600)"
                ),
            });
        }
    }
    // An empty file is said to be empty (below): a copy cut short.
    if std::fs::metadata(backup).is_ok_and(|m| m.is_file() && m.len() > 0)
        && !is_sqlite_file(backup)
    {
        return Err(not_a_copy());
    }
    let source = open_copy(backup)?;
    let version = version_to_copy(&source, backup).map_err(|e| match e {
        CopyError::Open(OpenError::Foreign { .. } | OpenError::NotADatabase { .. }) => not_a_copy(),
        e => e,
    })?;
    refuse_served(&source, backup)?;
    let held = hold_exclusively(db)?;
    let by = holders(db);
    if !by.0.is_empty() {
        return Err(CopyError::InUse {
            path: db.to_owned(),
            by,
        });
    }
    // The owner of the database it replaces, or else of its directory (root restoring a
    // service's database on a new machine must not leave it a file it cannot open).
    let dir = dir_of(db);
    let owner = std::fs::metadata(db)
        .or_else(|_| std::fs::metadata(dir))
        .ok()
        .map(|m| (m.uid(), m.gid()));
    let workspace = Workspace::new(db, "restoring").map_err(|e| CopyError::file(db, e))?;
    let partial = workspace.file();
    let (copied, _held) = write_copy(&source, partial, version, owner, None)?;
    drop(source);
    // In WAL mode, as oauthd keeps it: a copy is made in rollback mode, in which a start by
    // a user who may not write the file fails where a WAL database is served read-only,
    // and a connection that is not reading holds no lock a later restore would see.
    if let Err(e) = Connection::open(partial).and_then(|c| {
        c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
    }) {
        return Err(CopyError::file(
            partial,
            format!("putting it in WAL mode: {e}"),
        ));
    }
    let present: Vec<&str> = SUFFIXES
        .into_iter()
        .filter(|suffix| with_suffix(db, suffix).symlink_metadata().is_ok())
        .collect();
    let mut moved = Vec::new();
    let replaced = if present.is_empty() {
        None
    } else {
        let aside = PathBuf::from(format!("{}.replaced-{stamp}", db.display()));
        for suffix in &present {
            let (from, to) = (with_suffix(db, suffix), with_suffix(&aside, suffix));
            let result = if to.symlink_metadata().is_ok() {
                Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} is there already", to.display()),
                ))
            } else {
                std::fs::rename(&from, &to)
            };
            if let Err(e) = result {
                for (back_from, back_to) in moved.iter().rev() {
                    let _ = std::fs::rename(back_to, back_from);
                }
                return Err(CopyError::file(
                    &from,
                    format!("cannot move it aside: {e}; nothing was changed"),
                ));
            }
            moved.push((from, to));
        }
        // The database's name when it was among them.
        present
            .first()
            .is_some_and(|s| s.is_empty())
            .then_some(aside)
    };
    // Let go before the copy takes the name: closing, SQLite deletes the `-wal` file by
    // its name, which must not be the restored database's by then.
    // Only once the hold proved nobody else has it open.
    let was_held = held.is_some();
    drop(held);
    if let (Some(aside), true) = (&replaced, was_held) {
        drop_empty_wal(aside);
    }
    std::fs::rename(partial, db).map_err(|e| CopyError::file(db, e))?;
    sync_dir(db)?;
    let moved = moved
        .into_iter()
        .map(|(_, to)| to)
        .filter(|to| to.symlink_metadata().is_ok())
        .collect();
    Ok(Restored {
        copied,
        replaced,
        moved,
    })
}

/// Removes an empty `-wal` beside the database moved aside to `aside`, and then its `-shm`:
/// they hold nothing (holding the database made them), and beside a file they read as a
/// database in use. Called only once the restore held the database alone: nobody else
/// had it open, and nobody opens it under its new name.
fn drop_empty_wal(aside: &Path) {
    let wal = with_suffix(aside, "-wal");
    if wal
        .symlink_metadata()
        .is_ok_and(|m| m.is_file() && m.len() == 0)
    {
        let _ = std::fs::remove_file(&wal);
    }
    if wal.symlink_metadata().is_err() {
        let _ = std::fs::remove_file(with_suffix(aside, "-shm"));
    }
}

fn open_read_only(path: &Path) -> Result<Connection, CopyError> {
    open_file(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Why `path` is no file to copy: a directory (a --db or copy named by its directory), or
/// nothing there.
fn not_a_file(path: &Path) -> CopyError {
    if path.is_dir() {
        CopyError::refused(path, "is a directory: name the database file in it")
    } else {
        CopyError::Missing {
            path: path.to_owned(),
        }
    }
}

/// The database file at `path` (`Missing` when there is none), opened with `flags`.
fn open_file(path: &Path, flags: OpenFlags) -> Result<Connection, CopyError> {
    if !path.is_file() {
        return Err(not_a_file(path));
    }
    Connection::open_with_flags(path, flags).map_err(|e| CopyError::Open(OpenError::open(path, &e)))
}

/// The database `backup` copies, opened where it may write, though nothing is written to
/// it: in WAL mode the last connection
/// to close removes the `-wal` and `-shm` files opening it made (a stopped database's, or
/// a copy's that `oauthd check` put in WAL mode), which one opened read-only leaves, and
/// which a later backup to that name takes for a database in use. Beside a database that
/// is served, they are the server's, and stay.
fn open_source(path: &Path) -> Result<Connection, CopyError> {
    open_file(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
}

/// A copy to restore from, opened so that nothing is written beside it: as `immutable` when
/// no journal lies beside it. Opened read-only as it is, a copy in WAL mode (`oauthd check`
/// puts one so) gets `-wal` and `-shm` files that stay, and a later backup to that name
/// takes them for a database in use. With a journal beside it, the journal is read as ever.
fn open_copy(path: &Path) -> Result<Connection, CopyError> {
    if !path.is_file() {
        return Err(not_a_file(path));
    }
    if ["-wal", "-journal"]
        .iter()
        .any(|suffix| with_suffix(path, suffix).symlink_metadata().is_ok())
    {
        return open_read_only(path);
    }
    let uri = super::file_uri(path, "immutable=1").map_err(|e| CopyError::file(path, e))?;
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| CopyError::Open(OpenError::open(path, &e)))
}

/// Refuses to restore `backup` (opened on `source`) when it is a database served now, or a
/// copy of one taken with its -wal (`cp -a`): a restore leaves the marks that tell such a
/// copy out of what it copies, and the database it makes would start beside the original.
fn refuse_served(source: &Connection, backup: &Path) -> Result<(), CopyError> {
    let here = super::serving::Place::of(backup);
    let Some(original) = super::serving::served_now(source, backup, here.as_ref())
        .map_err(|e| CopyError::Open(OpenError::open(backup, &e)))?
    else {
        return Ok(());
    };
    let what = if here.is_some_and(|h| h.is_at(&original.path)) {
        format!("{} is served now{}", backup.display(), original.by)
    } else {
        let how = if with_suffix(backup, "-wal").exists() {
            "with its -wal file while that was served (cp -a, rsync, a file-level backup tool)"
        } else {
            "while that was served"
        };
        format!(
            "{} is a copy of {}, taken {how}, and it is served now{}",
            backup.display(),
            original.path,
            original.by
        )
    };
    Err(CopyError::SourceServed {
        what,
        original: original.path,
    })
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

/// Copies `source` into the new file `partial` (0600, given `owner`), and checks it.
/// Returns the partial file held locked, as long as it is held: another copy's cleanup
/// leaves it alone.
fn write_copy(
    source: &Connection,
    partial: &Path,
    version: i64,
    owner: Option<(u32, u32)>,
    mark: Option<&BackupMark>,
) -> Result<(Copied, std::fs::File), CopyError> {
    let file = crate::paths::create_private(partial).map_err(|e| CopyError::file(partial, e))?;
    // Unlocked only for the moment since it was made, which the cleanup's minute covers.
    let _ = file.try_lock();
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
    // A copy that fails is removed with its workspace.
    let bytes = owned.and_then(|()| fill(source, partial, version, mark))?;
    Ok((Copied { version, bytes }, file))
}

/// `VACUUM INTO` the empty file `partial`, then: the schema version set, the vault notes
/// and the web page's sign-ins dropped, the backup's mark put in (`mark`, a backup) or
/// taken out (a restore), the whole checked and synced. Returns its size.
fn fill(
    source: &Connection,
    partial: &Path,
    version: i64,
    mark: Option<&BackupMark>,
) -> Result<u64, CopyError> {
    let name = partial
        .to_str()
        .ok_or_else(|| CopyError::file(partial, "the path is not UTF-8"))?;
    stoppable(source, partial)?;
    source.execute("VACUUM INTO ?1", [name]).map_err(|e| {
        stopped_or(e, |e| match (e.sqlite_error_code(), source.path()) {
            // The source's pages do not read: its fault, named by its own path (not the
            // partial file's, which is gone with the failure).
            (
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase),
                Some(path),
            ) => CopyError::SourceDamaged {
                path: PathBuf::from(path),
                detail: e.to_string(),
                restoring: mark.is_none(),
            },
            _ => CopyError::file(partial, format!("copying: {e}")),
        })
    })?;
    let copy = Connection::open(partial).map_err(|e| CopyError::file(partial, e))?;
    stoppable(&copy, partial)?;
    let damaged = |e: rusqlite::Error| {
        stopped_or(e, |e| CopyError::Damaged {
            path: partial.to_owned(),
            detail: e.to_string(),
        })
    };
    copy.pragma_update(None, "user_version", version)
        .map_err(damaged)?;
    // The vault notes and the marks of the processes serving the database (in `meta`
    // from schema version 10: the copy is whole, and served by none), and the web page's
    // sign-ins and sign-in links (from version 2): a copy put back would make a session
    // signed out or revoked since, or a link used since, good again. A restore from a copy
    // made before they were left out drops them too (it is made by this same function).
    let left_out = [
        (
            "meta",
            "DELETE FROM meta WHERE name LIKE 'vault:%' OR name LIKE 'serving:%' \
             OR name = 'backup_of'",
        ),
        ("admin_secrets", "DELETE FROM admin_secrets"),
    ];
    for (table, delete) in left_out {
        let there = super::has_table(&copy, table).map_err(damaged)?;
        if there {
            copy.execute(delete, []).map_err(damaged)?;
        }
    }
    // A copy served beside its database would refresh the same refresh tokens: a provider
    // that rotates them takes the second use for a stolen token and ends the grant. A
    // start on a copy so marked is refused (`oauthd restore` puts it in a database's place).
    if let Some(mark) = mark {
        if super::has_table(&copy, "meta").map_err(damaged)? {
            copy.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)",
                [BackupMark::NAME, mark.to_text().as_str()],
            )
            .map_err(damaged)?;
        }
    }
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(damaged)?;
    if check != "ok" {
        return Err(CopyError::Damaged {
            path: partial.to_owned(),
            detail: check,
        });
    }
    drop(copy);
    let file = std::fs::File::open(partial).map_err(|e| CopyError::file(partial, e))?;
    file.sync_all().map_err(|e| CopyError::file(partial, e))?;
    Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
}

fn sync_dir(path: &Path) -> Result<(), CopyError> {
    let dir = dir_of(path);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CopyError::file(dir, e))
}

/// Whether the `-wal` beside `db` is empty and left by connections gone without closing
/// (a process that ended before its last connection closed): nothing has the database
/// open, so it and its `-shm` are removed, as the last close would have. One that holds
/// frames, or a database in use, stays for the refusal.
fn empty_wal_left_behind(db: &Path) -> bool {
    let wal = with_suffix(db, "-wal");
    if std::fs::metadata(&wal).map_or(true, |m| m.len() != 0) || !holders(db).0.is_empty() {
        return false;
    }
    match hold_exclusively(db) {
        Ok(Some(held)) => {
            let gone = ["-wal", "-shm"].iter().all(|suffix| {
                match std::fs::remove_file(with_suffix(db, suffix)) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            });
            drop(held);
            gone && !wal.exists()
        }
        _ => false,
    }
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
        .busy_timeout(Duration::ZERO)
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
                by: holders(db),
            })
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    /// A copy whose path holds what a URI reads otherwise (`?`, `#`, `%`, a space) opens
    /// as that file, and nothing is made beside it.
    #[test]
    fn a_copy_opens_by_its_path_whatever_it_holds_and_nothing_is_made_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd ?#%20name.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (7);",
        )
        .unwrap();
        drop(conn);
        let copy = super::open_copy(&path).unwrap();
        let x: i64 = copy.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
        drop(copy);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["odd ?#%20name.db"]);
    }
}

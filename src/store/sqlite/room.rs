//! Whether the database has room to grow: what ends the full-disk mark, and what a refused
//! open says of the disk.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the process's file-size limit left the database no room, as last looked at: by
/// a write that failed (the limit's EFBIG is an I/O error to SQLite, or a full disk for a
/// write cut short), and while the full-disk mark stands, at every look at the room (one
/// database a process, as `DAMAGED`). Judged by the database's own files: the process's
/// other files (a log past the limit) say nothing of them.
static SHORT_BY_LIMIT: AtomicBool = AtomicBool::new(false);

/// Whether the last look found the file-size limit leaving the database no room.
pub(crate) fn size_limited() -> bool {
    SHORT_BY_LIMIT.load(Ordering::Acquire)
}

/// For a write to `db` that failed as an I/O error or a full disk: whether the file-size
/// limit is why (and so `size_limited` from now on).
pub(super) fn failed_by_limit(db: &Path) -> bool {
    let by_limit = limit_short(db);
    SHORT_BY_LIMIT.store(by_limit, Ordering::Release);
    by_limit
}

/// The room that ends a full-disk mark, and below which `oauthd check` fails: SQLite's
/// `-wal` file grows to about 4 MB between two checkpoints, and a checkpoint grows the
/// database. A quarter of a smaller filesystem.
pub const ROOM: u64 = 8 * 1024 * 1024;

/// Bytes any user may still write on the filesystem holding `path` (a link's target's),
/// those root may (its reserved blocks too), and the filesystem's size.
pub fn free_bytes(path: &Path) -> std::io::Result<Free> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let fs = rustix::fs::statvfs(crate::paths::dir_of(&path))?;
    Ok(Free {
        any_user: fs.f_bavail.saturating_mul(fs.f_frsize),
        root: fs.f_bfree.saturating_mul(fs.f_frsize),
        size: fs.f_blocks.saturating_mul(fs.f_frsize),
    })
}

/// What `statvfs` says of a filesystem's room, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Free {
    pub any_user: u64,
    pub root: u64,
    pub size: u64,
}

/// What the filesystem holding the database says of its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// `ROOM` free for any user (a quarter of a smaller filesystem).
    Enough,
    /// Whether this process has room cannot be told: only root's reserved blocks are free
    /// (root in a user namespace cannot use them), the filesystem has no size (some FUSE
    /// ones), or `statvfs` failed.
    Unsure,
    /// Not enough free, even for root.
    Short,
}

/// The room on the filesystem holding the database at `db`. At the edge of full, a write
/// that fits in what the `-wal` file already holds goes through while bigger ones fail:
/// such a write says nothing of room, this does.
///
/// Near the file-size limit, `Unsure`: SQLite reuses the pages it freed within the file,
/// so writes may go through again while the file stays as large; the mark ends as where the
/// filesystem cannot tell, once writes have gone through for a while.
pub(super) fn room(db: &Path) -> Room {
    match (failed_by_limit(db), disk_room(db)) {
        (true, Room::Enough) => Room::Unsure,
        (_, room) => room,
    }
}

/// The room on the filesystem holding the database at `db`.
fn disk_room(db: &Path) -> Room {
    match free_bytes(db) {
        Ok(free) if free.size > 0 => {
            let need = ROOM.min(free.size / 4);
            if free.any_user >= need {
                Room::Enough
            } else if free.root >= need {
                Room::Unsure
            } else {
                Room::Short
            }
        }
        _ => Room::Unsure,
    }
}

/// Whether the process's file-size limit leaves the database or its `-wal` file less than
/// `ROOM` to grow (a quarter of a smaller limit): a disk with room all the same.
fn limit_short(db: &Path) -> bool {
    let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Fsize).current else {
        return false;
    };
    let largest = [db.to_owned(), crate::paths::with_suffix(db, "-wal")]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    largest >= limit || limit - largest < ROOM.min(limit / 4)
}

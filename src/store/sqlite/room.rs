//! Whether the database has room to grow: what clears the full-disk mark, and what
//! `oauthd check` and a refused open say of the disk.

use std::path::Path;

/// The room a full-disk mark waits for, and below which `oauthd check` fails: SQLite's
/// `-wal` file grows to about 4 MB between two checkpoints, and a checkpoint grows the
/// database.
pub const ROOM: u64 = 8 * 1024 * 1024;

/// Bytes this process may still write on the filesystem holding `path` (a link's target's):
/// root's writes may also fill the blocks kept back for it.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let fs = rustix::fs::statvfs(crate::paths::dir_of(&path))?;
    let blocks = if rustix::process::geteuid().is_root() {
        fs.f_bfree
    } else {
        fs.f_bavail
    };
    Ok(blocks.saturating_mul(fs.f_frsize))
}

/// Whether the filesystem holding the database at `db` has `ROOM` free; what cannot be
/// read counts as room. At the edge of full, a write that fits in what the `-wal` file
/// already holds goes through while bigger ones fail: such a write says nothing of room.
/// A file-size limit (systemd's `LimitFSIZE=`) is not looked at: the write across it fails
/// as a full disk, the ones past it as an I/O error (the read-only mark's), and the mark
/// ends with the next write that goes through.
pub(super) fn has_room(db: &Path) -> bool {
    free_bytes(db).map_or(true, |free| free >= ROOM)
}

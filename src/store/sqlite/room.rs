//! Whether the database has room to grow: what ends the full-disk mark early, and what a
//! refused open says of the disk.

use std::path::Path;

/// The room that ends a full-disk mark at once, and below which `oauthd check` fails:
/// SQLite's `-wal` file grows to about 4 MB between two checkpoints, and a checkpoint grows
/// the database. A quarter of a smaller filesystem.
pub const ROOM: u64 = 8 * 1024 * 1024;

/// Bytes any user may still write on the filesystem holding `path` (a link's target's),
/// and the filesystem's size.
pub fn free_bytes(path: &Path) -> std::io::Result<(u64, u64)> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let fs = rustix::fs::statvfs(crate::paths::dir_of(&path))?;
    Ok((
        fs.f_bavail.saturating_mul(fs.f_frsize),
        fs.f_blocks.saturating_mul(fs.f_frsize),
    ))
}

/// Whether the filesystem holding the database at `db` has `ROOM` free (a quarter of a
/// smaller one). What cannot be read, or says it has no size (some FUSE filesystems),
/// counts as room. At the edge of full, a write that fits in what the `-wal` file already
/// holds goes through while bigger ones fail: such a write says nothing of room. Root's
/// reserved blocks are not counted (root in a user namespace cannot use them).
pub(super) fn has_room(db: &Path) -> bool {
    match free_bytes(db) {
        Ok((_, 0)) | Err(_) => true,
        Ok((free, size)) => free >= ROOM.min(size / 4),
    }
}

//! Where a copy of the database is written before it takes its name: a directory of the
//! copy's own beside the file it becomes, `.NAME.WHAT-PID-RANDOM` (mode 0700), holding the
//! copy as `NAME`. SQLite makes a journal beside the file it writes, opened without
//! `O_EXCL`: beside the target itself, in a directory other users may write to (`/tmp`),
//! one of them could make that journal first, and read the copy's pages from it or have
//! SQLite play pages of theirs into it. In a directory nobody else may enter, nobody can.

use crate::paths::dir_of;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A copy's own directory, removed with whatever is left in it when dropped (after the
/// copy took its name, or failed).
pub struct Workspace {
    dir: PathBuf,
    file: PathBuf,
}

impl Workspace {
    /// Makes a directory for a copy that becomes `path`, `what` naming the command
    /// (`partial`, `restoring`). Those no copy is writing any more (one killed with
    /// `kill -9`, or by the OOM killer) are removed first: each can be as large as the
    /// database.
    pub fn new(path: &Path, what: &str) -> std::io::Result<Workspace> {
        let name = path
            .file_name()
            .map_or_else(|| "oauthd.db".into(), |n| n.to_string_lossy());
        let prefix = format!(".{name}.{what}-");
        remove_abandoned(dir_of(path), &name, &prefix);
        // A name nobody can make first: one made by someone else would only fail the copy.
        let random = crate::secret::random_bytes::<6>()
            .map_err(|e| std::io::Error::other(format!("no random bytes: {e}")))?;
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = path.with_file_name(format!("{prefix}{}-{random}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let file = dir.join(name.as_ref());
        Ok(Workspace { dir, file })
    }

    /// The copy's file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes, in `dir`, the copies named `PREFIX<pid>...` that no copy is writing: a
/// directory of one (this version's, `PREFIX<pid>-<12 hex digits>`, mode 0700), or a file
/// and those SQLite kept beside it (an earlier version wrote the copy straight beside its
/// target). Only this user's, looked at without following links: a look-alike another
/// user made, or renamed something of theirs to, in a shared directory is left alone, and
/// of a directory only the files a copy leaves are removed (anything else keeps it).
fn remove_abandoned(dir: &Path, name: &str, prefix: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(prefix)) else {
            continue;
        };
        let left = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&left) else {
            continue;
        };
        if meta.uid() != me {
            continue;
        }
        let removed = if meta.is_dir() {
            workspace_name(rest)
                && meta.mode() & 0o777 == 0o700
                && unchanged(&left)
                && abandoned(&left.join(name))
                && remove_workspace(&left, name)
        } else if meta.file_type().is_file() {
            let pid = rest
                .split('-')
                .next()
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            pid.is_some_and(|pid| abandoned(&dir.join(format!("{prefix}{pid}"))))
                && std::fs::remove_file(&left).is_ok()
        } else {
            false
        };
        if removed {
            log::info!(
                "removed {}, left by a copy that did not finish",
                left.display()
            );
        }
    }
}

/// Whether what follows the prefix is `<pid>-<12 hex digits>`, as `Workspace::new` names.
fn workspace_name(rest: &str) -> bool {
    rest.split_once('-').is_some_and(|(pid, random)| {
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 12
            && random.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Removes the files a copy leaves in its directory, then the directory if that emptied
/// it.
fn remove_workspace(dir: &Path, name: &str) -> bool {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
    }
    std::fs::remove_dir(dir).is_ok()
}

/// Whether nothing changed at `path` for a minute.
fn unchanged(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_secs(60)))
}

/// Whether the partial copy at `main` (or a file SQLite kept beside it) is no copy's any
/// more: gone, or held locked by nobody (a copy holds a lock on its partial file until the
/// file takes its name or is removed) and unchanged for a minute. A process id says nothing
/// across PID namespaces (a container, `unshare`); a lock does.
fn abandoned(main: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    // Without waiting on a FIFO planted under the name, nor following a link.
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(main);
    match opened {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(file) => {
            file.metadata().is_ok_and(|m| m.is_file()) && unchanged(main) && file.try_lock().is_ok()
        }
    }
}

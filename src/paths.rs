//! What file paths need everywhere.

use std::path::{Path, PathBuf};

/// The directory a file is in: `.` for a bare name (`Path::parent` gives an empty path).
pub fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `path` with `suffix` after its name: the files SQLite keeps beside a database
/// (`-wal`, `-shm`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The first link on the way to `path` (a directory's, its own, or one a link points to)
/// that is owned by neither root nor the user running oauthd, with its owner: another local
/// user could have planted it where a file is about to be written (`/tmp`, a shared
/// directory) to have the write replace a file of their choosing. `None` when every link
/// is trusted, or the user cannot be told (no `/proc`).
pub fn untrusted_link(path: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    // The process's user: the owner of its own /proc entry.
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    let mut at = PathBuf::new();
    let mut rest: std::collections::VecDeque<PathBuf> = path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    // As many links as the kernel follows before it gives up (ELOOP).
    let mut hops = 0;
    while let Some(part) = rest.pop_front() {
        at.push(&part);
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        if meta.uid() != 0 && meta.uid() != me {
            return Some((at, meta.uid()));
        }
        hops += 1;
        let target = std::fs::read_link(&at).ok()?;
        if hops > 40 {
            return None;
        }
        // The link's target stands in its place (an absolute one starts again at `/`).
        at.pop();
        for part in target.components().rev() {
            rest.push_front(PathBuf::from(part.as_os_str()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{dir_of, untrusted_link};
    use std::path::Path;

    #[test]
    fn links_of_root_or_this_user_are_trusted_and_others_named() {
        use std::os::unix::fs::{lchown, symlink};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.db");
        std::fs::write(&target, b"").unwrap();
        let mine = dir.path().join("mine.db");
        symlink(&target, &mine).unwrap();
        assert_eq!(untrusted_link(&mine), None);
        assert_eq!(untrusted_link(&dir.path().join("new.db")), None);
        // Another user's link, as the file itself, as a directory on the way, and as
        // the target of a link of this user's (tests run as root, which may hand it over).
        let theirs = dir.path().join("theirs.db");
        symlink(&target, &theirs).unwrap();
        lchown(&theirs, Some(65534), None).expect("tests run as root");
        assert_eq!(untrusted_link(&theirs), Some((theirs.clone(), 65534)));
        let sub = dir.path().join("sub");
        symlink(dir.path(), &sub).unwrap();
        lchown(&sub, Some(65534), None).unwrap();
        assert_eq!(
            untrusted_link(&sub.join("x.db")),
            Some((sub.clone(), 65534))
        );
        let chained = dir.path().join("chained.db");
        symlink("theirs.db", &chained).unwrap();
        assert_eq!(untrusted_link(&chained), Some((theirs, 65534)));
    }

    #[test]
    fn a_bare_name_is_in_the_current_directory() {
        assert_eq!(dir_of(Path::new("oauthd.db")), Path::new("."));
        assert_eq!(
            dir_of(Path::new("/var/lib/oauthd.db")),
            Path::new("/var/lib")
        );
        assert_eq!(dir_of(Path::new("a/b.key")), Path::new("a"));
    }
}

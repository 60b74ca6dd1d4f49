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

#[cfg(test)]
mod tests {
    use super::dir_of;
    use std::path::Path;

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

//! What file paths need everywhere.

use std::path::{Path, PathBuf};

/// A new file only this user can read and write (mode 600), made only if nothing has the
/// name (so never through a link someone else planted), open for writing.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

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

/// `path` as one word of a shell command line, for commands oauthd tells an operator to
/// run: as it is when it holds only characters no shell reads specially, else in single
/// quotes (a `'` in it written `'\''`).
pub fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Whose the file at `path` is, against who asks: "it is owned by uid 0 with mode 600,
/// and oauthd runs as uid 65534", for a message where this user may not read or write it;
/// `None` when the file cannot be looked at.
pub fn ownership(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // The process's user: the owner of its own /proc entry.
    let me =
        std::fs::metadata("/proc/self").map_or_else(|_| "?".to_owned(), |m| m.uid().to_string());
    Some(format!(
        "it is owned by uid {} with mode {:o}, and oauthd runs as uid {me}",
        meta.uid(),
        meta.mode() & 0o7777
    ))
}

/// `path` from the root, with `.` and `..` resolved, for a command to paste anywhere.
pub fn full_path(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// The user this process runs as: the owner of its own /proc entry.
pub fn my_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// What a file holding a secret could not be read for, with what to do: whose it is
/// against who asks when this user may not read it (a file made 600 by root for a
/// service that runs as another user: systemd's `DynamicUser=` makes one up, and hands
/// such a secret over as a credential instead); that a systemd credential exists only
/// while its unit runs.
pub fn unreadable(path: &Path, e: &std::io::Error) -> String {
    let mut said = format!("cannot read {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            if let Some(whose) = ownership(path) {
                said.push_str(&format!(
                    " ({whose}, who may not read it: make it that user's, or, for a service \
                     systemd runs (DynamicUser=), hand it over with LoadCredential= and name \
                     /run/credentials/<unit>/<name> here: see dist/oauthd.service)"
                ));
            }
        }
        std::io::ErrorKind::NotFound if path.starts_with("/run/credentials") => said.push_str(
            " (systemd credentials exist only while their unit runs: run this while it runs, \
             or give it the file the unit loads the credential from)",
        ),
        _ => {}
    }
    said
}

/// Whether `path` is a systemd credential (`/run/credentials/<unit>/<name>`) of a unit
/// installed here that does not run now: systemd makes that directory as the unit starts
/// and takes it away as it stops. Not a unit that runs without the file, nor a unit name
/// no unit file has (mistyped, or no systemd here): those are misconfigured.
pub fn credential_of_a_stopped_unit(path: &Path) -> bool {
    use std::path::Component;
    let Ok(rest) = path.strip_prefix("/run/credentials") else {
        return false;
    };
    let names: Option<Vec<&std::ffi::OsStr>> = rest
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some([unit, _, ..]) = names.as_deref() else {
        return false;
    };
    let Some(unit) = unit.to_str() else {
        return false;
    };
    !Path::new("/run/credentials").join(unit).exists() && unit_installed(unit)
}

/// Whether systemd has a unit file for `unit` (or, for `name@instance.kind`, its
/// template): in the directories `$SYSTEMD_UNIT_PATH` names, as systemd reads it (absolute
/// ones; a `:` at its end adds the usual ones), else in the usual ones.
fn unit_installed(unit: &str) -> bool {
    const USUAL: [&str; 9] = [
        "/etc/systemd/system.control",
        "/run/systemd/system.control",
        "/etc/systemd/system",
        "/etc/systemd/system.attached",
        "/run/systemd/system",
        "/run/systemd/system.attached",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ];
    let mut dirs: Vec<PathBuf> = Vec::new();
    let list = std::env::var("SYSTEMD_UNIT_PATH").ok();
    if let Some(list) = &list {
        dirs.extend(
            list.split(':')
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute()),
        );
    }
    if list.as_deref().is_none_or(|l| l.ends_with(':')) {
        dirs.extend(USUAL.map(PathBuf::from));
    }
    let template = unit.split_once('@').and_then(|(name, rest)| {
        rest.rsplit_once('.')
            .map(|(_, kind)| format!("{name}@.{kind}"))
    });
    dirs.iter().any(|dir| {
        dir.join(unit).is_file() || template.as_ref().is_some_and(|t| dir.join(t).is_file())
    })
}

/// A link on the way to a path that another user could have planted (`resolve_trusted`).
#[derive(Debug, PartialEq, Eq)]
pub struct UntrustedLink {
    pub link: PathBuf,
    /// Its owner; `None` when it could not be looked at.
    pub owner: Option<u32>,
}

/// `path` with every link on the way to it (a directory's, its own, and those links lead
/// to) resolved, when each may be trusted: owned by root or by the user running oauthd, or
/// by the owner of a directory only they may write to (as a service's own directory,
/// whoever runs the command). Else the first that may not: another local user could have
/// planted it where a file is about to be written (`/tmp`, a directory a group shares) to
/// have the write replace a file of their choosing. What cannot be looked at (no `/proc`
/// to tell this user by, a link that cannot be read, a chain of over 40) is not trusted.
/// The path given back holds no link, so a link made there afterwards is not followed.
pub fn resolve_trusted(path: &Path) -> Result<PathBuf, UntrustedLink> {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let untrusted = |link: &Path, owner| UntrustedLink {
        link: link.to_owned(),
        owner,
    };
    // The process's user: the owner of its own /proc entry.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut at = PathBuf::new();
    let mut rest: std::collections::VecDeque<PathBuf> = path
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    // As many links as the kernel follows before it gives up (ELOOP).
    let mut hops = 0;
    while let Some(part) = rest.pop_front() {
        // `at` holds no link, so `..` is its parent, as the kernel takes it.
        if part.as_os_str() == Component::ParentDir.as_os_str() && at.file_name().is_some() {
            at.pop();
            continue;
        }
        at.push(&part);
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let owner = meta.uid();
        let dir = std::fs::metadata(dir_of(&at));
        let owners_own_dir = dir.is_ok_and(|d| d.uid() == owner && d.mode() & 0o022 == 0);
        if !(owner == 0 || Some(owner) == me || owners_own_dir) {
            return Err(untrusted(&at, Some(owner)));
        }
        hops += 1;
        let target = match std::fs::read_link(&at) {
            Ok(target) if hops <= 40 => target,
            _ => return Err(untrusted(&at, Some(owner))),
        };
        // The link's target stands in its place (an absolute one starts again at `/`).
        at.pop();
        for part in target.components().rev() {
            rest.push_front(PathBuf::from(part.as_os_str()));
        }
    }
    match me {
        Some(_) => Ok(at),
        None if hops == 0 => Ok(at),
        None => Err(untrusted(path, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::{dir_of, resolve_trusted, UntrustedLink};
    use std::path::Path;

    #[test]
    fn links_of_root_this_user_or_a_private_directorys_owner_are_followed_and_others_named() {
        use std::os::unix::fs::{chown, lchown, symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let target = base.join("target.db");
        std::fs::write(&target, b"").unwrap();
        let mine = base.join("mine.db");
        symlink(&target, &mine).unwrap();
        assert_eq!(resolve_trusted(&mine), Ok(target.clone()));
        assert_eq!(
            resolve_trusted(&base.join("new.db")),
            Ok(base.join("new.db"))
        );
        let theirs_of = |link: &Path| {
            Err(UntrustedLink {
                link: link.to_owned(),
                owner: Some(65534),
            })
        };
        // Another user's link, as the file itself, as a directory on the way, and as
        // the target of a link of this user's (tests run as root, which may hand it over).
        let theirs = base.join("theirs.db");
        symlink(&target, &theirs).unwrap();
        lchown(&theirs, Some(65534), None).expect("tests run as root");
        assert_eq!(resolve_trusted(&theirs), theirs_of(&theirs));
        let sub = base.join("sub");
        symlink(&base, &sub).unwrap();
        lchown(&sub, Some(65534), None).unwrap();
        assert_eq!(resolve_trusted(&sub.join("x.db")), theirs_of(&sub));
        let chained = base.join("chained.db");
        symlink("theirs.db", &chained).unwrap();
        assert_eq!(resolve_trusted(&chained), theirs_of(&theirs));
        // In a directory of that user's own that only they may write to: followed (a
        // service's link, a backup run by root); once others may write there, not.
        let service = base.join("service");
        std::fs::create_dir(&service).unwrap();
        std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&service, Some(65534), None).unwrap();
        let latest = service.join("latest.db");
        symlink(&target, &latest).unwrap();
        lchown(&latest, Some(65534), None).unwrap();
        assert_eq!(resolve_trusted(&latest), Ok(target.clone()));
        std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(resolve_trusted(&latest), theirs_of(&latest));
        // `..` after a link is the parent of where the link leads.
        let deep = base.join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        symlink(&deep, base.join("to-b")).unwrap();
        assert_eq!(
            resolve_trusted(&base.join("to-b/../x.db")),
            Ok(base.join("a/x.db"))
        );
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

    #[test]
    fn a_shell_word_is_quoted_where_a_shell_would_read_it_otherwise() {
        let word = |p: &str| super::shell_word(Path::new(p));
        assert_eq!(
            word("/var/lib/oauthd/oauthd.db"),
            "/var/lib/oauthd/oauthd.db"
        );
        assert_eq!(word("/srv/my data/o.db"), "'/srv/my data/o.db'");
        assert_eq!(word("/srv/it's/o.db"), "'/srv/it'\\''s/o.db'");
        assert_eq!(word("/a;b&c>d*"), "'/a;b&c>d*'");
        // As sh reads it back: the same path.
        for p in [
            "/srv/my data/o.db",
            "/srv/it's/o.db",
            "/x/$HOME/`id`/\"q\"",
            "/$(id)",
        ] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", word(p))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), p);
        }
    }
}

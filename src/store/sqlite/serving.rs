//! Marks of the `oauthd serve` processes that have the database open, kept in `meta` as
//! `serving:<boot>:<pid namespace>:<pid>:<start time>` (the value: since when, and the
//! file's device, inode and path) and checkpointed into the database file as each starts.
//! What oauthd writes stays in the `-wal` file until a checkpoint, so a copy of the
//! database file made without it while oauthd serves (or after oauthd was killed) is an
//! older database that opened without a word. One that has no `-wal` beside it and holds
//! a mark made in another file or place is refused instead (`OpenError::CopiedWithoutWal`).
//! A mark made in this very file tells nothing then: a process serving it would have its
//! `-wal` beside it, so its writes were merged into the file (a clean stop, an `sqlite3`
//! shell after a kill).
//!
//! A file that holds a mark made in another file still in its place, served now (by the
//! marking process, alive on this machine, or an oauthd found holding it open), is a copy
//! taken with its `-wal` while the original is served: it is refused as long as the
//! original is served (`OpenError::CopyOfServed`).
//!
//! A clean stop removes its process's mark, and those of processes it cannot see alive (a
//! killed oauthd's, one in another container's PID namespace). A writable open removes the
//! marks of processes gone, and with no `-wal` beside the file, every mark; a mark of a
//! process alive or one it cannot look up stays, wherever it was made (the same file
//! through another path is served by it). `oauthd backup` and `restore` leave every mark
//! out of what they copy.

use rusqlite::Connection;

const PREFIX: &str = "serving:";

/// A process as its mark names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    boot: String,
    pid_namespace: String,
    pid: u32,
    started: String,
}

impl Process {
    fn this() -> Option<Process> {
        let pid = std::process::id();
        Some(Process {
            boot: boot_id()?,
            pid_namespace: pid_namespace()?,
            pid,
            started: start_time(pid)?,
        })
    }

    fn mark_name(&self) -> String {
        format!(
            "{PREFIX}{}:{}:{}:{}",
            self.boot, self.pid_namespace, self.pid, self.started
        )
    }

    fn from_mark(name: &str) -> Option<Process> {
        let mut parts = name.strip_prefix(PREFIX)?.split(':');
        let process = Process {
            boot: parts.next()?.to_owned(),
            pid_namespace: parts.next()?.to_owned(),
            pid: parts.next()?.parse().ok()?,
            started: parts.next()?.to_owned(),
        };
        parts.next().is_none().then_some(process)
    }

    /// Whether the process a mark names is alive, seen from `here`: `None` where it
    /// cannot be looked up (another PID namespace: an oauthd in a container, this command
    /// run on the host).
    fn alive(&self, here: &Process) -> Option<bool> {
        if self.boot != here.boot {
            return Some(false);
        }
        if self.pid_namespace != here.pid_namespace {
            return None;
        }
        Some(start_time(self.pid).is_some_and(|started| started == self.started))
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(':')).then(|| id.to_owned())
}

fn pid_namespace() -> Option<String> {
    // "pid:[4026531836]"
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let digits: String = link
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22): with its
/// PID, what tells it from a later process given the same PID.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 is the first after the name.
    after_name.split_whitespace().nth(22 - 3).map(str::to_owned)
}

/// Where a database file is: a copy is another file, a move another path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    device: u64,
    inode: u64,
    path: String,
}

impl Place {
    pub fn of(path: &std::path::Path) -> Option<Place> {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        Some(Place {
            device: meta.dev(),
            inode: meta.ino(),
            path: path.to_string_lossy().into_owned(),
        })
    }

    /// Whether `other` is the same file (device and inode), whatever path reached it.
    fn same_file(&self, other: &Place) -> bool {
        self.device == other.device && self.inode == other.inode
    }

    /// Whether this is the place named by `path` as a mark names it.
    pub fn is_at(&self, path: &str) -> bool {
        self.path == path
    }

    /// Whether the file this names is still there: the same file at its path.
    fn in_place(&self) -> bool {
        Place::of(std::path::Path::new(&self.path)).is_some_and(|there| there.same_file(self))
    }

    /// A mark's value: since when (unix ms), then the place.
    fn value(&self, since_ms: i64) -> String {
        format!("{since_ms} {} {} {}", self.device, self.inode, self.path)
    }

    fn from_value(value: &str) -> (i64, Option<Place>) {
        let mut parts = value.splitn(4, ' ');
        let since = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let place = (|| {
            Some(Place {
                device: parts.next()?.parse().ok()?,
                inode: parts.next()?.parse().ok()?,
                path: parts.next()?.to_owned(),
            })
        })();
        (since, place)
    }
}

/// A mark that says the database file at hand lacks what its `-wal` held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub since_ms: i64,
    pub pid: Option<u32>,
}

fn marks(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    if !super::has_table(conn, "meta")? {
        return Ok(Vec::new());
    }
    conn.prepare_cached(
        "SELECT name, value FROM meta WHERE name >= 'serving:' AND name < 'serving;'",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Whether another `oauthd serve` may serve the database now: a mark of a process other
/// than this one that is alive, or that cannot be looked up (another PID namespace). The
/// marks of processes gone are removed as a writable open starts.
pub fn others_may_serve(conn: &Connection) -> rusqlite::Result<bool> {
    let Some(this) = Process::this() else {
        return Ok(true);
    };
    Ok(marks(conn)?.iter().any(|(name, _)| {
        Process::from_mark(name).is_some_and(|p| p != this && p.alive(&this) != Some(false))
    }))
}

/// For a database file with no `-wal` beside it, at `here`: the first mark made in
/// another file or place (a copy, or a move, without the -wal), whose process's writes
/// since the last checkpoint are not in this file. `None`: no mark, or only marks made in
/// this file here.
pub fn without_its_wal(
    conn: &Connection,
    here: Option<&Place>,
) -> rusqlite::Result<Option<Served>> {
    for (name, value) in marks(conn)? {
        let (since_ms, made_at) = Place::from_value(&value);
        if made_at.is_none() || made_at.as_ref() != here {
            return Ok(Some(Served {
                since_ms,
                pid: Process::from_mark(&name).map(|p| p.pid),
            }));
        }
    }
    Ok(None)
}

/// The database a file was copied from while it was served, and who serves it: the
/// process that made the mark, or those found holding the original open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub path: String,
    pub by: String,
}

/// For the database file at `here`: a mark made in another file (not this one under
/// another path: another device or inode) that is still at the place the mark names and
/// is served now: by the process that made the mark, alive on this machine, or (that
/// process gone since, restarted, or in another PID namespace, as in a container) by an
/// oauthd found holding it open (a backup or replication tool reading it serves nothing). The file at hand is then a copy, taken with its -wal
/// (`cp -a`, rsync, a file-level backup tool), of a database served now: served or changed
/// beside it, the copy would refresh the same connections with the same refresh tokens,
/// and a provider that rotates them ends the connection in one of the two.
pub fn copy_of_served(
    conn: &Connection,
    here: Option<&Place>,
) -> rusqlite::Result<Option<Original>> {
    let this = Process::this();
    for (name, value) in marks(conn)? {
        let (process, (_, Some(made_at))) = (Process::from_mark(&name), Place::from_value(&value))
        else {
            continue;
        };
        if here.is_some_and(|here| here.same_file(&made_at)) {
            continue;
        }
        if !made_at.in_place() {
            continue;
        }
        let by = served_by(process, this.as_ref(), std::path::Path::new(&made_at.path));
        if !by.is_empty() {
            return Ok(Some(Original {
                path: made_at.path,
                by,
            }));
        }
    }
    Ok(None)
}

/// Who serves the database file at `path` that `process` marked, for a message (` by
/// oauthd (pid 12)`): that process, alive on this machine, or else the oauthds found
/// holding the file open (it gone since, restarted, or in another PID namespace); nothing
/// when none does.
fn served_by(process: Option<Process>, this: Option<&Process>, path: &std::path::Path) -> String {
    match (process, this) {
        (Some(process), Some(this)) if process.alive(this) == Some(true) => {
            format!(" by oauthd (pid {})", process.pid)
        }
        _ => super::copy::holders(path).oauthds().to_string(),
    }
}

/// For a database file at `here` (`path`) about to be put in service elsewhere (`restore`
/// of it): the database served now that would then be served twice. This very file, when
/// an oauthd that marked it here serves it now (alive on this machine, or found holding it
/// open), or the original it was copied from with its -wal while served (`copy_of_served`).
pub fn served_now(
    conn: &Connection,
    path: &std::path::Path,
    here: Option<&Place>,
) -> rusqlite::Result<Option<Original>> {
    let this = Process::this();
    for (name, value) in marks(conn)? {
        let (Some(here), (_, Some(made_at))) = (here, Place::from_value(&value)) else {
            continue;
        };
        if !here.same_file(&made_at) {
            continue;
        }
        let by = served_by(Process::from_mark(&name), this.as_ref(), path);
        if !by.is_empty() {
            return Ok(Some(Original {
                path: here.path.clone(),
                by,
            }));
        }
    }
    copy_of_served(conn, here)
}

/// Refuses the database at `path` (its place `here`), opened on `conn`, when it is a copy of
/// one served now
/// (`copy_of_served`), leaving its files as they were: closed, the last connection to a
/// database merges its -wal into it and removes it, and the copy would lose the -wal this
/// names and be refused after that as one copied without it.
pub(super) fn refuse_a_copy_of_served(
    conn: &Connection,
    path: &std::path::Path,
    here: Option<&Place>,
) -> Result<(), super::OpenError> {
    let sqlite_err = |e: rusqlite::Error| super::OpenError::open(path, &e);
    let Some(original) = copy_of_served(conn, here).map_err(sqlite_err)? else {
        return Ok(());
    };
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(sqlite_err)?;
    Err(super::OpenError::CopyOfServed {
        path: path.to_owned(),
        original: original.path,
        by: original.by,
    })
}

fn remove(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE name = ?1")?
        .execute([name])
        .map(|_| ())
}

/// At a writable open of the database file (not refused): removes the marks of processes
/// gone and, with no -wal beside it (`wal_beside` false: no process serves it), every
/// mark. A mark of a process alive is kept wherever it was made: the same file reached
/// through another path (a bind mount) is served by it. So is one of a process that
/// cannot be looked up from here (another PID namespace): an open that can see it (on the
/// host) may still tell this file for a copy of one served.
pub fn forget_gone(conn: &Connection, wal_beside: bool) -> rusqlite::Result<()> {
    let this = Process::this();
    for (name, _) in marks(conn)? {
        let gone = match (Process::from_mark(&name), &this) {
            (Some(process), Some(this)) => process.alive(this) == Some(false),
            (None, _) => true,
            (Some(_), None) => false,
        };
        if gone || !wal_beside {
            remove(conn, &name)?;
        }
    }
    Ok(())
}

/// Marks this process as serving the database file at `place` (from `now_ms`).
pub fn mark(conn: &Connection, now_ms: i64, place: &Place) -> rusqlite::Result<()> {
    let Some(this) = Process::this() else {
        return Ok(());
    };
    conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
        .execute([this.mark_name(), place.value(now_ms)])
        .map(|_| ())
}

/// A clean stop: removes this process's mark, and every other one this process cannot see
/// alive (a killed oauthd's in another PID namespace would stay for good otherwise, and
/// make a whole copy of the file look like one made while it was served).
pub fn unmark(conn: &Connection) -> rusqlite::Result<()> {
    let Some(this) = Process::this() else {
        return Ok(());
    };
    for (name, _) in marks(conn)? {
        let alive_elsewhere = name != this.mark_name()
            && Process::from_mark(&name).and_then(|p| p.alive(&this)) == Some(true);
        if !alive_elsewhere {
            remove(conn, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_one_restarted_or_from_another_boot_is_not() {
        let here = Process::this().expect("/proc tells this process");
        assert_eq!(Process::from_mark(&here.mark_name()), Some(here.clone()));
        assert_eq!(here.alive(&here), Some(true));
        let restarted = Process {
            started: format!("{}0", here.started),
            ..here.clone()
        };
        assert_eq!(
            restarted.alive(&here),
            Some(false),
            "the same PID, another process"
        );
        let rebooted = Process {
            boot: "another-boot".into(),
            ..here.clone()
        };
        assert_eq!(rebooted.alive(&here), Some(false));
        let elsewhere = Process {
            pid_namespace: "1".into(),
            pid: u32::MAX,
            ..here.clone()
        };
        assert_eq!(elsewhere.alive(&here), None, "another PID namespace");
        assert_eq!(Process::from_mark("serving:a:b:notapid:c"), None);
        assert_eq!(Process::from_mark("serving:a:b:1:c:d"), None);
    }

    fn meta() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        conn
    }

    fn place(path: &str) -> Place {
        Place {
            device: 1,
            inode: 2,
            path: path.into(),
        }
    }

    /// Adds the mark of another process: gone, or in another PID namespace.
    fn other_mark(conn: &Connection, at: &Place, gone: bool) -> String {
        let here = Process::this().unwrap();
        let other = if gone {
            Process {
                started: format!("{}0", here.started),
                ..here
            }
        } else {
            Process {
                pid_namespace: "1".into(),
                ..here
            }
        };
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)",
            [other.mark_name(), at.value(1_000)],
        )
        .unwrap();
        other.mark_name()
    }

    fn names(conn: &Connection) -> Vec<String> {
        marks(conn).unwrap().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn a_file_without_its_wal_is_told_by_a_mark_made_elsewhere_only() {
        let conn = meta();
        let here = place("/srv/oauthd.db");
        assert_eq!(without_its_wal(&conn, Some(&here)).unwrap(), None);
        // Made here, by a process gone or one that cannot be looked up: its -wal was
        // merged into this file.
        other_mark(&conn, &here, true);
        other_mark(&conn, &here, false);
        mark(&conn, 2_000, &here).unwrap();
        assert_eq!(without_its_wal(&conn, Some(&here)).unwrap(), None);
        // The same file copied, or moved.
        for elsewhere in [
            place("/backups/oauthd.db"),
            Place {
                inode: 3,
                ..here.clone()
            },
        ] {
            let told = without_its_wal(&conn, Some(&elsewhere)).unwrap().unwrap();
            assert_eq!(told.since_ms, 1_000);
        }
        assert!(without_its_wal(&conn, None).unwrap().is_some());
    }

    #[test]
    fn an_open_forgets_marks_gone_and_all_without_a_wal() {
        let conn = meta();
        let here = place("/srv/oauthd.db");
        mark(&conn, 2_000, &here).unwrap();
        let this = Process::this().unwrap().mark_name();
        other_mark(&conn, &here, true);
        let unseen = other_mark(&conn, &here, false);
        let copied = meta();
        mark(&copied, 2_000, &place("/elsewhere/oauthd.db")).unwrap();
        // With the -wal beside it: the gone one goes, what cannot be looked up stays.
        forget_gone(&conn, true).unwrap();
        let mut left = names(&conn);
        left.sort();
        let mut expected = vec![this.clone(), unseen];
        expected.sort();
        assert_eq!(left, expected);
        // Made elsewhere by a process alive (this file through another path, or its
        // original, which the open refuses while it is in place): kept.
        forget_gone(&copied, true).unwrap();
        assert_eq!(names(&copied), [this]);
        // No -wal: nothing serves the file.
        forget_gone(&conn, false).unwrap();
        assert!(names(&conn).is_empty());
    }

    #[test]
    fn a_copy_is_told_by_a_live_process_mark_on_an_original_still_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let original_path = dir.path().join("oauthd.db");
        std::fs::write(&original_path, b"db").unwrap();
        let copy_path = dir.path().join("copy.db");
        std::fs::write(&copy_path, b"db").unwrap();
        let (original, copy) = (
            Place::of(&original_path).unwrap(),
            Place::of(&copy_path).unwrap(),
        );
        let conn = meta();
        // Marked by this process (alive) in the original: the copy is told, the
        // original (under any path) is not.
        mark(&conn, 2_000, &original).unwrap();
        let told = copy_of_served(&conn, Some(&copy)).unwrap().unwrap();
        assert_eq!(told.path, original.path);
        assert_eq!(told.by, format!(" by oauthd (pid {})", std::process::id()));
        assert_eq!(copy_of_served(&conn, Some(&original)).unwrap(), None);
        let linked = Place {
            path: "/another/path/to/it.db".into(),
            ..original.clone()
        };
        assert_eq!(copy_of_served(&conn, Some(&linked)).unwrap(), None);
        // A process gone, or one that cannot be looked up: nothing tells.
        let gone = meta();
        other_mark(&gone, &original, true);
        let unseen = other_mark(&gone, &original, false);
        assert_eq!(copy_of_served(&gone, Some(&copy)).unwrap(), None);
        // An open of the copy forgets the mark of the process gone, and keeps the one it
        // cannot look up while the original is in place (an open on the host may).
        forget_gone(&gone, true).unwrap();
        assert_eq!(names(&gone), [unseen]);
        // The original no longer there (moved).
        std::fs::remove_file(&original_path).unwrap();
        assert_eq!(copy_of_served(&conn, Some(&copy)).unwrap(), None);
    }

    #[test]
    fn a_clean_stop_takes_its_mark_and_those_it_cannot_see_alive() {
        let conn = meta();
        let here = place("/srv/oauthd.db");
        mark(&conn, 2_000, &here).unwrap();
        other_mark(&conn, &here, true);
        other_mark(&conn, &here, false);
        unmark(&conn).unwrap();
        assert!(names(&conn).is_empty());
        assert_eq!(
            Place::from_value(&place("/a b/oauthd.db").value(5)),
            (5, Some(place("/a b/oauthd.db")))
        );
    }
}

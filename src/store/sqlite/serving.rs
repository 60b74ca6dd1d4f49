//! Marks of the `oauthd serve` processes that have the database open, kept in `meta` as
//! `serving:<boot>:<pid namespace>:<pid>:<start time>` (the value: since when, and the
//! file's device, inode and path) and checkpointed into the database file as each starts.
//! What oauthd writes stays in the `-wal` file until a checkpoint, so a copy of the
//! database file made without it while oauthd serves (or after oauthd was killed) is an
//! older database that opened without a word. One that has no `-wal` beside it and holds
//! a mark of a process still there, or made in another file or place, is refused instead
//! (`OpenError::CopiedWithoutWal`). A killed oauthd's file in its place, its `-wal` merged
//! into it by another program since (an `sqlite3` shell), is whole and opens.
//!
//! A clean stop removes its process's mark (and the last connection's close then merges
//! the `-wal` into the file and deletes it). The marks of processes that are gone (killed,
//! or from before a reboot) are removed by the next oauthd that opens the database.
//! `oauthd backup` and `restore` leave every mark out of what they copy.

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

    /// Whether the process a mark names is gone, seen from `here`. One in another PID
    /// namespace (an oauthd in a container, this command run on the host) cannot be looked
    /// up: it is taken to be there.
    fn gone(&self, here: &Process) -> bool {
        if self.boot != here.boot {
            return true;
        }
        if self.pid_namespace != here.pid_namespace {
            return false;
        }
        start_time(self.pid).is_none_or(|started| started != self.started)
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

fn has_meta(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'")?
        .exists([])
}

fn marks(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    if !has_meta(conn)? {
        return Ok(Vec::new());
    }
    conn.prepare_cached(
        "SELECT name, value FROM meta WHERE name >= 'serving:' AND name < 'serving;'",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// For a database file with no `-wal` beside it, at `here`: the first mark of a process
/// still there (whose writes are in a -wal elsewhere), or one made in another file or
/// place (a copy, or a move, without the -wal). `None`: no mark, or only marks of
/// processes gone that served this file here, whose -wal another program merged into it.
pub fn without_its_wal(
    conn: &Connection,
    here: Option<&Place>,
) -> rusqlite::Result<Option<Served>> {
    let this = Process::this();
    for (name, value) in marks(conn)? {
        let process = Process::from_mark(&name);
        let there = match (&process, &this) {
            (Some(process), Some(this)) => !process.gone(this),
            _ => true,
        };
        let (since_ms, made_at) = Place::from_value(&value);
        if there || made_at.is_none() || made_at.as_ref() != here {
            return Ok(Some(Served {
                since_ms,
                pid: process.map(|p| p.pid),
            }));
        }
    }
    Ok(None)
}

/// Removes the marks of processes that are gone. Run where the database is opened in its
/// place (its `-wal` beside it), which has what they wrote.
pub fn forget_gone(conn: &Connection) -> rusqlite::Result<()> {
    let Some(here) = Process::this() else {
        return Ok(());
    };
    if !has_meta(conn)? {
        return Ok(());
    }
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM meta WHERE name >= 'serving:' AND name < 'serving;'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in names {
        if Process::from_mark(&name).is_none_or(|p| p.gone(&here)) {
            conn.prepare_cached("DELETE FROM meta WHERE name = ?1")?
                .execute([&name])?;
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

/// Removes this process's mark (a clean stop).
pub fn unmark(conn: &Connection) -> rusqlite::Result<()> {
    let Some(this) = Process::this() else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM meta WHERE name = ?1")?
        .execute([this.mark_name()])
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_there_and_one_gone_or_from_another_boot_is_not() {
        let here = Process::this().expect("/proc tells this process");
        assert_eq!(Process::from_mark(&here.mark_name()), Some(here.clone()));
        assert!(!here.gone(&here));
        let restarted = Process {
            started: format!("{}0", here.started),
            ..here.clone()
        };
        assert!(restarted.gone(&here), "the same PID, another process");
        let rebooted = Process {
            boot: "another-boot".into(),
            ..here.clone()
        };
        assert!(rebooted.gone(&here));
        let elsewhere = Process {
            pid_namespace: "1".into(),
            pid: u32::MAX,
            ..here.clone()
        };
        assert!(
            !elsewhere.gone(&here),
            "another PID namespace cannot be looked up"
        );
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

    fn gone_mark(conn: &Connection, at: &Place) {
        let here = Process::this().unwrap();
        let gone = Process {
            started: format!("{}0", here.started),
            ..here
        };
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?1, ?2)",
            [gone.mark_name(), at.value(1_000)],
        )
        .unwrap();
    }

    #[test]
    fn a_file_without_its_wal_is_told_by_a_live_mark_or_one_made_elsewhere() {
        let conn = meta();
        let here = place("/srv/oauthd.db");
        assert_eq!(without_its_wal(&conn, Some(&here)).unwrap(), None);
        // A killed oauthd's, made here: its -wal was merged into this file.
        gone_mark(&conn, &here);
        assert_eq!(without_its_wal(&conn, Some(&here)).unwrap(), None);
        // The same, seen in a copy or after a move.
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
        // A mark of a process still there, wherever it was made.
        forget_gone(&conn).unwrap();
        mark(&conn, 2_000, &here).unwrap();
        let told = without_its_wal(&conn, Some(&here)).unwrap().unwrap();
        assert_eq!(
            told,
            Served {
                since_ms: 2_000,
                pid: Some(std::process::id())
            }
        );
        unmark(&conn).unwrap();
        assert_eq!(without_its_wal(&conn, Some(&here)).unwrap(), None);
    }

    #[test]
    fn marks_of_processes_gone_are_forgotten_and_this_ones_kept() {
        let conn = meta();
        let here = place("/srv/oauthd.db");
        mark(&conn, 2_000, &here).unwrap();
        gone_mark(&conn, &here);
        assert_eq!(marks(&conn).unwrap().len(), 2);
        forget_gone(&conn).unwrap();
        let left = marks(&conn).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, Process::this().unwrap().mark_name());
        assert_eq!(Place::from_value(&left[0].1), (2_000, Some(here.clone())));
    }
}

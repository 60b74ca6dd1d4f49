//! Live states per namespace (`namespace_counts`, what the per-namespace cap is checked
//! against), kept by the writer: each job says how many states of which namespace it added
//! or removed, and the group's changes are written with one upsert per namespace just
//! before its commit. Until schema 8 two triggers did this on every insert and delete of a
//! state, which was an eighth of the instructions of a create + consume pair
//! (bench/README.md).
//!
//! Every change to `states` goes through the writer of some oauthd process, each of which
//! keeps the counts the same way in the same transaction as its change, so the table stays
//! exact. A state written to the file by other means (the `sqlite3` shell, an oauthd from
//! before schema 8 still running on the file) is not counted; a count is never written
//! below zero.
//!
//! Two rows no namespace can be named keep the store's totals (schema 9): the live states
//! of all namespaces together, and the tombstones kept for expired states. Rows named
//! `*key:<id>` keep the live states each API key created (schema 18).

use rusqlite::{params, Connection, OptionalExtension};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Deref;

/// The row of all namespaces' live states together (a namespace starts with a letter or
/// digit, so none is named so).
const ALL_STATES: &str = "*states";
/// The row of tombstones kept for expired states (`expired_states`).
const TOMBSTONES: &str = "*tombstones";
/// The start of the row of one API key's live states: `*key:` and the key's id.
const BY_KEY: &str = "*key:";

/// The row of the live states the API key `id` created.
fn key_row(id: &str) -> String {
    let mut row = String::with_capacity(BY_KEY.len() + id.len());
    row.push_str(BY_KEY);
    row.push_str(id);
    row
}

/// One namespace's count in the open transaction.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    /// As stored when the transaction first needed it (`None`: not read).
    stored: Option<i64>,
    /// Added (or, negative, removed) by this transaction's jobs so far.
    change: i64,
}

/// The counts the open transaction changed or read.
#[derive(Debug, Clone, Default)]
pub struct LiveCounts {
    namespaces: HashMap<String, Count>,
}

impl LiveCounts {
    /// Live states of `namespace` as this transaction leaves them so far. The stored count
    /// is read once per transaction: nothing else writes it while the writer holds the
    /// write lock.
    fn live(&mut self, conn: &Connection, namespace: &str) -> rusqlite::Result<i64> {
        if let Some(Count {
            stored: Some(stored),
            change,
        }) = self.namespaces.get(namespace)
        {
            return Ok(stored + change);
        }
        let stored: i64 = conn
            .prepare_cached("SELECT live FROM namespace_counts WHERE namespace = ?1")?
            .query_row([namespace], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let count = self.namespaces.entry(namespace.to_owned()).or_default();
        count.stored = Some(stored);
        Ok(stored + count.change)
    }

    /// `change` states of `namespace` added (negative: removed), created by the API key
    /// `by` (`None`: oauthd's own).
    fn add(&mut self, namespace: &str, by: Option<&str>, change: i64) {
        self.bump(namespace, change);
        self.bump(ALL_STATES, change);
        if let Some(id) = by {
            self.bump(&key_row(id), change);
        }
    }

    fn bump(&mut self, namespace: &str, change: i64) {
        if change == 0 {
            return;
        }
        match self.namespaces.get_mut(namespace) {
            Some(count) => count.change += change,
            None => {
                self.namespaces.insert(
                    namespace.to_owned(),
                    Count {
                        stored: None,
                        change,
                    },
                );
            }
        }
    }

    /// Writes the transaction's changes (inside it, just before its commit). A namespace
    /// whose count may have come down to zero is noted in `emptied`: the sweeper deletes
    /// its row if it is still at zero then (apps may make up namespaces freely, and a row
    /// kept for each would grow the file for good; deleting it here, at every group that
    /// empties a namespace, cost a quarter more instructions per create + consume pair).
    pub fn write(&mut self, conn: &Connection, emptied: &RefCell<Emptied>) -> rusqlite::Result<()> {
        for (namespace, count) in self.namespaces.drain() {
            if count.change == 0 {
                continue;
            }
            // Never below zero: a count some other writer left too low must not give a
            // namespace room above its cap for good.
            conn.prepare_cached(
                "INSERT INTO namespace_counts (namespace, live) VALUES (?1, max(?2, 0))
                 ON CONFLICT (namespace) DO UPDATE SET live = max(live + ?2, 0)",
            )?
            .execute(params![namespace, count.change])?;
            let may_be_empty = count.change < 0
                && count.stored.is_none_or(|stored| stored + count.change <= 0)
                && namespace != ALL_STATES
                && namespace != TOMBSTONES;
            if may_be_empty {
                emptied.borrow_mut().note(namespace);
            }
        }
        Ok(())
    }
}

/// Namespaces whose count may have come down to zero since the sweeper last came by (at
/// most `MAX_EMPTIED`). Past that, and after each open (rows earlier versions left at
/// zero), `overflowed` has the sweeper look for zero rows in the table instead, a batch
/// at a time.
#[derive(Debug, Default)]
pub struct Emptied {
    names: HashSet<String>,
    overflowed: bool,
}

/// Most namespaces `Emptied` notes.
const MAX_EMPTIED: usize = 100_000;

impl Emptied {
    /// As a fresh connection starts: zero rows may be in the table already.
    pub fn after_open() -> Self {
        Emptied {
            names: HashSet::new(),
            overflowed: true,
        }
    }

    fn note(&mut self, namespace: String) {
        if self.names.len() < MAX_EMPTIED {
            self.names.insert(namespace);
        } else {
            self.overflowed = true;
        }
    }
}

/// Counts the store's totals afresh from the tables. A process from before schema 9 on
/// the same file keeps the namespaces' counts but not these, and a total left too high
/// would refuse every create for good, so each open counts them again (an index-only
/// count: milliseconds for a few hundred thousand states). (Rows earlier versions left at
/// zero go with the sweeper, a batch at a time: see `Emptied::after_open`.)
///
/// With `keys`, the keys' and the namespaces' rows too (`oauthd serve`'s open: index-only
/// counts through `states_created_by` and `states_namespace_expires`): a count left too
/// high (rows deleted by hand, a database recovered with `sqlite3 .recover`) would refuse
/// that key's or that namespace's creates for good.
pub fn recount_totals(conn: &Connection, keys: bool) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         INSERT OR REPLACE INTO namespace_counts (namespace, live)
             SELECT '{ALL_STATES}', count(*) FROM states;
         INSERT OR REPLACE INTO namespace_counts (namespace, live)
             SELECT '{TOMBSTONES}', count(*) FROM expired_states;
         COMMIT;"
    ))?;
    // In a transaction of its own: whatever befalls it leaves the totals counted.
    if keys {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             DELETE FROM namespace_counts WHERE namespace >= '{BY_KEY}' AND namespace < '*key;';
             INSERT INTO namespace_counts (namespace, live)
                 SELECT '{BY_KEY}' || created_by, count(*) FROM states
                 WHERE created_by IS NOT NULL GROUP BY created_by;
             DELETE FROM namespace_counts WHERE substr(namespace, 1, 1) <> '*';
             INSERT INTO namespace_counts (namespace, live)
                 SELECT namespace, count(*) FROM states INDEXED BY states_namespace_expires
                 GROUP BY namespace;
             COMMIT;"
        ))?;
    }
    Ok(())
}

/// The live states of all namespaces together, as counted (expired states the sweeper has
/// not reached yet included).
pub fn stored_total(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT live FROM namespace_counts WHERE namespace = ?1",
        [ALL_STATES],
        |r| r.get(0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}

/// The writer's connection inside a group transaction, with the transaction's counts. It
/// derefs to the connection, so a job runs its statements on it as on a `Connection`.
pub struct Tx<'a> {
    conn: &'a Connection,
    counts: &'a RefCell<LiveCounts>,
    emptied: &'a RefCell<Emptied>,
}

impl<'a> Tx<'a> {
    pub fn new(
        conn: &'a Connection,
        counts: &'a RefCell<LiveCounts>,
        emptied: &'a RefCell<Emptied>,
    ) -> Tx<'a> {
        Tx {
            conn,
            counts,
            emptied,
        }
    }

    /// Writes the transaction's counts (just before its commit).
    pub fn write_counts(&self) -> rusqlite::Result<()> {
        self.counts.borrow_mut().write(self.conn, self.emptied)
    }

    /// Deletes the rows of at most `at_most` namespaces noted as emptied that are still at
    /// zero (the sweeper's, in its transaction), or, when the notes overflowed, of that
    /// many zero rows found in the table. Returns how many went.
    pub fn forget_emptied_namespaces(&self, at_most: usize) -> rusqlite::Result<usize> {
        let noted: Vec<String> = self
            .emptied
            .borrow()
            .names
            .iter()
            .take(at_most)
            .cloned()
            .collect();
        if noted.is_empty() {
            return self.forget_zero_rows(at_most);
        }
        let mut gone = 0;
        for namespace in noted {
            // This transaction's own changes are written at its end: a namespace it
            // counts stays noted for the next time.
            if self.counts.borrow().namespaces.contains_key(&namespace) {
                continue;
            }
            gone += self
                .conn
                .prepare_cached("DELETE FROM namespace_counts WHERE namespace = ?1 AND live = 0")?
                .execute([&namespace])?;
            self.emptied.borrow_mut().names.remove(&namespace);
        }
        Ok(gone)
    }

    /// Zero rows found in the table, `at_most` at a time, while the notes overflowed.
    fn forget_zero_rows(&self, at_most: usize) -> rusqlite::Result<usize> {
        if !self.emptied.borrow().overflowed {
            return Ok(0);
        }
        let limit = i64::try_from(at_most).unwrap_or(i64::MAX);
        let gone = self
            .conn
            .prepare_cached(&format!(
                "DELETE FROM namespace_counts WHERE namespace IN
                 (SELECT namespace FROM namespace_counts
                  WHERE live = 0 AND namespace NOT IN ('{ALL_STATES}', '{TOMBSTONES}') LIMIT ?1)"
            ))?
            .execute([limit])?;
        if gone < at_most {
            self.emptied.borrow_mut().overflowed = false;
        }
        Ok(gone)
    }

    /// Live states of `namespace`, this transaction's changes included.
    pub fn live_states(&self, namespace: &str) -> rusqlite::Result<i64> {
        self.counts.borrow_mut().live(self.conn, namespace)
    }

    /// Live states the API key `id` created, this transaction's changes included.
    pub fn key_live_states(&self, id: &str) -> rusqlite::Result<i64> {
        self.counts.borrow_mut().live(self.conn, &key_row(id))
    }

    /// Live states of all namespaces together, this transaction's changes included.
    pub fn all_live_states(&self) -> rusqlite::Result<i64> {
        self.counts.borrow_mut().live(self.conn, ALL_STATES)
    }

    /// Tombstones kept for expired states, this transaction's changes included.
    pub fn tombstones(&self) -> rusqlite::Result<i64> {
        self.counts.borrow_mut().live(self.conn, TOMBSTONES)
    }

    /// `change` states of `namespace` that the API key `by` created (`None`: oauthd's
    /// own) were added (negative: removed) by a statement that succeeded.
    pub fn states_changed(&self, namespace: &str, by: Option<&str>, change: i64) {
        self.counts.borrow_mut().add(namespace, by, change);
    }

    /// `change` tombstones were added (negative: removed) by a statement that succeeded.
    pub fn tombstones_changed(&self, change: i64) {
        self.counts.borrow_mut().bump(TOMBSTONES, change);
    }

    /// The counts as they are now, to put back with `restore` when a job's savepoint is
    /// rolled back.
    pub fn snapshot(&self) -> LiveCounts {
        self.counts.borrow().clone()
    }

    pub fn restore(&self, counts: LiveCounts) {
        *self.counts.borrow_mut() = counts;
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The stored counts, by namespace.
    pub fn stored(conn: &Connection) -> Vec<(String, i64)> {
        conn.prepare("SELECT namespace, live FROM namespace_counts ORDER BY namespace")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_keys_states_are_counted_in_a_row_of_its_own_that_goes_once_at_zero() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE namespace_counts (namespace TEXT PRIMARY KEY, live INTEGER NOT NULL);
             INSERT INTO namespace_counts VALUES ('*key:k1', 2);",
        )
        .unwrap();
        let counts = RefCell::new(LiveCounts::default());
        let emptied = RefCell::new(Emptied::default());
        let tx = Tx::new(&conn, &counts, &emptied);
        tx.states_changed("a", Some("k1"), 1);
        tx.states_changed("b", Some("k1"), 1);
        tx.states_changed("b", Some("k2"), 1);
        tx.states_changed("b", None, 1);
        assert_eq!(tx.key_live_states("k1").unwrap(), 4);
        assert_eq!(tx.key_live_states("k2").unwrap(), 1);
        assert_eq!(tx.key_live_states("k3").unwrap(), 0);
        assert_eq!(tx.live_states("b").unwrap(), 3);
        assert_eq!(tx.all_live_states().unwrap(), 4);
        tx.write_counts().unwrap();
        let written = vec![
            ("*key:k1".into(), 4),
            ("*key:k2".into(), 1),
            ("*states".into(), 4),
            ("a".into(), 1),
            ("b".into(), 3),
        ];
        assert_eq!(stored(&conn), written);
        tx.states_changed("b", Some("k2"), -1);
        tx.write_counts().unwrap();
        assert_eq!(tx.forget_emptied_namespaces(10).unwrap(), 1);
        assert_eq!(tx.key_live_states("k2").unwrap(), 0);
        assert!(!stored(&conn).iter().any(|(row, _)| row == "*key:k2"));
    }

    #[test]
    fn changes_are_written_once_per_namespace_on_top_of_what_is_stored() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE namespace_counts (namespace TEXT PRIMARY KEY, live INTEGER NOT NULL);
             INSERT INTO namespace_counts VALUES ('a', 5), ('*states', 5);",
        )
        .unwrap();
        let counts = RefCell::new(LiveCounts::default());
        let emptied = RefCell::new(Emptied::default());
        let tx = Tx::new(&conn, &counts, &emptied);
        tx.states_changed("a", None, 1);
        assert_eq!(tx.live_states("a").unwrap(), 6);
        tx.states_changed("a", None, -3);
        assert_eq!(tx.live_states("a").unwrap(), 3);
        tx.states_changed("b", None, 2);
        assert_eq!(tx.live_states("b").unwrap(), 2);
        let before = tx.snapshot();
        tx.states_changed("b", None, 7);
        tx.restore(before);
        assert_eq!(tx.live_states("b").unwrap(), 2);
        assert_eq!(tx.live_states("c").unwrap(), 0);

        assert_eq!(tx.all_live_states().unwrap(), 5);
        tx.tombstones_changed(4);
        tx.tombstones_changed(-1);
        assert_eq!(tx.tombstones().unwrap(), 3);

        tx.write_counts().unwrap();
        let written = vec![
            ("*states".into(), 5),
            ("*tombstones".into(), 3),
            ("a".into(), 3),
            ("b".into(), 2),
        ];
        assert_eq!(stored(&conn), written);
        assert!(counts.borrow().namespaces.is_empty());

        // A count left too low by another writer is never written below zero, and a
        // namespace left without live states keeps no row once the sweeper came by (the
        // totals keep theirs).
        tx.states_changed("a", None, -5);
        tx.states_changed("z", None, -2);
        tx.states_changed("b", None, -1);
        tx.write_counts().unwrap();
        assert_eq!(stored(&conn).len(), 5);
        tx.states_changed("b", None, 1);
        tx.write_counts().unwrap();
        // Noted: a, z and b (b's count was not read when it went down); one at a time.
        let gone: usize = (0..3)
            .map(|_| tx.forget_emptied_namespaces(1).unwrap())
            .sum();
        assert_eq!(gone, 2);
        let floor = vec![
            ("*states".into(), 1),
            ("*tombstones".into(), 3),
            ("b".into(), 2),
        ];
        assert_eq!(stored(&conn), floor);
        assert_eq!(tx.live_states("a").unwrap(), 0);
        assert_eq!(tx.forget_emptied_namespaces(10).unwrap(), 0, "noted once");

        // After an open, zero rows already in the table are looked for, a batch at a time.
        conn.execute_batch(
            "INSERT INTO namespace_counts VALUES ('old1', 0), ('old2', 0), ('old3', 0)",
        )
        .unwrap();
        *emptied.borrow_mut() = Emptied::after_open();
        assert_eq!(tx.forget_emptied_namespaces(2).unwrap(), 2);
        assert_eq!(tx.forget_emptied_namespaces(2).unwrap(), 1);
        assert_eq!(
            tx.forget_emptied_namespaces(2).unwrap(),
            0,
            "found none: done"
        );
        assert_eq!(stored(&conn), floor);

        // A total's row someone deleted is written afresh.
        conn.execute_batch("DELETE FROM namespace_counts WHERE namespace = '*states'")
            .unwrap();
        tx.states_changed("b", None, 1);
        tx.write_counts().unwrap();
        let afresh = vec![
            ("*states".into(), 1),
            ("*tombstones".into(), 3),
            ("b".into(), 3),
        ];
        assert_eq!(stored(&conn), afresh);
    }
}

//! A copy of oauthd's database that lost its schema version: `sqlite3 .dump` does not carry
//! SQLite's `user_version`, so a database restored from a dump holds oauthd's tables with
//! version 0. Its version is the one whose schema files make exactly the schema it holds.

use rusqlite::Connection;
use std::collections::BTreeSet;

/// Every table, index, trigger and view, as SQLite keeps their definitions.
fn schema(conn: &Connection) -> rusqlite::Result<BTreeSet<(String, String, Option<String>)>> {
    conn.prepare("SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

/// The number of `migrations` (applied in order to an empty database) that make exactly
/// the schema `conn` holds, newest first; `None` when none does.
pub(super) fn version_of_schema(
    conn: &Connection,
    migrations: &[&str],
) -> rusqlite::Result<Option<i64>> {
    let held = schema(conn)?;
    let made = Connection::open_in_memory()?;
    let mut found = None;
    for (index, sql) in migrations.iter().enumerate() {
        made.execute_batch(sql)?;
        if schema(&made)? == held {
            found = Some(index as i64 + 1);
        }
    }
    Ok(found)
}

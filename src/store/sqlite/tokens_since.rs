//! What a restore undoes that the operator cannot see: the refresh tokens stored since
//! the copy was made (a provider that rotates refresh tokens, SmartThings, Microsoft,
//! oidc-provider, has replaced the copy's by then, and answers the old one with
//! `invalid_grant`, often revoking the grant with it: those connections need connecting
//! again), and the API keys revoked since (active again).

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The names of the API keys revoked in `replaced` (the database a restore moved aside)
/// that are active in `restored` (the copy now in place): revoked since the copy was made,
/// and active again. Read as `refresh_tokens_changed` reads.
pub fn keys_revoked_since(restored: &Path, replaced: &Path) -> Result<Vec<String>, String> {
    let Some(conn) = both(restored, replaced)? else {
        return Ok(Vec::new());
    };
    names(
        &conn,
        "SELECT k.name FROM restored.api_keys k \
         JOIN replaced.api_keys r ON r.id = k.id \
         WHERE k.revoked_at IS NULL AND r.revoked_at IS NOT NULL ORDER BY k.name",
    )
}

/// The names of the API keys active in `replaced` that `restored` does not hold: made
/// since the copy was made, and gone with the restore (their apps get 401 until made
/// again).
pub fn keys_made_since(restored: &Path, replaced: &Path) -> Result<Vec<String>, String> {
    let Some(conn) = both(restored, replaced)? else {
        return Ok(Vec::new());
    };
    names(
        &conn,
        "SELECT r.name FROM replaced.api_keys r \
         WHERE r.revoked_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM restored.api_keys k WHERE k.id = r.id) \
         ORDER BY r.name",
    )
}

/// The first column of `sql`'s rows, as text.
fn names(conn: &Connection, sql: &str) -> Result<Vec<String>, String> {
    let mut query = conn.prepare(sql).map_err(|e| e.to_string())?;
    let names = query
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| e.to_string());
    names
}

/// A connection with `restored` and `replaced` attached under those names; `None` when
/// `replaced` is not there. Nobody has either open (oauthd is stopped, the restore has
/// just put `restored` in place and moved `replaced` aside), so each is read as immutable,
/// which makes no `-wal` or `-shm` file beside it; `replaced` read-only instead when a
/// `-wal` or `-journal` with something in it was moved aside with it (immutable would not
/// read it).
fn both(restored: &Path, replaced: &Path) -> Result<Option<Connection>, String> {
    if !replaced.is_file() {
        return Ok(None);
    }
    let written = ["-wal", "-journal"].iter().any(|suffix| {
        let mut file = replaced.as_os_str().to_owned();
        file.push(suffix);
        std::fs::symlink_metadata(file).is_ok_and(|m| m.len() > 0)
    });
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(":memory:", flags).map_err(|e| e.to_string())?;
    for (path, query, name) in [
        (restored, "immutable=1", "restored"),
        (
            replaced,
            if written { "mode=ro" } else { "immutable=1" },
            "replaced",
        ),
    ] {
        let uri = super::file_uri(path, query)?;
        conn.execute(&format!("ATTACH DATABASE ?1 AS {name}"), [uri.as_str()])
            .map_err(|e| e.to_string())?;
    }
    Ok(Some(conn))
}

/// The connections (`provider/account`) whose stored refresh token in `replaced` (the
/// database a restore moved aside) is not the one in `restored` (the copy now in place):
/// refreshed with a new refresh token, connected again, or sealed again (`rekey`) since
/// the copy was made. Both are only read, and nothing is made beside `restored` (a `-wal`
/// or `-shm` file of root's would keep the service's user from opening it): nobody has it
/// open, so it is read as immutable. None when nothing was moved aside but `-wal` files.
/// `same(provider, account, restored, replaced)` says of two stored values that differ
/// whether they hold one token all the same (sealed again by a `rekey`): those are left out.
pub fn refresh_tokens_changed(
    restored: &Path,
    replaced: &Path,
    same: impl Fn(&str, &str, &[u8], &[u8]) -> bool,
) -> Result<Vec<String>, String> {
    let Some(conn) = both(restored, replaced)? else {
        return Ok(Vec::new());
    };
    let mut changed = conn
        .prepare(
            "SELECT c.provider, c.account, c.refresh_token, r.refresh_token \
             FROM restored.connections c \
             JOIN replaced.connections r ON r.provider = c.provider AND r.account = c.account \
             WHERE c.refresh_token IS NOT NULL AND r.refresh_token IS NOT c.refresh_token \
             ORDER BY c.provider, c.account",
        )
        .map_err(|e| e.to_string())?;
    let rows = changed
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for row in rows {
        let (provider, account, mine, theirs) = row.map_err(|e| e.to_string())?;
        if theirs.is_some_and(|theirs| same(&provider, &account, &mine, &theirs)) {
            continue;
        }
        names.push(format!("{provider}/{account}"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with one connection whose refresh token is `token`.
    fn with_token(path: &Path, token: &[u8]) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE connections (provider TEXT, account TEXT, refresh_token BLOB)",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO connections VALUES ('p', 'a', ?1)",
            [token.to_vec()],
        )
        .unwrap();
    }

    #[test]
    fn names_with_uri_characters_are_the_files_they_name() {
        let dir = tempfile::tempdir().unwrap();
        // `%41` is "A" to a URI that is not escaped: another file, which holds the same
        // token as the copy and would hide the change.
        let restored = dir.path().join("restored%41?#.db");
        let replaced = dir.path().join("replaced%41.db");
        with_token(&restored, b"old");
        with_token(&replaced, b"new");
        with_token(&dir.path().join("replacedA.db"), b"old");
        let never = |_: &str, _: &str, _: &[u8], _: &[u8]| false;
        let changed = refresh_tokens_changed(&restored, &replaced, never).unwrap();
        assert_eq!(changed, ["p/a"]);
        // Nothing moved aside but -wal files: nothing to compare.
        let none = refresh_tokens_changed(&restored, &dir.path().join("gone.db"), never).unwrap();
        assert!(none.is_empty());
        // Told they hold one token (sealed again), it is not named.
        let same = |p: &str, a: &str, mine: &[u8], theirs: &[u8]| {
            (p, a, mine, theirs) == ("p", "a", b"old".as_slice(), b"new".as_slice())
        };
        assert!(refresh_tokens_changed(&restored, &replaced, same)
            .unwrap()
            .is_empty());
    }
}

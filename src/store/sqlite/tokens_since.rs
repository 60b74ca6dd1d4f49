//! What a restore undoes that the operator cannot see: the refresh tokens stored since
//! the copy was made. A provider that rotates refresh tokens (SmartThings, Microsoft,
//! oidc-provider) has replaced the copy's by then, and answers the old one with
//! `invalid_grant`, often revoking the grant with it: those connections need connecting
//! again.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The connections (`provider/account`) whose stored refresh token in `replaced` (the
/// database a restore moved aside) is not the one in `restored` (the copy now in place):
/// refreshed with a new refresh token, connected again, or sealed again (`rekey`) since
/// the copy was made. Both are only read, and nothing is made beside `restored` (a `-wal`
/// or `-shm` file of root's would keep the service's user from opening it): nobody has it
/// open, so it is read as immutable. None when nothing was moved aside but `-wal` files.
pub fn refresh_tokens_changed(restored: &Path, replaced: &Path) -> Result<Vec<String>, String> {
    if !replaced.is_file() {
        return Ok(Vec::new());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(":memory:", flags).map_err(|e| e.to_string())?;
    for (path, query, name) in [
        (restored, "immutable=1", "restored"),
        (replaced, "mode=ro", "replaced"),
    ] {
        let mut uri = url::Url::parse("file:///").map_err(|e| e.to_string())?;
        uri.set_path(&path.to_string_lossy());
        uri.set_query(Some(query));
        conn.execute(&format!("ATTACH DATABASE ?1 AS {name}"), [uri.as_str()])
            .map_err(|e| e.to_string())?;
    }
    let mut changed = conn
        .prepare(
            "SELECT c.provider, c.account FROM restored.connections c \
             JOIN replaced.connections r ON r.provider = c.provider AND r.account = c.account \
             WHERE c.refresh_token IS NOT NULL AND r.refresh_token IS NOT c.refresh_token \
             ORDER BY c.provider, c.account",
        )
        .map_err(|e| e.to_string())?;
    let rows = changed
        .query_map([], |r| {
            Ok(format!(
                "{}/{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

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
/// the copy was made. Both are read only.
pub fn refresh_tokens_changed(restored: &Path, replaced: &Path) -> Result<Vec<String>, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(restored, flags).map_err(|e| e.to_string())?;
    let mut uri = url::Url::parse("file:///").map_err(|e| e.to_string())?;
    uri.set_path(&replaced.to_string_lossy());
    uri.set_query(Some("mode=ro"));
    conn.execute("ATTACH DATABASE ?1 AS replaced", [uri.as_str()])
        .map_err(|e| e.to_string())?;
    let mut changed = conn
        .prepare(
            "SELECT c.provider, c.account FROM main.connections c \
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

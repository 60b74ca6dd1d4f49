//! Whether the config file changed after an oauthd serving the store started: it serves
//! what it read at its start, so a provider added since (a connection the terminal made
//! for it answers `404 unknown_provider` there) or a setting changed waits for a restart.

use crate::config::Settings;
use crate::store::Store;

/// What to tell the operator when the config file changed after one or more of the oauthd
/// serving the store started (each tells the store when it started, `vault_keys_in_use`).
pub(super) async fn restart_hint(
    settings: &Settings,
    store: &dyn Store,
    now_ms: i64,
) -> Option<String> {
    let path = settings.config_file.as_ref()?;
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let modified_ms = i64::try_from(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis(),
    )
    .ok()?;
    // A time ahead of the clock (a file copied with its time from another host) says
    // nothing of when it changed here.
    if modified_ms > now_ms {
        return None;
    }
    let serving = store.vault_keys_in_use(now_ms).await.ok()?;
    let mut before: Vec<i64> = serving
        .iter()
        .map(|s| s.since_ms)
        .filter(|since| *since < modified_ms)
        .collect();
    before.sort_unstable();
    let started: Vec<String> = before.iter().map(|ms| crate::clock::rfc3339(*ms)).collect();
    let who = match (before.len(), serving.len()) {
        (0, _) => return None,
        (1, 1) => "the oauthd serving this store started before it".to_owned(),
        (n, all) => format!(
            "{n} of the {all} oauthd serving this store started before it (at {}; one that reads another config file needs no restart for this one)",
            started.join(", ")
        ),
    };
    Some(format!(
        "{} changed at {}, and {who}: an oauthd serves the configuration it read at its start, so if it reads this file, restart it for the change to apply there (a provider added, a setting changed; a draft checked before it is put in place needs no restart yet)",
        path.display(),
        crate::clock::rfc3339(modified_ms)
    ))
}

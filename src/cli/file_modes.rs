//! Warnings for files holding secrets that others on the machine may read.

use crate::config::Settings;
use crate::store::target::StoreTarget;

/// What `check` warns of, and the start logs, when others may read the key file.
pub(super) fn readable_by_others(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by others (mode {mode:o}): chmod 600 it (and chown it to the user oauthd runs as, if another: it must still read it)",
            path.display()
        )
    })
}

/// Warnings for the files secrets are read from (`Settings::secret_files`) that others
/// may read: a client secret in a config file left 0644 is anyone's on the machine.
pub(super) fn secrets_readable_by_others(settings: &Settings) -> Vec<String> {
    settings
        .secret_files
        .iter()
        .filter_map(|(what, path)| readable_by_others(path).map(|note| format!("{what}: {note}")))
        .collect()
}

/// A warning for a SQLite database file others may read (a copy restored, or made with
/// `touch`; oauthd makes it 0600, and its -wal and -shm files take its mode).
pub(super) fn database_readable_by_others(settings: &Settings) -> Option<String> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return None;
    }
    readable_by_others(&settings.db).map(|note| {
        format!(
            "database {note}: it holds the API keys' hashes, account names and sealed tokens, \
             and its -wal and -shm files take its mode"
        )
    })
}

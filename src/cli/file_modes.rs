//! Warnings for files holding secrets that others on the machine may read.

use crate::config::Settings;
use crate::store::target::StoreTarget;

/// What `check` warns of, and the start logs, when others may read the key file.
pub(super) fn readable_by_others(path: &std::path::Path) -> Option<String> {
    readable_by_others_as(path, Held::Secret)
}

/// What a file readable by others holds: a secret systemd may hand over as a credential,
/// or the database, which oauthd writes and so must own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Secret,
    Database,
}

fn readable_by_others_as(path: &std::path::Path, held: Held) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    let fix = fix(crate::paths::my_uid(), meta.uid(), held);
    Some(format!(
        "{} is readable by others (mode {mode:o}): {fix}",
        path.display()
    ))
}

/// What to do about a file of uid `owner` that others may read, for oauthd running as
/// uid `me`.
fn fix(me: Option<u32>, owner: u32, held: Held) -> String {
    match me {
        // Another user's, read through its mode: made 600, it would keep oauthd out (but
        // root, which reads it all the same: a check run as root for a service's files).
        Some(me) if me != 0 && me != owner && held == Held::Database => format!(
            "it is uid {}'s, and oauthd runs as uid {me}, so chmod 600 alone would keep \
             oauthd out: chown it (with its -wal and -shm, and their directory) to uid {me} \
             and chmod 600 it",
            owner
        ),
        Some(me) if me != 0 && me != owner => format!(
            "it is uid {}'s, and oauthd runs as uid {me}, so chmod 600 alone would keep \
             oauthd out: chown it to uid {me} and chmod 600 it, or, for a service systemd \
             runs with a user it makes up (DynamicUser=, as dist/oauthd.service does), hand \
             it over with LoadCredential= and name /run/credentials/<unit>/<name> instead",
            owner
        ),
        _ => "chmod 600 it (and chown it to the user oauthd runs as, if another: it must \
              still read it)"
            .to_owned(),
    }
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
    readable_by_others_as(&settings.db, Held::Database).map(|note| {
        format!(
            "database {note}: it holds the API keys' hashes, account names and sealed tokens, \
             and its -wal and -shm files take its mode"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database is written by oauthd, so it must be oauthd's user's: the advice for a
    /// secret (hand it over as a systemd credential) does not fit it.
    #[test]
    fn the_advice_fits_what_the_file_holds() {
        let secret = fix(Some(1000), 0, Held::Secret);
        assert!(secret.contains("LoadCredential="), "{secret}");
        let database = fix(Some(1000), 0, Held::Database);
        assert!(!database.contains("LoadCredential="), "{database}");
        assert!(
            database.contains("chown it (with its -wal and -shm"),
            "{database}"
        );
        assert!(fix(Some(0), 1000, Held::Database).starts_with("chmod 600 it"));
    }
}

//! `oauthd backup FILE` and `oauthd restore FILE`: whole copies of the SQLite database.

use super::Fatal;
use crate::config::Settings;
use crate::state_data;
use crate::store::sqlite::copy::{self, CopyError};
use crate::store::target::StoreTarget;
use crate::vault::KeySource;
use std::path::{Path, PathBuf};

fn fatal(e: CopyError) -> Fatal {
    let code = match &e {
        CopyError::Stopped => super::INTERRUPTED,
        CopyError::File { .. } => 1,
        CopyError::Open(open) if !open.is_configuration() => 1,
        _ => 2,
    };
    Fatal(e.to_string(), code)
}

/// The database, when the store is SQLite.
fn database<'a>(settings: &'a Settings, command: &str) -> Result<&'a Path, Fatal> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return Err(Fatal(
            format!("`oauthd {command}` copies the SQLite database; a Redis store is backed up by Redis itself (its append-only file and snapshots: BGSAVE)"),
            2,
        ));
    }
    Ok(&settings.db)
}

/// Where the vault key comes from, for the reminder to keep it with the copy.
pub(super) fn key_named(settings: &Settings) -> String {
    match super::key_source(settings) {
        Ok(KeySource::File {
            path,
            create: false,
        }) if !path.exists() => format!(
            "the vault key it is served with ({} names {}, which does not exist: check the name)",
            crate::config::key_file_setting(),
            path.display()
        ),
        // The oauthd serving it reads its key from elsewhere, which this command was not
        // told, or the file was deleted under it (`oauthd check` says which).
        Ok(KeySource::File { path, .. }) if !path.exists() => format!(
            "the vault key it is served with (there is no key file at {}: oauthd reads it from where OAUTHD_KEY_FILE, OAUTHD_KEY or its config file's `key_file` says, which this command was not given (--config), or the file was deleted under it: `oauthd check` says which)",
            path.display()
        ),
        Ok(KeySource::File { path, .. }) => format!("the key file {}", path.display()),
        Ok(KeySource::Inline(_)) => "the key in OAUTHD_KEY".to_owned(),
        Err(_) => "the vault key".to_owned(),
    }
}

use crate::paths::full_path;

pub(super) fn backup(settings: Settings, to: PathBuf) -> Result<(), Fatal> {
    let db = database(&settings, "backup")?;
    if !db.exists() {
        return Err(Fatal(
            format!(
                "no database at {}: check --db (or OAUTHD_DB, or `db` in the config file)",
                db.display()
            ),
            2,
        ));
    }
    super::stop_on_signal(&copy::STOP);
    let backed_up = copy::backup(db, &to).map_err(fatal)?;
    let copied = backed_up.copied;
    if let Some(kept) = &backed_up.kept {
        say!(
            "{} held oauthd's database without a backup's mark (not a copy this command made, \
             or one made before copies were marked): kept as {}; delete it once you know it \
             is an old copy, or `oauthd restore` it if it was the database itself",
            to.display(),
            kept.display()
        );
    }
    say!(
        "Copied {} to {} (mode 600): schema version {}, {} bytes, consistent as of now. Keep {} with it, as safely: without it the tokens and states' data in the copy cannot be read. `oauthd restore --db {} {}` puts it back, with oauthd stopped; `oauthd check --db {}` (OAUTHD_KEY_FILE naming the key kept with it) tries it out. An oauthd refuses to serve the copy where it is (both would refresh the same connections, and a provider that rotates refresh tokens refuses the loser's): only once restored in a database's place.",
        db.display(),
        to.display(),
        copied.version,
        copied.bytes,
        key_named(&settings),
        full_path(db).display(),
        full_path(&to).display(),
        full_path(&to).display()
    );
    Ok(())
}

pub(super) fn restore(settings: Settings, from: PathBuf, create: bool) -> Result<(), Fatal> {
    let db = database(&settings, "restore")?;
    let now = chrono::Utc::now();
    let stamp = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    );
    super::stop_on_signal(&copy::STOP);
    let restored = copy::restore(&from, db, &stamp, create).map_err(fatal)?;
    let replaced_db = restored.replaced.as_deref();
    let rotated =
        replaced_db.map_or_else(String::new, |aside| refreshed_since(&settings, db, aside));
    let replaced = match replaced_db {
        Some(aside) => format!(
            " The database it replaced is kept as {} (its -wal and -shm files, if it had them, beside it named the same way): delete them once the restore is confirmed.",
            aside.display()
        ),
        None if !restored.moved.is_empty() => {
            let kept: Vec<String> = restored
                .moved
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!(
                " There was no database, but files of one deleted or moved without them: they are kept as {}.",
                kept.join(" and ")
            )
        }
        None => String::new(),
    };
    // On a new machine nothing was there before: nothing to undo, but the oauthd the copy
    // came from may still serve elsewhere (a backup being tried out).
    let undone = match replaced_db {
        Some(aside) => format!(
            " What changed since the copy was made is undone: {}{}, and states consumed since can be consumed again.",
            revoked_since(db, aside),
            made_since(db, aside)
        ),
        None => " Start oauthd on it only if the oauthd it was copied from serves no more: this one would refresh the same connections, and a provider that rotates refresh tokens (SmartThings, Microsoft, and others) then refuses the other's (invalid_grant: those accounts need connecting again). To try a copy out without serving it: `oauthd check --db FILE`.".to_owned(),
    };
    // The key file kept with the copy, when it lies beside it under the copy's name.
    let kept_key = crate::paths::with_suffix(&from, ".key");
    let beside = if kept_key.is_file() {
        format!(": {}, it seems", full_path(&kept_key).display())
    } else {
        String::new()
    };
    let kept = format!("the key file kept with the copy has them{beside}");
    let key = match super::key_source(&settings) {
        Ok(KeySource::File { path, .. }) if !path.exists() => format!(
            " There is no key file at {}: put the one kept with the copy there before oauthd starts (it does not start without it){beside}.",
            path.display(),
        ),
        source => match source.ok().zip(keys_lacking(&settings, db, now.timestamp_millis())) {
            Some((source, Lacking { tokens, states })) if !tokens.is_empty() => format!(
                " But the vault key loaded from {} does not have key(s) {}, which the copy's tokens were sealed with: oauthd does not start on it until it has them ({kept}).{}",
                source.describe(),
                tokens.join(", "),
                source.rescue_hint(&[tokens, states].concat())
            ),
            Some((source, Lacking { states, .. })) => format!(
                " But the vault key loaded from {} does not have key(s) {}, which the data of live states in the copy was sealed with: those states answer 503 vault_error until it has them ({kept}).{}",
                source.describe(),
                states.join(", "),
                source.rescue_hint(&states)
            ),
            None => format!(
                " `oauthd check` says whether {} opens what the copy holds.",
                key_named(&settings)
            ),
        },
    };
    // A backup of a store `oauthd copy` copied from keeps its mark.
    let marked = crate::store::sqlite::copied_to_mark(db)
        .ok()
        .flatten()
        .and_then(|text| super::copied_away::describe(&text))
        .map(|copied| format!(" It holds the mark `oauthd copy` leaves in the store it copies from ({copied}): oauthd does not serve it (nor refresh, import or delete in it) until `oauthd copy --forget-copy --db {}` takes the mark out, which is right only if that copy is not served.", crate::paths::shell_word(db)))
        .unwrap_or_default();
    say!(
        "Restored {} from {} (schema version {}; `oauthd serve` upgrades an older one at its next start).{replaced}{undone} The web page's sign-ins are not restored (`oauthd admin link` for a new one).{rotated}{key}{marked}",
        db.display(),
        from.display(),
        restored.copied.version,
    );
    Ok(())
}

/// The vault key the settings name, read as it is: a key file is never made here.
fn existing_vault(settings: &Settings) -> Option<crate::vault::Vault> {
    let source = match super::key_source(settings).ok()? {
        KeySource::File { path, .. } => KeySource::File {
            path,
            create: false,
        },
        inline => inline,
    };
    crate::vault::Vault::load(&source).ok()
}

/// The keys a restored database needs that the settings' vault key does not have.
struct Lacking {
    /// Those its tokens and pending device flows' codes were sealed with (a start is
    /// refused without them).
    tokens: Vec<String>,
    /// Those only the data of its live states was sealed with (those states answer
    /// `503 vault_error` without them).
    states: Vec<String>,
}

/// The keys the restored database's sealed values need (states: those live at `now_ms`)
/// that the settings' vault key does not have; `None` when it has them all, or cannot be
/// read to tell.
fn keys_lacking(settings: &Settings, db: &Path, now_ms: i64) -> Option<Lacking> {
    let known = existing_vault(settings)?.key_ids();
    // Read from the file as it lies: an open store would leave -wal and -shm files beside
    // the database it just restored.
    let tokens: Vec<String> = crate::store::sqlite::token_key_ids(db, now_ms)
        .ok()?
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();
    let heads = crate::store::sqlite::state_data_heads(db, now_ms, state_data::KEY_ID_CHARS);
    let mut states: Vec<String> = heads
        .unwrap_or_default()
        .iter()
        .filter_map(|(head, _)| state_data::key_id(head))
        .filter(|id| !known.contains(id) && !tokens.contains(id))
        .collect();
    states.sort();
    states.dedup();
    (!tokens.is_empty() || !states.is_empty()).then_some(Lacking { tokens, states })
}

/// The API keys revoked since the copy was made, active again in the restored database,
/// each with the command that revokes it again (none: nothing said of keys revoked).
fn revoked_since(db: &Path, aside: &Path) -> String {
    use crate::store::sqlite::tokens_since::keys_revoked_since;
    match keys_revoked_since(db, aside) {
        Ok(names) if names.is_empty() => String::new(),
        Ok(names) => {
            let commands: Vec<String> = names
                .iter()
                .map(|name| {
                    // A name may start with `-`: after `--` it is not taken for an option.
                    let ends = if name.starts_with('-') { "-- " } else { "" };
                    format!(
                        "`oauthd keys revoke --db {} {ends}{}`",
                        crate::paths::shell_word(&full_path(db)),
                        crate::paths::shell_word(std::path::Path::new(name))
                    )
                })
                .collect();
            format!(
                "the API key(s) {} were revoked since and are active again: revoke them again ({}); ",
                names.join(", "),
                commands.join(", ")
            )
        }
        Err(e) => format!(
            "API keys revoked since are active again (they could not be named: {e}; `oauthd keys list`, then `oauthd keys revoke` them again); "
        ),
    }
}

/// The API keys made since the copy was made, gone with the restore: named, since their
/// apps get 401 until each is made again.
fn made_since(db: &Path, aside: &Path) -> String {
    use crate::store::sqlite::tokens_since::keys_made_since;
    match keys_made_since(db, aside) {
        Ok(names) if names.is_empty() => "no API key was made since".to_owned(),
        Ok(names) => format!(
            "the API key(s) {} were made since and are gone: their apps get 401 until `oauthd keys create` makes each again (a new key, for the app's configuration)",
            names.join(", ")
        ),
        Err(e) => format!("API keys made since are gone (they could not be named: {e})"),
    }
}

/// What to say of the connections whose refresh token changed since the copy was made
/// (found in the database the restore moved aside, `aside`); nothing when none did.
fn refreshed_since(settings: &Settings, db: &Path, aside: &Path) -> String {
    use crate::store::sqlite::tokens_since::refresh_tokens_changed;
    // Opened with the key file when there is one (never made here): a `rekey` since the
    // copy sealed the same refresh token again, which is no new token. With the keys a
    // prune since took out of it too, kept beside it: the copy's were sealed with those.
    let vault = match super::key_source(settings) {
        Ok(KeySource::File { path, .. }) => crate::vault::Vault::with_kept_copies(&path).ok(),
        _ => existing_vault(settings),
    };
    // Without a key that opens them, a value sealed again is not told from a new token.
    let opened = std::cell::Cell::new(true);
    let same = |provider: &str, account: &str, mine: &[u8], theirs: &[u8]| {
        let Some(vault) = &vault else {
            opened.set(false);
            return false;
        };
        let aad = crate::broker::token_aad(provider, account, "refresh_token");
        match (vault.open(&aad, mine), vault.open(&aad, theirs)) {
            (Ok(mine), Ok(theirs)) => mine == theirs,
            _ => {
                opened.set(false);
                false
            }
        }
    };
    match refresh_tokens_changed(db, aside, same) {
        Ok(changed) if changed.is_empty() => String::new(),
        Ok(changed) => {
            const SHOWN: usize = 20;
            let more = changed.len().saturating_sub(SHOWN);
            let mut names = changed.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if more > 0 {
                names.push_str(&format!(" and {more} more"));
            }
            format!(
                " {} connection(s) got a new refresh token since the copy was made ({}), and have the copy's again: {names}. A provider that rotates refresh tokens (SmartThings, Microsoft, and others) refuses the old one (invalid_grant, often revoking the grant): connect those accounts again if they turn needs_reauth.",
                changed.len(),
                if opened.get() {
                    "a refresh or a reconnect"
                } else {
                    "a refresh, a reconnect, or a rekey: the key file could not open them to tell"
                }
            )
        }
        Err(e) => format!(
            " (The connections could not be compared with the database it replaced: {e}; a connection refreshed since the copy was made may need connecting again, with a provider that rotates refresh tokens.)"
        ),
    }
}

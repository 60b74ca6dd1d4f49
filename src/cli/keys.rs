//! `oauthd keys create|list|revoke`.

use super::{open_store, runtime, Fatal, KeysCommand, Missing};
use crate::apikeys;
use crate::clock::{rfc3339, Clock};
use crate::config::Settings;
use crate::store::KeyStore;

pub(super) fn keys(settings: Settings, command: KeysCommand) -> Result<(), Fatal> {
    let missing = match command {
        KeysCommand::Create { create: true, .. } => Missing::Create,
        _ => Missing::Refuse,
    };
    let store = open_store(&settings, missing)?;
    match &command {
        KeysCommand::Create { .. } => super::open::note_a_backup(&settings, "a key made here"),
        KeysCommand::Revoke { .. } => {
            super::open::note_a_backup(&settings, "a revocation made here")
        }
        KeysCommand::List { .. } => {}
    }
    let revoke_flags = store_flags(&settings);
    let clock = Clock::system();
    runtime()?.block_on(async {
        match command {
            KeysCommand::Create {
                name,
                namespaces,
                accounts,
                ..
            } => {
                let scope = apikeys::KeyScope {
                    namespaces,
                    accounts,
                };
                let (key, record) = apikeys::create(store.as_ref(), &name, scope, clock.now_ms())
                    .await
                    .map_err(|e| match e {
                        // A name taken is the command line's to change.
                        apikeys::KeyError::Store(crate::store::StoreError::Conflict(why)) => Fatal(
                            format!(
                                "{why}: pick another name, or revoke that key first (`oauthd keys revoke{} {name}`{}; the apps using it lose access)",
                                revoke_flags.0, revoke_flags.1
                            ),
                            2,
                        ),
                        // A name or pattern that can never be valid is a command-line error.
                        e => Fatal(e.to_string(), if e.is_input() { 2 } else { 1 }),
                    })?;
                let scope = record
                    .namespaces
                    .as_ref()
                    .map_or("every namespace".to_owned(), |n| n.join(", "));
                let accounts = match &record.accounts {
                    _ if !crate::apikeys::reaches_connections(&record) => "no connected account's tokens (a provider's take --namespace 'provider:NAME')".to_owned(),
                    None => "every account".to_owned(),
                    Some(a) => format!("accounts {}", a.join(", ")),
                };
                // In the database file before it is printed: killed after, the key is
                // not left in the -wal alone, which a move of the file could leave behind.
                if let Err(e) = store.settle().await {
                    log::warn!("the new key is stored, but only in the database's -wal file so far: {e}");
                }
                say!("Created API key {:?} for {scope}; {accounts}.", record.name);
                if record.accounts.is_some() && record.namespaces.is_none() {
                    say!("Note: --account limits connections only; this key may still use every state namespace (add --namespace to limit that too).");
                }
                if let Some(note) = crate::apikeys::provider_scope_note(&record) {
                    say!("Note: {note}.");
                }
                let configured: Vec<&str> = settings.providers.keys().map(String::as_str).collect();
                if let Some(note) = crate::apikeys::unknown_provider_note(&record, &configured) {
                    say!("Note: {note}.");
                }
                let shown = {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{}", key.expose()).and_then(|()| stdout.flush())
                };
                if let Err(e) = shown {
                    // Nobody holds the key: it must not stay active, keeping the name taken.
                    let undone = store.revoke_key(&record.name, clock.now_ms()).await;
                    return Err(Fatal(
                        match undone {
                            Ok(_) => format!(
                                "writing the key: {e}; nobody could have it, so it was revoked again and the name is free: run the command again with an output that can be written"
                            ),
                            Err(r) => format!(
                                "writing the key: {e}; revoking it again failed too ({r}): run `oauthd keys revoke {}`",
                                record.name
                            ),
                        },
                        1,
                    ));
                }
                say!(
                    "Store it now: it is not shown again. Use it as Authorization: Bearer <key>."
                );
                Ok(())
            }
            KeysCommand::List { json } => list_keys(store.as_ref(), json).await,
            KeysCommand::Revoke { name } => {
                if store.revoke_key(&name, clock.now_ms()).await? {
                    say!("Revoked API key {name:?}.");
                    Ok(())
                } else {
                    Err(Fatal(format!("no active API key named {name:?}"), 1))
                }
            }
        }
    })
}

/// What a command suggested to the operator needs to reach this store: `--db` with the
/// database's whole path (the suggestion may be run from another directory), or, on Redis,
/// a word to use this command's own settings (its URL may hold a password: never shown).
fn store_flags(settings: &Settings) -> (String, &'static str) {
    match &settings.store {
        crate::store::target::StoreTarget::Sqlite => {
            let db = std::path::absolute(&settings.db).unwrap_or_else(|_| settings.db.clone());
            (format!(" --db {}", crate::paths::shell_word(&db)), "")
        }
        crate::store::target::StoreTarget::Redis(_) => {
            (String::new(), ", with this command's --config or --store")
        }
    }
}

pub(super) async fn list_keys(store: &dyn KeyStore, json: bool) -> Result<(), Fatal> {
    let keys = store.list_keys().await?;
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "name": k.name,
                    "namespaces": k.namespaces,
                    "accounts": k.accounts,
                    "created_at": rfc3339(k.created_at_ms),
                    "revoked_at": k.revoked_at_ms.map(rfc3339),
                    "last_used_at": k.last_used_at_ms.map(rfc3339),
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut rows = Vec::with_capacity(keys.len());
    for k in &keys {
        let status = if k.revoked_at_ms.is_some() {
            "revoked"
        } else {
            "active"
        };
        let scope = k
            .namespaces
            .as_ref()
            .map_or("*".to_owned(), |n| n.join(","));
        let accounts = match &k.accounts {
            _ if !crate::apikeys::reaches_connections(k) => "-".to_owned(),
            None => "*".to_owned(),
            Some(a) => a.join(","),
        };
        let used = k.last_used_at_ms.map_or("-".to_owned(), rfc3339);
        rows.push([
            k.name.clone(),
            status.to_owned(),
            rfc3339(k.created_at_ms),
            used,
            scope,
            accounts,
        ]);
    }
    let header = [
        "NAME",
        "STATUS",
        "CREATED",
        "LAST USED",
        "NAMESPACES",
        "ACCOUNTS",
    ];
    for line in super::table::lines(header, &rows, &[]) {
        out!("{line}");
    }
    Ok(())
}

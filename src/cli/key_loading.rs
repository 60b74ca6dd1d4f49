//! The vault key a command loads: where it comes from, what refuses it, and whether it
//! opens what the store holds.

use super::{runtime, Fatal};
use crate::config::Settings;
use crate::store::target::StoreTarget;
use crate::store::Store;
use crate::vault::{self, KeySource, VaultHandle};
use std::sync::Arc;

/// Where the vault key comes from. With a shared store every instance must hold the same
/// key, so the per-database key file that SQLite creates on first start is not offered.
pub(super) fn key_source(settings: &Settings) -> Result<KeySource, String> {
    let source = settings.key_source.clone();
    match (&settings.store, &source) {
        (StoreTarget::Redis(_), KeySource::File { create: true, .. }) => Err(
            "with a Redis store every instance, and every command, must use the same vault key, which is never made for you: set OAUTHD_KEY_FILE (or OAUTHD_KEY, or `key_file` in the config file) to the key file the instances serving this store use. For a store no instance has served yet, make it with `(umask 077; oauthd keygen > oauthd.key)` and copy it to each instance".to_owned(),
        ),
        _ => Ok(source),
    }
}

/// Why no `<db>.key` is made for a database oauthd has served: its key is elsewhere
/// (`OAUTHD_KEY_FILE`, `OAUTHD_KEY`) or lost, and a key made now would seal what is
/// written next under a key the daemon cannot open (or, for `serve`, leave what was
/// sealed before unreadable), splitting the data between two keys.
/// While an oauthd serves the database (`serving`), starting over is no way out: the key
/// it serves with is to be given to the command.
fn no_key_once_served(path: &std::path::Path, serving: bool) -> String {
    let start_over = if serving {
        String::new()
    } else {
        format!(
            " To start over with a new key, knowing that what the old one sealed stays \
             unreadable: (umask 077; oauthd keygen > \"{}\")",
            path.display()
        )
    };
    format!(
        "no vault key: oauthd has served this database, there is no key file at {path}, and \
         neither OAUTHD_KEY_FILE nor OAUTHD_KEY is set, nor `key_file` in a config file \
         given. Start oauthd (and give every command) the key it served with (the same \
         OAUTHD_KEY_FILE or OAUTHD_KEY, or --config with its `key_file`), or put that key \
         file back; no key was made.{start_over}",
        path = path.display()
    )
}

/// What a refusal adds when an oauthd serves the store with `key`: it has its key from
/// where this command was not told, or its file went under it (then the copy it wrote of
/// its keys holds it, or only its memory does). `why` is the refusal so far.
fn serving_note(why: &str, key: &String, path: &std::path::Path) -> String {
    let mut rescued = vault::rescue_hint(path, std::slice::from_ref(key));
    // Named once, when the refusal names that copy already.
    if why.contains(rescued.trim()) {
        rescued.clear();
    }
    let only = if rescued.is_empty() && !why.contains("wrote the keys") {
        ", and its memory holds the only copy: do not stop it, and see its log"
    } else {
        ""
    };
    format!(
        " An oauthd serving this store seals with key {key} now: it reads its key from elsewhere (OAUTHD_KEY_FILE, OAUTHD_KEY or its config file's `key_file` where it was started: give this command the same, or --config), or this file was deleted under it{only}.{rescued}"
    )
}

/// Loads a vault key configured by `OAUTHD_KEY` or `OAUTHD_KEY_FILE` once, so that a wrong
/// one stops a start before a SQLite database is made. (The key file beside the database
/// is looked at with the database, which may hold what it sealed; a Redis store makes
/// nothing at open, and says first whether this build has it.)
pub(super) fn check_key_source(settings: &Settings) -> Result<(), Fatal> {
    if !matches!(settings.store, StoreTarget::Sqlite) {
        return Ok(());
    }
    match key_source(settings).map_err(|e| Fatal(e, 2))? {
        KeySource::File { create: true, .. } => Ok(()),
        source => load_vault(source).map(drop),
    }
}

/// The vault key from `source`. A key that is not there or does not read as one is a
/// configuration error (exit 2, which the systemd unit does not restart for), named by
/// where it was configured. A key file that cannot be read for another reason (a network
/// filesystem not mounted yet) or that oauthd failed to make may work on a retry (exit 1).
pub(super) fn load_vault(source: KeySource) -> Result<VaultHandle, Fatal> {
    use std::io::ErrorKind;
    if let KeySource::Inline(text) = &source {
        if text.trim().starts_with(crate::secret::API_KEY_PREFIX) {
            return Err(Fatal(
                "OAUTHD_KEY holds an API key (oauthd_...), but it is oauthd's own vault key: \
                 give apps their API key in a variable of their own (oauthd's examples and \
                 clients use OAUTHD_API_KEY), and here unset OAUTHD_KEY or set it to the vault \
                 key (`oauthd keygen` makes one)"
                    .into(),
                2,
            ));
        }
    }
    let file_code = |path: &std::path::Path| match std::fs::File::open(path) {
        Ok(_) => 2,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => 2,
        Err(_) => 1,
    };
    let (named_by, code) = match &source {
        KeySource::Inline(_) => (String::new(), 2),
        KeySource::File {
            create: false,
            path,
        } => (
            format!(" ({})", crate::config::key_file_setting()),
            file_code(path),
        ),
        KeySource::File { path, create: true } => (
            String::new(),
            if path.exists() { file_code(path) } else { 1 },
        ),
    };
    VaultHandle::load(source).map_err(|e| match e {
        crate::vault::VaultError::File { path, message } => {
            let rescued = vault::rescue_hint(&path, &[]);
            // The hint is a sentence of its own: the message before it ends as one.
            let end = if rescued.is_empty() || message.ends_with('.') {
                ""
            } else {
                "."
            };
            Fatal(
                format!(
                    "key file {}{named_by}: {message}{end}{rescued}",
                    path.display()
                ),
                code,
            )
        }
        other => Fatal(other.to_string(), code),
    })
}

/// Refuses to start when stored tokens were sealed with keys the vault does not have
/// (a lost or wrong key file): every token call would fail, and new tokens would be
/// sealed with a key the old ones can never join.
pub(super) fn check_vault_opens_tokens(
    vault: &VaultHandle,
    source: &KeySource,
    store: &Arc<dyn Store>,
    target: &StoreTarget,
    db: &std::path::Path,
) -> Result<(), Fatal> {
    let known = vault.key_ids();
    let rows = runtime()?.block_on(store.list_connections())?;
    let missing = missing_key_ids(&rows, &known);
    if missing.is_empty() {
        return Ok(());
    }
    // Named only where no copy of the key was found: a key that is there is no key lost.
    let lost_later = |rescued: &str| {
        if rescued.is_empty() {
            lost_for_good(&rows, &missing)
        } else {
            String::new()
        }
    };
    let from = source.describe();
    let rescued = runtime()?.block_on(where_the_keys_are(source, store, target, db, &missing));
    let kept = match target {
        StoreTarget::Sqlite => "OAUTHD_KEY, OAUTHD_KEY_FILE, `key_file` in the config file, or the key file beside the database",
        StoreTarget::Redis(_) => {
            "the OAUTHD_KEY_FILE (or OAUTHD_KEY) every instance serving this store uses"
        }
    };
    Err(Fatal(
        format!(
            "{} holds tokens sealed with vault key(s) {} but the vault key loaded from {from} has {}: restore the key that was used ({kept}).{rescued}{}",
            store.describe(),
            missing.join(", "),
            known.join(", "),
            lost_later(&rescued)
        ),
        2,
    ))
}

/// Where the vault keys `missing` (which the key loaded from `source` lacks) are to be
/// found, in words for a refusal, or nothing: a copy a running oauthd or a prune wrote
/// beside the key file, an oauthd serving the store with one of them, the key file
/// beside the SQLite database `db`.
pub(super) async fn where_the_keys_are(
    source: &KeySource,
    store: &Arc<dyn Store>,
    target: &StoreTarget,
    db: &std::path::Path,
    missing: &[String],
) -> String {
    let from = source.describe();
    // The key file written over under a running oauthd, which wrote out what it held.
    let mut rescued = match source {
        KeySource::File { path, .. } => vault::rescue_hint(path, missing),
        KeySource::Inline(_) => String::new(),
    };
    // A key file a command made beside the database, run without the OAUTHD_KEY_FILE
    // the daemon reads (or the other way round): what each sealed needs both keys.
    let beside = crate::paths::with_suffix(db, ".key");
    let elsewhere = !matches!(source, KeySource::File { path, .. } if *path == beside);
    // An oauthd serving this store seals with a key this command lacks: the command reads
    // another key than the one it serves with. Said so, and no key is to be added to the
    // command's file, which would have it seal what the serving oauthd cannot open.
    let now_ms = crate::clock::Clock::system().now_ms();
    let serving_with = store
        .vault_keys_in_use(now_ms)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| o.keys.into_iter().next())
        .find(|k| missing.contains(k));
    if let (true, Some(key)) = (rescued.is_empty(), serving_with) {
        let beside = matches!(target, StoreTarget::Sqlite).then_some(beside.as_path());
        rescued = format!(
            " An oauthd serving this store seals with vault key {key}: this command reads another key than the one it serves with. Run it with that oauthd's key (the same key file, or a copy of it){}; do not add keys to {from}.",
            super::vault_peers::serving_key_hint(Some(&key), beside)
        );
    }
    if rescued.is_empty() && elsewhere && matches!(target, StoreTarget::Sqlite) {
        let holds = std::fs::read_to_string(&beside)
            .ok()
            .and_then(|text| vault::key_ids(&text).ok())
            .is_some_and(|ids| missing.iter().all(|m| ids.contains(m)));
        if holds {
            rescued = format!(
                " The key file beside the database, {}, holds them (made by a command run without the key {from} names, which sealed what it wrote with it): what is stored now needs both keys, so add its line(s) of key(s) {} to the key file as further lines (the first line seals: keep it first), or set OAUTHD_KEY_FILE for every command too.",
                beside.display(),
                missing.join(", ")
            );
        }
    }
    rescued
}

/// The way out when the keys `missing` are lost for good: the connections whose tokens
/// they sealed are deleted here (`--lost-key` opens no token), their grants revoked at the
/// providers by hand, and the accounts connected again.
fn lost_for_good(rows: &[crate::store::ConnectionRow], missing: &[String]) -> String {
    const SHOWN: usize = 10;
    let names: Vec<String> = rows
        .iter()
        .filter(|r| vault::sealed_key_id(&r.access_token).is_some_and(|id| missing.contains(&id)))
        .map(|r| format!("{}/{}", r.provider, r.account))
        .collect();
    let mut shown = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        shown.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    format!(
        " If {} lost for good, so are the tokens {} sealed, of {} connection(s): {shown}. `oauthd connections delete PROVIDER ACCOUNT --lost-key` deletes oauthd's copy of each, revoking nothing (their grants stay valid at the providers until revoked there), and the accounts are connected again",
        if missing.len() == 1 { "that key is" } else { "those keys are" },
        if missing.len() == 1 { "it" } else { "they" },
        names.len()
    )
}

/// The ids of the keys `rows`' tokens were sealed with that are not in `known`, sorted,
/// each once.
pub(super) fn missing_key_ids(
    rows: &[crate::store::ConnectionRow],
    known: &[String],
) -> Vec<String> {
    let mut missing: Vec<String> = rows
        .iter()
        .filter_map(|r| vault::sealed_key_id(&r.access_token))
        .filter(|id| !known.contains(id))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Why no key file may be made at `path` (missing beside a SQLite database) for what the
/// store holds, or `None` when nothing speaks against it (a first start). The start
/// refuses with it, and `check` fails with the same words: a key made over tokens or
/// live states' data sealed before could never open them, and one made for a database
/// served before would sit where its real key must be put back.
pub(super) async fn refusal_without_key_file(
    store: &dyn Store,
    path: &std::path::Path,
    now_ms: i64,
) -> Result<Option<String>, crate::store::StoreError> {
    let serving = store.vault_keys_in_use(now_ms).await.unwrap_or_default();
    let serving_key = serving.first().and_then(|i| i.keys.first());
    let refusal = held_without_key_file(store, path, now_ms, serving_key.is_some()).await?;
    Ok(match (refusal, serving_key) {
        (Some(why), Some(key)) => {
            // The note is sentences of its own: the refusal before it ends as one.
            let end = if why.ends_with('.') { "" } else { "." };
            Some(format!("{why}{end}{}", serving_note(&why, key, path)))
        }
        (refusal, _) => refusal,
    })
}

/// `refusal_without_key_file` before what a serving oauthd adds.
async fn held_without_key_file(
    store: &dyn Store,
    path: &std::path::Path,
    now_ms: i64,
    serving: bool,
) -> Result<Option<String>, crate::store::StoreError> {
    let mut tokens = std::collections::BTreeMap::<String, usize>::new();
    for row in store.list_connections().await? {
        if let Some(id) = vault::sealed_key_id(&row.access_token) {
            *tokens.entry(id).or_default() += 1;
        }
    }
    let states = crate::states::data_keys(store, now_ms).await?;
    let held = |what: &str, keys: &std::collections::BTreeMap<String, usize>| {
        (!keys.is_empty()).then(|| {
            let ids: Vec<&str> = keys.keys().map(String::as_str).collect();
            format!(
                "{} {what} with vault key(s) {}",
                keys.values().sum::<usize>(),
                ids.join(", ")
            )
        })
    };
    let held: Vec<String> = [
        held("connection(s) whose tokens were sealed", &tokens),
        held("live state(s) whose data was sealed", &states),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !held.is_empty() {
        // A running oauthd that saw the file go wrote out the keys it held.
        let needed: Vec<String> = tokens.keys().chain(states.keys()).cloned().collect();
        let rescued = vault::rescue_hint(path, &needed);
        return Ok(Some(format!(
            "the database holds {} but there is no key file at {}: restore the key file that was used (or set OAUTHD_KEY_FILE / OAUTHD_KEY to it): oauthd does not start without it.{rescued} No new key was made",
            held.join(" and "),
            path.display()
        )));
    }
    Ok(store
        .was_served()
        .await?
        .then(|| no_key_once_served(path, serving) + &vault::rescue_hint(path, &[])))
}

//! `oauthd rekey`: moves every sealed value to a new vault key while oauthd runs.
//!
//! 1. The key file becomes `[old keys…, new key]`, written atomically: a running oauthd
//!    notices within a second and opens with the new key, but does not seal with it. Once
//!    every serving instance has told that it has it (`cli::vault_peers`), the file becomes
//!    `[new key, old keys…]`: they seal with it from their next reload and can still open
//!    values under the old keys. One that never has it (it reads another copy of the key
//!    file) stops the rotation before anything is sealed with the new key, which leaves
//!    the file again.
//! 2. Every connection's tokens are re-sealed under the new key, compare-and-set, so a
//!    refresh that lands meanwhile is never overwritten. Passes repeat until one finds
//!    nothing left, at least a reload interval after the file changed.
//!    Pending device flows' codes are re-sealed the same way (a finished flow keeps no
//!    code).
//! 3. `--prune` later drops keys that no stored value uses any more: connections' tokens,
//!    pending device flows' codes, and the data of states (connect flows in progress
//!    among them), which keep their key until they are consumed or expire.

use crate::broker::{device_aad, sealed_flow_secrets, token_aad, CONNECT_PREFIX};
use crate::state_data;
use crate::store::{BrokerStore, Store, StoreError};
use crate::vault::{self, sealed_key_id, Vault, VaultError};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Held while one `oauthd rekey` rotates the key file at `path`: an exclusive lock on its
/// directory (the file itself is replaced by every write). `None` while another holds it:
/// two rotations at once each said their key now sealed, and only one did.
pub fn lock(path: &Path) -> Result<Option<std::fs::File>, RekeyError> {
    // The directory of the file a link leads to, where the key file is written: two
    // rotations through a link and the file it names locked two directories.
    let resolved = crate::paths::resolve_trusted(path).unwrap_or_else(|_| path.to_owned());
    // One this user may not read (a directory of root's, mode 711) is locked where the
    // link is, so that the write says what is wrong with the file it leads to.
    let dir = Some(crate::paths::dir_of(&resolved))
        .filter(|dir| std::fs::File::open(dir).is_ok())
        .unwrap_or_else(|| crate::paths::dir_of(path));
    let failed = |e: std::io::Error| RekeyError::File {
        path: path.display().to_string(),
        message: format!("locking its directory: {e}"),
    };
    let held = std::fs::File::open(dir).map_err(failed)?;
    match held.try_lock() {
        Ok(()) => Ok(Some(held)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

fn read(path: &Path) -> Result<Zeroizing<String>, RekeyError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| RekeyError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

fn write(path: &Path, text: &str) -> Result<(), RekeyError> {
    vault::write_key_file(path, text).map_err(|e| RekeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The key lines of a key file, without comments.
fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

const HEADER: &str = "# oauthd vault keys, one per line (after each, its id): the first seals, all open.\n# Back this file up with the database; keep it private.\n";

/// Re-seals what is not under the vault's current key; returns how many values changed.
async fn reseal_pass(vault: &Vault, store: &dyn BrokerStore) -> Result<usize, RekeyError> {
    let reseal = |aad: &str, sealed: &[u8]| -> Result<Vec<u8>, VaultError> {
        vault.seal(aad, &vault.open(aad, sealed)?)
    };
    let mut changed = 0;
    for row in store.list_all_connections().await? {
        let current = vault.is_current(&row.access_token)
            && row
                .refresh_token
                .as_ref()
                .is_none_or(|r| vault.is_current(r));
        if current {
            continue;
        }
        let aad = |field: &str| token_aad(&row.provider, &row.account, field);
        let new_access = reseal(&aad("access_token"), &row.access_token)?;
        let new_refresh = match &row.refresh_token {
            Some(r) => Some(reseal(&aad("refresh_token"), r)?),
            None => None,
        };
        // Lost the race to a refresh: the next pass looks at the new values.
        if store
            .reseal_connection(
                &row.key(),
                (row.access_token.clone(), row.refresh_token.clone()),
                (new_access, new_refresh),
            )
            .await?
        {
            changed += 1;
        }
    }
    for flow in store.all_pending_device_flows().await? {
        if flow.device_code.is_empty() || vault.is_current(&flow.device_code) {
            continue;
        }
        let new = reseal(&device_aad(&flow.id), &flow.device_code)?;
        // Lost the race to the flow ending: nothing left to re-seal.
        if store
            .reseal_device_code(&flow.id, flow.device_code.clone(), new)
            .await?
        {
            changed += 1;
        }
    }
    Ok(changed)
}

/// What of the values a rotation re-seals (connections' tokens, pending device codes)
/// `vault` cannot open, each named with why. Looked at before the key file changes: a
/// value sealed with a key the file lacks stopped the re-sealing half-way, with the file
/// already sealing with the new key and the values before it moved to it.
pub async fn unopenable(vault: &Vault, store: &dyn BrokerStore) -> Result<Vec<String>, RekeyError> {
    let mut found = Vec::new();
    for row in store.list_all_connections().await? {
        let fields = [
            ("access_token", Some(&row.access_token)),
            ("refresh_token", row.refresh_token.as_ref()),
        ];
        for (field, sealed) in fields {
            let Some(sealed) = sealed else {
                continue;
            };
            let aad = token_aad(&row.provider, &row.account, field);
            if let Err(e) = vault.open(&aad, sealed) {
                found.push(format!("{}/{}'s {field}: {e}", row.provider, row.account));
            }
        }
    }
    for flow in store.all_pending_device_flows().await? {
        if flow.device_code.is_empty() {
            continue;
        }
        if let Err(e) = vault.open(&device_aad(&flow.id), &flow.device_code) {
            found.push(format!("device flow {}'s code: {e}", flow.id));
        }
    }
    Ok(found)
}

/// The key file's key lines, each with its id, in order (the first seals).
fn keyed_lines(text: &str) -> Result<Vec<(String, Zeroizing<String>)>, RekeyError> {
    Vault::from_text(text)?;
    key_lines(text)
        .into_iter()
        .map(|line| {
            let line = Zeroizing::new(line);
            Ok((Vault::from_text(&line)?.current_key_id(), line))
        })
        .collect()
}

/// Writes `lines` as the key file; returns the vault it makes.
fn write_lines(path: &Path, lines: &[(String, Zeroizing<String>)]) -> Result<Vault, RekeyError> {
    let mut text = Zeroizing::new(HEADER.to_owned());
    for (_, line) in lines {
        text.push_str(&vault::labelled_key_line(line)?);
        text.push('\n');
    }
    let vault = Vault::from_text(&text)?;
    write(path, &text)?;
    Ok(vault)
}

/// Adds a new key as the key file's last line: an oauthd reading the file opens with it
/// from its next reload, and none seals with it yet. Returns its id.
pub fn add_key(path: &Path) -> Result<String, RekeyError> {
    let mut lines = keyed_lines(&read(path)?)?;
    let new_key = vault::generate_key_text()?;
    let id = Vault::from_text(&new_key)?.current_key_id();
    lines.push((id.clone(), new_key));
    write_lines(path, &lines)?;
    Ok(id)
}

/// Takes the key `id` out of the key file again (never the first, which seals).
fn remove_key(path: &Path, id: &str) -> Result<(), RekeyError> {
    let lines = keyed_lines(&read(path)?)?;
    let kept: Vec<_> = lines
        .iter()
        .enumerate()
        .filter(|(at, (key, _))| *at == 0 || key != id)
        .map(|(_, line)| line.clone())
        .collect();
    if kept.len() != lines.len() {
        write_lines(path, &kept)?;
    }
    Ok(())
}

/// Takes the key `id` that `add_key` added out of the key file again: the file is put back
/// as it was (`before`, its comments with it) when nothing else changed its keys since,
/// else only that key is taken out.
pub fn take_back(path: &Path, id: &str, before: &str) -> Result<(), RekeyError> {
    let ids = |text: &str| -> Result<Vec<String>, RekeyError> {
        Ok(keyed_lines(text)?.into_iter().map(|(key, _)| key).collect())
    };
    let mut added = ids(before)?;
    added.push(id.to_owned());
    if ids(&read(path)?)? == added {
        write(path, before)
    } else {
        remove_key(path, id)
    }
}

/// The key file's text, to put back with `take_back`.
pub fn text_of(path: &Path) -> Result<Zeroizing<String>, RekeyError> {
    read(path)
}

/// Moves the key `id` first in the key file, so that it seals from the next reload.
/// Returns the vault the file makes, and how many other keys it holds.
pub fn use_key(path: &Path, id: &str) -> Result<(Vault, usize), RekeyError> {
    let mut lines = keyed_lines(&read(path)?)?;
    let at = lines
        .iter()
        .position(|(key, _)| key == id)
        .ok_or_else(|| RekeyError::File {
            path: path.display().to_string(),
            message: format!("holds no key with id {id}"),
        })?;
    let line = lines.remove(at);
    lines.insert(0, line);
    Ok((write_lines(path, &lines)?, lines.len() - 1))
}

/// Re-seals every stored value under `vault`'s current key: passes repeat until one finds
/// nothing left, `settle` (how long running servers may take to notice) apart. Returns
/// how many values changed.
pub async fn reseal(
    vault: &Vault,
    store: &dyn BrokerStore,
    settle: Duration,
) -> Result<usize, RekeyError> {
    let mut resealed = reseal_pass(vault, store).await?;
    for _ in 0..20 {
        tokio::time::sleep(settle).await;
        let n = reseal_pass(vault, store).await?;
        resealed += n;
        if n == 0 {
            break;
        }
    }
    Ok(resealed)
}

/// Drops keys no stored value uses (states: those live at `now_ms`) and no serving oauthd
/// seals with. Returns (kept, removed).
/// What `prune` did.
#[derive(Debug)]
pub struct Pruned {
    /// How many keys the key file keeps.
    pub kept: usize,
    /// The ids of the keys it no longer holds.
    pub removed: Vec<String>,
    /// Where the key file as it was is kept (mode 600), when a key was removed: copies of
    /// the database made before need what it holds.
    pub before: Option<std::path::PathBuf>,
}

pub async fn prune(path: &Path, store: &dyn Store, now_ms: i64) -> Result<Pruned, RekeyError> {
    let text = read(path)?;
    let lines = key_lines(&text);
    let ids = vault::key_ids(&text)?;
    let mut used = BTreeSet::new();
    for row in store.list_all_connections().await? {
        used.extend(sealed_key_id(&row.access_token));
        used.extend(row.refresh_token.as_deref().and_then(sealed_key_id));
    }
    for flow in store.all_pending_device_flows().await? {
        used.extend(sealed_key_id(&flow.device_code));
    }
    // States keep the key their data was sealed with until they are consumed or expire.
    used.extend(crate::states::data_keys(store, now_ms).await?.into_keys());
    // The key each serving oauthd seals with: what it seals next must open here (another
    // instance reads another copy of the key file in a two-step rotation, `--to`).
    for instance in store.vault_keys_in_use(now_ms).await? {
        used.extend(instance.keys.first().cloned());
    }
    // A connect flow's data holds the flow's secrets sealed once more, by the broker.
    let vault = Vault::from_text(&text)?;
    for row in store.states_with_data(CONNECT_PREFIX, now_ms).await? {
        let Some(stored) = row.data.as_deref() else {
            continue;
        };
        let owner = state_data::Owner {
            key_hash: &row.key_hash,
            namespace: &row.namespace,
            subject: row.subject.as_deref(),
        };
        // Data that does not open keeps its key through the line above; data in clear
        // is read, so that the keys a flow's secrets name are kept.
        let inner = state_data::open(&vault, &owner, stored, true)
            .ok()
            .and_then(|data| serde_json::from_str(&data).ok())
            .and_then(|v| sealed_flow_secrets(&v));
        used.extend(inner.as_deref().and_then(sealed_key_id));
    }
    let (keep, removed): (Vec<_>, Vec<_>) = lines
        .iter()
        .zip(&ids)
        .enumerate()
        .partition(|(i, (_, id))| *i == 0 || used.contains(*id));
    let mut before = None;
    if !removed.is_empty() {
        // The file as it was, beside it: a backup made before needs the keys going now.
        // Never over an earlier prune's copy (two in one second).
        let name = |n: u32| match n {
            1 => format!(".before-prune-{}", now_ms / 1000),
            n => format!(".before-prune-{}-{n}", now_ms / 1000),
        };
        let mut n = 1;
        let mut kept_as = crate::paths::with_suffix(path, &name(n));
        while kept_as.exists() {
            n += 1;
            kept_as = crate::paths::with_suffix(path, &name(n));
        }
        write(&kept_as, &text)?;
        before = Some(kept_as);
        let mut kept = Zeroizing::new(HEADER.to_owned());
        for (_, (line, _)) in &keep {
            kept.push_str(&vault::labelled_key_line(line)?);
            kept.push('\n');
        }
        write(path, &kept)?;
    }
    Ok(Pruned {
        kept: keep.len(),
        removed: removed.iter().map(|(_, (_, id))| (*id).clone()).collect(),
        before,
    })
}

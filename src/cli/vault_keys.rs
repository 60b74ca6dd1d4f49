//! `oauthd rekey [--prune]`: rotating the vault key.

use super::{open_store, runtime, Fatal};
use crate::config::Settings;
use crate::vault::KeySource;

pub(super) fn rekey(settings: Settings, prune: bool, to: Option<String>) -> Result<(), Fatal> {
    let path = match super::key_source(&settings).map_err(|e| Fatal(e, 2))? {
        KeySource::Inline(_) => {
            return Err(Fatal(
                "the vault key comes from OAUTHD_KEY, which a running oauthd cannot re-read: put the key in a file named by OAUTHD_KEY_FILE to rotate it".into(),
                2,
            ))
        }
        KeySource::File { path, .. } => path,
    };
    // The database first: a mistyped --db is named as such, not as a missing key file.
    let store = open_store(&settings, super::Missing::Refuse)?;
    super::open::refuse_rekey_of_a_backup(&settings, &path)?;
    if !path.exists() {
        return Err(Fatal(
            format!(
                "key file {} does not exist: rekey rotates the key file oauthd serves with. \
                 If oauthd is started with OAUTHD_KEY_FILE, give rekey the same; if with \
                 OAUTHD_KEY, put that key in a file (umask 077), start oauthd with \
                 OAUTHD_KEY_FILE naming it, and rekey that",
                path.display()
            ),
            2,
        ));
    }
    let Some(_rotating) = crate::rekey::lock(&path)? else {
        return Err(Fatal(
            format!(
                "another `oauthd rekey` is rotating {} now: let it end, then run this again if still needed",
                path.display()
            ),
            2,
        ));
    };
    // Ctrl-C while it waits for the serving instances takes the new key out again, as a
    // refusal does.
    super::stop_on_signal(&super::vault_peers::STOP);
    if prune {
        return runtime()?.block_on(async {
            let now = crate::clock::Clock::system().now_ms();
            let pruned = crate::rekey::prune(&path, store.as_ref(), now).await?;
            let removed = match pruned.removed.as_slice() {
                [] => String::new(),
                ids => format!(" ({})", ids.join(", ")),
            };
            let before = match &pruned.before {
                Some(before) => format!(
                    " The key file as it was is kept at {} (mode 600): copies of the database made before now need its keys; delete it once they are gone.",
                    before.display()
                ),
                None => String::new(),
            };
            say!(
                "Key file {}: removed {} key(s) that nothing uses{removed}; kept {} (the \
                 current one, any that a serving oauthd seals with, and any that still seal \
                 a stored value: connection tokens, pending device codes, or the data of \
                 states, connect flows among them, which keep their key until they are \
                 consumed or expire).{before}",
                path.display(),
                pruned.removed.len(),
                pruned.kept
            );
            Ok(())
        });
    }
    // Every serving instance must have the key file's keys, and then the new one before
    // anything seals with it: rotating another file (a copy) would re-seal tokens under a
    // key they cannot open.
    let source = KeySource::File {
        path: path.clone(),
        create: false,
    };
    let from = source.describe();
    let loaded = crate::vault::Vault::load(&source)
        .map_err(|e| Fatal(format!("key file {}: {e}", path.display()), 2))?;
    let keys = loaded.key_ids();
    // Every value must open before the file changes: one that does not stopped the
    // re-sealing half-way, the file already sealing with the new key.
    let unopenable = runtime()?.block_on(crate::rekey::unopenable(&loaded, store.as_ref()))?;
    if let Some(first) = unopenable.first() {
        return Err(Fatal(
            format!(
                "{} stored value(s) do not open with the keys in {from}, so they could not \
                 be re-sealed; nothing was changed. The first: {first}. Put the line of each \
                 key named back in the key file (a `.before-prune-` or `.loaded-` file beside \
                 it, or a backup of it, may hold it) and run rekey again; or delete those \
                 connections (`oauthd connections delete`) and connect them again (a \
                 pending device flow's code goes when the flow ends)",
                unopenable.len()
            ),
            2,
        ));
    }
    let clock = crate::clock::Clock::system();
    super::vault_peers::check(
        &keys,
        &from,
        &store,
        &clock,
        super::vault_peers::Unopenable::Warn,
    )?;
    // To put back as it was when a key added goes out again.
    let before = crate::rekey::text_of(&path)?;
    let (new_key_id, added) = match to {
        Some(id) if keys.contains(&id) => (id, false),
        Some(id) => {
            return Err(Fatal(
                format!(
                    "{from} holds no key with id {id} (it has {}): add the key's line (`oauthd keygen` prints a key and its id) as the last line of every instance's key file, then run rekey --to {id} with each",
                    keys.join(", ")
                ),
                2,
            ))
        }
        None => (crate::rekey::add_key(&path)?, true),
    };
    if let Err(mut refused) =
        super::vault_peers::taken_up(&new_key_id, &from, added, &store, &clock)
    {
        if added {
            crate::rekey::take_back(&path, &new_key_id, &before)?;
            if refused.1 == super::INTERRUPTED {
                refused
                    .0
                    .push_str(" (the new key was taken out of the key file again)");
            }
        }
        return Err(refused);
    }
    let (vault, old_keys) = crate::rekey::use_key(&path, &new_key_id)?;
    let resealed = runtime()?
        .block_on(crate::rekey::reseal(
            &vault,
            store.as_ref(),
            std::time::Duration::from_millis(1500),
        ))
        .map_err(|e| {
            // The file changed already: putting back the file as it was would strand the
            // values moved to the new key.
            Fatal(
                format!(
                    "{e}. The key file {} seals with {new_key_id} now, and keeps its older \
                     keys, so every value moved to it or not still opens; do not put back the \
                     key file as it was before this rekey, which lacks {new_key_id}. Once the \
                     key named is back in the key file as a further line, `oauthd rekey --to \
                     {new_key_id}` finishes",
                    path.display()
                ),
                1,
            )
        })?;
    let which = if added { "New vault key" } else { "Vault key" };
    say!(
        "{which} {new_key_id} now seals; re-sealed {resealed} value(s) (connection tokens, pending device codes; states keep the key their data was sealed with until they are consumed or expire). The {old_keys} older key(s) stay in {} so values sealed under them still open; `oauthd rekey --prune` removes them once nothing uses them.",
        path.display()
    );
    Ok(())
}

//! What the start tells of the store's contents, in the log: connections of providers the
//! config no longer names, API keys' scopes, how full the states are, and (beside the
//! start, not in its way) states whose data needs a vault key this oauthd lacks.

use crate::clock::Clock;
use crate::config::Settings;
use crate::states::StateService;
use crate::store::Store;
use crate::vault::KeySource;
use std::sync::Arc;

pub(super) async fn log(
    store: &Arc<dyn Store>,
    states: &Arc<StateService>,
    settings: &Settings,
    clock: &Clock,
    key_from: &str,
    rescue_source: Option<KeySource>,
) {
    let mut held = 0;
    match store.list_connections().await {
        Ok(rows) => {
            held += rows.len();
            if let Some(note) = super::unconfigured::note(
                rows.iter().map(|r| r.provider.as_str()),
                settings,
                super::unconfigured::Reader::Daemon,
            ) {
                log::warn!("{note}");
            }
        }
        Err(e) => log::warn!("could not list the connections to look at their providers: {e}"),
    }
    match store.list_keys().await {
        Ok(keys) => {
            held += keys.len();
            for key in keys.iter().filter(|k| k.revoked_at_ms.is_none()) {
                if let Some(note) = crate::apikeys::provider_scope_note(key) {
                    log::info!("API key {:?}: {note}", key.name);
                }
            }
        }
        Err(e) => log::warn!("could not list the API keys to look at their scopes: {e}"),
    }
    let max_total = settings.states.max_total_states;
    match store.live_states_total(clock.now_ms()).await {
        Ok(total) => {
            if let Some(note) = crate::states::fullness_note(total, max_total) {
                log::warn!("{note}");
            }
            if let (0, 0, crate::store::target::StoreTarget::Redis(target)) =
                (held, total, &settings.store)
            {
                log::warn!("{}", empty_redis(target));
            }
        }
        Err(e) => log::warn!("could not count the store's states: {e}"),
    }
    // Beside the start, not in its way: it reads every live state that holds data.
    let checked = states.clone();
    let missing_from = key_from.to_owned();
    actix_web::rt::spawn(async move {
        match checked.check_stored_data().await {
            Ok(found) => {
                if found.in_clear > 0 {
                    log::warn!(
                        "{} live state(s) hold data an oauthd from before data was sealed stored in clear: theirs is read as it is until they are consumed or expire; data in clear in any other state is refused",
                        found.in_clear
                    );
                }
                if found.keys.is_empty() {
                    return;
                }
                let named: Vec<String> = found
                    .keys
                    .iter()
                    .map(|(id, n)| format!("{id} ({n} state(s))"))
                    .collect();
                let ids: Vec<String> = found.keys.keys().cloned().collect();
                log::warn!(
                    "live states hold data sealed with vault key(s) {} that the key loaded from {missing_from} does not have: they answer 503 vault_error until the key is back. Add the key that was used as another line of the key file (the first line seals, every line opens) rather than replacing the file.{}",
                    named.join(", "),
                    rescue_source.map(|s| s.rescue_hint(&ids)).unwrap_or_default()
                );
            }
            Err(e) => log::warn!("could not check which vault keys live states need: {e}"),
        }
    });
}

/// A Redis store that holds nothing, as the start says it: a new SQLite database is said
/// where it is made; a Redis one was served without a word, also where the data sat under
/// another prefix or database number (a copy made with `--to-prefix`).
fn empty_redis(target: &crate::store::target::RedisTarget) -> String {
    format!(
        "Redis at {} holds no API keys, connections or states under the key prefix {:?}: \
         right on a first start; if oauthd served this Redis before, it used another \
         database number or `redis_prefix` (a copy made with `copy --to-prefix` is under \
         that prefix), or Redis lost its data",
        target.display(),
        target.prefix
    )
}

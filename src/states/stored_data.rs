//! What the store's live states hold, for the operator's commands: the vault keys their
//! data was sealed with, and how full the store is.

use crate::state_data;
use crate::store::{StateStore, StoreError};
use std::collections::BTreeMap;

/// What live states' data was stored as.
#[derive(Debug, Default)]
pub struct StoredData {
    /// The vault keys it was sealed with, each with how many states name it.
    pub keys: BTreeMap<String, usize>,
    /// How many states hold data stored in clear, by an oauthd from before data was
    /// sealed.
    pub in_clear: usize,
}

/// What live states' data was stored as (a maintenance read of every live state that
/// holds data; only the first characters of each are held).
pub async fn stored_data(store: &dyn StateStore, now_ms: i64) -> Result<StoredData, StoreError> {
    let mut found = StoredData::default();
    for (head, n) in store
        .state_data_prefixes(now_ms, state_data::KEY_ID_CHARS)
        .await?
    {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        match state_data::key_id(&head) {
            Some(id) => *found.keys.entry(id).or_insert(0) += n,
            None if !state_data::is_sealed(&head) => found.in_clear += n,
            None => {}
        }
    }
    Ok(found)
}

/// The vault keys live states' data was sealed with, each with how many states name it.
pub async fn data_keys(
    store: &dyn StateStore,
    now_ms: i64,
) -> Result<BTreeMap<String, usize>, StoreError> {
    Ok(stored_data(store, now_ms).await?.keys)
}

/// What to tell the operator when the store holds `total` live states, 80 % or more of
/// `states.max_total_states` (`max`); `None` below that.
pub fn fullness_note(total: u64, max: u64) -> Option<String> {
    (total.saturating_mul(5) >= max.saturating_mul(4)).then(|| {
        format!(
            "{total} live states, {}% of states.max_total_states ({max}): from there apps' \
             creates, and the connect flows apps start, are refused (429 store_full); connect \
             flows from oauthd's page and the CLI have {} more. Raise it, or look for the app \
             that leaves its states unconsumed (oauthd_states_created_total against \
             oauthd_state_consumes_total, by namespace)",
            total.saturating_mul(100) / max.max(1),
            super::own_reserve(max)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_hears_of_a_store_four_fifths_full() {
        assert_eq!(fullness_note(199_999, 250_000), None);
        let note = fullness_note(200_000, 250_000).unwrap();
        assert!(note.starts_with("200000 live states, 80% of"), "{note}");
        assert!(
            note.contains("from oauthd's page and the CLI have 2500 more"),
            "{note}"
        );
        assert!(fullness_note(300_000, 250_000).unwrap().contains("120%"));
    }
}

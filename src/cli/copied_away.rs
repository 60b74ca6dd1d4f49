//! The mark `oauthd copy` leaves in the store it copied from. The copy holds the same
//! refresh tokens: served beside it (a unit restarted before its config named the copy,
//! a second instance left on the old config), the old store refreshes them too, and a
//! provider that rotates refresh tokens takes the second use for a stolen token and ends
//! the grant for both. So what would use them here is refused until the mark is taken
//! out (`oauthd copy --forget-copy`).

use super::open::{open_store, Missing};
use super::{runtime, Fatal};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store::Store;

/// Where a store was copied to, and when, as kept in it.
#[derive(serde::Serialize, serde::Deserialize)]
struct CopiedTo {
    to: String,
    at_ms: i64,
}

/// Notes in `from` that it was copied to `to` (a store's description, never a password).
pub(super) async fn note(from: &dyn Store, to: String, clock: &Clock) -> Result<(), Fatal> {
    let note = CopiedTo {
        to,
        at_ms: clock.now_ms(),
    };
    let text = serde_json::to_string(&note).map_err(|e| Fatal(e.to_string(), 1))?;
    from.note_copied_to(Some(text)).await.map_err(|e| {
        Fatal(
            format!(
                "the copy is whole, but {} could not be marked as copied ({e}): do not serve it again beside the copy",
                from.describe()
            ),
            1,
        )
    })
}

/// What a mark's text says, as "copied to X at T", when it reads.
pub(super) fn describe(text: &str) -> Option<String> {
    let copied = serde_json::from_str::<CopiedTo>(text).ok()?;
    Some(format!(
        "copied to {} at {}",
        copied.to,
        crate::clock::rfc3339(copied.at_ms)
    ))
}

/// Refuses `doing` (what would use the store's refresh tokens: "serving it") on a store
/// a copy was made of (exit 2). A mark that does not read is no refusal.
pub(super) async fn refuse(store: &dyn Store, doing: &str) -> Result<(), Fatal> {
    let Some(copied) = copied(store).await else {
        return Ok(());
    };
    Err(Fatal(
        format!(
            "{} was {copied} by `oauthd copy` (or is a backup of a store that was, restored), and holds the refresh tokens it had then: {doing} would use them beside the copy (a provider that rotates refresh tokens takes a second use for a stolen token and ends the grant for both; a revocation ends it for both). Serve the copy (the config's `store`, or `db`, naming it). To come back to this store, copy the other way (`oauthd copy` with the copy's settings, into a new file), which keeps what changed since; or, with the copy stopped for good, `oauthd copy --forget-copy` with this store's settings takes the mark out (refresh tokens rotated since are then lost)",
            store.describe(),
        ),
        2,
    ))
}

/// Where `store` was copied to, and when ("copied to X at T"), when it holds a mark that
/// reads.
pub(super) async fn copied(store: &dyn Store) -> Option<String> {
    let text = store.copied_to().await.ok()??;
    describe(&text)
}

/// The settings that open the copy a mark names (`Store::describe` of it: `database
/// PATH`, or `Redis URL (key prefix "P")` with no password), where it can be opened.
fn copy_settings(settings: &Settings, text: &str) -> Option<Settings> {
    use crate::store::target::StoreTarget;
    let copied = serde_json::from_str::<CopiedTo>(text).ok()?;
    let mut copy = settings.clone();
    if let Some(path) = copied.to.strip_prefix("database ") {
        copy.store = StoreTarget::Sqlite;
        copy.db = std::path::PathBuf::from(path);
        return copy.db.exists().then_some(copy);
    }
    let (url, prefix) = copied
        .to
        .strip_prefix("Redis ")?
        .split_once(" (key prefix ")?;
    let prefix: String = serde_json::from_str(prefix.strip_suffix(')')?).ok()?;
    copy.store = crate::config::other_store(url, Some(prefix)).ok()?;
    Some(copy)
}

/// `oauthd copy --forget-copy`: takes the mark out.
pub(super) fn forget(settings: Settings) -> Result<(), Fatal> {
    let store = open_store(&settings, Missing::Refuse)?;
    let rt = runtime()?;
    let held = rt.block_on(store.copied_to())?;
    let Some(text) = held else {
        say!(
            "{} holds no mark of a copy: nothing to do",
            store.describe()
        );
        return Ok(());
    };
    // Right only with the copy stopped for good: refused while an oauthd serves it, where
    // the copy can be asked (its Redis may need OAUTHD_REDIS_PASSWORD; one gone for good
    // cannot be asked, and is no reason to refuse).
    if let Some(copy) = copy_settings(&settings, &text) {
        let asked = open_store(&copy, Missing::Refuse).and_then(|copy| {
            rt.block_on(super::transfer::refuse_served(
                copy.as_ref(),
                "the copy",
                &Clock::system(),
            ))
        });
        match asked {
            Err(Fatal(served, 2)) => return Err(Fatal(served, 2)),
            Err(Fatal(why, _)) => say!("whether an oauthd serves the copy could not be asked ({why}): take the mark out only with the copy stopped for good"),
            Ok(()) => {}
        }
    }
    rt.block_on(store.note_copied_to(None))?;
    let to = describe(&text)
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    say!(
        "took out the mark of the copy{to} from {}: oauthd serves it again. Never beside the copy. The notifications that were pending at the copy are sent from here again, with their webhook-ids (a receiver that keeps them tells the ones the copy sent)",
        store.describe()
    );
    Ok(())
}

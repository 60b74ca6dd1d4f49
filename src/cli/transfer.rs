//! `oauthd copy --to STORE`: the API keys, connections and live states of the configured
//! store, as stored (sealed), into another: from one SQLite file to a Redis that several
//! instances share, and back, with the notifications not yet delivered. Sign-ins, device
//! flows under way and dead deliveries stay behind (each said).

use super::open::{open_store, Missing};
use super::{runtime, Fatal};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store::outbox::{DeliveryFilter, NewDelivery};
use crate::store::target::StoreTarget;
use crate::store::{InsertRules, Inserted, Store, StoreError};
use crate::vault::KeySource;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What was copied, and what was left behind.
#[derive(Default)]
struct Copied {
    keys: usize,
    connections: usize,
    states: usize,
    revoked_keys: usize,
    /// Deliveries not yet made, which the oauthd serving the copy makes.
    deliveries: usize,
    /// Dead deliveries, left behind.
    dead_deliveries: usize,
}

pub(super) fn copy(settings: Settings, to: &str, to_prefix: Option<String>) -> Result<(), Fatal> {
    let destination = destination(&settings, to, to_prefix)?;
    super::open::refuse_a_backup(&settings, "a store copied from it and served")?;
    let source = open_store(&settings, Missing::Refuse)?;
    let clock = Clock::system();
    let rt = runtime()?;
    rt.block_on(refuse_served(
        source.as_ref(),
        "the store it copies from",
        &clock,
    ))?;
    // Copied once already: a second copy would hold the same refresh tokens, grown stale
    // if the first was served, and the mark would name the second only.
    rt.block_on(super::copied_away::refuse(
        source.as_ref(),
        "another copy made of it",
    ))?;
    if same_store(&settings, &destination) {
        return Err(Fatal(
            format!(
                "--to names the store it copies from, {} (or, on one Redis, a prefix that holds its keys or is held in its own)",
                source.describe()
            ),
            2,
        ));
    }
    refuse_a_key_that_does_not_open(&settings, &source)?;
    let key = KeyPlan::for_destination(&settings, &destination)?;
    let into = open_store(&destination, Missing::CopyInto)?;
    rt.block_on(async {
        refuse_served(into.as_ref(), "the store it copies into", &clock).await?;
        refuse_not_empty(into.as_ref(), &clock).await?;
        let part = |why: String, code| {
            Fatal(
                format!(
                    "{why}; {} now holds part of the copy: empty it before trying again ({})",
                    into.describe(),
                    how_to_empty(&destination)
                ),
                code,
            )
        };
        // A copy cut short by a signal (Ctrl-C, a stop) says what it leaves behind, as one
        // cut short by an error does: the part copied looks like a store to everything else.
        let copied = tokio::select! {
            copied = copy_all(&source, &into, &settings, &clock) => {
                copied.map_err(|e| part(e.to_string(), 1))?
            }
            (signal, code) = super::process::interrupted() => return Err(part(format!("interrupted by {signal}"), code)),
        };
        report(&source, &into, &copied, &clock).await;
        Ok::<(), Fatal>(())
    })?;
    // The copy is whole: its key is put in place (or said) before the mark, so that a
    // mark that cannot be written leaves a copy that serves.
    key.carry_out(&destination)?;
    rt.block_on(super::copied_away::note(
        source.as_ref(),
        into.describe(),
        &clock,
    ))
}

/// Refuses a copy run with a vault key that does not open the source's tokens (a key
/// made for the new store before the move, `OAUTHD_KEY_FILE` pointing at it): the copy
/// went ahead, said to serve it with that key, which could not, and marked the source as
/// copied, which could then not be served either. Nothing is copied or marked; the key
/// file beside a SQLite database is named when it opens them. A key that cannot be loaded
/// at all is left to the copy's own refusal.
fn refuse_a_key_that_does_not_open(
    settings: &Settings,
    source: &Arc<dyn Store>,
) -> Result<(), Fatal> {
    let Ok(key_source) = super::key_source(settings) else {
        return Ok(());
    };
    let read_only = match key_source {
        KeySource::File { path, .. } => KeySource::File {
            path,
            create: false,
        },
        inline => inline,
    };
    let Ok(vault) = crate::vault::VaultHandle::load(read_only.clone()) else {
        return Ok(());
    };
    let known = vault.key_ids();
    // The keys the copy carries sealed values of: its connections' tokens (every row, as
    // the copy reads them) and its live states' data.
    let rt = runtime()?;
    let mut used: std::collections::BTreeSet<String> = rt
        .block_on(source.list_all_connections())?
        .iter()
        .filter_map(|row| crate::vault::sealed_key_id(&row.access_token))
        .collect();
    let now_ms = Clock::system().now_ms();
    used.extend(
        rt.block_on(crate::states::data_keys(source.as_ref(), now_ms))?
            .into_keys(),
    );
    let missing: Vec<&str> = used
        .iter()
        .filter(|id| !known.contains(*id))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Named only when it opens everything the copy carries.
    let beside = crate::paths::with_suffix(&settings.db, ".key");
    let opens = matches!(settings.store, StoreTarget::Sqlite)
        && std::fs::read_to_string(&beside)
            .ok()
            .and_then(|text| crate::vault::key_ids(&text).ok())
            .is_some_and(|ids| used.iter().all(|u| ids.contains(u)));
    let which = if opens {
        format!(
            ": the key file beside the database, {}, has it (unset OAUTHD_KEY_FILE and OAUTHD_KEY)",
            beside.display()
        )
    } else {
        " (the key the store is served with)".to_owned()
    };
    Err(Fatal(
        format!(
            "{} holds tokens or live states' data sealed with vault key(s) {}, which the vault key loaded from {} does not have ({}): a copy keeps them sealed as they are, and would serve only with the key that sealed them. Run the copy with that key{which}. Nothing was copied.",
            source.describe(),
            missing.join(", "),
            read_only.describe(),
            known.join(", ")
        ),
        2,
    ))
}

/// The settings of the store named by `--to`: a Redis URL, or a SQLite file.
fn destination(
    settings: &Settings,
    to: &str,
    to_prefix: Option<String>,
) -> Result<Settings, Fatal> {
    let mut into = settings.clone();
    if to.starts_with("redis://") || to.starts_with("rediss://") {
        into.store = crate::config::other_store(
            to,
            Some(to_prefix.unwrap_or(settings.redis_prefix.clone())),
        )
        .map_err(|e| Fatal(e.to_string(), 2))?;
    } else {
        if to.is_empty() || to == "sqlite" {
            return Err(Fatal(
                "--to: name a Redis (redis://HOST:PORT/DB) or the path of a SQLite file".into(),
                2,
            ));
        }
        if to_prefix.is_some() {
            return Err(Fatal(
                "--to-prefix is for a Redis destination; --to names a SQLite file".into(),
                2,
            ));
        }
        into.store = StoreTarget::Sqlite;
        into.db = PathBuf::from(to);
    }
    Ok(into)
}

/// Whether both settings name one store: one SQLite file (by its place on disk), or one
/// Redis database under one prefix.
fn same_store(a: &Settings, b: &Settings) -> bool {
    match (&a.store, &b.store) {
        (StoreTarget::Sqlite, StoreTarget::Sqlite) => {
            let place = |p: &Path| std::fs::canonicalize(p).ok();
            place(&a.db).is_some() && place(&a.db) == place(&b.db)
        }
        // Prefixes that nest share keys: one's `prefix*` holds the other's.
        (StoreTarget::Redis(x), StoreTarget::Redis(y)) => {
            x.display() == y.display()
                && (x.prefix.starts_with(&y.prefix) || y.prefix.starts_with(&x.prefix))
        }
        _ => false,
    }
}

/// What to remove to start again after a copy cut short.
fn how_to_empty(destination: &Settings) -> String {
    match &destination.store {
        StoreTarget::Sqlite => format!(
            "delete {} and its -wal and -shm files",
            destination.db.display()
        ),
        StoreTarget::Redis(t) => format!(
            "redis-cli -u {url} --scan --pattern '{}*' | xargs redis-cli -u {url} unlink, with -a and its password if it has one",
            t.prefix,
            url = t.display()
        ),
    }
}

/// An oauthd serving a store tells its vault keys there every 20 s, good for a minute: a
/// copy made meanwhile would miss what it writes after (a refresh token it rotates, and
/// the copy's connection then refreshes with a spent one).
pub(super) async fn refuse_served(
    store: &dyn Store,
    which: &str,
    clock: &Clock,
) -> Result<(), Fatal> {
    let serving = store
        .vault_keys_in_use(clock.now_ms())
        .await
        .map_err(|e| Fatal(e.to_string(), 1))?;
    match serving.iter().map(|s| s.since_ms).min() {
        None => Ok(()),
        Some(since) => {
            // Until when the last telling holds: an oauthd stopped by a kill counts till
            // then, so that is when to try again if none serves.
            let until = serving.iter().map(|s| s.until_ms).max().unwrap_or(since);
            Err(Fatal(
                format!(
                    "{which}, {}, is served by {} oauthd (serving since {}): stop every oauthd serving it first, so that nothing changes under the copy (one stopped by a kill is counted until its last word runs out: if none serves, run this again after {})",
                    store.describe(),
                    serving.len(),
                    crate::clock::rfc3339(since),
                    crate::clock::rfc3339(until)
                ),
                2,
            ))
        }
    }
}

/// The destination must hold no API key, connection or live state: a copy never mixes
/// two stores' data.
async fn refuse_not_empty(into: &dyn Store, clock: &Clock) -> Result<(), Fatal> {
    let io = |e: StoreError| Fatal(e.to_string(), 1);
    let keys = into.list_keys().await.map_err(io)?.len();
    let connections = into.list_all_connections().await.map_err(io)?.len();
    let states = into.live_states_total(clock.now_ms()).await.map_err(io)?;
    if keys + connections > 0 || states > 0 {
        return Err(Fatal(
            format!(
                "{} holds oauthd data already (API keys: {keys}, connections: {connections}, live states: {states}): a copy goes only into a store that holds none",
                into.describe()
            ),
            2,
        ));
    }
    Ok(())
}

async fn copy_all(
    from: &Arc<dyn Store>,
    into: &Arc<dyn Store>,
    settings: &Settings,
    clock: &Clock,
) -> Result<Copied, StoreError> {
    let mut copied = Copied {
        revoked_keys: from
            .list_keys()
            .await?
            .iter()
            .filter(|k| k.revoked_at_ms.is_some())
            .count(),
        ..Copied::default()
    };
    for (key, hash) in from.keys_to_copy().await? {
        let used = key.last_used_at_ms;
        into.insert_key(key, hash).await?;
        if let Some(at) = used {
            into.note_key_used(hash, at).await?;
        }
        copied.keys += 1;
    }
    for row in from.list_all_connections().await? {
        into.put_connection(row).await?;
        copied.connections += 1;
    }
    let now_ms = clock.now_ms();
    let grace_ms = i64::try_from(settings.sweep.grace.as_millis()).unwrap_or(i64::MAX);
    for row in from.states_to_copy(now_ms).await? {
        let rules = InsertRules {
            max_live: u64::MAX,
            now_ms,
            keep_until_ms: row.expires_at_ms.saturating_add(grace_ms),
            replace_subject: false,
            max_per_subject: u64::MAX,
            max_total: u64::MAX,
            max_tombstones: u64::MAX,
            max_per_key: u64::MAX,
        };
        match into.insert_state(row, rules).await? {
            Inserted::Stored { .. } => copied.states += 1,
            // No cap applies to a copy.
            Inserted::NamespaceFull
            | Inserted::SubjectFull { .. }
            | Inserted::StoreFull
            | Inserted::KeyFull => {}
        }
    }
    // Not left behind in a store that may never be served again: the receiver would
    // never hear of what happened before the copy (delivered at least once). Each comes
    // with its event id (`webhook-id`), due at once, its attempts counted afresh; and the
    // targets that answered 410 Gone, whose deliveries are not sent.
    for gone in from.gone_targets().await? {
        into.set_target_gone(gone).await?;
    }
    let pending: Vec<NewDelivery> = from
        .list_deliveries(DeliveryFilter::Pending, None, u32::MAX)
        .await?
        .into_iter()
        .map(|d| NewDelivery {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            target: d.target,
            body: d.body,
            created_at_ms: d.created_at_ms,
            deadline_ms: d.deadline_ms,
        })
        .collect();
    copied.deliveries = pending.len();
    // In batches: one write of a day's backlog held Redis, which runs one script at a
    // time, for longer than a command may take.
    let mut pending = pending.into_iter().peekable();
    while pending.peek().is_some() {
        into.add_deliveries(pending.by_ref().take(500).collect())
            .await?;
    }
    copied.dead_deliveries = from
        .list_deliveries(DeliveryFilter::Dead, None, u32::MAX)
        .await?
        .len();
    Ok(copied)
}

/// What was copied and what was not, on stdout.
async fn report(from: &Arc<dyn Store>, into: &Arc<dyn Store>, copied: &Copied, clock: &Clock) {
    let mut lines = vec![
        format!("copied {} into {}:", from.describe(), into.describe()),
        format!(
            "  API keys: {}{}",
            copied.keys,
            match copied.revoked_keys {
                0 => String::new(),
                n => format!(" (not the {n} revoked)"),
            }
        ),
        format!(
            "  connections: {} (tokens sealed as they were)",
            copied.connections
        ),
        format!("  live states: {}", copied.states),
        format!(
            "  notifications not yet delivered: {}{}",
            copied.deliveries,
            match copied.deliveries {
                0 => "",
                _ => " (the oauthd serving the copy sends them)",
            }
        ),
    ];
    let mut behind = Vec::new();
    if from
        .any_admin_session(clock.now_ms())
        .await
        .unwrap_or(false)
    {
        behind.push("sign-ins to the page (sign in again: `oauthd admin link`)".to_owned());
    }
    if copied.dead_deliveries > 0 {
        behind.push(format!(
            "{} dead notifications (retried in vain; `oauthd events retry --dead` sends them again, before a copy)",
            copied.dead_deliveries
        ));
    }
    if let Ok(flows) = from.all_pending_device_flows().await {
        if !flows.is_empty() {
            behind.push(format!("{} device flows under way", flows.len()));
        }
    }
    if !behind.is_empty() {
        lines.push(format!("not copied: {}", behind.join(", ")));
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{}", lines.join("\n"));
}

/// What the copy's vault key needs: its tokens and states' data open only with the
/// source's key. A SQLite file with no key named (`<db>.key` beside it, the default) gets
/// a copy of the key file; otherwise what to give the oauthd that serves it is said.
/// Decided before anything is copied, so that a key file that cannot be put in place
/// stops the copy, not the start of the copy later.
enum KeyPlan {
    /// Write this key file's text beside the new database.
    Write(PathBuf, zeroize::Zeroizing<String>),
    /// The same key is there already.
    There(PathBuf),
    /// Say how the copy is served.
    Say(String),
}

impl KeyPlan {
    fn for_destination(settings: &Settings, destination: &Settings) -> Result<KeyPlan, Fatal> {
        let beside_default = matches!(destination.store, StoreTarget::Sqlite)
            && destination_key_default(destination);
        match &settings.key_source {
            KeySource::File { path, .. } if beside_default => {
                let beside = crate::paths::with_suffix(&destination.db, ".key");
                let text = std::fs::read_to_string(path)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|e| {
                        Fatal(
                            format!(
                                "the vault key file {}: {e}; the copy opens only with it",
                                path.display()
                            ),
                            1,
                        )
                    })?;
                match std::fs::read_to_string(&beside) {
                    Ok(there) if there == *text => Ok(KeyPlan::There(beside)),
                    Ok(_) => Err(Fatal(
                        format!(
                            "{} holds another vault key than {}, which the copy needs: move it away first (nothing was copied)",
                            beside.display(),
                            path.display()
                        ),
                        2,
                    )),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyPlan::Write(beside, text)),
                    Err(e) => Err(Fatal(
                        format!("{}: {e}; it must hold the vault key the copy needs, or not be there (nothing was copied)", beside.display()),
                        2,
                    )),
                }
            }
            KeySource::File { path, .. } => Ok(KeyPlan::Say(format!(
                "serve the copy with the vault key it was sealed with: OAUTHD_KEY_FILE={}",
                std::fs::canonicalize(path)
                    .unwrap_or(path.clone())
                    .display()
            ))),
            KeySource::Inline(_) => Ok(KeyPlan::Say(
                "serve the copy with the vault key it was sealed with: the same OAUTHD_KEY"
                    .to_owned(),
            )),
        }
    }

    /// Writes the key file where planned, and says how the copy is served.
    fn carry_out(self, destination: &Settings) -> Result<(), Fatal> {
        let said = match self {
            KeyPlan::Write(beside, text) => {
                crate::vault::write_key_file(&beside, &text).map_err(|e| {
                    Fatal(
                        format!("writing the vault key file {}: {e}", beside.display()),
                        1,
                    )
                })?;
                format!(
                    "the vault key is copied to {}, beside the new database",
                    beside.display()
                )
            }
            KeyPlan::There(beside) => format!("{} holds the vault key already", beside.display()),
            KeyPlan::Say(said) => said,
        };
        let serve = match &destination.store {
            StoreTarget::Sqlite => format!("--db {}", destination.db.display()),
            // What the URL shown leaves out must be given too: started on the same Redis
            // under the default prefix, oauthd served an empty store without a word.
            StoreTarget::Redis(t) => {
                let mut serve = format!("--store {}", t.display_with_user());
                if t.has_password() {
                    serve.push_str(" with its password in OAUTHD_REDIS_PASSWORD_FILE");
                }
                if t.prefix != crate::store::target::DEFAULT_REDIS_PREFIX {
                    serve.push_str(&format!(
                        " and `redis_prefix = {}` in the config file",
                        toml::Value::String(t.prefix.clone())
                    ));
                }
                serve
            }
        };
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout().lock(),
            "{said}. Start oauthd on the copy ({serve}, or `store`/`db` in the config file) and not on the old store again: both would refresh the same connections, and a provider that rotates refresh tokens then refuses one of them"
        );
        Ok(())
    }
}

/// Whether the destination's oauthd would read its key from beside its file (no
/// `OAUTHD_KEY` or `OAUTHD_KEY_FILE` set).
fn destination_key_default(destination: &Settings) -> bool {
    matches!(destination.key_source, KeySource::File { create: true, .. })
}

//! Serving instances on one store tell each other which vault keys they use. One started
//! with a key another cannot open would split the data between them: what it seals (a
//! state's data, tokens) would not open in the other, and the other's not in it. So a
//! start, and a command that seals, is refused while another instance seals with a key
//! it does not have; of two that start together that way, the later gives way.

use super::{runtime, Fatal};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::store::{Store, StoreError, VaultKeysInUse, VaultKeysNote};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a serving instance looks at its keys (a key file changed meanwhile, reloaded
/// within a second, is told by the next look), how often it tells them unchanged, and how
/// long each telling holds: an instance killed without taking its keys back stops
/// counting after `HOLDS_FOR`.
const LOOK_EVERY: Duration = Duration::from_secs(1);
const TELL_EVERY: Duration = Duration::from_secs(20);
const HOLDS_FOR: Duration = Duration::from_secs(60);
/// How long a start waits for another instance to tell of keys it has just reloaded (a
/// `rekey` run a moment before) before it is refused.
const SETTLE: Duration = Duration::from_secs(3);
/// How long `rekey` waits for every serving instance to tell of the key it has just added.
const TAKE_UP: Duration = Duration::from_secs(5);

/// The serving instances (`me` aside) that seal with a key not in `keys`.
async fn lacking(
    store: &dyn Store,
    keys: &[String],
    now_ms: i64,
    me: Option<&str>,
) -> Result<Vec<VaultKeysInUse>, StoreError> {
    Ok(store
        .vault_keys_in_use(now_ms)
        .await?
        .into_iter()
        .filter(|o| Some(o.instance.as_str()) != me)
        .filter(|o| o.keys.first().is_some_and(|k| !keys.contains(k)))
        .collect())
}

/// `beside`: the key file beside the SQLite database, named when it holds their key.
fn refusal(
    theirs: &VaultKeysInUse,
    ours: &[String],
    from: &str,
    beside: Option<&std::path::Path>,
) -> Fatal {
    let key = theirs.keys.first().map_or("", String::as_str);
    Fatal(
        format!(
            "another oauthd serving this store (it said so within the last {}s) seals with vault key {key}, which the key loaded from {from} does not have (it has {}): what each sealed would not open in the other (states answering 503 vault_error, tokens that cannot be read). Give every instance, and every command, the same key (the same key file, or a copy of it){}; an oauthd stopped without saying so stops counting within {}s",
            HOLDS_FOR.as_secs(),
            ours.join(", "),
            serving_key_hint(Some(key), beside),
            HOLDS_FOR.as_secs()
        ),
        2,
    )
}

/// Where the key a serving instance seals with is to be found, when that is the key file
/// `beside` the SQLite database (the daemon reads it; a command run with OAUTHD_KEY_FILE
/// naming another did not): `: the key file beside the database, PATH, holds it (unset
/// OAUTHD_KEY_FILE)`, else nothing.
pub(super) fn serving_key_hint(key: Option<&str>, beside: Option<&std::path::Path>) -> String {
    let (Some(key), Some(beside)) = (key, beside) else {
        return String::new();
    };
    let holds = std::fs::read_to_string(beside)
        .ok()
        .and_then(|text| crate::vault::key_ids(&text).ok())
        .is_some_and(|ids| ids.iter().any(|id| id == key));
    if holds && std::env::var_os("OAUTHD_KEY_FILE").is_some() {
        format!(
            ": the key file beside the database, {}, holds it (unset OAUTHD_KEY_FILE)",
            beside.display()
        )
    } else if holds {
        format!(
            ": the key file beside the database, {}, holds it",
            beside.display()
        )
    } else {
        String::new()
    }
}

/// Set by Ctrl-C or SIGTERM while `rekey` waits (`cli::stop_on_signal`): the wait ends
/// as a refusal, and `rekey` takes its new key out again.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// Looks every 250 ms until `blocker` finds nothing or `within` has passed; returns what
/// it found the last time (`None`: nothing).
fn settle<T>(
    within: Duration,
    mut blocker: impl FnMut() -> Result<Option<T>, Fatal>,
) -> Result<Option<T>, Fatal> {
    let began = Instant::now();
    loop {
        if STOP.load(Ordering::Relaxed) {
            return Err(Fatal(
                "interrupted while waiting for the serving instances: nothing changed".into(),
                super::INTERRUPTED,
            ));
        }
        let found = blocker()?;
        if found.is_none() || began.elapsed() >= within {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What a process does when a serving instance cannot open the key it seals with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unopenable {
    /// Warns: a start, or a command that seals nothing.
    Warn,
    /// Refuses: a command that seals tokens (`connect`, `connections refresh` and
    /// `import`), whose every token would answer `503 vault_error` in that instance. With
    /// the key file beside the SQLite database, which the refusal names when it holds the
    /// serving instance's key.
    Refuse(Option<std::path::PathBuf>),
}

/// Refuses when another serving instance seals with a key not in `ours` (the ids of the
/// keys loaded from `from`, the sealing one first), after giving it `SETTLE` to tell of
/// keys it has just reloaded; when another cannot open the key `ours` seals with, warns,
/// or with `Unopenable::Refuse` refuses once it has had `SETTLE` to tell of that key.
pub(super) fn check(
    ours: &[String],
    from: &str,
    store: &Arc<dyn Store>,
    clock: &Clock,
    unopenable: Unopenable,
) -> Result<(), Fatal> {
    let rt = runtime()?;
    let blocking = settle(SETTLE, || {
        let others = rt.block_on(lacking(store.as_ref(), ours, clock.now_ms(), None))?;
        Ok(others.into_iter().next())
    })?;
    if let Some(first) = blocking {
        let beside = match &unopenable {
            Unopenable::Refuse(beside) => beside.as_deref(),
            Unopenable::Warn => None,
        };
        return Err(refusal(&first, ours, from, beside));
    }
    if let (Some(current), Unopenable::Refuse(beside)) = (ours.first(), &unopenable) {
        let behind = settle(SETTLE, || {
            let told = rt.block_on(store.vault_keys_in_use(clock.now_ms()))?;
            Ok(told.into_iter().find(|o| !o.keys.contains(current)))
        })?;
        if let Some(other) = behind {
            return Err(Fatal(
                format!(
                    "an oauthd serving this store (it said so within the last {}s) does not have vault key {current}, which the key loaded from {from} seals with (it has {}): every token this command sealed would answer 503 vault_error there. Nothing was changed. Run the command with the key that oauthd serves with (the same key file, or a copy of it){}",
                    HOLDS_FOR.as_secs(),
                    other.keys.join(", "),
                    serving_key_hint(other.keys.first().map(String::as_str), beside.as_deref()),
                ),
                2,
            ));
        }
    }
    let told = rt.block_on(store.vault_keys_in_use(clock.now_ms()))?;
    if let Some(current) = ours.first() {
        for other in told.iter().filter(|o| !o.keys.contains(current)) {
            log::warn!(
                "another oauthd serving this store does not have vault key {current}, which this one seals with (it has {}): what this one seals will not open there until its key file lists {current} too (the first line seals, every line opens)",
                other.keys.join(", ")
            );
        }
    }
    Ok(())
}

/// Waits until every serving instance tells it has `key`, which `rekey` is about to seal
/// with (`added`: it has just added it to the key file at `from`, as its last line; each
/// instance reloads the file within a second and tells the next): one that has not within
/// `TAKE_UP` reads another key file, and could not open what is sealed under `key`.
pub(super) fn taken_up(
    key: &str,
    from: &str,
    added: bool,
    store: &Arc<dyn Store>,
    clock: &Clock,
) -> Result<(), Fatal> {
    let rt = runtime()?;
    let behind = settle(TAKE_UP, || {
        let told = rt.block_on(store.vault_keys_in_use(clock.now_ms()))?;
        Ok(told.into_iter().find(|o| !o.keys.iter().any(|k| k == key)))
    })?;
    let Some(behind) = behind else {
        return Ok(());
    };
    let what = if added {
        format!(
            "within {}s of its being added to {from}: it reads another key file (a copy of this one, on this host or another), or its key from OAUTHD_KEY, which it cannot re-read. Nothing changed: the new key was taken out of {from} again. Where instances read their own copies, add one new key (`oauthd keygen` prints a key and its id) as the last line of every copy (there it only opens), then run `oauthd rekey --to <id>` with each copy; an oauthd given OAUTHD_KEY is rotated once it reads its key from a file (OAUTHD_KEY_FILE) instead",
            TAKE_UP.as_secs()
        )
    } else {
        format!(
            "within {}s: it reads another key file, which lacks the key, or its key from OAUTHD_KEY, which it cannot re-read. Nothing changed. Add the key's line as the last line of that file (there it only opens), then run this again",
            TAKE_UP.as_secs()
        )
    };
    Err(Fatal(
        format!(
            "another oauthd serving this store (since {}, with key(s) {}; or one stopped without saying so in the last {}s, which still counts) has not loaded vault key {key} {what}",
            crate::clock::rfc3339(behind.since_ms),
            behind.keys.join(", "),
            HOLDS_FOR.as_secs()
        ),
        2,
    ))
}

/// Tells the other instances this one's vault keys, and looks at theirs while it serves.
pub(super) struct Teller {
    instance: String,
    /// When it first told, as the store recorded it (`None` until it could tell).
    since_ms: Option<i64>,
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    notifier: Arc<crate::notify::Notifier>,
    clock: Clock,
    from: String,
    told: Option<(Vec<String>, Instant)>,
    /// The id the store held for itself at the last look (`Store::store_id`).
    store_id: Option<String>,
    failing: bool,
    /// The instances this one said it cannot share data with, and when.
    said: Vec<(String, Instant)>,
    /// The instances whose data was split from this one's at the last look.
    seen: Vec<String>,
    /// The instances this one warned of providers configured otherwise than its own.
    warned_providers: Vec<String>,
    /// When this one began, and whether it said which others serve the store.
    started: Instant,
    others_noted: bool,
}

impl Teller {
    pub(super) fn new(
        store: Arc<dyn Store>,
        broker: Arc<Broker>,
        notifier: Arc<crate::notify::Notifier>,
        clock: Clock,
        from: String,
    ) -> Teller {
        Teller {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            since_ms: None,
            store,
            broker,
            notifier,
            clock,
            from,
            told: None,
            store_id: None,
            failing: false,
            said: Vec::new(),
            seen: Vec::new(),
            warned_providers: Vec::new(),
            started: Instant::now(),
            others_noted: false,
        }
    }

    /// Tells at start, before the first request, then looks again: an instance started
    /// at the same moment with a key this one lacks (each found nothing when it checked)
    /// is seen by the later of the two, which stops here. Of two that told before either
    /// looked, the later sees the earlier; of one that looked before the other told, the
    /// other told later and sees it. The store stamps each first telling after every
    /// other it holds, so "later" is the order the store took them in, whatever the clocks
    /// read.
    pub(super) async fn start(&mut self) -> Result<(), Fatal> {
        self.look_for_loss().await;
        self.tell().await;
        let keys = self.broker.vault_key_ids();
        let now = self.clock.now_ms();
        let ours = self.since_ms.unwrap_or(now);
        let others = lacking(self.store.as_ref(), &keys, now, Some(&self.instance)).await?;
        if let Some(older) = others.iter().find(|o| o.since_ms <= ours) {
            let _ = self.store.forget_vault_keys(&self.instance).await;
            return Err(refusal(older, &keys, &self.from, None));
        }
        Ok(())
    }

    /// Says, once, that other instances serve the store too: on purpose (several on one
    /// Redis, or beside each other on one SQLite file), or one left running by mistake.
    /// Looked at once every instance still serving has told again since this one's start
    /// (`TELL_EVERY`): one killed shortly before (a crash and a restart) counts no more.
    fn note_others(&mut self, told: &[VaultKeysInUse]) {
        if self.others_noted || self.started.elapsed() <= TELL_EVERY + LOOK_EVERY {
            return;
        }
        let Some(since) = self.since_ms else { return };
        self.others_noted = true;
        let holds = i64::try_from(HOLDS_FOR.as_millis()).unwrap_or(i64::MAX);
        let others: Vec<&VaultKeysInUse> = told
            .iter()
            .filter(|o| o.instance != self.instance && o.until_ms > since.saturating_add(holds))
            .collect();
        if let Some(first) = others.iter().map(|o| o.since_ms).min() {
            log::info!(
                "{} other oauthd(s) serve this store too, the first since {}: they share its API keys, connections and states (`oauthd check` counts them; if one was left running by mistake, stop it)",
                others.len(),
                crate::clock::rfc3339(first)
            );
        }
    }

    /// Tells when the keys changed (a key file reloaded) or `TELL_EVERY` after the last.
    async fn tell(&mut self) {
        let keys = self.broker.vault_key_ids();
        let due = self
            .told
            .as_ref()
            .is_none_or(|(told, at)| *told != keys || at.elapsed() >= TELL_EVERY);
        if !due {
            return;
        }
        let note = VaultKeysNote {
            instance: self.instance.clone(),
            keys: keys.clone(),
            since_ms: self.since_ms,
            holds: HOLDS_FOR,
            providers: told_settings(&self.broker, &self.notifier),
        };
        match self.store.note_vault_keys(note, self.clock.now_ms()).await {
            Ok(since) => {
                self.failing = false;
                self.since_ms = Some(since);
                self.told = Some((keys, Instant::now()));
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::warn!("could not tell other instances which vault keys this one uses: {e}");
            }
            Err(_) => {}
        }
    }

    /// Looks for another serving instance whose data is split from this one's: it seals
    /// with a key this one lacks, or lacks the key this one seals with. A start is refused
    /// or warned of that, but it comes about when a key file is changed by hand, or an
    /// instance starts while the other's note was not in the store (a Redis restart or
    /// flush lost it). Said as an error, on both sides, once per `TELL_EVERY` and
    /// instance while it lasts, once seen at two looks in a row (one that gives way at
    /// its start, or a key file half-way through a reload, is gone by then).
    async fn look(&mut self) {
        let keys = self.broker.vault_key_ids();
        let Some(ours) = keys.first() else { return };
        let Ok(told) = self.store.vault_keys_in_use(self.clock.now_ms()).await else {
            return;
        };
        if !told.iter().any(|o| o.instance == self.instance) {
            // Gone: ended (the store not reached for a while, a clock stepped ahead, a
            // suspend) or lost with the rest (`look_for_loss`). Told again now, not in 20 s.
            self.told = None;
        }
        self.compare_providers(&told);
        self.note_others(&told);
        let split: Vec<VaultKeysInUse> = told
            .into_iter()
            .filter(|o| o.instance != self.instance)
            .filter(|o| o.keys.first().is_some_and(|k| !keys.contains(k)) || !o.keys.contains(ours))
            .collect();
        self.said
            .retain(|(i, at)| at.elapsed() < TELL_EVERY && split.iter().any(|o| o.instance == *i));
        let seen_before = std::mem::replace(
            &mut self.seen,
            split.iter().map(|o| o.instance.clone()).collect(),
        );
        for other in split {
            if !seen_before.contains(&other.instance)
                || self.said.iter().any(|(i, _)| *i == other.instance)
            {
                continue;
            }
            let theirs = other.keys.first().map_or("", String::as_str);
            let what = if keys.iter().any(|k| k == theirs) {
                format!("does not have vault key {ours}, which this one seals with (it has {}): what this one seals does not open there", other.keys.join(", "))
            } else {
                format!(
                    "seals with vault key {theirs}, which the key loaded from {} does not have (it has {}): what it seals does not open here",
                    self.from,
                    keys.join(", ")
                )
            };
            log::error!(
                "another oauthd serving this store since {} {what} (states answering 503 vault_error, tokens that cannot be read). Their key files differ (one changed by hand, or a copy not kept in step), or one started while the other's note of its keys was not in the store (a Redis restart or flush). Give every instance the same keys: each key file must hold the key every other one seals with",
                crate::clock::rfc3339(other.since_ms),
            );
            self.said.push((other.instance, Instant::now()));
        }
    }

    /// Warns, once per instance, of another serving this store whose providers are not
    /// configured as this one's: it answers `404 unknown_provider` for one this one has,
    /// or refreshes and connects with another client or endpoint (an old config left on one
    /// machine, a change made on one only).
    ///
    /// Its `[[notify]]` targets alike: deliveries wait in the store for whichever instance
    /// claims them first, and one without the target retries them until they die.
    fn compare_providers(&mut self, told: &[VaultKeysInUse]) {
        let (ours, our_targets, our_sending) = (
            provider_words(&self.broker),
            target_words(&self.notifier),
            sending_words(&self.notifier),
        );
        for other in told.iter().filter(|o| o.instance != self.instance) {
            let Some(theirs) = &other.providers else {
                continue;
            };
            if self.warned_providers.contains(&other.instance) {
                continue;
            }
            let Told {
                providers: theirs,
                targets: their_targets,
                sending: their_sending,
            } = split_settings(theirs);
            let mut said = Vec::new();
            if let Some(what) = settings_differ(&ours, &theirs, &PROVIDERS) {
                said.push(format!("its providers are configured otherwise than this one's: {what}. Give every instance the same providers (the same config file): a request answered by one instance or the other gets a different answer"));
            }
            // An oauthd that does not tell its targets says nothing of them.
            let targets =
                their_targets.and_then(|theirs| settings_differ(&our_targets, &theirs, &TARGETS));
            let sending = their_sending.and_then(|theirs| {
                settings_differ(
                    &shared_names(&our_sending, &theirs),
                    &shared_names(&theirs, &our_sending),
                    &SENDING,
                )
            });
            let what: Vec<String> = targets.into_iter().chain(sending).collect();
            if !what.is_empty() {
                said.push(format!("its [[notify]] targets are configured otherwise than this one's: {}. Give every instance the same targets: a delivery is sent by whichever instance takes it first (each attempt of it, signed with its secret, in its format), and one without its target retries it until it dies", what.join("; ")));
            }
            if !said.is_empty() {
                log::warn!(
                    "another oauthd serving this store since {}: {}",
                    crate::clock::rfc3339(other.since_ms),
                    said.join("; and ")
                );
                self.warned_providers.push(other.instance.clone());
            }
        }
    }

    /// Whether the store still holds the id it held at the last look: gone, or another in
    /// its place, it lost what it held (a Redis restarted without persistence after any
    /// outage, a `FLUSHALL`, a failover to an empty replica; a database replaced under
    /// oauthd). Said at ERROR and to the notification targets, once per loss and instance.
    async fn look_for_loss(&mut self) {
        let candidate = uuid::Uuid::new_v4().simple().to_string();
        let Ok(id) = self.store.store_id(&candidate).await else {
            return;
        };
        let Some(seen) = self.store_id.replace(id.clone()) else {
            return;
        };
        if seen == id {
            return;
        }
        self.told = None;
        self.tell_data_lost().await;
        log::error!(
            "{} lost what it held: the id it held for itself is gone (Redis restarted without persistence, a FLUSHALL, a failover to an empty replica; or the database replaced under oauthd). Connections, API keys, admin sessions and pending deliveries it held may be gone too: look with `oauthd connections list` and `oauthd keys list`, and turn Redis' persistence on (appendonly yes)",
            self.store.describe(),
        );
    }

    /// `store.data_lost` to the notification targets (into the outbox of the store that
    /// lost everything else: it takes writes again). Each serving oauthd that sees the
    /// loss sends one.
    async fn tell_data_lost(&self) {
        let data = serde_json::json!({
            "store": self.store.describe(),
            "detected_by_since": crate::clock::rfc3339(self.since_ms.unwrap_or(0)),
        });
        let told = self
            .notifier
            .tell(
                self.store.as_ref(),
                crate::notify::EventType::StoreDataLost,
                data,
            )
            .await;
        if let Err(e) = told {
            log::warn!("could not tell the notification targets that the store lost its data: {e}");
        }
    }

    /// Tells as `tell` does and looks every `LOOK_EVERY` until `stop`, then takes it back.
    pub(super) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
            self.look_for_loss().await;
            self.tell().await;
            self.look().await;
        }
        if let Err(e) = self.store.forget_vault_keys(&self.instance).await {
            log::debug!("could not take back which vault keys this oauthd used: {e}");
        }
    }
}

/// This instance's providers as told to the others: `name=digest`, sorted by name.
/// Before each `[[notify]]` target's word among what an instance tells of its settings;
/// alone, that the instance tells its targets (an older one does not). No provider's name
/// holds a `:`, so older oauthds pass these words over.
const TARGET_WORD: &str = "notify:";

/// Before each `[[notify]]` target's word of how it sends (`Target::sending_digest`);
/// alone, that the instance tells them (an older one does not). Older oauthds pass these
/// words over too (a `:`; not `notify:`).
const SENDING_WORD: &str = "notify-sending:";

/// What an instance tells of its settings: each provider as `name=digest`
/// (`Provider::settings_digest`), then each `[[notify]]` target as `notify:name=digest` (of
/// its URL's scheme, host and port), after a lone `notify:`, and as
/// `notify-sending:name=digest` (how it sends), after a lone `notify-sending:`.
fn told_settings(broker: &Broker, notifier: &crate::notify::Notifier) -> Vec<String> {
    let mut words = provider_words(broker);
    for (word, told) in [
        (TARGET_WORD, target_words(notifier)),
        (SENDING_WORD, sending_words(notifier)),
    ] {
        words.push(word.to_owned());
        words.extend(told.iter().map(|t| format!("{word}{t}")));
    }
    words
}

/// This instance's providers, each as `name=digest`, sorted.
fn provider_words(broker: &Broker) -> Vec<String> {
    let mut words: Vec<String> = broker
        .providers()
        .map(|p| format!("{}={}", p.name, p.settings_digest()))
        .collect();
    words.sort();
    words
}

/// This instance's `[[notify]]` targets, each as `name=digest`, sorted. The digest is of
/// the URL's origin only: the store is readable by whoever runs it, and the rest of a
/// webhook's URL may be a token (an ntfy topic) short enough to guess back from its hash.
fn target_words(notifier: &crate::notify::Notifier) -> Vec<String> {
    let mut words: Vec<String> = notifier
        .targets()
        .iter()
        .map(|t| {
            let origin = crate::secret::SecretHash::of(&t.url.origin().ascii_serialization());
            format!("{}={}", t.name, &origin.to_hex()[..16])
        })
        .collect();
    words.sort();
    words
}

/// This instance's `[[notify]]` targets, each as `name=digest` of how it sends
/// (`Target::sending_digest`), sorted.
fn sending_words(notifier: &crate::notify::Notifier) -> Vec<String> {
    let mut words: Vec<String> = notifier
        .targets()
        .iter()
        .map(|t| format!("{}={}", t.name, t.sending_digest()))
        .collect();
    words.sort();
    words
}

/// An instance's told settings: its providers' words, and, when it tells them, its
/// targets' (without `notify:`) and how they send (without `notify-sending:`).
struct Told {
    providers: Vec<String>,
    targets: Option<Vec<String>>,
    sending: Option<Vec<String>>,
}

fn split_settings(words: &[String]) -> Told {
    let tagged = |word: &str| {
        let tells = words.iter().any(|w| w == word);
        let told = words
            .iter()
            .filter_map(|w| w.strip_prefix(word))
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        tells.then_some(told)
    };
    Told {
        providers: words
            .iter()
            .filter(|w| !w.starts_with(TARGET_WORD) && !w.starts_with(SENDING_WORD))
            .cloned()
            .collect(),
        targets: tagged(TARGET_WORD),
        sending: tagged(SENDING_WORD),
    }
}

/// `words` (`name=digest`) of the names `others` has too: what one has and the other has
/// not is said once, by the targets' comparison.
fn shared_names(words: &[String], others: &[String]) -> Vec<String> {
    let name = |w: &String| w.split_once('=').map_or(w.clone(), |(n, _)| n.to_owned());
    let theirs: std::collections::BTreeSet<String> = others.iter().map(name).collect();
    words
        .iter()
        .filter(|w| theirs.contains(&name(w)))
        .cloned()
        .collect()
}

/// What two instances compare, and how it is said.
struct Compared {
    /// What one of them is called.
    one: &'static str,
    /// What a different digest of one means.
    changed: &'static str,
}

const PROVIDERS: Compared = Compared {
    one: "provider",
    changed: "has another client id, client authentication, scopes, endpoints or issuer there",
};

const TARGETS: Compared = Compared {
    one: "[[notify]] target",
    changed: "sends to another scheme, host or port there",
};

const SENDING: Compared = Compared {
    one: "[[notify]] target",
    changed:
        "has another secret_file, format or events there, or (signed) another URL path or query",
};

/// How two instances' settings (`name=digest` words) differ, said from this one's side;
/// `None` when alike.
fn settings_differ(ours: &[String], theirs: &[String], compared: &Compared) -> Option<String> {
    let split = |w: &String| -> (String, String) {
        let (name, digest) = w.split_once('=').unwrap_or((w.as_str(), ""));
        (name.to_owned(), digest.to_owned())
    };
    let ours: std::collections::BTreeMap<String, String> = ours.iter().map(split).collect();
    // Read from the store, where any process may write: only what a name (as providers'
    // and targets' names are checked) and a digest can be reaches the log.
    let theirs: std::collections::BTreeMap<String, String> = theirs
        .iter()
        .map(split)
        .filter(|(name, digest)| {
            (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && digest.len() <= 16
                && digest.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    let only = |a: &std::collections::BTreeMap<String, String>,
                b: &std::collections::BTreeMap<String, String>| {
        a.keys()
            .filter(|n| !b.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut what = Vec::new();
    let lacking = only(&ours, &theirs);
    let one = compared.one;
    if !lacking.is_empty() {
        what.push(format!("it has no {one} {}", lacking.join(", ")));
    }
    let extra = only(&theirs, &ours);
    if !extra.is_empty() {
        what.push(format!(
            "it has {one} {}, which this one does not",
            extra.join(", ")
        ));
    }
    let differ: Vec<String> = ours
        .iter()
        .filter(|(n, d)| theirs.get(*n).is_some_and(|t| t != *d))
        .map(|(n, _)| n.clone())
        .collect();
    if !differ.is_empty() {
        what.push(format!("{one} {} {}", differ.join(", "), compared.changed));
    }
    (!what.is_empty()).then(|| what.join("; "))
}

#[cfg(test)]
mod tests {
    use super::{settings_differ, shared_names, split_settings, PROVIDERS, SENDING, TARGETS};

    fn providers_differ(ours: &[String], theirs: &[String]) -> Option<String> {
        settings_differ(ours, theirs, &PROVIDERS)
    }

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn providers_differ_names_what_is_missing_added_and_changed() {
        let ours = words(&["a=1", "b=2", "c=3"]);
        assert_eq!(providers_differ(&ours, &ours.clone()), None);
        let theirs = words(&["b=2", "c=9", "d=4"]);
        let said = providers_differ(&ours, &theirs).unwrap();
        assert!(said.contains("it has no provider a"), "{said}");
        assert!(
            said.contains("it has provider d, which this one does not"),
            "{said}"
        );
        assert!(said.contains("provider c has another client id"), "{said}");
        assert!(!said.contains("provider b"), "{said}");
        assert!(providers_differ(&[], &[]).is_none());
        // What no provider's name or digest can be is not repeated in the log.
        let forged = words(&["a=1", "b=2", "c=3", "\u{1b}[31mx=1", "e=zz"]);
        assert_eq!(providers_differ(&ours, &forged), None);
    }

    #[test]
    fn targets_are_compared_when_the_other_tells_them() {
        let ours = words(&[
            "a=1",
            "notify:",
            "notify:app=0a",
            "notify-sending:",
            "notify-sending:app=0c",
        ]);
        let told = split_settings(&ours);
        assert_eq!(told.providers, words(&["a=1"]));
        assert_eq!(told.targets, Some(words(&["app=0a"])));
        assert_eq!(told.sending, Some(words(&["app=0c"])));
        // An older oauthd tells providers only: nothing is said of targets; one a little
        // less old, targets but not how they send.
        assert_eq!(split_settings(&words(&["a=1"])).targets, None);
        let older = split_settings(&words(&["a=1", "notify:", "notify:app=0a"]));
        assert_eq!((older.targets.is_some(), older.sending), (true, None));
        // How they send is compared for the targets both have.
        let said = settings_differ(
            &shared_names(&words(&["app=0c", "b=01"]), &words(&["app=0d"])),
            &shared_names(&words(&["app=0d"]), &words(&["app=0c", "b=01"])),
            &SENDING,
        )
        .unwrap();
        assert_eq!(
            said,
            "[[notify]] target app has another secret_file, format or events there, or (signed) another URL path or query"
        );
        let theirs = words(&["app2=0a", "app=0b"]);
        let said = settings_differ(&words(&["app=0a"]), &theirs, &TARGETS).unwrap();
        assert!(
            said.contains("it has [[notify]] target app2, which this one does not")
                && said
                    .contains("[[notify]] target app sends to another scheme, host or port there"),
            "{said}"
        );
    }
}

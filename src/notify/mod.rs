//! Notifications: who hears about what (`[[notify]]` targets and their event patterns),
//! events turned into outbox rows for the matching targets, and the delivery worker
//! (`deliver`) that sends them at least once.
//!
//! Events are written by the broker in the same store transaction as the change they tell
//! of; this module decides which targets get one and what each receives.

pub mod deliver;
pub mod event;
pub mod sign;

pub use event::{Event, EventType};

use crate::clock::Clock;
use crate::local_url::is_loopback;
use crate::store::{DeliveryRow, DeliveryStatus, NewDelivery, OutboxStore, StoreError};
use serde::Deserialize;
use serde_json::Value;
use sign::SigningKey;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// `[[notify]]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// How the target is named in metrics, listings and logs (default: the URL's host).
    pub name: Option<String>,
    pub url: String,
    /// A file holding `whsec_<base64>`: every delivery is signed with it.
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub format: Format,
    /// Patterns: `*`, `connection.*`, or a type; default every event (except opt-in ones).
    pub events: Option<Vec<String>>,
}

/// A target's name when its table gives none: its URL's host (`::1` as `--1`).
pub fn default_name(url: &Url) -> String {
    url.host_str()
        .unwrap_or("target")
        .trim_matches(|c| c == '[' || c == ']')
        .replace(':', "-")
}

/// What a target receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The event's JSON (Standard Webhooks).
    #[default]
    Json,
    /// A sentence as `text/plain`, with a title (ntfy style).
    Text,
    /// `{"title", "message", "priority"}` as JSON (Gotify style).
    Gotify,
}

impl Format {
    /// As the config file spells it (`format = "json"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::Gotify => "gotify",
        }
    }
}

/// `[events]`: when to tell and how long to keep trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsPolicy {
    /// Transient refresh failures for this long send `connection.refresh_failing` (once).
    pub failing_after: Duration,
    /// A delivery is retried for this long after its event, then dead.
    pub retry_for: Duration,
    /// The first retry waits this long; each next one twice as long, up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Delivered and dead deliveries are listed for this long, then deleted.
    pub keep: Duration,
}

impl Default for EventsPolicy {
    fn default() -> Self {
        EventsPolicy {
            failing_after: Duration::from_secs(15 * 60),
            retry_for: Duration::from_secs(24 * 3600),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            keep: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A target, checked and ready.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub url: Url,
    pub key: Option<SigningKey>,
    pub format: Format,
    patterns: Vec<String>,
}

impl Target {
    /// How this target's deliveries are made, for instances sharing a store to compare
    /// (16 hex digits): its format, its `events`, and, for a signed target, its secret and
    /// its URL's path and query, both through an HMAC keyed with the secret. Without a
    /// secret the path is left out: the store is readable by whoever runs it, and a push
    /// service's topic is a token short enough to guess back from a plain hash.
    pub fn sending_digest(&self) -> String {
        let mut patterns = self.patterns.clone();
        patterns.sort();
        let signed = match &self.key {
            None => "unsigned".to_owned(),
            Some(key) => {
                let path = match self.url.query() {
                    Some(q) => format!("{}?{q}", self.url.path()),
                    None => self.url.path().to_owned(),
                };
                key.sign("oauthd-instances-compare", 0, &path)
            }
        };
        let text = format!("{}\n{}\n{signed}", self.format.name(), patterns.join(","));
        crate::secret::SecretHash::of(&text).to_hex()[..16].to_owned()
    }

    /// What a `410 Gone` is recorded against, in the store: what tells a changed URL from
    /// the one that answered. The URL may hold a token (an ntfy topic, a `?token=`), short
    /// enough to guess back from a plain hash: a signed target's URL goes through an HMAC
    /// keyed with its secret (hex); an unsigned one's is 4 hex digits of its SHA-256, too
    /// few to tell a guess from thousands of others. A changed URL with the same 4 digits
    /// (1 in 65,536) is taken as the one that answered: a retry by hand or a test
    /// notification then starts it again.
    pub fn url_hash(&self) -> String {
        match &self.key {
            Some(key) => {
                let mac = key.sign("oauthd-gone-target", 0, self.url.as_str());
                crate::secret::SecretHash::of(&mac).to_hex()
            }
            None => crate::secret::SecretHash::of(self.url.as_str()).to_hex()[..4].to_owned(),
        }
    }

    /// Why this target's deliveries cannot be trusted by their receiver, if they cannot: a
    /// JSON webhook without a `secret_file` goes out unsigned, and anyone who can reach the
    /// receiver can post the same. (ntfy and Gotify formats are for push services, which
    /// do not check signatures.)
    pub fn unsigned_warning(&self) -> Option<String> {
        (self.format == Format::Json && self.key.is_none()).then(|| {
            format!(
                "notify {}: JSON deliveries without a secret_file go out unsigned, so the \
                 receiver cannot tell them from anyone else's POST; set secret_file (README: \
                 Verifying deliveries)",
                self.name
            )
        })
    }

    /// Whether this target gets a recovery that ends `told` (the trouble events sent): one
    /// that was told of any of them, or that takes neither kind of trouble (it asked for
    /// recoveries alone).
    fn hears_the_end_of(&self, told: &[EventType]) -> bool {
        const TROUBLE: [EventType; 2] = [
            EventType::ConnectionRefreshFailing,
            EventType::ConnectionNeedsReauth,
        ];
        told.is_empty()
            || told.iter().any(|k| self.wants(*k))
            || !TROUBLE.iter().any(|k| self.wants(*k))
    }

    /// Whether this target gets events of this type.
    pub fn wants(&self, kind: EventType) -> bool {
        kind == EventType::NotifyTest
            || self.patterns.iter().any(|p| {
                p == kind.as_str()
                    || (!kind.opt_in()
                        && (p == "*"
                            || p.strip_suffix('*')
                                .is_some_and(|group| kind.as_str().starts_with(group))))
            })
    }
}

/// Checks every `[[notify]]` entry: an https (or loopback http) URL, a readable signing
/// secret, known event patterns, unique names. Errors name the entry.
pub fn build_targets(configs: &[NotifyConfig]) -> Result<Vec<Target>, String> {
    let mut targets: Vec<Target> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let key = format!("notify[{i}]");
        // The URL is not repeated: a push service's may carry a token or a secret topic.
        let url = match Url::parse(&c.url) {
            Err(e) => return Err(format!("{key}.url: not a URL ({e})")),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(format!(
                    "{key}.url: credentials in the URL are not supported; use secret_file to sign deliveries"
                ))
            }
            Ok(u) => match (u.scheme(), is_loopback(&u)) {
                ("https", _) | ("http", true) => u,
                (scheme, _) => {
                    return Err(format!(
                        "{key}.url: {scheme}://{}… must be https, or plain http on a loopback address (127.0.0.1, ::1, localhost)",
                        u.host_str().unwrap_or("")
                    ))
                }
            },
        };
        let name = match &c.name {
            Some(n) => n.clone(),
            None => default_name(&url),
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        {
            return Err(format!(
                "{key}.name: {name:?} must be 1-64 letters, digits, '.', '_' or '-'"
            ));
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(format!(
                "{key}: another target is already named {name:?}; give each a distinct `name`"
            ));
        }
        let secret = match &c.secret_file {
            None => None,
            Some(path) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    format!("{key}.secret_file: {}", crate::paths::unreadable(path, &e))
                })?);
                Some(
                    SigningKey::parse(&text)
                        .map_err(|e| format!("{key}.secret_file {}: {e}", path.display()))?,
                )
            }
        };
        let patterns = c.events.clone().unwrap_or_else(|| vec!["*".to_owned()]);
        for p in &patterns {
            let known = p == "*"
                || EventType::parse(p).is_some()
                || p.strip_suffix(".*").is_some_and(|group| {
                    EventType::ALL
                        .iter()
                        .any(|t| t.as_str().starts_with(&format!("{group}.")))
                });
            if !known {
                let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(format!(
                    "{key}.events: {p:?} is not \"*\", a group like \"connection.*\", or one of {}",
                    types.join(", ")
                ));
            }
        }
        targets.push(Target {
            name,
            url,
            key: secret,
            format: c.format,
            patterns,
        });
    }
    Ok(targets)
}

/// Least time between two test events (only keys without limits, and the page, may ask).
const TEST_EVERY_MS: i64 = 5_000;

/// What a request for a test event got.
#[derive(Debug)]
pub enum TestSent {
    /// Stored for these targets; the worker sends it within a second.
    Sent {
        event: Event,
        targets: Vec<String>,
    },
    NoTargets,
    /// Another test was sent less than five seconds ago.
    TooSoon {
        retry_after_secs: u64,
    },
}

/// Turns events into outbox rows for the targets that want them, and wakes the delivery
/// worker when some were written.
pub struct Notifier {
    targets: Vec<Arc<Target>>,
    policy: EventsPolicy,
    clock: Clock,
    wake: tokio::sync::Notify,
    /// When the last test was sent, by an app and from the page: each has its own
    /// budget, so that apps sending tests do not keep the operator's button refused.
    last_app_test_ms: std::sync::atomic::AtomicI64,
    last_page_test_ms: std::sync::atomic::AtomicI64,
}

/// Who asks for a test notification (`Notifier::send_test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBy {
    /// An app, with an API key.
    App,
    /// The operator, on oauthd's page.
    Page,
}

impl Notifier {
    pub fn new(targets: Vec<Target>, policy: EventsPolicy, clock: Clock) -> Notifier {
        Notifier {
            targets: targets.into_iter().map(Arc::new).collect(),
            policy,
            clock,
            wake: tokio::sync::Notify::new(),
            last_app_test_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            last_page_test_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// No targets and default rules: for commands that send nothing.
    pub fn silent(clock: Clock) -> Notifier {
        Notifier::new(Vec::new(), EventsPolicy::default(), clock)
    }

    pub fn policy(&self) -> EventsPolicy {
        self.policy
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets.iter().find(|t| t.name == name).cloned()
    }

    /// A new event of this type, now.
    pub fn event(&self, kind: EventType, data: Value) -> Event {
        Event {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            kind,
            at_ms: self.clock.now_ms(),
            data,
        }
    }

    /// The outbox rows for `events`: one per event and target that wants it.
    pub fn deliveries(&self, events: &[Event]) -> Vec<NewDelivery> {
        events
            .iter()
            .flat_map(|e| {
                self.targets
                    .iter()
                    .filter(|t| t.wants(e.kind) && t.hears_the_end_of(&e.ends()))
                    .map(|t| self.delivery(e, t))
            })
            .collect()
    }

    fn delivery(&self, e: &Event, t: &Target) -> NewDelivery {
        NewDelivery {
            id: format!("dlv_{}", uuid::Uuid::new_v4().simple()),
            event_id: e.id.clone(),
            event_type: e.kind.as_str().to_owned(),
            target: t.name.clone(),
            body: e.body(),
            created_at_ms: e.at_ms,
            deadline_ms: e.at_ms.saturating_add(millis(self.policy.retry_for)),
        }
    }

    /// After the write that stored `events` committed: counts them and wakes the worker.
    pub fn written(&self, events: &[Event]) {
        for e in events {
            crate::metrics::EVENTS
                .with_label_values(&[e.kind.as_str()])
                .inc();
        }
        if !self.targets.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Stores an event of `kind` for every target that wants it.
    pub async fn tell(
        &self,
        store: &dyn OutboxStore,
        kind: EventType,
        data: Value,
    ) -> Result<(), StoreError> {
        let events = [self.event(kind, data)];
        let rows = self.deliveries(&events);
        if rows.is_empty() {
            return Ok(());
        }
        store.add_deliveries(rows).await?;
        self.written(&events);
        Ok(())
    }

    /// Stores a `notify.test` event for every target, whatever its `events`: at most one
    /// every `TEST_EVERY_MS` for apps, and as many for the page.
    pub async fn send_test(
        &self,
        store: &dyn OutboxStore,
        by: TestBy,
    ) -> Result<TestSent, StoreError> {
        use std::sync::atomic::Ordering;
        if self.targets.is_empty() {
            return Ok(TestSent::NoTargets);
        }
        let now = self.clock.now_ms();
        let slot = match by {
            TestBy::App => &self.last_app_test_ms,
            TestBy::Page => &self.last_page_test_ms,
        };
        let last = slot.load(Ordering::Acquire);
        let wait = last.saturating_add(TEST_EVERY_MS).saturating_sub(now);
        if wait > 0
            || slot
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(TestSent::TooSoon {
                retry_after_secs: crate::clock::seconds_until(
                    now,
                    last.saturating_add(TEST_EVERY_MS),
                ),
            });
        }
        let event = self.event(
            EventType::NotifyTest,
            serde_json::json!({"message": "a test notification from oauthd"}),
        );
        let rows: Vec<NewDelivery> = self
            .targets
            .iter()
            .map(|t| self.delivery(&event, t))
            .collect();
        store.add_deliveries(rows).await?;
        self.written(std::slice::from_ref(&event));
        let targets = self.targets.iter().map(|t| t.name.clone()).collect();
        Ok(TestSent::Sent { event, targets })
    }

    /// A new deadline for a delivery retried by hand.
    pub fn retry_deadline(&self) -> i64 {
        self.clock
            .now_ms()
            .saturating_add(millis(self.policy.retry_for))
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// A delivery as the page and `oauthd events list --json` show it (never the target's URL).
pub fn delivery_json(d: &DeliveryRow) -> Value {
    use crate::clock::rfc3339;
    serde_json::json!({
        "id": d.id,
        "event_id": d.event_id,
        "type": d.event_type,
        "target": d.target,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at_ms),
        "next_attempt_at": (d.status == DeliveryStatus::Pending)
            .then_some(d.next_attempt_at_ms)
            .flatten()
            .map(rfc3339),
        "last_attempt_at": d.last_attempt_at_ms.map(rfc3339),
        "finished_at": d.finished_at_ms.map(rfc3339),
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(events: Option<Vec<&str>>) -> Result<Vec<Target>, String> {
        build_targets(&[NotifyConfig {
            name: None,
            url: "https://hooks.example.net/oauthd".into(),
            secret_file: None,
            format: Format::Json,
            events: events.map(|v| v.into_iter().map(str::to_owned).collect()),
        }])
    }

    /// A `410`'s record holds nothing a topic or token in the URL can be guessed back from
    /// with a plain hash: an HMAC for a signed target, 4 hex digits for an unsigned one.
    #[test]
    fn a_gone_targets_record_is_no_plain_hash_of_its_url() {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let url = "https://ntfy.example.net/alicesphone";
        let plain = crate::secret::SecretHash::of(url).to_hex();
        let mut t = target(None).expect("targets").remove(0);
        t.url = Url::parse(url).unwrap();
        let unsigned = t.url_hash();
        assert_eq!(unsigned.len(), 4);
        assert!(plain.starts_with(&unsigned));
        t.key = Some(SigningKey::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap());
        let signed = t.url_hash();
        assert_ne!(signed, plain);
        t.key = Some(SigningKey::parse(&format!("whsec_{}", STANDARD.encode([8u8; 32]))).unwrap());
        assert_ne!(t.url_hash(), signed, "not keyed with the secret");
        t.url = Url::parse("https://ntfy.example.net/bobsphone").unwrap();
        assert_ne!(t.url_hash(), signed);
    }

    #[test]
    fn patterns_match_groups_and_types_but_opt_in_only_by_name() {
        let all = target(None).expect("targets");
        let t = &all[0];
        assert_eq!(t.name, "hooks.example.net");
        assert!(t.wants(EventType::ConnectionNeedsReauth));
        assert!(t.wants(EventType::DeviceFlowFailed));
        assert!(!t.wants(EventType::ConnectionRefreshed));

        let group = target(Some(vec!["connection.*"])).expect("targets");
        assert!(group[0].wants(EventType::ConnectionDeleted));
        assert!(!group[0].wants(EventType::DeviceFlowCompleted));
        assert!(!group[0].wants(EventType::ConnectionRefreshed));
        assert!(group[0].wants(EventType::NotifyTest));

        let named = target(Some(vec!["connection.refreshed"])).expect("targets");
        assert!(named[0].wants(EventType::ConnectionRefreshed));
        assert!(!named[0].wants(EventType::ConnectionConnected));
    }

    /// A recovery goes to the targets that were told of the trouble it ends: a phone that
    /// takes only `needs_reauth` and `recovered` hears nothing of a failing run's end; a
    /// target told of a failing run that then needed the user hears its end; one that
    /// asked for recoveries alone hears every one.
    #[test]
    fn a_recovery_goes_only_to_targets_told_of_what_it_ends() {
        let config = |name: &str, events: Option<Vec<&str>>| NotifyConfig {
            name: Some(name.into()),
            url: format!("https://hooks.example.net/{name}"),
            secret_file: None,
            format: Format::Json,
            events: events.map(|v| v.into_iter().map(str::to_owned).collect()),
        };
        let targets = build_targets(&[
            config("all", None),
            config(
                "phone",
                Some(vec!["connection.needs_reauth", "connection.recovered"]),
            ),
            config(
                "ops",
                Some(vec!["connection.refresh_failing", "connection.recovered"]),
            ),
            config("ends", Some(vec!["connection.recovered"])),
        ])
        .expect("targets");
        let n = Notifier::new(targets, EventsPolicy::default(), Clock::system());
        let to = |told: &[&str]| -> Vec<String> {
            let e = n.event(
                EventType::ConnectionRecovered,
                serde_json::json!({"provider": "p", "account": "a", "after": told.last(), "told": told}),
            );
            n.deliveries(&[e]).into_iter().map(|d| d.target).collect()
        };
        assert_eq!(to(&["needs_reauth"]), ["all", "phone", "ends"]);
        assert_eq!(to(&["refresh_failing"]), ["all", "ops", "ends"]);
        assert_eq!(
            to(&["refresh_failing", "needs_reauth"]),
            ["all", "phone", "ops", "ends"]
        );
        // A recovery that names only `after` ends that one.
        let older = n.event(
            EventType::ConnectionRecovered,
            serde_json::json!({"provider": "p", "account": "a", "after": "refresh_failing"}),
        );
        let older: Vec<String> = n
            .deliveries(&[older])
            .into_iter()
            .map(|d| d.target)
            .collect();
        assert_eq!(older, ["all", "ops", "ends"]);
        let other = n.event(EventType::ConnectionNeedsReauth, serde_json::json!({}));
        assert_eq!(n.deliveries(&[other]).len(), 2);
    }

    #[test]
    fn bad_targets_are_refused_naming_the_entry() {
        let e = target(Some(vec!["connection.lost"])).expect_err("unknown type");
        assert!(e.starts_with("notify[0].events"), "{e}");
        let e = target(Some(vec!["token.*"])).expect_err("unknown group");
        assert!(e.contains("token.*"), "{e}");
        let e = build_targets(&[NotifyConfig {
            name: None,
            url: "http://192.168.1.5/hook".into(),
            secret_file: None,
            format: Format::Text,
            events: None,
        }])
        .expect_err("plain http off loopback");
        assert!(e.starts_with("notify[0].url"), "{e}");
        let twice = NotifyConfig {
            name: Some("phone".into()),
            url: "https://ntfy.example.net/t".into(),
            secret_file: None,
            format: Format::Text,
            events: None,
        };
        let e = build_targets(&[twice.clone(), twice]).expect_err("same name");
        assert!(e.contains("\"phone\""), "{e}");
    }
}

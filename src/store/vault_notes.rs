//! What each serving oauthd tells the others of the vault keys it uses.

/// The vault keys a serving oauthd uses, as it tells the other instances on its store:
/// one that seals with a key another cannot open splits the data between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKeysInUse {
    /// Made up by each process at start.
    pub instance: String,
    /// The ids of the keys it opens with, the one it seals with first.
    pub keys: Vec<String>,
    /// When it first told (unix ms): of two that cannot share their data, the later gives
    /// way.
    pub since_ms: i64,
    /// Until when this holds unless told again (unix ms).
    pub until_ms: i64,
    /// Its providers, each as `name=digest` (`Provider::settings_digest`); `None` from
    /// an oauthd that did not tell them.
    pub providers: Option<Vec<String>>,
}

/// When `instance`, telling for the first time at `now_ms`, first told: after every other
/// note that still holds. Of two that tell at once, the clock one read before the other
/// wrote may be the later; the store orders them as it took their notes, so that the
/// later to tell always sees the earlier, and never do two tell at the same time.
pub fn first_told(now_ms: i64, instance: &str, told: &[VaultKeysInUse]) -> i64 {
    told.iter()
        .filter(|t| t.instance != instance && t.until_ms >= now_ms)
        .map(|t| t.since_ms.saturating_add(1))
        .fold(now_ms, i64::max)
}

/// Between the key ids and the providers in a note's text (no key id is `|`).
const PROVIDERS_FOLLOW: &str = "|";

impl VaultKeysInUse {
    /// As stored: `<until_ms> <since_ms> <key id>... | <provider>=<digest>...`.
    pub fn to_text(&self) -> String {
        format!(
            "{} {} {}",
            self.until_ms,
            self.since_ms,
            told_words(&self.keys, self.providers.as_deref())
        )
    }

    /// What `to_text` wrote, for `instance`; `None` for anything else. Older oauthds wrote
    /// no providers: the keys are all there is.
    pub fn from_text(instance: &str, text: &str) -> Option<VaultKeysInUse> {
        let mut words = text.split_whitespace();
        let until_ms = words.next()?.parse().ok()?;
        let since_ms = words.next()?.parse().ok()?;
        let keys: Vec<String> = words
            .by_ref()
            .take_while(|w| *w != PROVIDERS_FOLLOW)
            .map(str::to_owned)
            .collect();
        let rest: Vec<String> = words.map(str::to_owned).collect();
        let providers = (text.split_whitespace().any(|w| w == PROVIDERS_FOLLOW)).then_some(rest);
        (!keys.is_empty()).then(|| VaultKeysInUse {
            instance: instance.to_owned(),
            keys,
            since_ms,
            until_ms,
            providers,
        })
    }
}

/// A note's words after its times: the key ids, then the providers when told.
fn told_words(keys: &[String], providers: Option<&[String]>) -> String {
    let mut words = keys.join(" ");
    if let Some(providers) = providers {
        words.push(' ');
        words.push_str(PROVIDERS_FOLLOW);
        for p in providers {
            words.push(' ');
            words.push_str(p);
        }
    }
    words
}

/// What a serving instance tells the others of its vault keys.
#[derive(Clone, Debug)]
pub struct VaultKeysNote {
    /// Made up by each process at start.
    pub instance: String,
    /// The ids of the keys it opens with, the one it seals with first.
    pub keys: Vec<String>,
    /// When it first told, as the store recorded it then; `None` the first time, when the
    /// store stamps it.
    pub since_ms: Option<i64>,
    /// How long this holds unless told again.
    pub holds: std::time::Duration,
    /// Its providers, each as `name=digest`.
    pub providers: Vec<String>,
}

impl VaultKeysNote {
    /// What the note says after its times (`VaultKeysInUse::to_text`).
    pub fn words(&self) -> String {
        told_words(&self.keys, Some(&self.providers))
    }
}

#[cfg(test)]
mod tests {
    use super::VaultKeysInUse;

    #[test]
    fn a_note_reads_back_with_its_providers_and_an_older_one_without() {
        let note = VaultKeysInUse {
            instance: "i".into(),
            keys: vec!["k2".into(), "k1".into()],
            since_ms: 5,
            until_ms: 9,
            providers: Some(vec!["a=01".into(), "b=02".into()]),
        };
        assert_eq!(note.to_text(), "9 5 k2 k1 | a=01 b=02");
        assert_eq!(VaultKeysInUse::from_text("i", &note.to_text()), Some(note));
        let none = VaultKeysInUse::from_text("i", "9 5 k2 | ").unwrap();
        assert_eq!(none.providers, Some(vec![]));
        let older = VaultKeysInUse::from_text("i", "9 5 k2 k1").unwrap();
        assert_eq!(older.keys, ["k2", "k1"]);
        assert_eq!(older.providers, None);
        assert_eq!(VaultKeysInUse::from_text("i", "9 5 | a=01"), None);
    }
}

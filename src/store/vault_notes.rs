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
}

impl VaultKeysInUse {
    /// As stored: `<until_ms> <since_ms> <key id> <key id>...`.
    pub fn to_text(&self) -> String {
        [self.until_ms.to_string(), self.since_ms.to_string()]
            .into_iter()
            .chain(self.keys.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What `to_text` wrote, for `instance`; `None` for anything else.
    pub fn from_text(instance: &str, text: &str) -> Option<VaultKeysInUse> {
        let mut words = text.split_whitespace();
        let until_ms = words.next()?.parse().ok()?;
        let since_ms = words.next()?.parse().ok()?;
        let keys: Vec<String> = words.map(str::to_owned).collect();
        (!keys.is_empty()).then(|| VaultKeysInUse {
            instance: instance.to_owned(),
            keys,
            since_ms,
            until_ms,
        })
    }
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
}

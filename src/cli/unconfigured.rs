//! Connections whose provider the config does not have: most often a config file left
//! out (a unit or a shell without `--config`), which otherwise looks healthy.

use crate::config::Settings;
use crate::store::ConnectionRow;

/// What to say of `rows` whose provider is not configured, if any are.
pub(super) fn note(rows: &[ConnectionRow], settings: &Settings) -> Option<String> {
    let mut missing = std::collections::BTreeMap::<&str, usize>::new();
    for row in rows {
        if !settings.providers.contains_key(&row.provider) {
            *missing.entry(row.provider.as_str()).or_default() += 1;
        }
    }
    if missing.is_empty() {
        return None;
    }
    let count: usize = missing.values().sum();
    let named: Vec<String> = missing.iter().map(|(p, n)| format!("{p} ({n})")).collect();
    let config = match &settings.config_file {
        Some(path) => format!("the config file {}", path.display()),
        None => "the config (no config file was given: --config, OAUTHD_CONFIG; was it left out?)"
            .into(),
    };
    Some(format!(
        "{count} connection(s) belong to providers not in {config}: {}; their tokens are not handed out (provider_missing) until the providers are configured again",
        named.join(", ")
    ))
}

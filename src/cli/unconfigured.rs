//! Connections whose provider the config does not have: most often a config file left
//! out (a unit or a shell without `--config`), which otherwise looks healthy.

use crate::config::Settings;

const NO_CONFIG_FILE: &str = "no config file was given: --config, OAUTHD_CONFIG; was it left out?";

/// Why `connections delete` of a connection whose provider is not configured stops: it
/// would revoke nothing at the provider, and the grant would stay valid there with the
/// token that could revoke it gone (more likely a config file left out, or another one
/// given, than the provider removed). `--force` deletes only oauthd's copy.
pub(super) fn delete_refusal(settings: &Settings, provider: &str, account: &str) -> Option<String> {
    let why = why_missing(settings, provider)?;
    Some(format!(
        "nothing was deleted: provider {provider} is not configured ({why}), so deleting {provider}/{account} would revoke nothing at {provider} and its grant would stay valid there, with the token that could revoke it gone. Give the config file that configures {provider} to revoke it, or add --force to delete only oauthd's copy"
    ))
}

/// Why `connections refresh` of a connection whose provider is not configured stops,
/// before it says it refreshes: there is nothing to refresh with.
pub(super) fn refresh_refusal(settings: &Settings, provider: &str) -> Option<String> {
    let why = why_missing(settings, provider)?;
    Some(format!(
        "nothing was refreshed: provider {provider} is not configured ({why}). Give the config file that configures {provider}"
    ))
}

/// Why `provider` is not configured, when it is not.
fn why_missing(settings: &Settings, provider: &str) -> Option<String> {
    if settings.providers.contains_key(provider) {
        return None;
    }
    Some(match &settings.config_file {
        None => NO_CONFIG_FILE.to_owned(),
        Some(path) => format!(
            "not in the config file {}; is it the one the running oauthd reads?",
            path.display()
        ),
    })
}

/// Who reads a `note`: the daemon serving with the config, or a command, which may have
/// been given another config than the one a running oauthd reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    Daemon,
    Command,
}

/// What to say of the connections of `providers` (one name per connection) whose provider
/// is not configured, if any are.
pub(super) fn note<'a>(
    providers: impl Iterator<Item = &'a str>,
    settings: &Settings,
    reader: Reader,
) -> Option<String> {
    let mut missing = std::collections::BTreeMap::<&str, usize>::new();
    for provider in providers {
        if !settings.providers.contains_key(provider) {
            *missing.entry(provider).or_default() += 1;
        }
    }
    if missing.is_empty() {
        return None;
    }
    let count: usize = missing.values().sum();
    let named: Vec<String> = missing.iter().map(|(p, n)| format!("{p} ({n})")).collect();
    let config = match &settings.config_file {
        Some(path) => format!("the config file {}", path.display()),
        None => format!("the config ({NO_CONFIG_FILE})"),
    };
    // A command's config may not be the running oauthd's: that one may hand them out.
    let whose = match reader {
        Reader::Daemon => "",
        Reader::Command => " by an oauthd run with it (is it the config the running oauthd reads?)",
    };
    Some(format!(
        "{count} connection(s) belong to providers not in {config}: {}; their tokens are not handed out{whose} (provider_missing) until the providers are configured again",
        named.join(", ")
    ))
}

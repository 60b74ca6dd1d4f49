//! What comes from the environment: `OAUTHD_*` variables and the files `*_FILE` names,
//! the vault key's source, the store, and which files hold secrets.

use super::{invalid, ConfigError, FileConfig, Overrides};
use crate::secret::SecretText;
use crate::store::target::StoreTarget;
use crate::vault::KeySource;
use std::path::{Path, PathBuf};

/// An environment variable by the one rule every `OAUTHD_*` setting follows: trimmed, and
/// empty counts as unset.
fn env_text(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `NAME`, else the trimmed contents of the file named by `NAME_FILE`; an empty `NAME`
/// counts as unset. Both set: `NAME` wins, as it always did, with a warning that names
/// both (the operator may think the file is used). A `NAME_FILE` that cannot be read, or
/// that holds nothing, is an error naming it: an empty file is a credential or secret not
/// filled in yet (`echo "$TOKEN" > file` with the variable unset), and taking it as unset
/// would leave `/metrics` open or the store on a new SQLite file without a word.
fn env_or_file(name: &str) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
    let file_var = format!("{name}_FILE");
    match (env_text(name), env_text(&file_var)) {
        (Some(t), file) => {
            if file.is_some() {
                warn_both_set(name, &file_var);
            }
            Ok(Some(zeroize::Zeroizing::new(t)))
        }
        (None, Some(path)) => {
            let text =
                zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    invalid(&file_var, crate::paths::unreadable(path.as_ref(), &e))
                })?);
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(invalid(
                    &file_var,
                    format!("{path} is empty: write the value into it, or unset {file_var}"),
                ));
            }
            Ok(Some(zeroize::Zeroizing::new(trimmed.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

/// The one warning for a setting given both as a value and as a file: the value wins, as
/// it always did, and the operator may think the file is used.
fn warn_both_set(name: &str, file_var: &str) {
    log::warn!("{name} and {file_var} are both set: {name} is used and {file_var} ignored; unset one of them");
}

/// What names a key file that is not the one beside the database (`KeySource::File`
/// without `create`), for messages: `OAUTHD_KEY_FILE` when it is set (it wins), else the
/// config file's `key_file`.
pub fn key_file_setting() -> &'static str {
    if env_text("OAUTHD_KEY_FILE").is_some() {
        "OAUTHD_KEY_FILE"
    } else {
        "`key_file` in the config file"
    }
}

/// The vault key: `OAUTHD_KEY`, else the file `OAUTHD_KEY_FILE`, else the config's
/// `key_file`, else `<db>.key` beside the database (created at the server's first start).
/// Both variables set: `OAUTHD_KEY`, with the warning every such setting gives.
pub(super) fn key_source(db: &Path, key_file: Option<&Path>) -> KeySource {
    if let Some(key) = env_text("OAUTHD_KEY") {
        if env_text("OAUTHD_KEY_FILE").is_some() {
            warn_both_set("OAUTHD_KEY", "OAUTHD_KEY_FILE");
        }
        return KeySource::Inline(zeroize::Zeroizing::new(key));
    }
    if let Some(path) = env_text("OAUTHD_KEY_FILE")
        .map(PathBuf::from)
        .or_else(|| key_file.map(Path::to_owned))
    {
        return KeySource::File {
            path,
            create: false,
        };
    }
    let mut path = db.as_os_str().to_owned();
    path.push(".key");
    KeySource::File {
        path: PathBuf::from(path),
        create: true,
    }
}

/// `--store`, else `OAUTHD_STORE` / `OAUTHD_STORE_FILE`, else the file's `store`; SQLite
/// when none is given.
pub(super) fn store_target(
    over: &Overrides,
    file: &FileConfig,
) -> Result<StoreTarget, ConfigError> {
    let env = env_or_file("OAUTHD_STORE")?;
    let text = match (&over.store, env, &file.store) {
        (Some(t), _, _) => {
            password_in_arguments("--store", t);
            zeroize::Zeroizing::new(t.clone())
        }
        (None, Some(t), _) => t,
        (None, None, Some(t)) => zeroize::Zeroizing::new(t.clone()),
        (None, None, None) => return Ok(StoreTarget::Sqlite),
    };
    let password = env_or_file("OAUTHD_REDIS_PASSWORD")?;
    crate::store::target::parse(&text, file.redis_prefix.clone(), password)
        .map_err(|e| invalid("store", e))
}

/// A store named on the command line besides the configured one (`oauthd copy --to`):
/// `OAUTHD_REDIS_PASSWORD[_FILE]` fills in a Redis URL without a password.
pub fn other_store(text: &str, redis_prefix: Option<String>) -> Result<StoreTarget, ConfigError> {
    password_in_arguments("--to", text);
    let password = env_or_file("OAUTHD_REDIS_PASSWORD")?;
    crate::store::target::parse(text, redis_prefix, password).map_err(|e| invalid("--to", e))
}

/// Whether `text` is a URL that carries a password (a Redis store's).
fn holds_password(text: &str) -> bool {
    url::Url::parse(text.trim()).is_ok_and(|u| u.password().is_some())
}

/// Said when a flag's Redis URL carries its password: the process list shows every
/// process's arguments to every user of the machine.
fn password_in_arguments(flag: &str, text: &str) {
    if holds_password(text) {
        log::warn!("the Redis password in {flag} can be read by every user of this machine in the process list (ps): give it in OAUTHD_REDIS_PASSWORD_FILE instead (or the whole URL in OAUTHD_STORE_FILE, or the config file's store)");
    }
}

/// `Settings::secret_files`.
pub(super) fn secret_files(config: Option<&Path>, file: &FileConfig) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    if let Some(path) = config {
        let inline: Vec<&str> = file
            .providers
            .iter()
            .filter(|(_, p)| p.client_secret.is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        let mut held = Vec::new();
        if !inline.is_empty() {
            held.push(format!(
                "the client_secret of {} (client_secret_file keeps a secret in a file of its \
                 own, e.g. one systemd's LoadCredential= gives)",
                inline.join(", ")
            ));
        }
        if file.store.as_deref().is_some_and(holds_password) {
            held.push(
                "the Redis password in store (OAUTHD_REDIS_PASSWORD_FILE keeps it in a file \
                 of its own)"
                    .to_owned(),
            );
        }
        if !held.is_empty() {
            found.push((
                format!("the config file, which holds {}", held.join(", and ")),
                path.to_owned(),
            ));
        }
    }
    if env_text("OAUTHD_STORE").is_none() {
        if let Some(path) = env_text("OAUTHD_STORE_FILE") {
            let read = zeroize::Zeroizing::new(std::fs::read_to_string(&path).unwrap_or_default());
            if holds_password(&read) {
                let what = "OAUTHD_STORE_FILE, which holds the Redis password".to_owned();
                found.push((what, PathBuf::from(path)));
            }
        }
    }
    for (name, p) in &file.providers {
        if let Some(path) = &p.client_secret_file {
            found.push((
                format!("provider {name}'s client_secret_file"),
                path.clone(),
            ));
        }
    }
    for n in &file.notify {
        if let Some(path) = &n.secret_file {
            // Named, never by its URL: a webhook's URL may carry a token of its own. Without
            // a name, by the one its URL's host gives it.
            let name = n.name.clone().or_else(|| {
                url::Url::parse(&n.url)
                    .ok()
                    .map(|u| crate::notify::default_name(&u))
            });
            let target = name.map_or(String::new(), |t| format!(" {t}"));
            found.push((
                format!("the secret_file of the [[notify]] target{target}"),
                path.clone(),
            ));
        }
    }
    for var in [
        "OAUTHD_ADMIN_TOKEN_FILE",
        "OAUTHD_METRICS_TOKEN_FILE",
        "OAUTHD_REDIS_PASSWORD_FILE",
    ] {
        if env_text(var.trim_end_matches("_FILE")).is_none() {
            if let Some(path) = env_text(var) {
                found.push((var.to_owned(), PathBuf::from(path)));
            }
        }
    }
    found
}

/// A secret from the environment: `NAME` itself, or the file named by `NAME_FILE`
/// (systemd credentials, container secrets). At least 16 characters when set.
pub(super) fn secret_from_env(name: &str) -> Result<Option<SecretText>, ConfigError> {
    let secret = env_or_file(name)?;
    if secret.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid(name, "must be at least 16 characters"));
    }
    Ok(secret.map(|t| SecretText::new(t.to_string())))
}

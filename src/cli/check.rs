//! `oauthd check`: a report an operator can read before (or while) running oauthd —
//! configuration, database integrity, the vault key file, and every provider's endpoints.
//! Exit code 0 when nothing failed (warnings allowed), 1 otherwise.

use super::{open_store, runtime, Fatal};
use crate::config::Settings;
use crate::oauth::flows;
use crate::store::Store;
use crate::vault::{self, KeySource, Vault};
use std::sync::Arc;

/// The providers that build, why each other one does not, and those whose client secret is
/// a systemd credential of a stopped unit: a report goes on past a provider it cannot
/// build, where the daemon and the other commands stop.
#[derive(Default)]
struct Providers {
    built: Vec<Arc<crate::oauth::Provider>>,
    broken: Vec<(String, String)>,
    /// Built without their secret, which is read from `/run/credentials/<unit>/…`: systemd
    /// makes that only while the unit runs, and the daemon started by it reads it then.
    unloaded: Vec<(String, std::path::PathBuf)>,
}

fn providers_one_by_one(settings: &Settings) -> Providers {
    let public_url = settings.public_url_for(settings.listen);
    let mut found = Providers::default();
    for (name, cfg) in &settings.providers {
        let mut one = std::collections::BTreeMap::from([(name.clone(), cfg.clone())]);
        let unloaded = cfg
            .client_secret_file
            .clone()
            .filter(|path| crate::paths::credential_of_a_stopped_unit(path));
        if let (Some(path), Some(cfg)) = (&unloaded, one.get_mut(name)) {
            cfg.client_secret_file = None;
            cfg.client_secret = Some("not read".to_owned());
            found.unloaded.push((name.clone(), path.clone()));
        }
        match crate::oauth::provider::build_all(&one, &public_url) {
            Ok(mut p) => found.built.append(&mut p),
            Err(e) => found.broken.push((name.clone(), e.to_string())),
        }
    }
    found
}

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, verdict: &str, what: &str, detail: impl std::fmt::Display) {
        if verdict == "FAIL" {
            self.failed += 1;
        }
        out!("{verdict:<4}  {what}: {detail}");
    }
}

/// What `check` reports for a configuration it parsed but cannot take (a value out of
/// range, a namespace table that contradicts itself): a FAIL line and exit 1. The other
/// checks need a configuration that loads.
pub(super) fn config_refused(e: &crate::config::ConfigError) -> Fatal {
    let mut r = Report::default();
    r.line(
        "FAIL",
        "config",
        format!(
            "{e}; oauthd does not start with it (the other checks need a configuration that loads)"
        ),
    );
    Fatal(format!("{} check(s) failed", r.failed), 1)
}

pub(super) fn check(settings: Settings) -> Result<(), Fatal> {
    let providers = providers_one_by_one(&settings);
    let mut r = Report::default();
    config_lines(&mut r, &settings, &providers)?;
    let store = open_for_check(&mut r, &settings);
    let rt = runtime()?;
    if let Some(store) = &store {
        check_store(&mut r, &settings, store.as_ref(), &rt);
        if let Some(note) = super::database_readable_by_others(&settings) {
            r.line("warn", "store", note);
        }
    }
    // Also when the database does not open: a full disk is one reason it may not.
    if matches!(settings.store, crate::store::target::StoreTarget::Sqlite)
        && (settings.db.exists() || parent_is_dir(&settings.db))
    {
        check_room(&mut r, &settings.db);
    }
    let source = match super::key_source(&settings) {
        Ok(s) => s,
        Err(e) => {
            r.line("FAIL", "key file", e);
            return Err(Fatal(format!("{} check(s) failed", r.failed), 1));
        }
    };
    if let KeySource::File { path, create } = &source {
        key_file_line(&mut r, path, *create, store.as_ref(), &rt)?;
    }
    let vault = match &source {
        KeySource::File { path, .. } if !path.exists() => None,
        _ => match Vault::load(&source) {
            Ok(v) => Some(v),
            Err(e) => {
                r.line("FAIL", "vault", e);
                None
            }
        },
    };
    rt.block_on(async {
        if let (Some(v), Some(store)) = (&vault, &store) {
            stored_lines(&mut r, &settings, v, store, &source).await?;
        }
        if let Some(store) = &store {
            public_url_line(&mut r, &settings, store.as_ref()).await;
        }
        provider_lines(&mut r, &settings, &providers).await
    })?;
    if r.failed > 0 {
        return Err(Fatal(format!("{} check(s) failed", r.failed), 1));
    }
    Ok(())
}

/// The configuration's lines: what it holds, the providers that do not build, and what
/// it leaves open to others or to doubt.
fn config_lines(r: &mut Report, settings: &Settings, providers: &Providers) -> Result<(), Fatal> {
    let (built, broken) = (providers.built.len(), &providers.broken);
    // A target it cannot take is said below, after the config's line.
    let notifier = super::notifier(settings, crate::clock::Clock::system());
    let targets = notifier.as_ref().map_or(0, |n| n.targets().len());
    // oauthd does not start while a provider does not build: the config is not ok then.
    let (verdict, stops) = if broken.is_empty() {
        ("ok", "")
    } else {
        (
            "FAIL",
            "; oauthd does not start with it until the provider(s) below build",
        )
    };
    r.line(
        verdict,
        "config",
        format!(
            "{} provider(s), {} notification target(s), listen {}{stops}",
            built + broken.len(),
            targets,
            settings.listen
        ),
    );
    for (name, why) in broken {
        r.line("FAIL", &format!("provider {name}"), why);
    }
    for (name, path) in &providers.unloaded {
        r.line(
            "warn",
            &format!("provider {name}"),
            format!(
                "client_secret_file {} is a systemd credential, which exists only while its unit runs: its client secret is not checked (run `oauthd check` again as root while the unit runs to check it)",
                path.display()
            ),
        );
    }
    for note in super::secrets_readable_by_others(settings) {
        r.line("warn", "secrets", note);
    }
    for note in settings.trusted_proxies_warnings() {
        r.line("warn", "config", note);
    }
    for note in &settings.rule_warnings {
        r.line("warn", "config", note);
    }
    // A listen port of 0 is chosen at the start: nothing to compare yet.
    if let Some(note) = Some(settings.listen)
        .filter(|l| l.port() != 0)
        .and_then(|l| settings.public_url_hint(l))
    {
        r.line("warn", "config", note);
    }
    for note in &settings.env_warnings {
        r.line("warn", "environment", note);
    }
    match notifier {
        Ok(notifier) => {
            for warning in notifier
                .targets()
                .iter()
                .filter_map(|t| t.unsigned_warning())
            {
                r.line("warn", "notify", warning);
            }
        }
        Err(Fatal(why, _)) => r.line(
            "FAIL",
            "notify",
            format!("{why}; oauthd does not start with it"),
        ),
    }
    Ok(())
}

/// The store's line when it cannot be looked into (no database yet, an empty file, a
/// schema this oauthd would upgrade or does not know, a store that does not open), or
/// the store.
fn open_for_check(r: &mut Report, settings: &Settings) -> Option<Arc<dyn Store>> {
    // Before the first start there is no database yet: what it would hold is not
    // checked, the rest (providers, the key file) is.
    let versions = match settings.store {
        crate::store::target::StoreTarget::Sqlite if settings.db.exists() => {
            crate::store::sqlite::schema_versions(&settings.db).ok()
        }
        _ => None,
    };
    match (&settings.store, versions) {
        (crate::store::target::StoreTarget::Sqlite, _)
            if !settings.db.exists() && !parent_is_dir(&settings.db) =>
        {
            r.line(
                "FAIL",
                "store",
                format!(
                    "no database at {}, and no directory for one: `oauthd serve` would stop. Check --db, OAUTHD_DB or `db` in the config file, or make the directory",
                    settings.db.display()
                ),
            );
            None
        }
        (crate::store::target::StoreTarget::Sqlite, _) if !settings.db.exists() => {
            // A --db mistyped: oauthd's database beside where it points.
            let beside = crate::store::sqlite::databases_beside(&settings.db, 3);
            if beside.is_empty() {
                r.line(
                    "skip",
                    "store",
                    format!(
                        "no database at {} yet: `oauthd serve` makes one on its first start (if one should be there, check --db, OAUTHD_DB or `db` in the config file)",
                        settings.db.display()
                    ),
                );
            } else {
                let named: Vec<String> = beside.iter().map(|p| p.display().to_string()).collect();
                r.line(
                    "warn",
                    "store",
                    format!(
                        "no database at {}, but {} beside it {} oauthd's: is --db (or OAUTHD_DB, or `db` in the config file) mistyped? `oauthd serve` would make a new, empty database there, without the keys and connections",
                        settings.db.display(),
                        named.join(", "),
                        if beside.len() == 1 { "is" } else { "are" }
                    ),
                );
            }
            None
        }
        // Nor does it make the schema in an empty file.
        (_, Some((0, _))) => {
            r.line("warn", "store", super::empty_database(&settings.db));
            None
        }
        // check reads; it never upgrades the schema (the oauthd serving it would refuse
        // it), and says what a start of this oauthd would do.
        (_, Some((found, known))) if found > 0 && found < known => {
            r.line(
                "warn",
                "store",
                format!(
                    "{} has schema version {found}; this oauthd upgrades it to {known} when `oauthd serve` starts (back the database and its key file up first: an older oauthd refuses it once upgraded). Not checked further until then",
                    settings.db.display()
                ),
            );
            None
        }
        (_, Some((found, known))) if found > known => {
            r.line(
                "FAIL",
                "store",
                format!(
                    "{} has schema version {found}, newer than this oauthd understands ({known}): run a newer oauthd",
                    settings.db.display()
                ),
            );
            None
        }
        // A store that cannot be opened is one failed line: the key file and the
        // providers are still checked.
        _ => match open_store(settings, super::Missing::Refuse) {
            Ok(store) => {
                if let Err(super::Fatal(why, _)) =
                    super::open::refuse_a_backup(settings, "`oauthd serve` on it")
                {
                    r.line("warn", "store", format!("{why}; a start on it is refused"));
                }
                let copied = super::runtime().map(|rt| {
                    rt.block_on(super::copied_away::refuse(
                        store.as_ref(),
                        "`oauthd serve` on it",
                    ))
                });
                if let Ok(Err(super::Fatal(why, _))) = copied {
                    r.line("warn", "store", format!("{why}; a start on it is refused"));
                }
                Some(store)
            }
            Err(super::Fatal(why, _)) => {
                r.line("FAIL", "store", why);
                None
            }
        },
    }
}

/// The key file's line: there and private, or missing where the start would make it,
/// or missing where the start refuses to.
fn key_file_line(
    r: &mut Report,
    path: &std::path::Path,
    create: bool,
    store: Option<&Arc<dyn Store>>,
    rt: &tokio::runtime::Runtime,
) -> Result<(), Fatal> {
    match (std::fs::metadata(path), store) {
        (Err(_), store) if create => {
            // As the start judges it, in its words (no database yet: nothing to judge).
            let now = crate::clock::Clock::system().now_ms();
            let refusal = match store {
                Some(store) => rt.block_on(super::key_loading::refusal_without_key_file(
                    store.as_ref(),
                    path,
                    now,
                ))?,
                None => None,
            };
            match refusal {
                Some(why) => r.line("FAIL", "key file", why),
                None => r.line(
                    "ok",
                    "key file",
                    format!(
                        "{} does not exist yet; oauthd creates it at first start",
                        path.display()
                    ),
                ),
            }
        }
        (Ok(_), _) => match (super::readable_by_others(path), std::fs::File::open(path)) {
            (_, Err(e)) => r.line(
                "FAIL",
                "key file",
                format!(
                    "{}: {e}: run this as the user oauthd runs as (the key file is private to it)",
                    path.display()
                ),
            ),
            (Some(note), Ok(_)) => r.line("warn", "key file", note),
            (None, Ok(_)) => r.line(
                "ok",
                "key file",
                format!("{} (mode 600){}", path.display(), keys_by_line(path)),
            ),
        },
        (Err(e), _) => {
            let rescued = crate::vault::rescue_hint(path, &[]);
            let end = if rescued.is_empty() { "" } else { "." };
            r.line(
                "FAIL",
                "key file",
                format!(
                    "{}: {}{end}{rescued}",
                    path.display(),
                    crate::vault::read_failed(path, &e)
                ),
            )
        }
    }
    Ok(())
}

/// Which line of the key file holds which key, by the ids oauthd's messages name keys by
/// (empty when it does not read: the vault's line says why).
fn keys_by_line(path: &std::path::Path) -> String {
    let Ok(text) = std::fs::read_to_string(path).map(zeroize::Zeroizing::new) else {
        return String::new();
    };
    let Ok(ids) = crate::vault::key_ids_by_line(&text) else {
        return String::new();
    };
    if ids.is_empty() {
        return String::new();
    }
    let said: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, (line, id))| match i {
            0 => format!("{id} on line {line} (seals)"),
            _ => format!("{id} on line {line}"),
        })
        .collect();
    format!("; key(s) {}", said.join(", "))
}

/// What the vault key `v` opens of what the store holds, the other instances' keys, and
/// whether the serving oauthd runs this configuration.
async fn stored_lines(
    r: &mut Report,
    settings: &Settings,
    v: &Vault,
    store: &Arc<dyn Store>,
    source: &KeySource,
) -> Result<(), Fatal> {
    let known = v.key_ids();
    match store.list_all_connections().await {
        // A record that does not read may need a key nobody can name: a failure,
        // not a connection fewer.
        Err(e) => r.line("FAIL", "vault", format!("not every connection reads: {e}")),
        Ok(rows) => {
            if let Some(note) = super::unconfigured::note(
                rows.iter().map(|r| r.provider.as_str()),
                settings,
                super::unconfigured::Reader::Command,
            ) {
                r.line("warn", "connections", note);
            }
            if let Some(note) = troubled_note(&rows, &same_store_options(settings)) {
                r.line("warn", "connections", note);
            }
            vault_line(r, &rows, v, &known, source)
        }
    }
    let now = crate::clock::Clock::system().now_ms();
    let found = crate::states::stored_data(store.as_ref(), now).await?;
    let sealed: usize = found.keys.values().sum();
    let lacking: Vec<String> = found
        .keys
        .iter()
        .filter(|(id, _)| !known.contains(id))
        .map(|(id, n)| format!("{id} ({n})"))
        .collect();
    if lacking.is_empty() {
        r.line(
            "ok",
            "state data",
            if sealed == 0 {
                "no live state holds sealed data".to_owned()
            } else {
                format!(
                    "the key file opens the data of all {sealed} live state(s) that hold sealed data"
                )
            },
        );
    } else {
        let ids: Vec<String> = found
            .keys
            .keys()
            .filter(|id| !known.contains(id))
            .cloned()
            .collect();
        r.line(
            "FAIL",
            "state data",
            format!(
                "live states hold data sealed with key(s) {} lacks: {}; they answer 503 vault_error until it is back (as another line of the key file).{}",
                source.describe(),
                lacking.join(", "),
                source.rescue_hint(&ids)
            ),
        );
    }
    if found.in_clear > 0 {
        r.line(
            "warn",
            "state data",
            format!(
                "{} live state(s) hold data stored in clear by an oauthd from before data was sealed: a start reads theirs as it is (and refuses data in clear in any other state); anyone who could write the store before that start could have written it",
                found.in_clear,
            ),
        );
    }
    match store.vault_keys_in_use(now).await {
        Err(e) => r.line("FAIL", "instances", e),
        Ok(others) => instances_line(r, &others, &known, source),
    }
    if let Some(hint) = super::config_changed::restart_hint(settings, store.as_ref(), now).await {
        r.line("warn", "config", hint);
    }
    Ok(())
}

/// Each provider's endpoints, and whether its token endpoint takes the client's
/// credentials.
async fn provider_lines(
    r: &mut Report,
    settings: &Settings,
    providers: &Providers,
) -> Result<(), Fatal> {
    let http = flows::http_client(settings.provider_timeout).map_err(|e| Fatal(e, 1))?;
    for p in &providers.built {
        let what = format!("provider {}", p.name);
        match p.endpoints(&http).await {
            Err(e) => r.line("FAIL", &what, e),
            // Any HTTP answer from the token endpoint (a 400 for an empty request is
            // expected) shows it is reachable; only no answer at all fails.
            Ok(e) => {
                if let Err(err) = http.post(e.token.clone()).send().await {
                    r.line(
                        "FAIL",
                        &what,
                        format!(
                            "token endpoint {} unreachable: {}",
                            crate::oauth::url_shown(&e.token),
                            crate::oauth::with_causes(&err)
                        ),
                    );
                    continue;
                }
                if providers.unloaded.iter().any(|(name, _)| *name == p.name) {
                    let said = "reachable; the client secret is not checked (above)";
                    let token = crate::oauth::url_shown(&e.token);
                    r.line("ok", &what, format!("token endpoint {token}: {said}"));
                    continue;
                }
                let public_url = settings.public_url_for(settings.listen);
                let redirect = crate::broker::redirect_uri(&public_url, p);
                let line = match flows::check_client(&flows::Network(http.clone()), p, e, &redirect)
                    .await
                {
                    flows::ClientCheck::Accepted(d) => ("ok", d),
                    flows::ClientCheck::Refused(d) => ("FAIL", d),
                    flows::ClientCheck::Unknown(d) => {
                        ("warn", format!("credentials could not be verified: {d}"))
                    }
                };
                r.line(
                    line.0,
                    &what,
                    format!(
                        "token endpoint {}: {}",
                        crate::oauth::url_shown(&e.token),
                        line.1
                    ),
                );
                if let Some(note) = unlisted_scopes(p, e) {
                    r.line("warn", &what, note);
                }
            }
        }
    }
    Ok(())
}

/// The configured scopes the provider's metadata does not list, said as a warning: a
/// misspelled one (`offline_acces`) asks for nothing, and the connection made with it
/// lacks what the app needs. A warning, not a failure: `scopes_supported` may leave out
/// scopes the provider grants all the same.
fn unlisted_scopes(
    p: &crate::oauth::Provider,
    e: &crate::oauth::provider::Endpoints,
) -> Option<String> {
    let supported = e.scopes_supported.as_ref()?;
    let unlisted: Vec<&str> = p
        .scopes
        .iter()
        .filter(|s| !supported.contains(s))
        .map(String::as_str)
        .collect();
    (!unlisted.is_empty()).then(|| {
        format!(
            "scope(s) {} are not among those the provider's metadata lists ({}): check the spelling in [providers.{}] scopes (a provider may grant scopes it does not list: if connections get what this scope gives, ignore this)",
            unlisted.join(", "),
            supported.join(" "),
            p.name
        )
    })
}

/// Whether every oauthd serving this store seals with a key the key file has (as a start
/// of this one would judge it).
fn instances_line(
    r: &mut Report,
    others: &[crate::store::VaultKeysInUse],
    known: &[String],
    source: &KeySource,
) {
    // Each key once: several instances seal with the same one.
    let mut lacking: Vec<&str> = others
        .iter()
        .filter_map(|o| o.keys.first())
        .filter(|id| !known.contains(id))
        .map(String::as_str)
        .collect();
    lacking.sort_unstable();
    lacking.dedup();
    match (others.len(), lacking.is_empty()) {
        (0, _) => r.line("ok", "instances", "no oauthd serves this store now"),
        (n, true) => r.line(
            "ok",
            "instances",
            format!("{n} oauthd serving this store (one killed without a clean stop counts for up to a minute), each sealing with a key the key file has"),
        ),
        (n, false) => r.line(
            "FAIL",
            "instances",
            format!(
                "of the {n} oauthd serving this store, some seal with key(s) {} lacks: {} (a start with it is refused)",
                source.describe(),
                lacking.join(", ")
            ),
        ),
    }
}

/// Whether `public_url` reaches an oauthd from this host while one serves the store: the
/// address providers send browsers back to (`{public_url}/callback/<provider>`) and
/// sign-in links use. A name that reaches oauthd only from other machines warns here too.
async fn public_url_line(r: &mut Report, settings: &Settings, store: &dyn Store) {
    let Some(url) = &settings.public_url else {
        return;
    };
    let now = crate::clock::Clock::system().now_ms();
    let serving = store
        .vault_keys_in_use(now)
        .await
        .map_or(0, |told| told.len());
    if serving == 0 {
        r.line(
            "skip",
            "public_url",
            format!(
                "{url}: no oauthd serves this store now, so whether it reaches one is not asked"
            ),
        );
        return;
    }
    let base = url.as_str().trim_end_matches('/');
    let health = format!("{base}/healthz");
    // The providers' client: no redirects followed, 5 s in all.
    let answer = match flows::http_client(std::time::Duration::from_secs(5)) {
        Ok(client) => client
            .get(&health)
            .send()
            .await
            .map_err(|e| crate::oauth::with_causes(&e)),
        Err(e) => Err(e),
    };
    match answer {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
            match health_answer(resp).await {
                Some(true) => r.line(
                    "ok",
                    "public_url",
                    format!("{url} reaches an oauthd from this host ({health} answered)"),
                ),
                _ => r.line(
                    "warn",
                    "public_url",
                    format!("{health} answered, but not as oauthd does: providers send browsers back to {base}/callback/<provider>, which may not reach oauthd (another site at that name, or a proxy in front that does not pass the path on)"),
                ),
            }
        }
        Ok(resp) => r.line(
            "warn",
            "public_url",
            format!(
                "{health} answered {} from this host, not oauthd's 200: providers send browsers back to {base}/callback/<provider>, which may not reach oauthd (a proxy in front that does not pass the path on?)",
                resp.status()
            ),
        ),
        Err(e) => r.line(
            "warn",
            "public_url",
            format!(
                "{health} did not answer from this host ({}): providers send browsers back to {base}/callback/<provider> and sign-in links use it; check its name, the proxy in front and its certificate (a name that reaches oauthd only from other machines is fine)",
                e
            ),
        ),
    }
}

/// Whether a `/healthz` answer is oauthd's (`{"status": "ok"}`), read up to 4 KiB: an
/// address that answers with anything else is no oauthd, however much it sends. `None`
/// when it could not be read.
async fn health_answer(mut resp: reqwest::Response) -> Option<bool> {
    const MOST: usize = 4096;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MOST {
            return Some(false);
        }
    }
    let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(answer.get("status").and_then(serde_json::Value::as_str) == Some("ok"))
}

/// Room left on the database's filesystem: SQLite's `-wal` file grows to about 4 MB between
/// two checkpoints, so below 8 MiB writes are about to fail (the README's margin), and
/// below 64 MiB they soon may.
fn check_room(r: &mut Report, db: &std::path::Path) {
    use crate::store::sqlite::room::{free_bytes, ROOM};
    const MIB: u64 = 1024 * 1024;
    // Where the data is: a link's target's filesystem.
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_owned());
    let dir = crate::paths::dir_of(&db);
    match free_bytes(&db) {
        Ok(crate::store::sqlite::room::Free { any_user: free, .. }) => {
            let said = format!(
                "{} MiB free on the filesystem of {}",
                free / MIB,
                dir.display()
            );
            match free {
                f if f < ROOM => r.line(
                    "FAIL",
                    "disk",
                    format!(
                        "{said}: writes fail below about {} MiB (the -wal file grows to 4 MB between checkpoints); make room",
                        ROOM / MIB
                    ),
                ),
                f if f < 64 * MIB => r.line("warn", "disk", format!("{said}: little room left")),
                _ => r.line("ok", "disk", said),
            }
        }
        Err(e) => r.line(
            "warn",
            "disk",
            format!(
                "the room on the filesystem of {} could not be read: {e}",
                dir.display()
            ),
        ),
    }
}

/// What the database holds: its integrity, warnings, how full it is, API keys' scopes.
fn check_store(
    r: &mut Report,
    settings: &Settings,
    store: &dyn crate::store::Store,
    rt: &tokio::runtime::Runtime,
) {
    match rt.block_on(store.integrity()) {
        Ok(detail) => r.line("ok", "store", detail),
        Err(e) => r.line("FAIL", "store", e),
    }
    match rt.block_on(store.warnings()) {
        Ok(warnings) => warnings.iter().for_each(|w| r.line("warn", "store", w)),
        Err(e) => r.line("FAIL", "store", e),
    }
    let clock = crate::clock::Clock::system();
    if let Some(ahead) = rt.block_on(crate::clock_watch::ahead_of_store(store, &clock)) {
        match crate::clock_watch::said_against_store(ahead, &store.describe()) {
            Some(text) => r.line("warn", "clock", text),
            None => r.line(
                "ok",
                "clock",
                format!("agrees with the store's within {} ms", ahead.abs()),
            ),
        }
    }
    let max_total = settings.states.max_total_states;
    let now = clock.now_ms();
    match rt.block_on(store.live_states_total(now)) {
        Ok(total) => match crate::states::fullness_note(total, max_total) {
            Some(note) => r.line("warn", "states", note),
            None => r.line(
                "ok",
                "states",
                format!("{total} live, at most {max_total} (states.max_total_states)"),
            ),
        },
        Err(e) => r.line("FAIL", "states", e),
    }
    match rt.block_on(store.list_keys()) {
        Ok(keys) => keys
            .iter()
            .filter(|k| k.revoked_at_ms.is_none())
            .filter_map(|k| Some((k, crate::apikeys::provider_scope_note(k)?)))
            .for_each(|(k, note)| r.line("warn", "keys", format!("API key {:?}: {note}", k.name))),
        Err(e) => r.line("FAIL", "keys", e),
    }
}

/// The vault's line: whether its keys open every connection's tokens.
fn vault_line(
    r: &mut Report,
    rows: &[crate::store::ConnectionRow],
    v: &Vault,
    known: &[String],
    source: &KeySource,
) {
    let unreadable = rows
        .iter()
        .filter(|c| vault::sealed_key_id(&c.access_token).is_none_or(|id| !known.contains(&id)))
        .count();
    // The ids of the keys they need, as the start names them.
    let missing = super::missing_key_ids(rows, known);
    if unreadable == 0 {
        r.line(
            "ok",
            "vault",
            match rows.len() {
                0 => format!("key {} (no connections yet)", v.current_key_id()),
                n => {
                    // The keys they are sealed with, each needed as long as one is: during
                    // a rotation, not only the one new seals use.
                    let mut used: Vec<String> = rows
                        .iter()
                        .filter_map(|c| vault::sealed_key_id(&c.access_token))
                        .collect();
                    used.sort();
                    used.dedup();
                    format!(
                        "{} opens all {n} connection(s), sealed with key(s) {} (each needed while one is sealed with it); new ones are sealed with {}",
                        source.describe(),
                        used.join(", "),
                        v.current_key_id()
                    )
                }
            },
        );
    } else {
        r.line(
            "FAIL",
            "vault",
            format!(
                "{unreadable} connection(s) sealed with key(s) {} that {} lacks (it has {}): restore the key that was used.{}",
                if missing.is_empty() { "unknown".to_owned() } else { missing.join(", ") },
                source.describe(),
                known.join(", "),
                // None needed (unknown keys): any copy would match.
                if missing.is_empty() {
                    String::new()
                } else {
                    source.rescue_hint(&missing)
                }
            ),
        );
    }
}

/// The options that name the store this check read, for the commands it advises: run
/// from another directory (cron's), a command without them reads another database. The
/// config file when one was given (it names the store), else a SQLite file's path; a
/// Redis URL is not repeated (it may hold a password).
pub(super) fn same_store_options(settings: &Settings) -> String {
    match (&settings.config_file, &settings.store) {
        (Some(config), _) => format!(
            " --config {}",
            crate::paths::shell_word(&std::path::absolute(config).unwrap_or(config.clone()))
        ),
        (None, crate::store::target::StoreTarget::Sqlite) => format!(
            " --db {}",
            crate::paths::shell_word(
                &std::path::absolute(&settings.db).unwrap_or(settings.db.clone())
            )
        ),
        (None, _) => String::new(),
    }
}

/// Connections that need the person to connect again, and those whose refreshes fail: a
/// check run from cron hears of them, as `/metrics` and the events tell. The commands it
/// names carry `options` (`same_store_options`).
fn troubled_note(rows: &[crate::store::ConnectionRow], options: &str) -> Option<String> {
    use crate::store::ConnectionStatus;
    let names = |keep: &dyn Fn(&crate::store::ConnectionRow) -> bool| -> Vec<String> {
        rows.iter()
            .filter(|c| keep(c))
            .map(|c| format!("{}/{}", c.provider, c.account))
            .collect()
    };
    let reauth = names(&|c| c.status == ConnectionStatus::NeedsReauth);
    let failing = names(&|c| c.status == ConnectionStatus::Active && c.failures > 0);
    let listed = |names: &[String]| {
        let shown = names
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        match names.len() {
            n if n > 10 => format!("{shown} and {} more", n - 10),
            _ => shown,
        }
    };
    let mut said = Vec::new();
    if !reauth.is_empty() {
        said.push(format!(
            "{} of {} need(s) the account's owner to connect again (on the page; or `oauthd connect{options} <provider> --device|--paste --account <name>` for a device-flow or paste-back provider): {}",
            reauth.len(),
            rows.len(),
            listed(&reauth)
        ));
    }
    if !failing.is_empty() {
        said.push(format!(
            "{} refresh(es) failing, tried again with a backoff (`oauthd connections show{options} <provider> <account>` says why; `oauthd connections refresh{options} <provider> <account>` tries at once): {}",
            failing.len(),
            listed(&failing)
        ));
    }
    (!said.is_empty()).then(|| said.join("; "))
}

/// Whether the directory a database would be made in is there.
fn parent_is_dir(db: &std::path::Path) -> bool {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.is_dir(),
        _ => true,
    }
}

//! Providers and connected accounts from the terminal: `providers list`,
//! `connections list|show|delete`, `connect --device|--paste`, `admin link`.

use super::{admin, open_store, runtime, services, ConnectionsCommand, Fatal, SessionsCommand};
use crate::admin::RevokeError;
use crate::broker::{Imported, ImportedTokens, Replacing};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store::DeviceFlowStatus;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C, SIGTERM or SIGHUP (`stop_on_signal`) while a terminal command asks a
/// provider for tokens (a refresh, a device flow's polls): what is under way with the
/// provider ends and is saved before the command does. Ended by the signal's default
/// action, a refresh the provider had answered lost the refresh token it rotated, and the
/// next refresh ended the grant.
static STOP: AtomicBool = AtomicBool::new(false);

/// What a first Ctrl-C or SIGTERM while a provider is asked is told.
const FINISHING: &str = "stopping once what the provider is asked now is answered and saved (cut \
     short, a refresh token it rotates would be lost and the account would need connecting \
     again); a second Ctrl-C or SIGTERM, a second or more from now, stops at once";

/// `FINISHING` for a device flow's poll.
const FINISHING_POLL: &str =
    "stopping once what the provider is asked now is answered and saved (cut \
     short, the tokens an approved code is redeemed for would be lost, and the code spent); a \
     second Ctrl-C or SIGTERM, a second or more from now, stops at once";

/// Waits for `work`, saying `FINISHING` once if a signal comes meanwhile.
async fn finished_despite_signals<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut told = false;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if !told && STOP.load(Ordering::Relaxed) {
                    say!("{FINISHING}");
                    told = true;
                }
            }
        }
    }
}

/// The providers the config names, for a message.
fn configured_names(settings: &Settings) -> String {
    if settings.providers.is_empty() {
        return match &settings.config_file {
            Some(_) => "the config file names none".to_owned(),
            None => "no config file was given: --config FILE or OAUTHD_CONFIG".to_owned(),
        };
    }
    let names: Vec<&str> = settings.providers.keys().map(String::as_str).collect();
    format!("configured: {}", names.join(", "))
}

pub(super) fn providers_list(settings: &Settings) -> Result<(), Fatal> {
    let public_url = settings.public_url_for(settings.listen);
    let providers = super::providers_to_list(settings)?;
    if settings.public_url.is_none() && settings.listen.port() == 0 {
        say!(
            "listen has port 0, which the server picks when it starts: the redirect URIs \
             below cannot name it. Set public_url, or a fixed port, to register them."
        );
    }
    if providers.is_empty() {
        match &settings.config_file {
            Some(file) => say!(
                "No providers configured in {}: add [providers.NAME] tables to it (see oauthd.example.toml).",
                file.display()
            ),
            None => say!(
                "No providers configured, and no config file was given: providers live in one (--config FILE or OAUTHD_CONFIG; see oauthd.example.toml)."
            ),
        }
    }
    for p in &providers {
        out!("{}", p.name);
        out!(
            "  redirect URI: {}{}",
            crate::broker::redirect_uri(&public_url, p),
            if p.paste_redirect.is_some() {
                "  (paste-back: register it as is; nothing needs to answer there)"
            } else {
                ""
            }
        );
        if let Some(base) = &p.api_base {
            out!("  API (proxy):  {base}");
        }
        match (p.preset, p.issuer()) {
            (Some(preset), _) => out!("  preset:       {preset}"),
            (None, Some(issuer)) => {
                // As configured: a URL's text has a `/` for an empty path, which the issuer
                // (and the `iss` of its ID tokens) may not.
                let issuer = settings
                    .providers
                    .get(&p.name)
                    .and_then(|cfg| cfg.issuer.as_deref())
                    .unwrap_or(issuer.as_str());
                out!("  issuer:       {issuer} (endpoints discovered when oauthd starts, and again on use until found)")
            }
            (None, None) => out!("  endpoints:    explicit"),
        }
        out!("  client id:    {}", p.client_id);
        out!("  scopes:       {}", p.scopes.join(" "));
        out!(
            "  device flow:  {}",
            match p.device_flow_known() {
                Some(true) if p.device_flow_for_apps => "yes (`oauthd connect --device`, the page, POST /v1/device)",
                Some(true) => "yes (`oauthd connect --device`, the page; not apps' keys: device_flow_for_apps = false)",
                Some(false) => "no (no device_authorization_url)",
                None => "if the issuer's metadata lists a device_authorization_endpoint",
            }
        );
        if let Some(notes) = p.notes {
            out!("  notes:        {notes}");
        }
    }
    Ok(())
}

pub(super) fn connections(settings: Settings, command: ConnectionsCommand) -> Result<(), Fatal> {
    let using = match command {
        ConnectionsCommand::Refresh { .. } => Some("a refresh on it"),
        ConnectionsCommand::Delete { .. } => Some("a delete on it (a revocation at the provider)"),
        ConnectionsCommand::Import { .. } => {
            Some("an import into it (a refresh of a token it imports)")
        }
        ConnectionsCommand::List { .. } | ConnectionsCommand::Show { .. } => None,
    };
    if let Some(doing) = using {
        super::open::refuse_a_backup(&settings, doing)?;
    }
    let store = open_store(&settings, super::Missing::Refuse)?;
    if let Some(doing) = using {
        super::runtime()?.block_on(super::copied_away::refuse(store.as_ref(), doing))?;
    }
    let public_url = settings.public_url_for(settings.listen);
    let clock = Clock::system();
    let providers = match &command {
        ConnectionsCommand::List { .. } | ConnectionsCommand::Show { .. } => {
            super::providers_to_list(&settings)?
        }
        _ => super::providers(&settings)?,
    };
    let seals = match &command {
        ConnectionsCommand::Refresh { .. } | ConnectionsCommand::Import { .. } => {
            super::Seals::Tokens
        }
        ConnectionsCommand::Delete { lost_key: true, .. } => super::Seals::NothingOpened,
        _ => super::Seals::Nothing,
    };
    let (_, broker) = services(
        &settings,
        &store,
        providers,
        clock.clone(),
        public_url,
        super::notifier(&settings, clock.clone())?,
        seals,
    )?;
    runtime()?.block_on(async {
        match command {
            ConnectionsCommand::List { json } => {
                let list = broker.connections().await?;
                if let Some(note) =
                    super::unconfigured::note(
                        list.iter().map(|c| c.provider.as_str()),
                        &settings,
                        super::unconfigured::Reader::Command,
                    )
                {
                    say!("{note}");
                }
                if json {
                    out!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                let rows: Vec<[String; 5]> = list
                    .iter()
                    .map(|c| {
                        [
                            c.provider.clone(),
                            c.account.clone(),
                            c.status.as_str().to_owned(),
                            c.expires_at.clone().unwrap_or_else(|| "unknown".into()),
                            c.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                let header = [
                    "PROVIDER",
                    "ACCOUNT",
                    "STATUS",
                    "TOKEN EXPIRES",
                    "LAST ERROR",
                ];
                for line in super::table::lines(header, &rows, &[]) {
                    out!("{line}");
                }
                Ok(())
            }
            ConnectionsCommand::Show { provider, account } => {
                let view = match broker.connection(&provider, &account).await {
                    Ok(view) => view,
                    Err(e @ crate::broker::BrokerError::ConnectionNotFound { .. }) => {
                        return Err(not_found(e, &settings, &provider));
                    }
                    Err(e) => return Err(e.into()),
                };
                out!("{}", serde_json::to_string_pretty(&view)?);
                Ok(())
            }
            ConnectionsCommand::Refresh { provider, account } => {
                super::stop_on_signal(&STOP);
                // A connection that is not there is said before anything else ("Refreshing…"
                // first read as if a refresh had begun).
                let before = match broker.connection(&provider, &account).await {
                    Ok(view) => Some(view),
                    Err(e @ crate::broker::BrokerError::ConnectionNotFound { .. }) => {
                        return Err(not_found(e, &settings, &provider));
                    }
                    // A name no connection can have: said before "Refreshing…" too.
                    Err(e @ crate::broker::BrokerError::InvalidAccount(_)) => return Err(e.into()),
                    Err(_) => None,
                };
                if let Some(refusal) = super::unconfigured::refresh_refusal(&settings, &provider) {
                    return Err(Fatal(refusal, 2));
                }
                say!("Refreshing {provider}/{account}…");
                // What the refresh began ends before the command does, Ctrl-C or not: a
                // provider slower than a caller's wait is waited for (a refresh cut short
                // could lose a rotated refresh token), and then the connection tells how
                // it went.
                let refreshed = finished_despite_signals(async {
                    let refreshed = broker.refresh_by_hand(&provider, &account).await;
                    broker.stop_background().await;
                    refreshed
                })
                .await;
                let view = match refreshed {
                    Ok(view) => view,
                    Err(e @ crate::broker::BrokerError::ProviderUnavailable { .. }) => {
                        let after = broker.connection(&provider, &account).await.ok();
                        let outcome = before
                            .as_ref()
                            .zip(after.as_ref())
                            .and_then(|(b, a)| outcome_since(b, a));
                        match (outcome, after) {
                            (Some(Ok(())), Some(after)) => after,
                            (Some(Err(why)), _) => return Err(Fatal(why, 1)),
                            _ => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                say!(
                    "Refreshed {provider}/{account}: its access token expires {}.",
                    view.expires_at.as_deref().map_or(
                        "when the provider says (it did not)".to_owned(),
                        |at| format!("at {at}")
                    )
                );
                restart_hint(&settings, store.as_ref(), &clock).await;
                Ok(())
            }
            ConnectionsCommand::Import { file, replace } => {
                let replacing = match replace {
                    true => Replacing::Any,
                    false => Replacing::Imported,
                };
                import(&broker, &file, replacing).await?;
                restart_hint(&settings, store.as_ref(), &clock).await;
                Ok(())
            }
            ConnectionsCommand::Delete {
                provider,
                account,
                lost_key: true,
                ..
            } => {
                let ids = match broker.tokens_open(&provider, &account).await? {
                    Ok(()) => return Err(Fatal(
                        format!("nothing was deleted: the tokens of {provider}/{account} open with the vault key loaded, so its key is not lost: `oauthd connections delete {provider} {account}{}` (without --lost-key) revokes them at {provider} and deletes it", super::check::same_store_options(&settings)),
                        2,
                    )),
                    Err(ids) => ids,
                };
                // A key that is somewhere is no key lost: this command may only have been
                // given another (OAUTHD_KEY_FILE left set in a shell).
                let source = super::key_source(&settings).map_err(|e| Fatal(e, 2))?;
                let mut found = super::key_loading::where_the_keys_are(
                    &source,
                    &store,
                    &settings.store,
                    &settings.db,
                    &ids,
                )
                .await;
                let now_ms = clock.now_ms();
                if found.is_empty() {
                    let serving = store.vault_keys_in_use(now_ms).await.unwrap_or_default();
                    if let Some(key) = ids.iter().find(|id| serving.iter().any(|o| o.keys.contains(id))) {
                        found = format!(" An oauthd serving this store has vault key {key}: run this command with its key.");
                    }
                }
                if !found.is_empty() {
                    return Err(Fatal(
                        format!(
                            "nothing was deleted: the tokens of {provider}/{account} were sealed with vault key(s) {}, which the key loaded from {} lacks, but that key is not lost.{found}",
                            ids.join(", "),
                            source.describe()
                        ),
                        2,
                    ));
                }
                let outcome = broker.forget_unopened(&provider, &account).await?;
                say!(
                    "Deleted connection {provider}/{account}: {}.",
                    outcome.describe(&provider)
                );
                Ok(())
            }
            ConnectionsCommand::Delete {
                provider,
                account,
                force,
                yes,
                ..
            } => {
                if !force && broker.connection(&provider, &account).await.is_ok() {
                    if let Some(why) =
                        super::unconfigured::delete_refusal(&settings, &provider, &account)
                    {
                        return Err(Fatal(why, 2));
                    }
                }
                if !yes && !shared_grant_confirmed(&broker, &provider, &account).await? {
                    return Err(Fatal(
                        format!("nothing was deleted: {provider}/{account} is as it was"),
                        1,
                    ));
                }
                let outcome = broker.disconnect(&provider, &account, force).await?;
                say!(
                    "Deleted connection {provider}/{account}: {}.",
                    outcome.describe(&provider)
                );
                Ok(())
            }
        }
    })
}

/// A connection that is not there, and whether its provider is configured.
fn not_found(e: crate::broker::BrokerError, settings: &Settings, provider: &str) -> Fatal {
    if settings.providers.contains_key(provider) {
        return e.into();
    }
    Fatal(
        format!(
            "{e}, and no provider {provider:?} is configured ({})",
            configured_names(settings)
        ),
        1,
    )
}

/// How a refresh that went on past its caller's wait ended, from the connection before and
/// after it: refreshed (a new last refresh, no failures), refused (more failures, or it
/// needs its owner now: what the provider said), or `None` when nothing was recorded.
fn outcome_since(
    before: &crate::broker::ConnectionView,
    after: &crate::broker::ConnectionView,
) -> Option<Result<(), String>> {
    let key = format!("{}/{}", after.provider, after.account);
    let why = after.last_error.as_deref().unwrap_or("no reason given");
    if after.status != before.status && after.status == crate::broker::ViewStatus::NeedsReauth {
        return Some(Err(format!(
            "refreshing {key} was refused ({why}): it needs its owner to connect it again"
        )));
    }
    if after.failures > before.failures {
        return Some(Err(format!("refreshing {key} failed: {why}")));
    }
    (after.failures == 0 && after.last_refresh_at != before.last_refresh_at).then_some(Ok(()))
}

/// Before a disconnect revokes a grant other connections share (the same account at the
/// provider, signed in from one browser: revoking one's tokens ends theirs at many
/// providers), names them, and in a terminal asks whether to go on: `false` unless the
/// answer is yes. Without a terminal (a script) it only says so, and goes on, as before.
async fn shared_grant_confirmed(
    broker: &crate::broker::Broker,
    provider: &str,
    account: &str,
) -> Result<bool, Fatal> {
    use std::io::IsTerminal;
    let same = broker.sharing_a_grant(provider, account).await?;
    if same.is_empty() {
        return Ok(true);
    }
    let names: Vec<String> = same.iter().map(ToString::to_string).collect();
    let (verb, them) = if same.len() == 1 {
        ("is", "it then needs")
    } else {
        ("are", "they then need")
    };
    say!(
        "{} {verb} the same account at {provider} as {provider}/{account}: at many providers \
         they share one grant, which revoking {provider}/{account}'s tokens ends ({them} \
         connecting again).",
        names.join(", ")
    );
    // A script is not asked, and does not go on: a delete meant for one connection
    // would end others' grants unseen (exit 0).
    if !std::io::stdin().is_terminal() {
        say!("Not asked, as there is no terminal: give --yes to revoke and delete it anyway.");
        return Ok(false);
    }
    {
        use std::io::Write as _;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "Revoke and delete {provider}/{account} anyway? [y/N] ");
        let _ = err.flush();
    }
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Fatal(format!("reading the answer: {e}"), 1))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `connections import --file`: each line on its own; a refused line is reported (never
/// with a token in the message) and the others go on.
async fn import(
    broker: &crate::broker::Broker,
    file: &std::path::Path,
    replacing: Replacing,
) -> Result<(), Fatal> {
    use std::io::BufRead;
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| Fatal(format!("cannot read {}: {e}", file.display()), 1))?;
        Box::new(std::io::BufReader::new(f))
    };
    let (mut done, mut kept, mut refused) = (0, 0, 0);
    let mut reader = reader;
    // UTF-16 (what PowerShell 5's `>` and `Out-File` write): every line would be refused
    // as "not UTF-8" or "not a JSON object", none saying why.
    if let Ok([0xFF, 0xFE, ..] | [0xFE, 0xFF, ..]) = reader.fill_buf() {
        return Err(Fatal(
            format!(
                "{} is UTF-16 text (it starts with a UTF-16 byte-order mark); an import reads UTF-8: save it as UTF-8 (PowerShell: Out-File -Encoding utf8) and import again. Nothing was imported",
                read_from(file)
            ),
            1,
        ));
    }
    for n in 0.. {
        let read = read_line(&mut reader)
            .map_err(|e| Fatal(format!("cannot read {}: {e}", file.display()), 1))?;
        let line = match read {
            Line::End => break,
            // A byte-order mark (a file saved as "UTF-8 with BOM", as Notepad and
            // PowerShell 7's Out-File -Encoding utf8BOM do) is no part of the first line's
            // JSON: taken off, as JSON parsers that read files do.
            Line::Text(text) if n == 0 && text.starts_with('\u{feff}') => {
                zeroize::Zeroizing::new(text.trim_start_matches('\u{feff}').to_owned())
            }
            Line::Text(text) => text,
            Line::Refused(why) => {
                out!("line {}: refused: {why}", n + 1);
                refused += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match import_line(broker, &line, replacing).await {
            Ok((said, Imported::Kept { .. })) => {
                out!("line {}: {said}", n + 1);
                kept += 1;
            }
            Ok((said, _)) => {
                out!("line {}: {said}", n + 1);
                done += 1;
            }
            Err(why) => {
                out!("line {}: refused: {why}", n + 1);
                refused += 1;
            }
        }
    }
    // One summary, the same line whatever came of the lines (a script reads it); the exit
    // status says whether any was refused.
    let summary = format!("{done} imported, {kept} kept, {refused} refused.");
    if refused > 0 {
        say!("{summary}");
        return Err(Fatal::said(1));
    }
    // An empty file is a mistake upstream (an export that failed), not a success.
    if done + kept == 0 {
        return Err(Fatal(
            format!(
                "nothing imported: {} holds no line to import (one JSON object per line)",
                read_from(file)
            ),
            1,
        ));
    }
    say!("{summary}");
    Ok(())
}

/// What an import reads from, for a message: the file, or standard input (`-`).
fn read_from(file: &std::path::Path) -> String {
    if file.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        file.display().to_string()
    }
}

/// The longest import line read: two tokens at their longest, escaped, and the rest.
const MAX_LINE_BYTES: usize = 64 * 1024;

enum Line {
    End,
    Text(zeroize::Zeroizing<String>),
    /// Read to its end, and not imported: said with the line's number, the run goes on.
    Refused(&'static str),
}

/// The next line, at most `MAX_LINE_BYTES` of it held (a longer one is read past, not
/// kept), zeroed when dropped: a line that is not UTF-8 or too long is refused, not the
/// end of the run.
fn read_line(reader: &mut dyn std::io::BufRead) -> std::io::Result<Line> {
    // Room for the longest line at once: a vector that grew would leave copies unzeroed.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(MAX_LINE_BYTES + 1));
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, ended) = match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => (chunk.split_at(at + 1).0, true),
            None => (chunk, false),
        };
        let taken = part.len();
        if !too_long {
            if bytes.len() + taken > MAX_LINE_BYTES + 1 {
                too_long = true;
                bytes.clear();
            } else {
                bytes.extend_from_slice(part);
            }
        }
        reader.consume(taken);
        if ended {
            break;
        }
    }
    if !any {
        return Ok(Line::End);
    }
    if too_long {
        return Ok(Line::Refused("longer than 64 KiB"));
    }
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Line::Text(zeroize::Zeroizing::new(text.to_owned()))),
        Err(_) => Ok(Line::Refused("not UTF-8")),
    }
}

/// Why an import line is no JSON object, from the parser's words (never quoted: they may
/// hold part of a token).
fn unreadable_line(said: &str) -> String {
    if said.contains("appears more than once") {
        return "a JSON object that names a member more than once".into();
    }
    if said.contains("must be a JSON object") {
        return "JSON, but not an object (one {…} per line)".into();
    }
    if said.contains("JSON oauthd does not take") {
        return "JSON oauthd does not take (a number past what a double holds, or arrays and objects nested more than 127 deep)".into();
    }
    // serde_json ends its messages with "at line L column C".
    let column = said
        .rsplit_once(" column ")
        .map(|(_, c)| {
            c.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|c| c.parse::<u64>().ok());
    match column {
        Some(c) => format!("not valid JSON (from byte {c} of the line on)"),
        None => "not valid JSON".into(),
    }
}

async fn import_line(
    broker: &crate::broker::Broker,
    line: &str,
    replacing: Replacing,
) -> Result<(String, Imported), String> {
    // Read as an HTTP body is: a member named twice is refused, not the last one taken.
    let mut map = match crate::http::body::JsonObject::parse(line.as_bytes()) {
        Ok(object) => object.into_map(),
        // The parser's message could quote part of the line, which may hold a token: said
        // in words of oauthd's own, with where it went wrong.
        Err(e) => return Err(unreadable_line(&e.detail)),
    };
    let mut name = |field: &str| match map.remove(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        _ => Err(format!("{field} is required (a string)")),
    };
    let (provider, account) = (name("provider")?, name("account")?);
    let tokens = ImportedTokens::from_json(map).map_err(|e| e.to_string())?;
    let done = broker
        .import_tokens(&provider, &account, tokens, replacing)
        .await
        .map_err(|e| e.to_string())?;
    let said = match done {
        Imported::Created => format!("created {provider}/{account}"),
        Imported::Replaced => format!("replaced {provider}/{account}"),
        Imported::Kept { since_ms } => format!(
            "kept {provider}/{account}: oauthd {}; these over them could replay a refresh token {provider} has rotated out since, which ends the whole grant at providers that rotate them (--replace imports them anyway)",
            match since_ms {
                Some(at) => format!(
                    "has had its tokens from {provider} since {} (connected or refreshed)",
                    crate::clock::rfc3339(at)
                ),
                None => format!("is refreshing it at {provider} now"),
            }
        ),
    };
    Ok((said, done))
}

/// Runs a device flow from the terminal: shows the code, waits, exits 0 once connected.
pub(super) fn connect_device(
    settings: Settings,
    provider: &str,
    device: bool,
    account: Option<&str>,
) -> Result<(), Fatal> {
    if !device {
        return Err(Fatal(
            "from the terminal, connect with the device flow (--device) or paste-back (--paste); for the browser flow open oauthd's page, or use POST /v1/connect".into(),
            2,
        ));
    }
    let (broker, store, clock) = terminal_broker(&settings, provider)?;
    super::stop_on_signal(&STOP);
    runtime()?.block_on(async {
        let start = broker.start_device(provider, account, "cli").await?;
        let account = account.unwrap_or(crate::broker::DEFAULT_ACCOUNT);
        // What the provider sent, with control characters escaped: a terminal would act on
        // them (clear the screen, hide text, disguise a link as another).
        let shown = |text: &str| crate::oauth::provider_text(text, 2048);
        out!(
            "To connect {provider}/{account}, open {}",
            shown(&start.verification_uri)
        );
        out!("and enter the code: {}", shown(&start.user_code));
        if let Some(complete) = &start.verification_uri_complete {
            out!("(or open {})", shown(complete));
        }
        let mut last_note = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let stopping = STOP.load(Ordering::Relaxed);
            if stopping {
                // A poll under way may have the tokens: it ends and stores them first (the
                // device code is spent once redeemed). The flow stays pending otherwise,
                // for a running oauthd to finish.
                say!("{FINISHING_POLL}");
                broker.stop_background().await;
            }
            let status = broker.device_status(provider, &start.id).await?;
            match status.status {
                DeviceFlowStatus::Pending if stopping => {
                    // Told by the serving instances' notes (a serving oauthd tells every
                    // 20 s, and one killed counts for 60 s more).
                    let serving = store.vault_keys_in_use(clock.now_ms()).await;
                    let who = match serving {
                        Ok(told) if told.is_empty() => {
                            "no oauthd serves this store now: one started on it before the flow expires polls it, and connects it"
                        }
                        _ => "a running oauthd goes on polling the flow until it expires, and connects it",
                    };
                    return Err(Fatal(
                        format!(
                            "stopped before {provider}/{account} was connected here; {who} \
                             once the code is entered (or already has)"
                        ),
                        super::INTERRUPTED,
                    ));
                }
                DeviceFlowStatus::Pending => {
                    if last_note.elapsed() >= std::time::Duration::from_secs(5) {
                        let left = (start.expires_at_ms - clock.now_ms()).max(0) / 1000;
                        say!("waiting for approval… {}m{:02}s left", left / 60, left % 60);
                        last_note = std::time::Instant::now();
                    }
                }
                DeviceFlowStatus::Connected => {
                    out!("Connected {provider}/{account}.");
                    restart_hint(&settings, store.as_ref(), &clock).await;
                    return Ok(());
                }
                other => {
                    let detail = status.detail.unwrap_or_default();
                    return Err(Fatal(format!("not connected: {other}: {detail}"), 1));
                }
            }
        }
    })
}

/// The broker a terminal connect to `provider` drives, on the configured store. A provider
/// the config lacks is a command-line error (exit code 2), said before the store is opened
/// (which may make the vault key file).
fn terminal_broker(settings: &Settings, provider: &str) -> Result<TerminalBroker, Fatal> {
    if !settings.providers.contains_key(provider) {
        let unknown =
            crate::broker::BrokerError::UnknownProvider(provider.chars().take(64).collect());
        return Err(Fatal(unknown.to_string(), 2));
    }
    let store = open_store(settings, super::Missing::Refuse)?;
    super::runtime()?.block_on(super::copied_away::refuse(
        store.as_ref(),
        "a connection made into it",
    ))?;
    let clock = Clock::system();
    let public_url = settings.public_url_for(settings.listen);
    let (_, broker) = services(
        settings,
        &store,
        super::providers(settings)?,
        clock.clone(),
        public_url,
        super::notifier(settings, clock.clone())?,
        super::Seals::Tokens,
    )?;
    Ok((broker, store, clock))
}

/// The broker a terminal command connects with, the store it writes to, and its clock.
type TerminalBroker = (
    std::sync::Arc<crate::broker::Broker>,
    std::sync::Arc<dyn crate::store::Store>,
    Clock,
);

/// Says so when a running oauthd started before the config file changed: it may not know
/// the provider just connected (`config_changed`).
async fn restart_hint(settings: &Settings, store: &dyn crate::store::Store, clock: &Clock) {
    if let Some(hint) = super::config_changed::restart_hint(settings, store, clock.now_ms()).await {
        say!("note: {hint}");
    }
}

/// Paste-back from the terminal: prints where to approve, reads the address the browser
/// ended on from stdin, finishes the flow with the callback's rules. When the redirect URI
/// is oauthd's own callback and a running oauthd answers it, the flow finishes there: the
/// command sees the connection made and ends as well.
pub(super) fn connect_paste(
    settings: Settings,
    provider: &str,
    account: Option<&str>,
) -> Result<(), Fatal> {
    let (broker, store, clock) = terminal_broker(&settings, provider)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let start = broker.start_connect(provider, account, None, crate::broker::FlowStarter::Operator).await?;
        let outcome = paste_or_wait(&settings, &broker, store.as_ref(), &clock, provider, account, &start).await;
        // Given up (an empty line, the tries used, end of input, a refusal): the flow ends
        // with the command. Left open, anyone who saw its address (scroll-back, a shared
        // screen) could finish it with their own account until it expired.
        if outcome.is_err() {
            match broker.abandon_flow(&start).await {
                Ok(true) => say!("The sign-in address printed above no longer works."),
                Ok(false) => {}
                Err(e) => say!("The sign-in address printed above may still work until it expires: ending its flow failed ({e})."),
            }
        }
        outcome
    });
    // A read of stdin may still be waiting: it is not waited for.
    rt.shutdown_background();
    result
}

/// `connect_paste` once its flow is started: the pasted address, or the callback of a
/// running oauthd, finishes it.
async fn paste_or_wait(
    settings: &Settings,
    broker: &std::sync::Arc<crate::broker::Broker>,
    store: &dyn crate::store::Store,
    clock: &crate::clock::Clock,
    provider: &str,
    account: Option<&str>,
    start: &crate::broker::ConnectStart,
) -> Result<(), Fatal> {
    // Nothing connects the account before its address is even printed.
    let started_ms = clock.now_ms();
    let redirect = broker.redirect_uri(provider);
    let account = account.unwrap_or(crate::broker::DEFAULT_ACCOUNT);
    out!("To connect {provider}/{account}, open in a browser:");
    out!("{}", start.authorize_url);
    let ttl = broker.flow_ttl_text(provider, account, false);
    if broker.callback_answers(provider) {
        out!("After you approve, the browser goes to {redirect}…");
        out!("If oauthd answers there, the flow finishes by itself and so does this command. If that page cannot be reached (this oauthd is not running, or not reachable from that browser), copy its whole address from the address bar, paste it here and press Enter (within {ttl}):");
    } else {
        out!(
            "After you approve, the browser goes to {redirect}… and shows a page that cannot be reached."
        );
        out!("Copy that page's whole address from the address bar, paste it here and press Enter (within {ttl}):");
    }
    let elsewhere = finished_elsewhere(broker, start, provider, account, started_ms);
    tokio::pin!(elsewhere);
    // A paste that touched no flow leaves this one open for the right address, as
    // the page does: ask again, a few times.
    let mut refused = None;
    // Addresses pasted; the loop ends early at an empty line (given up).
    let mut tries = 0;
    let mut given_up = false;
    while tries < PASTE_TRIES {
        let line = tokio::select! {
            line = read_stdin_line() => line?,
            connected = &mut elsewhere => {
                if connected {
                    out!("Connected {provider}/{account} (oauthd's callback finished the flow).");
                    restart_hint(settings, store, clock).await;
                    return Ok(());
                }
                return Err(Fatal(
                    format!("not connected: the flow ended without connecting {provider}/{account} (a callback took it and failed: its page said why; or it expired). Start again"),
                    1,
                ));
            }
        };
        if line.trim().is_empty() {
            given_up = true;
            break;
        }
        tries += 1;
        match broker.finish_pasted(provider, &line, Some(start)).await {
            Ok(c) => {
                out!("Connected {}/{}.", c.provider, c.account);
                restart_hint(settings, store, clock).await;
                return Ok(());
            }
            Err(e) => {
                let (title, detail) = e.words(provider);
                let message = format!("not connected: {title}: {detail}");
                if !e.leaves_flow_open() {
                    return Err(Fatal(message, 1));
                }
                say!("{title}: {detail}");
                out!("Paste the address again and press Enter (an empty line gives up):");
                refused = Some(format!("{title}: {detail}"));
            }
        }
    }
    let message = match refused {
        Some(last) if !given_up => {
            format!("not connected: {PASTE_TRIES} addresses were pasted and none finished the sign-in (the last: {last}). Start again")
        }
        Some(last) => format!("not connected: given up (the last address: {last})"),
        None => "nothing was pasted; not connected".into(),
    };
    Err(Fatal(message, 1))
}

/// Resolves once the flow `start` began is no longer open (a callback of a running
/// oauthd took its state, or it expired): `true` when that connected the account. A
/// store that does not answer is asked again.
async fn finished_elsewhere(
    broker: &crate::broker::Broker,
    start: &crate::broker::ConnectStart,
    provider: &str,
    account: &str,
    since_ms: i64,
) -> bool {
    let every = std::time::Duration::from_millis(500);
    loop {
        tokio::time::sleep(every).await;
        if let Ok(false) = broker.flow_open(start).await {
            break;
        }
    }
    // The callback takes the state first, then redeems the code at the provider and
    // stores the tokens: give it the provider's time.
    for _ in 0..60 {
        if let Ok(true) = broker.connected_since(provider, account, since_ms).await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}

/// Addresses `connect --paste` takes before it gives up.
const PASTE_TRIES: usize = 5;

/// One line from stdin (empty at its end).
async fn read_stdin_line() -> Result<String, Fatal> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| Fatal(format!("reading stdin: {e}"), 1))?
    .map_err(|e| Fatal(format!("reading stdin: {e}"), 1))
}

pub(super) fn admin_link(settings: Settings) -> Result<(), Fatal> {
    let store = open_store(&settings, super::Missing::Refuse)?;
    let admin = admin(&settings, store, Clock::system());
    let public_url = settings.public_url_for(settings.listen);
    let link = runtime()?.block_on(admin.login_link(&public_url, crate::admin::LinkBy::Command))?;
    say!("One-time login link, valid 24 hours:");
    out!("{link}");
    // This command cannot know the address of a server started with another --listen.
    if settings.public_url.is_none() {
        say!(
            "It names {public_url}, from --listen / OAUTHD_LISTEN / listen: for a server \
             listening elsewhere, open the same path at its address (or set public_url)."
        );
    }
    Ok(())
}

pub(super) fn admin_sessions(settings: Settings, command: SessionsCommand) -> Result<(), Fatal> {
    let store = open_store(&settings, super::Missing::Refuse)?;
    let admin = admin(&settings, store, Clock::system());
    runtime()?.block_on(async {
        match command {
            SessionsCommand::List { json } => {
                let sessions = admin.sessions().await?;
                if json {
                    out!("{}", serde_json::to_string_pretty(&sessions)?);
                } else if sessions.is_empty() {
                    say!("No browser is signed in.");
                } else {
                    out!("{:<18} EXPIRES", "ID");
                    for s in &sessions {
                        out!("{:<18} {}", s.id, s.expires_at);
                    }
                }
                Ok(())
            }
            SessionsCommand::Revoke { id, all } => {
                let n = admin
                    .revoke_sessions(if all { None } else { id.as_deref() })
                    .await
                    .map_err(|e| {
                        // An id that is not one (too short, not hex) is a command-line error.
                        let code = if matches!(e, RevokeError::BadId) {
                            2
                        } else {
                            1
                        };
                        Fatal(e.to_string(), code)
                    })?;
                out!("Signed out {n} session(s).");
                Ok(())
            }
        }
    })
}

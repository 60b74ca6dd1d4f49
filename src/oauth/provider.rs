//! The provider catalogue: presets (each provider's endpoints and quirks as data),
//! RFC 8414 / OpenID discovery for `issuer = "…"`, and fully explicit endpoints.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use url::Url;
use zeroize::Zeroizing;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
    /// A public client: `client_id` only (PKCE protects the code).
    None,
}

impl ClientAuth {
    /// As the config file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Post => "post",
            ClientAuth::None => "none",
        }
    }
}

/// `[providers.NAME]` in the config file. `Debug` never shows the client secret.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub preset: Option<String>,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
    pub client_auth: Option<ClientAuth>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    /// A loopback redirect URI (`http://127.0.0.1:PORT/…`) that oauthd does not serve: the
    /// person pastes the address their browser ends on back into oauthd (paste-back).
    pub redirect_uri: Option<String>,
    pub redirect_mode: Option<RedirectMode>,
    /// Where the provider's API lives, for `/v1/proxy/{provider}/{account}/{path}`.
    pub api_base_url: Option<String>,
    /// Headers the proxy passes on besides its own allowlist (`x-github-api-version`).
    pub proxy_headers: Option<Vec<String>>,
    /// Whether apps (API keys) may start device flows (default true). The provider's
    /// device page names oauthd's client, not the app nor the account the grant goes to:
    /// `false` keeps the device flow to the operator's page and CLI.
    pub device_flow_for_apps: Option<bool>,
}

/// How the browser comes back from the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// To oauthd's own `{public_url}/callback/{provider}` (the default).
    Callback,
    /// To a loopback address nothing answers at; the person pastes it into oauthd.
    Paste,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("preset", &self.preset)
            .field("issuer", &self.issuer)
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("revocation_url", &self.revocation_url)
            .field("device_authorization_url", &self.device_authorization_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .field("authorize_params", &self.authorize_params)
            .field("redirect_uri", &self.redirect_uri)
            .field("redirect_mode", &self.redirect_mode)
            .field("api_base_url", &self.api_base_url)
            .field("proxy_headers", &self.proxy_headers)
            .field("device_flow_for_apps", &self.device_flow_for_apps)
            .finish()
    }
}

/// Known behaviour of a provider that the generic flows must respect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// A refresh token that is not used for this long dies (SmartThings: 30 days).
    /// The background refresher uses it well before then.
    pub refresh_idle_expiry: Option<Duration>,
    /// The provider refuses redirect URIs on `localhost` and wants a loopback IP literal
    /// instead (Spotify: `http://127.0.0.1:PORT`).
    pub refuses_localhost_redirects: bool,
}

struct Preset {
    name: &'static str,
    issuer: Option<&'static str>,
    authorization_url: Option<&'static str>,
    token_url: Option<&'static str>,
    revocation_url: Option<&'static str>,
    device_authorization_url: Option<&'static str>,
    client_auth: ClientAuth,
    scopes: &'static [&'static str],
    authorize_params: &'static [(&'static str, &'static str)],
    /// The provider's API, for the credential-injecting proxy.
    api_base_url: &'static str,
    quirks: Quirks,
    /// What the preset does for the user, shown by `oauthd providers list --verbose`.
    notes: &'static str,
}

const DAY: u64 = 24 * 3600;

const PRESETS: &[Preset] = &[
    Preset {
        name: "smartthings",
        issuer: None,
        authorization_url: Some("https://api.smartthings.com/oauth/authorize"),
        token_url: Some("https://auth-global.api.smartthings.com/oauth/token"),
        revocation_url: None,
        device_authorization_url: None,
        client_auth: ClientAuth::Basic,
        scopes: &["r:devices:*", "x:devices:*"],
        authorize_params: &[],
        api_base_url: "https://api.smartthings.com/",
        quirks: Quirks {
            refresh_idle_expiry: Some(Duration::from_secs(30 * DAY)),
            refuses_localhost_redirects: false,
        },
        notes: "HTTP Basic client auth; refresh tokens are single-use and rotate on every refresh (oauthd refreshes once per connection at a time); access tokens last 24 h; an unused refresh token dies after 30 days, so oauthd refreshes idle connections before then.",
    },
    Preset {
        name: "spotify",
        issuer: None,
        authorization_url: Some("https://accounts.spotify.com/authorize"),
        token_url: Some("https://accounts.spotify.com/api/token"),
        revocation_url: None,
        device_authorization_url: None,
        client_auth: ClientAuth::Basic,
        scopes: &["user-read-playback-state", "user-modify-playback-state"],
        authorize_params: &[],
        api_base_url: "https://api.spotify.com/",
        quirks: Quirks {
            refresh_idle_expiry: None,
            refuses_localhost_redirects: true,
        },
        notes: "Loopback redirect URIs must use 127.0.0.1, not localhost; a refresh response may omit refresh_token (oauthd keeps the old one).",
    },
    Preset {
        name: "tidal",
        issuer: None,
        authorization_url: Some("https://login.tidal.com/authorize"),
        token_url: Some("https://auth.tidal.com/v1/oauth2/token"),
        revocation_url: None,
        device_authorization_url: Some("https://auth.tidal.com/v1/oauth2/device_authorization"),
        client_auth: ClientAuth::Basic,
        scopes: &["r_usr", "w_usr"],
        authorize_params: &[],
        api_base_url: "https://openapi.tidal.com/",
        quirks: Quirks {
            refresh_idle_expiry: None,
            refuses_localhost_redirects: false,
        },
        notes: "Players connect with the device flow.",
    },
    Preset {
        name: "google",
        issuer: None,
        authorization_url: Some("https://accounts.google.com/o/oauth2/v2/auth"),
        token_url: Some("https://oauth2.googleapis.com/token"),
        revocation_url: Some("https://oauth2.googleapis.com/revoke"),
        device_authorization_url: Some("https://oauth2.googleapis.com/device/code"),
        client_auth: ClientAuth::Post,
        scopes: &["openid", "email"],
        authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        api_base_url: "https://www.googleapis.com/",
        quirks: Quirks {
            refresh_idle_expiry: None,
            refuses_localhost_redirects: false,
        },
        notes: "Sends access_type=offline and prompt=consent, without which Google issues no refresh token (or only on the first consent).",
    },
    Preset {
        name: "github",
        issuer: None,
        authorization_url: Some("https://github.com/login/oauth/authorize"),
        token_url: Some("https://github.com/login/oauth/access_token"),
        revocation_url: None,
        device_authorization_url: Some("https://github.com/login/device/code"),
        client_auth: ClientAuth::Post,
        scopes: &["read:user"],
        authorize_params: &[],
        api_base_url: "https://api.github.com/",
        quirks: Quirks {
            refresh_idle_expiry: None,
            refuses_localhost_redirects: false,
        },
        notes: "OAuth apps get non-expiring tokens without a refresh token; GitHub Apps get 8-hour tokens with refresh.",
    },
    Preset {
        name: "microsoft",
        issuer: None,
        authorization_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize"),
        token_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
        revocation_url: None,
        device_authorization_url: Some(
            "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        ),
        client_auth: ClientAuth::Post,
        scopes: &["openid", "offline_access", "User.Read"],
        authorize_params: &[],
        api_base_url: "https://graph.microsoft.com/",
        quirks: Quirks {
            refresh_idle_expiry: Some(Duration::from_secs(90 * DAY)),
            refuses_localhost_redirects: false,
        },
        notes: "offline_access is needed for a refresh token; refresh tokens rotate and expire after 90 days without use.",
    },
];

/// A provider the config describes wrongly: the key to fix, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ProviderError {
    pub key: String,
    pub reason: String,
}

/// Builds every configured provider and checks each against the address browsers reach
/// oauthd at (`public_url`): a preset's quirks about redirect URIs included.
pub fn build_all(
    configs: &BTreeMap<String, ProviderConfig>,
    public_url: &Url,
) -> Result<Vec<Arc<Provider>>, ProviderError> {
    let mut providers = Vec::with_capacity(configs.len());
    for (name, cfg) in configs {
        let provider =
            Provider::from_config(name, cfg).map_err(|reason| match reason.split_once(": ") {
                Some((key, why)) => ProviderError {
                    key: key.to_owned(),
                    reason: why.to_owned(),
                },
                None => ProviderError {
                    key: format!("providers.{name}"),
                    reason,
                },
            })?;
        if provider.quirks.refuses_localhost_redirects
            && provider.paste_redirect.is_none()
            && public_url.host_str() == Some("localhost")
        {
            return Err(ProviderError {
                key: "public_url".into(),
                reason: format!(
                    "provider {name} ({}) refuses localhost redirect URIs: use http://127.0.0.1:PORT",
                    provider.preset.unwrap_or("custom")
                ),
            });
        }
        providers.push(Arc::new(provider));
    }
    Ok(providers)
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Endpoints, once known (from the config, a preset, or discovery).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub authorization: Url,
    pub token: Url,
    pub revocation: Option<Url>,
    pub device_authorization: Option<Url>,
    /// The issuer identifier, when the provider has one (RFC 8414 / OpenID).
    pub issuer: Option<String>,
    /// Where the issuer publishes its signing keys, for ID tokens.
    pub jwks: Option<Url>,
    /// The provider promised `iss` on every authorization response (RFC 9207).
    pub iss_parameter_supported: bool,
    /// The scopes the provider's metadata lists (`scopes_supported`), when it lists any:
    /// `check` names configured scopes missing from it (a misspelling asks for nothing).
    pub scopes_supported: Option<Vec<String>>,
}

/// Where the endpoints come from.
#[derive(Debug, Clone)]
enum Source {
    Known(Box<Endpoints>),
    Discover {
        issuer: Url,
        overrides: Box<PartialEndpoints>,
    },
}

#[derive(Debug, Clone, Default)]
struct PartialEndpoints {
    authorization: Option<Url>,
    token: Option<Url>,
    revocation: Option<Url>,
    device_authorization: Option<Url>,
}

/// A configured provider.
pub struct Provider {
    pub name: String,
    pub preset: Option<&'static str>,
    pub notes: Option<&'static str>,
    pub client_id: String,
    pub client_secret: Option<Zeroizing<String>>,
    pub client_auth: ClientAuth,
    pub scopes: Vec<String>,
    pub authorize_params: Vec<(String, String)>,
    pub quirks: Quirks,
    /// Paste-back: the loopback redirect URI registered at the provider, which the person
    /// copies from their browser into oauthd. `None`: oauthd's own callback.
    pub paste_redirect: Option<Url>,
    /// The provider's API, for the proxy; `None`: the proxy answers 404.
    pub api_base: Option<Url>,
    /// Caller headers the proxy passes on besides its allowlist (lower case).
    pub proxy_headers: Vec<String>,
    /// Whether apps may start device flows (`device_flow_for_apps`).
    pub device_flow_for_apps: bool,
    /// The issuer's signing keys, once fetched.
    pub jwks: super::id_token::JwksCache,
    source: Source,
    resolved: OnceCell<Endpoints>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery at {url} failed: {message}")]
    Failed { url: String, message: String },
}

/// What RFC 8414 and OpenID discovery documents say that oauthd uses.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    jwks_uri: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    /// Read leniently: a list that is not one of strings is no reason to refuse the rest.
    #[serde(default)]
    scopes_supported: Option<serde_json::Value>,
}

/// Provider and account names: safe in paths, namespaces and AAD strings.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric);
    ok.then_some(()).ok_or_else(|| {
        // The name as sent, cut: an error body never echoes kilobytes of a path.
        let shown: String = name.chars().take(64).collect();
        let cut = if shown.len() < name.len() { "…" } else { "" };
        format!("{kind} {shown:?}{cut}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    })
}

/// Parses an endpoint URL: https, or plain http on a loopback host only.
pub fn endpoint_url(key: &str, text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{key}: {text:?} is not a URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if crate::local_url::is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{key}: {text} uses plain http; tokens would cross the network unencrypted (http is allowed only for 127.0.0.1, ::1 and localhost)"
        )),
        other => Err(format!("{key}: unsupported scheme {other:?}")),
    }
}

/// The paste-back redirect URI, when `redirect_uri` or `redirect_mode = "paste"` asks for
/// one: a loopback IP literal over plain http (RFC 8252 §7.3), so the browser's last
/// request never leaves the machine it runs on, and nothing needs to answer there.
fn paste_redirect(key: &str, name: &str, cfg: &ProviderConfig) -> Result<Option<Url>, String> {
    let text = match (cfg.redirect_mode, cfg.redirect_uri.as_deref()) {
        (Some(RedirectMode::Callback), Some(_)) => {
            return Err(format!(
                "{key}.redirect_uri: a redirect_uri is for paste-back; with redirect_mode = \"callback\" oauthd's own {{public_url}}/callback/{name} is used (remove one of the two)"
            ))
        }
        (Some(RedirectMode::Callback), None) | (None, None) => return Ok(None),
        (_, Some(text)) => text.to_owned(),
        (Some(RedirectMode::Paste), None) => format!("http://127.0.0.1/callback/{name}"),
    };
    let field = format!("{key}.redirect_uri");
    let url = Url::parse(&text).map_err(|e| format!("{field}: {text:?} is not a URL ({e})"))?;
    if url.scheme() != "http" || !crate::local_url::is_loopback_ip(&url) {
        return Err(format!(
            "{field}: {text} is not a loopback IP literal over http (use http://127.0.0.1:PORT/…; providers such as Spotify refuse localhost). For a redirect that reaches oauthd, set public_url instead"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{field}: no user name or password in the URI"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{field}: no query or fragment in the URI"));
    }
    Ok(Some(url))
}

/// Parses an API base URL for the proxy: an endpoint URL (https, or http on loopback)
/// without credentials, query or fragment; its path always ends in `/`.
pub fn api_base_url(key: &str, text: &str) -> Result<Url, String> {
    let mut url = endpoint_url(key, text)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{key}: no user name or password in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key}: no query or fragment in the URL"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Why `authorize_params` may not hold `name` = `value`, if it may not. Names are compared
/// as providers may read them: without case, and trimmed.
fn authorize_param_refused(
    name: &str,
    value: &str,
    client_secret: Option<&str>,
) -> Option<&'static str> {
    const RESERVED: &[&str] = &[
        "state",
        "code_challenge",
        "code_challenge_method",
        "redirect_uri",
        "client_id",
        "response_type",
        "nonce",
    ];
    // The authorization URL is the browser's: its history, the provider's access log, a
    // proxy's, a link preview.
    const NO_CREDENTIAL: &str = "the authorization URL goes through the browser (its history, the provider's and any proxy's logs), so no client credential goes there; oauthd sends the client's credentials to the token endpoint only (client_secret, client_auth)";
    const SCOPE: &str = "set scopes = [...] instead (oauthd sends the scope parameter itself, and asks for a nonce when it holds openid)";
    const RESPONSE_MODE: &str = "oauthd's callback reads the provider's answer from the query string (the default mode for the code flow)";
    const REQUEST: &str = "oauthd sends no request object (RFC 9101, RFC 9126): the provider would take the request's parameters from it rather than from oauthd's state and PKCE, and the flow could not finish";
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "scope" => Some(SCOPE),
        "response_mode" => Some(RESPONSE_MODE),
        "client_secret" | "client_assertion" | "client_assertion_type" => Some(NO_CREDENTIAL),
        "request" | "request_uri" => Some(REQUEST),
        name if RESERVED.contains(&name) => Some("oauthd sets this parameter itself"),
        _ if holds_secret(value, client_secret) => Some(NO_CREDENTIAL),
        _ => None,
    }
}

/// Whether `value` carries the client secret: is it, or, for a secret long enough not to
/// turn up by chance (8 characters or more), holds it (`Basic …`, `x SECRET`).
fn holds_secret(value: &str, client_secret: Option<&str>) -> bool {
    let Some(secret) = client_secret.map(str::trim).filter(|s| !s.is_empty()) else {
        return false;
    };
    let value = value.trim();
    value == secret || (secret.chars().count() >= 8 && value.contains(secret))
}

/// Why `authorization_url` may not be as configured, if it may not: the browser gets it
/// whole (its history, the provider's and any proxy's logs), so it holds no user or
/// password, no credential parameter and nothing that carries the client secret.
fn authorization_url_refused(text: &str, client_secret: Option<&str>) -> Option<String> {
    let url = Url::parse(text).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        return Some("no user or password in it: the browser gets this URL whole (its history, the provider's and any proxy's logs)".into());
    }
    let credential = ["client_secret", "client_assertion", "client_assertion_type"];
    for (name, value) in url.query_pairs() {
        let lower = name.trim().to_ascii_lowercase();
        if credential.contains(&lower.as_str()) || holds_secret(&value, client_secret) {
            let name: String = name.chars().take(64).collect();
            return Some(format!("its query parameter {name:?}: the authorization URL goes through the browser (its history, the provider's and any proxy's logs), so no client credential goes there; oauthd sends the client's credentials to the token endpoint only (client_secret, client_auth)"));
        }
    }
    holds_secret(url.path(), client_secret)
        .then(|| "its path holds the client secret: the browser gets this URL whole".into())
}

impl Provider {
    /// Whether `other` is the same client at the same provider (its client id, and its
    /// issuer or token endpoint) under another table's name: a grant there is one grant,
    /// whichever table's connection a revocation went through (two tables of one provider,
    /// as for a paste-back one beside a callback one).
    /// A table discovered from its issuer and one with its endpoints written out are told
    /// apart by the token endpoint, once the first's is known (configured, or
    /// discovered).
    pub fn same_client_as(&self, other: &Provider) -> bool {
        let issuer = |p: &Provider| match &p.source {
            Source::Discover { issuer, .. } => {
                Some(issuer.as_str().trim_end_matches('/').to_owned())
            }
            Source::Known(_) => None,
        };
        let token = |p: &Provider| match &p.source {
            Source::Known(e) => Some(e.token.to_string()),
            Source::Discover { overrides, .. } => overrides
                .token
                .as_ref()
                .or_else(|| p.resolved.get().map(|e| &e.token))
                .map(Url::to_string),
        };
        let same = |a: Option<String>, b: Option<String>| a.is_some() && a == b;
        self.client_id == other.client_id
            && (same(issuer(self), issuer(other)) || same(token(self), token(other)))
    }

    /// A short digest of what every instance on one store must configure alike for this
    /// provider: client id, client authentication, scopes, endpoints or issuer, the
    /// paste-back address. Never the client secret: the digest is told to the other
    /// instances through the store. Two instances that differ warn of it (`vault_peers`).
    pub fn settings_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let url = |u: &Option<Url>| u.as_ref().map_or(String::new(), Url::to_string);
        let source = match &self.source {
            Source::Known(e) => format!(
                "known\n{}\n{}\n{}\n{}\n{}",
                e.authorization,
                e.token,
                url(&e.revocation),
                url(&e.device_authorization),
                e.issuer.as_deref().unwrap_or("")
            ),
            Source::Discover { issuer, overrides } => format!(
                "discover\n{issuer}\n{}\n{}\n{}\n{}",
                url(&overrides.authorization),
                url(&overrides.token),
                url(&overrides.revocation),
                url(&overrides.device_authorization)
            ),
        };
        let text = format!(
            "{}\n{:?}\n{}\n{}\n{}",
            self.client_id,
            self.client_auth,
            self.scopes.join(" "),
            url(&self.paste_redirect),
            source
        );
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// Builds a provider from its config table; `key` is the table's name for messages.
    pub fn from_config(name: &str, cfg: &ProviderConfig) -> Result<Provider, String> {
        let key = format!("providers.{name}");
        check_name("provider", name).map_err(|e| format!("{key}: {e}"))?;
        let preset = match &cfg.preset {
            None => None,
            Some(p) => Some(PRESETS.iter().find(|x| x.name == p).ok_or_else(|| {
                format!(
                    "{key}.preset: unknown preset {p:?} (known: {})",
                    preset_names().join(", ")
                )
            })?),
        };
        // An endpoint from the config, else from the preset; validated either way.
        let url_opt = |field: &str, explicit: &Option<String>, of: fn(&Preset) -> Option<&str>| {
            match explicit.as_deref().or(preset.and_then(of)) {
                None => Ok(None),
                Some(text) => endpoint_url(&format!("{key}.{field}"), text).map(Some),
            }
        };
        let partial = PartialEndpoints {
            authorization: url_opt("authorization_url", &cfg.authorization_url, |p| {
                p.authorization_url
            })?,
            token: url_opt("token_url", &cfg.token_url, |p| p.token_url)?,
            revocation: url_opt("revocation_url", &cfg.revocation_url, |p| p.revocation_url)?,
            device_authorization: url_opt(
                "device_authorization_url",
                &cfg.device_authorization_url,
                |p| p.device_authorization_url,
            )?,
        };
        let issuer = cfg.issuer.as_deref().or(preset.and_then(|p| p.issuer));
        let source = match issuer {
            Some(text) => Source::Discover {
                issuer: endpoint_url(&format!("{key}.issuer"), text)?,
                overrides: Box::new(partial),
            },
            None => match (partial.authorization.clone(), partial.token.clone()) {
                (Some(authorization), Some(token)) => Source::Known(Box::new(Endpoints {
                    authorization,
                    token,
                    revocation: partial.revocation,
                    device_authorization: partial.device_authorization,
                    issuer: None,
                    jwks: None,
                    iss_parameter_supported: false,
                    scopes_supported: None,
                })),
                _ => {
                    return Err(format!(
                        "{key}: set preset = \"…\", issuer = \"https://…\", or both authorization_url and token_url"
                    ))
                }
            },
        };
        let client_id = cfg
            .client_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("{key}.client_id: required"))?;
        let client_secret = match (&cfg.client_secret, &cfg.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}: set client_secret or client_secret_file, not both"
                ))
            }
            (Some(s), None) if s.trim().is_empty() => {
                return Err(format!(
                    "{key}.client_secret: empty (leave it out, with client_auth = \"none\", for a public client)"
                ))
            }
            (Some(s), None) => Some(Zeroizing::new(s.clone())),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "{key}.client_secret_file: {}",
                        crate::paths::unreadable(path, &e)
                    )
                })?);
                if text.trim().is_empty() {
                    return Err(format!(
                        "{key}.client_secret_file: {} is empty (a credential that was not loaded?)",
                        path.display()
                    ));
                }
                Some(Zeroizing::new(text.trim().to_owned()))
            }
            (None, None) => None,
        };
        let client_auth = cfg.client_auth.or(preset.map(|p| p.client_auth)).unwrap_or(
            if client_secret.is_some() {
                ClientAuth::Basic
            } else {
                ClientAuth::None
            },
        );
        if client_auth != ClientAuth::None && client_secret.is_none() {
            return Err(format!(
                "{key}: client_auth = \"{}\" needs client_secret or client_secret_file (or set client_auth = \"none\" for a public client)",
                client_auth.as_str()
            ));
        }
        let scopes = cfg.scopes.clone().unwrap_or_else(|| {
            preset
                .map(|p| p.scopes.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        });
        let mut authorize_params: Vec<(String, String)> = preset
            .map(|p| {
                p.authorize_params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let secret = client_secret.as_ref().map(|s| s.as_str());
        if let Some(why) = cfg
            .authorization_url
            .as_deref()
            .and_then(|text| authorization_url_refused(text, secret))
        {
            return Err(format!("{key}.authorization_url: {why}"));
        }
        for (k, v) in cfg.authorize_params.iter().flatten() {
            if let Some(why) = authorize_param_refused(k, v, secret) {
                return Err(format!("{key}.authorize_params.{k}: {why}"));
            }
            authorize_params.retain(|(pk, _)| pk != k);
            authorize_params.push((k.clone(), v.clone()));
        }
        let paste_redirect = paste_redirect(&key, name, cfg)?;
        let api_base = match cfg
            .api_base_url
            .as_deref()
            .or(preset.map(|p| p.api_base_url))
        {
            None => None,
            Some(text) => Some(api_base_url(&format!("{key}.api_base_url"), text)?),
        };
        let mut proxy_headers = Vec::new();
        for (i, name) in cfg.proxy_headers.iter().flatten().enumerate() {
            let lower = name.trim().to_ascii_lowercase();
            let is_a_name = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !is_a_name {
                return Err(format!(
                    "{key}.proxy_headers[{i}]: {name:?} is not a header name (letters, digits and '-', as `X-App-Version`)"
                ));
            }
            if !crate::proxy::headers::may_forward(&lower) {
                return Err(format!(
                    "{key}.proxy_headers[{i}]: {name:?} is not a header the proxy may pass on (credentials, cookies, routing and hop-by-hop headers never are)"
                ));
            }
            proxy_headers.push(lower);
        }
        let resolved = OnceCell::new();
        if let Source::Known(e) = &source {
            let _ = resolved.set(e.as_ref().clone());
        }
        Ok(Provider {
            name: name.to_owned(),
            preset: preset.map(|p| p.name),
            notes: preset.map(|p| p.notes),
            client_id,
            client_secret,
            client_auth,
            scopes,
            authorize_params,
            quirks: preset.map(|p| p.quirks).unwrap_or_default(),
            paste_redirect,
            api_base,
            proxy_headers,
            device_flow_for_apps: cfg.device_flow_for_apps.unwrap_or(true),
            jwks: Default::default(),
            source,
            resolved,
        })
    }

    /// Whether the provider has a device authorization endpoint, when that is known
    /// without discovery (a preset's, the config's, or explicit endpoints without one);
    /// `None` when the issuer's metadata decides.
    pub fn device_flow_known(&self) -> Option<bool> {
        match &self.source {
            Source::Known(endpoints) => Some(endpoints.device_authorization.is_some()),
            Source::Discover { overrides, .. } => {
                overrides.device_authorization.is_some().then_some(true)
            }
        }
    }

    /// The issuer to discover from, if any.
    pub fn issuer(&self) -> Option<&Url> {
        match &self.source {
            Source::Discover { issuer, .. } => Some(issuer),
            Source::Known(_) => None,
        }
    }

    /// The provider's endpoints, discovering them on first use. A failed discovery is
    /// tried again on the next call.
    pub async fn endpoints(&self, http: &reqwest::Client) -> Result<&Endpoints, DiscoveryError> {
        self.resolved
            .get_or_try_init(|| async {
                match &self.source {
                    Source::Known(e) => Ok(e.as_ref().clone()),
                    Source::Discover { issuer, overrides } => {
                        let meta = discover(http, issuer).await?;
                        endpoints_from(issuer, meta, overrides)
                    }
                }
            })
            .await
    }
}

fn endpoints_from(
    issuer: &Url,
    meta: Metadata,
    overrides: &PartialEndpoints,
) -> Result<Endpoints, DiscoveryError> {
    let fail = |message: String| DiscoveryError::Failed {
        url: issuer.to_string(),
        message,
    };
    // RFC 8414 §3.3 / OpenID Discovery §4.3: the document must name the issuer we asked.
    if meta.issuer.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(fail(format!(
            "the metadata names issuer {:?}, not the configured one",
            meta.issuer
        )));
    }
    // A remote issuer must not point oauthd at loopback endpoints: that would make it POST
    // the client secret and refresh tokens to whatever listens on this machine.
    let remote_issuer = !crate::local_url::is_this_machine(issuer);
    let url = |field: &str, v: Option<String>| -> Result<Option<Url>, DiscoveryError> {
        v.map(|t| {
            let u = endpoint_url(field, &t).map_err(fail)?;
            if remote_issuer && crate::local_url::is_this_machine(&u) {
                return Err(fail(format!(
                    "{field} {u} is on a loopback address, which only a loopback issuer may use"
                )));
            }
            Ok(u)
        })
        .transpose()
    };
    let authorization = match overrides.authorization.clone() {
        Some(u) => u,
        None => url("authorization_endpoint", meta.authorization_endpoint)?
            .ok_or_else(|| fail("the metadata has no authorization_endpoint".into()))?,
    };
    let token = match overrides.token.clone() {
        Some(u) => u,
        None => url("token_endpoint", meta.token_endpoint)?
            .ok_or_else(|| fail("the metadata has no token_endpoint".into()))?,
    };
    Ok(Endpoints {
        authorization,
        token,
        revocation: match overrides.revocation.clone() {
            Some(u) => Some(u),
            None => url("revocation_endpoint", meta.revocation_endpoint)?,
        },
        device_authorization: match overrides.device_authorization.clone() {
            Some(u) => Some(u),
            None => url(
                "device_authorization_endpoint",
                meta.device_authorization_endpoint,
            )?,
        },
        jwks: url("jwks_uri", meta.jwks_uri)?,
        issuer: Some(meta.issuer),
        iss_parameter_supported: meta.authorization_response_iss_parameter_supported,
        scopes_supported: meta.scopes_supported.and_then(|v| {
            let list: Vec<String> = v
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            (!list.is_empty()).then_some(list)
        }),
    })
}

/// RFC 8414 first (`/.well-known/oauth-authorization-server` inserted before the path),
/// then OpenID (`/.well-known/openid-configuration` appended to the path).
async fn discover(http: &reqwest::Client, issuer: &Url) -> Result<Metadata, DiscoveryError> {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut openid = issuer.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    // Both asked at once, so that discovery takes one `provider_timeout` at most, not one
    // per address, and the first document that comes is taken: an address that hangs
    // holds nothing up while the other answers (both describe the same server).
    let first = fetch_metadata(http, &rfc8414);
    let second = fetch_metadata(http, &openid);
    tokio::pin!(first, second);
    let (mut first_failed, mut second_failed) = (false, false);
    // Why the last address to fail failed.
    let mut last = String::new();
    while !(first_failed && second_failed) {
        tokio::select! {
            found = &mut first, if !first_failed => match found {
                Ok(meta) => return Ok(meta),
                Err(e) => (first_failed, last) = (true, format!("{rfc8414}: {e}")),
            },
            found = &mut second, if !second_failed => match found {
                Ok(meta) => return Ok(meta),
                Err(e) => (second_failed, last) = (true, format!("{openid}: {e}")),
            },
        }
    }
    Err(DiscoveryError::Failed {
        url: issuer.to_string(),
        message: last,
    })
}

/// Largest discovery document accepted.
const MAX_METADATA_BYTES: usize = 256 * 1024;

async fn fetch_metadata(http: &reqwest::Client, url: &Url) -> Result<Metadata, String> {
    let resp = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| crate::oauth::with_causes(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let body = crate::oauth::read_limited(resp, MAX_METADATA_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| format!("not a metadata document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_names_the_key_to_fix_and_keeps_each_presets_redirect_quirks() {
        let configs =
            |text: &str| -> BTreeMap<String, ProviderConfig> { toml::from_str(text).unwrap() };
        let at = |url: &str| Url::parse(url).unwrap();
        let e = build_all(
            &configs("[st]\npreset = \"smartthings\"\n"),
            &at("http://127.0.0.1:6288"),
        )
        .unwrap_err();
        assert_eq!(e.key, "providers.st.client_id", "{e}");
        let spotify =
            configs("[sp]\npreset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
        let e = build_all(&spotify, &at("http://localhost:6288")).unwrap_err();
        assert_eq!(e.key, "public_url");
        assert!(
            e.reason.contains("127.0.0.1") && e.reason.contains("spotify"),
            "{e}"
        );
        let built = build_all(&spotify, &at("http://127.0.0.1:6288")).unwrap();
        assert_eq!(built[0].name, "sp");
        assert!(build_all(&spotify, &at("https://auth.home.example/oauthd")).is_ok());
        // Only the preset with the quirk minds localhost.
        let st =
            configs("[st]\npreset = \"smartthings\"\nclient_id = \"a\"\nclient_secret = \"b\"\n");
        assert!(build_all(&st, &at("http://localhost:6288")).is_ok());
    }

    #[test]
    fn a_proxy_header_that_is_no_name_is_said_to_be_none() {
        let with = |name: &str| -> Result<Provider, String> {
            let text = format!(
                "preset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \"b\"\nproxy_headers = [{name:?}]\n"
            );
            Provider::from_config("sp", &toml::from_str(&text).unwrap())
        };
        assert_eq!(
            with("X-App-Version").unwrap().proxy_headers,
            ["x-app-version"]
        );
        // It was called a header the proxy may not pass on, as if it were a credential.
        let e = with("Bad Header").unwrap_err();
        assert!(e.contains("is not a header name"), "{e}");
        let e = with("Cookie").unwrap_err();
        assert!(e.contains("not a header the proxy may pass on"), "{e}");
    }

    fn metadata(issuer: &str, token: &str, jwks: &str) -> Metadata {
        Metadata {
            issuer: issuer.into(),
            authorization_endpoint: Some(format!("{issuer}/authorize")),
            token_endpoint: Some(token.into()),
            revocation_endpoint: None,
            device_authorization_endpoint: None,
            jwks_uri: Some(jwks.into()),
            authorization_response_iss_parameter_supported: false,
            scopes_supported: None,
        }
    }

    #[test]
    fn a_remote_issuer_cannot_point_at_this_machine() {
        let issuer = Url::parse("https://id.example.net").unwrap();
        for local in [
            "http://127.0.0.1:8080/token",
            "https://127.0.0.1/token",
            "https://localhost/token",
            "https://api.localhost/token",
            "https://[::1]/token",
            "https://0.0.0.0/token",
        ] {
            let meta = metadata(
                "https://id.example.net",
                local,
                "https://id.example.net/jwks",
            );
            let err = endpoints_from(&issuer, meta, &PartialEndpoints::default()).unwrap_err();
            assert!(err.to_string().contains("loopback"), "{local}: {err}");
            let meta = metadata(
                "https://id.example.net",
                "https://id.example.net/token",
                local,
            );
            assert!(
                endpoints_from(&issuer, meta, &PartialEndpoints::default()).is_err(),
                "jwks_uri {local}"
            );
        }
        let meta = metadata(
            "https://id.example.net",
            "https://id.example.net/token",
            "https://id.example.net/jwks",
        );
        assert!(endpoints_from(&issuer, meta, &PartialEndpoints::default()).is_ok());
        // A loopback issuer (a test provider, a local IdP) may use loopback endpoints.
        let local = Url::parse("http://127.0.0.1:9000").unwrap();
        let meta = metadata(
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/token",
            "http://127.0.0.1:9000/jwks",
        );
        assert!(endpoints_from(&local, meta, &PartialEndpoints::default()).is_ok());
    }

    #[test]
    fn debug_never_shows_the_client_secret() {
        let c = cfg("preset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \"s3cr3t-value\"");
        assert!(!format!("{c:?}").contains("s3cr3t-value"), "{c:?}");
        let p = Provider::from_config("sp", &c).unwrap();
        assert!(!format!("{p:?}").contains("s3cr3t-value"));
    }

    fn cfg(toml_text: &str) -> ProviderConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn presets_carry_their_quirks() {
        let st = Provider::from_config(
            "st",
            &cfg("preset = \"smartthings\"\nclient_id = \"a\"\nclient_secret = \"b\""),
        )
        .unwrap();
        assert_eq!(st.client_auth, ClientAuth::Basic);
        assert_eq!(
            st.quirks.refresh_idle_expiry,
            Some(Duration::from_secs(30 * DAY))
        );
        let g = Provider::from_config(
            "g",
            &cfg("preset = \"google\"\nclient_id = \"a\"\nclient_secret = \"b\""),
        )
        .unwrap();
        assert!(g
            .authorize_params
            .contains(&("access_type".into(), "offline".into())));
        assert!(g
            .authorize_params
            .contains(&("prompt".into(), "consent".into())));
        assert_eq!(g.client_auth, ClientAuth::Post);
    }

    #[test]
    fn explicit_settings_override_the_preset() {
        let g = Provider::from_config(
            "g",
            &cfg("preset = \"google\"\nclient_id = \"a\"\nclient_secret = \"b\"\nscopes = [\"x\"]\nclient_auth = \"basic\"\n[authorize_params]\nprompt = \"select_account\""),
        )
        .unwrap();
        assert_eq!(g.scopes, vec!["x"]);
        assert_eq!(g.client_auth, ClientAuth::Basic);
        assert!(g
            .authorize_params
            .contains(&("prompt".into(), "select_account".into())));
        assert!(!g
            .authorize_params
            .contains(&("prompt".into(), "consent".into())));
    }

    /// One client at one provider, configured twice: by its issuer, and with its
    /// endpoints written out. Told as one by the token endpoint (a grant revoked through
    /// one is the other's too); before, a discovered table and a written-out one never
    /// were.
    #[test]
    fn a_discovered_table_and_a_written_out_one_of_one_client_are_one_client() {
        let build = |t: &str| Provider::from_config("p", &cfg(t)).unwrap();
        let written = build("authorization_url = \"https://idp.example/auth\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"a\"\nclient_auth = \"none\"");
        let overridden = build("issuer = \"https://idp.example\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"a\"\nclient_auth = \"none\"");
        let discovered =
            build("issuer = \"https://idp.example\"\nclient_id = \"a\"\nclient_auth = \"none\"");
        let other_client = build("authorization_url = \"https://idp.example/auth\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"b\"\nclient_auth = \"none\"");
        assert!(written.same_client_as(&overridden) && overridden.same_client_as(&written));
        assert!(discovered.same_client_as(&overridden));
        assert!(!written.same_client_as(&other_client));
        // Not discovered yet: not told.
        assert!(!written.same_client_as(&discovered));
        let _ = discovered.resolved.set(Endpoints {
            authorization: Url::parse("https://idp.example/auth").unwrap(),
            token: Url::parse("https://idp.example/token").unwrap(),
            revocation: None,
            device_authorization: None,
            issuer: Some("https://idp.example".into()),
            jwks: None,
            iss_parameter_supported: false,
            scopes_supported: None,
        });
        assert!(written.same_client_as(&discovered) && discovered.same_client_as(&written));
    }

    #[test]
    fn wrong_configs_name_the_key_and_reason() {
        let err = |t: &str| Provider::from_config("p", &cfg(t)).unwrap_err();
        assert!(err("client_id = \"a\"").contains("preset"));
        assert!(err("preset = \"nope\"\nclient_id = \"a\"").contains("unknown preset"));
        assert!(err("preset = \"spotify\"").contains("providers.p.client_id"));
        assert!(err("preset = \"spotify\"\nclient_id = \"a\"").contains("client_secret"));
        assert!(
            err("issuer = \"http://example.com\"\nclient_id = \"a\"\nclient_auth = \"none\"")
                .contains("plain http")
        );
        assert!(err("issuer = \"https://x\"\nclient_id = \"a\"\nclient_auth = \"none\"\n[authorize_params]\nstate = \"x\"").contains("authorize_params.state"));
        // A credential would travel in the browser's URL; a request object would replace
        // oauthd's parameters.
        for (param, said) in [
            ("client_secret", "no client credential"),
            ("client_assertion", "no client credential"),
            ("request_uri", "no request object"),
            ("request", "no request object"),
            // As providers may read the name: without case, trimmed.
            ("\"Client_Secret\"", "no client credential"),
            ("\"client_secret \"", "no client credential"),
            // The secret under any name.
            ("audience", "no client credential"),
        ] {
            let refused = err(&format!("issuer = \"https://x\"\nclient_id = \"a\"\nclient_secret = \"cs-0123\"\n[authorize_params]\n{param} = \"cs-0123\""));
            let param = param.trim_matches('"');
            assert!(
                refused.contains(&format!("providers.p.authorize_params.{param}: "))
                    && refused.contains(said),
                "{refused}"
            );
        }
        // Carried inside a longer value (a secret of 8 characters or more).
        let inside = err("issuer = \"https://x\"\nclient_id = \"a\"\nclient_secret = \"cs-012345\"\n[authorize_params]\naudience = \"x cs-012345\"");
        assert!(inside.contains("authorize_params.audience: "), "{inside}");
        // The authorization URL goes to the browser whole: no credential in it either.
        let known =
            "token_url = \"https://x/t\"\nclient_id = \"a\"\nclient_secret = \"cs-012345\"\n";
        for url in [
            "https://x/a?client_secret=other",
            "https://x/a?Client_Assertion=j",
            "https://x/a?k=cs-012345",
            "https://x/a?k=Basic%20cs-012345",
            "https://x/cs-012345/a",
            "https://u:pw@x/a",
            "https://u@x/a",
        ] {
            let refused = err(&format!("{known}authorization_url = \"{url}\""));
            assert!(
                refused.contains("providers.p.authorization_url: ")
                    && !refused.contains("cs-012345"),
                "{url}: {refused}"
            );
        }
        let fine =
            format!("{known}authorization_url = \"https://x/a?audience=api&prompt=consent\"");
        assert!(Provider::from_config("p", &cfg(&fine)).is_ok());
        assert!(err(
            "preset = \"spotify\"\nclient_id = \"a\"\nclient_secret_file = \"/nonexistent/secret\""
        )
        .contains("/nonexistent/secret"));
        let base = "issuer = \"https://x\"\nclient_id = \"a\"\nclient_auth = \"none\"\n";
        let scope = err(&format!("{base}[authorize_params]\nscope = \"email\""));
        assert!(scope.contains("authorize_params.scope") && scope.contains("scopes = [...]"));
        assert!(err(&format!(
            "{base}[authorize_params]\nresponse_mode = \"form_post\""
        ))
        .contains("authorize_params.response_mode"));
        // An empty secret is a mistake to name at start, not an invalid_client later.
        assert!(
            err("preset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \" \"")
                .contains("providers.p.client_secret: empty")
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(empty.path(), "\n").unwrap();
        let from_file = err(&format!(
            "preset = \"spotify\"\nclient_id = \"a\"\nclient_secret_file = {:?}",
            empty.path()
        ));
        assert!(from_file.contains("is empty"), "{from_file}");
        // The message spells client_auth as the config does.
        let no_secret = err("issuer = \"https://x\"\nclient_id = \"a\"\nclient_auth = \"basic\"");
        assert!(no_secret.contains("client_auth = \"basic\""), "{no_secret}");
        let bad_name = Provider::from_config(
            "a b",
            &cfg("preset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \"b\""),
        )
        .unwrap_err();
        assert!(bad_name.contains("providers.a b"));
    }

    #[test]
    fn loopback_http_is_allowed_for_local_providers() {
        let p = Provider::from_config(
            "local",
            &cfg("issuer = \"http://127.0.0.1:9000\"\nclient_id = \"a\"\nclient_auth = \"none\""),
        )
        .unwrap();
        assert_eq!(p.issuer().unwrap().as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn paste_back_redirects_are_loopback_ip_literals_over_http() {
        let sp = "preset = \"spotify\"\nclient_id = \"a\"\nclient_secret = \"b\"\n";
        let build = |extra: &str| Provider::from_config("sp", &cfg(&format!("{sp}{extra}")));
        assert_eq!(build("").unwrap().paste_redirect, None);
        let paste = build("redirect_mode = \"paste\"").unwrap();
        assert_eq!(
            paste.paste_redirect.unwrap().as_str(),
            "http://127.0.0.1/callback/sp"
        );
        let own = build("redirect_uri = \"http://127.0.0.1:8888/callback\"").unwrap();
        assert_eq!(
            own.paste_redirect.unwrap().as_str(),
            "http://127.0.0.1:8888/callback"
        );
        assert!(
            build("redirect_uri = \"http://[::1]:8888/cb\"\nredirect_mode = \"paste\"").is_ok()
        );
        for (bad, why) in [
            (
                "redirect_uri = \"http://localhost:8888/cb\"",
                "loopback IP literal",
            ),
            (
                "redirect_uri = \"https://127.0.0.1:8888/cb\"",
                "loopback IP literal",
            ),
            (
                "redirect_uri = \"http://192.168.1.10:6288/cb\"",
                "public_url",
            ),
            ("redirect_uri = \"http://u:p@127.0.0.1:1/cb\"", "user name"),
            ("redirect_uri = \"http://127.0.0.1:1/cb?x=1\"", "no query"),
            ("redirect_uri = \"nonsense\"", "not a URL"),
            (
                "redirect_uri = \"http://127.0.0.1:1/cb\"\nredirect_mode = \"callback\"",
                "remove one",
            ),
        ] {
            let e = build(bad).unwrap_err();
            assert!(
                e.contains("providers.sp.redirect_uri") && e.contains(why),
                "{bad}: {e}"
            );
        }
        assert!(toml::from_str::<ProviderConfig>("redirect_mode = \"relay\"").is_err());
        // Paste-back never reaches oauthd's own address: a localhost public_url is fine then.
        let configs: BTreeMap<String, ProviderConfig> =
            toml::from_str(&format!("[sp]\n{sp}redirect_mode = \"paste\"\n")).unwrap();
        let localhost = Url::parse("http://localhost:6288/").unwrap();
        assert!(build_all(&configs, &localhost).is_ok());
    }

    #[test]
    fn api_bases_come_from_presets_or_the_config() {
        let build = |text: &str| Provider::from_config("p", &cfg(text));
        let creds = "client_id = \"a\"\nclient_secret = \"b\"\n";
        for (preset, base) in [
            ("smartthings", "https://api.smartthings.com/"),
            ("spotify", "https://api.spotify.com/"),
            ("tidal", "https://openapi.tidal.com/"),
            ("google", "https://www.googleapis.com/"),
            ("github", "https://api.github.com/"),
            ("microsoft", "https://graph.microsoft.com/"),
        ] {
            let p = build(&format!("preset = \"{preset}\"\n{creds}")).unwrap();
            assert_eq!(p.api_base.unwrap().as_str(), base);
        }
        let explicit = "authorization_url = \"https://x/a\"\ntoken_url = \"https://x/t\"\n";
        assert!(build(&format!("{explicit}{creds}"))
            .unwrap()
            .api_base
            .is_none());
        let p = build(&format!(
            "{explicit}{creds}api_base_url = \"https://api.x/v2\""
        ))
        .unwrap();
        assert_eq!(p.api_base.unwrap().as_str(), "https://api.x/v2/");
        for (bad, why) in [
            ("http://api.x/", "plain http"),
            ("https://u:p@api.x/", "user name"),
            ("https://api.x/?k=1", "no query"),
        ] {
            let e = build(&format!("{explicit}{creds}api_base_url = \"{bad}\"")).unwrap_err();
            assert!(
                e.contains("providers.p.api_base_url") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }
}

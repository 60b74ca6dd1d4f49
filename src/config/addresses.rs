//! Where oauthd listens and where browsers reach it: `listen`, `public_url`,
//! `allowed_hosts`, `return_to_allowlist`, and what to warn of in them.

use super::{invalid, ConfigError, Settings, DEFAULT_LISTEN};
use std::net::SocketAddr;
use url::Url;

/// Where oauthd listens: `listen_text`, as the operator gave it in `listen_key`.
pub(super) fn listen(listen_text: &str, listen_key: &str) -> Result<SocketAddr, ConfigError> {
    listen_text.parse().map_err(|_| {
        // An address with a port past 65535 is the likelier slip than a wrong shape.
        // (An IPv6 address only in brackets, as a socket address spells it.)
        let port_too_big = listen_text.rsplit_once(':').is_some_and(|(ip, port)| {
            let ip_ok = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => ip.parse::<std::net::Ipv4Addr>().is_ok(),
            };
            ip_ok && port.parse::<u64>().is_ok_and(|p| p > 65_535)
        });
        let why = if port_too_big {
            format!("{listen_text:?}: the port is past 65535")
        } else {
            format!("{listen_text:?} is not ADDRESS:PORT")
        };
        invalid(
            listen_key,
            format!("{why}, e.g. {DEFAULT_LISTEN} or [::1]:6288"),
        )
    })
}

pub(super) fn parse_public_url(text: &str) -> Result<Url, ConfigError> {
    // "127.0.0.1:6288" and "localhost:6288" lack their scheme (the second parses as one).
    let with_scheme = || {
        if text.contains("://") {
            String::new()
        } else {
            format!(": did you mean \"http://{text}\" (or https://)?")
        }
    };
    let url = Url::parse(text).map_err(|e| {
        invalid(
            "public_url",
            format!("{text:?} is not a URL ({e}){}", with_scheme()),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "public_url",
            format!(
                "must be an http:// or https:// URL with a host{}",
                with_scheme()
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("public_url", "must not have a query or fragment"));
    }
    // The path starts every address oauthd emits, the session cookie's Path included:
    // "//host" would make them point elsewhere, an empty segment inside ("/a//b") is one a
    // proxy may merge away (so the cookie's path and the redirect URIs would not match what
    // browsers send), and ; , \ would break the cookie header.
    let path = url.path();
    if path.contains("//") || path.contains([';', ',', '\\']) || !url.username().is_empty() {
        return Err(invalid(
            "public_url",
            "its path must be plain segments (no //, no ; , or \\) and it must not carry a user name",
        ));
    }
    if url.scheme() == "http" && !crate::local_url::is_loopback(&url) {
        log::warn!(
            "public_url {url} is plain http on a non-loopback host: authorization codes will cross the network unencrypted; most providers require https there"
        );
    }
    Ok(url)
}

/// `allowed_hosts`, checked and lower-cased: names, `*.suffix`, or `*` for every name.
pub(super) fn allowed_hosts(names: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut allowed_hosts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // "*": every name; "*.lan": every name under lan.
        let (star, name) = match name.strip_prefix('*') {
            Some("") => {
                allowed_hosts.push("*".to_owned());
                continue;
            }
            Some(rest) if rest.starts_with('.') => ("*.", &rest[1..]),
            _ => ("", name.as_str()),
        };
        let host = url::Host::parse(name)
            .ok()
            .filter(|_| !name.contains([':', '/', '@']) || name.starts_with('['))
            .ok_or_else(|| {
                invalid(
                    format!("allowed_hosts[{i}]"),
                    format!("{name:?} is not a host name (a name such as \"nas.lan\", \"*.lan\" for every name under lan, or \"*\" for every name; without scheme, port or path)"),
                )
            })?;
        allowed_hosts.push(format!(
            "{star}{}",
            host.to_string().trim_end_matches('.').to_ascii_lowercase()
        ));
    }
    Ok(allowed_hosts)
}

/// `return_to_allowlist`: absolute http(s) URLs without credentials.
pub(super) fn return_to_allowlist(entries: &[String]) -> Result<Vec<Url>, ConfigError> {
    let mut return_to_allowlist = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let url = Url::parse(entry)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|u| u.username().is_empty() && u.password().is_none())
            .ok_or_else(|| {
                invalid(
                    format!("return_to_allowlist[{i}]"),
                    format!("{entry:?} is not an absolute http(s) URL (scheme, host, optional port and path)"),
                )
            })?;
        return_to_allowlist.push(url);
    }
    Ok(return_to_allowlist)
}

impl Settings {
    /// `public_url`, or `http://<address>` of where the server listens.
    #[expect(
        clippy::expect_used,
        reason = "http:// followed by a socket address, or a constant, always parses"
    )]
    /// Without `public_url`, an address that listens on every interface (0.0.0.0 or ::, as
    /// in the container image) stands for this machine's loopback address: a browser
    /// cannot open http://0.0.0.0:6288/ everywhere, and a provider will not take it as a
    /// redirect URI.
    pub fn public_url_for(&self, bound: SocketAddr) -> Url {
        self.public_url.clone().unwrap_or_else(|| {
            let mut reached = bound;
            if bound.ip().is_unspecified() {
                reached.set_ip(match bound {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            Url::parse(&format!("http://{reached}"))
                .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("a constant URL parses"))
        })
    }

    /// Said at start when links stand for the loopback address of a server that listens on
    /// every interface: other machines' browsers need `public_url`.
    pub fn public_url_hint(&self, bound: SocketAddr) -> Option<String> {
        let Some(url) = &self.public_url else {
            return bound.ip().is_unspecified().then(|| {
                format!(
                    "listening on {bound} without public_url: links and redirect URIs use {}; \
                     set public_url to the address browsers reach oauthd at",
                    self.public_url_for(bound)
                )
            });
        };
        // A public_url on this host's loopback, on another port than oauthd's: a config
        // copied with another listen port (or `--listen`), whose links lead nowhere.
        let loopback = crate::local_url::is_loopback(url);
        let port = url.port_or_known_default()?;
        let here = bound.ip().is_loopback() || bound.ip().is_unspecified();
        (loopback && here && port != bound.port()).then(|| {
            format!(
                "public_url {url} is on this host's loopback, port {port}, and oauthd listens on \
                 port {}: unless a proxy on this host forwards port {port} to oauthd, the \
                 sign-in link and redirect URIs lead nowhere. Give public_url the port oauthd \
                 listens on, or leave it out (it then follows the listen address)",
                bound.port()
            )
        })
    }

    /// Said by `check` and at start for each trusted proxy range that holds many addresses.
    /// And, where `public_url` is https (oauthd speaks plain http: a proxy answers in front
    /// of it) but no proxy is trusted, that every client counts as the proxy.
    pub fn trusted_proxies_warnings(&self) -> Vec<String> {
        let behind_tls = self
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https");
        let untrusted = (behind_tls && self.trusted_proxies.is_empty()).then(|| {
            "public_url is https, so a proxy answers in front of oauthd (which speaks plain \
             http), and limits.trusted_proxies is empty: every client counts as the proxy's \
             address, so one client's failures (wrong API keys, sign-ins, the public pages' \
             budget) refuse every other client too; list the proxy's address in \
             limits.trusted_proxies (e.g. [\"127.0.0.1\"] for a proxy on this host)"
                .to_owned()
        });
        self.trusted_proxies
            .iter()
            .filter(|r| r.is_wide())
            .map(|range| {
                format!(
                    "limits.trusted_proxies: {range} holds many addresses, and every one of them may name the client in X-Forwarded-For (and so pass the rate limits as anyone): list only the proxies' own addresses or network"
                )
            })
            .chain(untrusted)
            .collect()
    }

    /// Said at start when `/metrics` answers anyone on the network: it names providers,
    /// apps' namespaces, notification targets' hosts and how many connections fail.
    pub fn open_metrics_warning(&self, bound: SocketAddr) -> Option<String> {
        (self.metrics_token.is_none() && !bound.ip().to_canonical().is_loopback()).then(|| {
            format!(
                "/metrics answers without a token on {bound}: if that port can be reached from \
                 beyond this host (a container's published port counts only where it is \
                 published), anyone there reads provider names, apps' namespaces and \
                 notification targets' hosts; set OAUTHD_METRICS_TOKEN (or \
                 OAUTHD_METRICS_TOKEN_FILE) and give it to the scraper as a bearer token"
            )
        })
    }
}

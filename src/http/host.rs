//! Which names a request may be addressed to (its `Host`). An oauthd that listens on
//! loopback only is reached by this machine's browsers and programs, which call it
//! `localhost` or by an address. A page on another site can make a browser send it
//! requests addressed to that site's own name, once the name resolves to 127.0.0.1 (DNS
//! rebinding), and read the answers as its own: `/metrics` names providers, namespaces and
//! notification hosts. Those requests are refused. A name is allowed when it is an IP
//! address, `localhost` or under `.localhost`, the host of `public_url` (a reverse proxy
//! that passes the name people use), or in `allowed_hosts`. An oauthd that listens beyond
//! loopback answers to every name: any machine that reaches it can ask it directly.

use actix_web::http::header::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use url::Url;

#[derive(Debug, Clone)]
pub struct HostCheck {
    /// `None`: every name is answered.
    names: Option<Vec<String>>,
}

impl HostCheck {
    pub fn new(listen: SocketAddr, public_url: Option<&Url>, allowed: &[String]) -> HostCheck {
        if !listen.ip().is_loopback() {
            return HostCheck { names: None };
        }
        let names = public_url
            .and_then(|u| u.host_str())
            .map(str::to_owned)
            .into_iter()
            .chain(allowed.iter().cloned())
            .map(|n| normal(&n))
            .collect();
        HostCheck { names: Some(names) }
    }

    /// The name a request was addressed to, when it is not one this oauthd answers to.
    /// On every request: nothing is allocated for a name that is answered.
    pub fn refused(&self, host: Option<&HeaderValue>) -> Option<String> {
        let names = self.names.as_ref()?;
        // HTTP/1.0 may leave it out; a browser never does.
        let host = host?;
        let Ok(text) = host.to_str() else {
            return Some(String::from_utf8_lossy(host.as_bytes()).into_owned());
        };
        let name = without_port(text).trim_end_matches('.');
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let local = name.eq_ignore_ascii_case("localhost")
            || name
                .len()
                .checked_sub(".localhost".len())
                .and_then(|at| name.get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"));
        let allowed = local
            || literal.parse::<IpAddr>().is_ok()
            || names.iter().any(|n| n.eq_ignore_ascii_case(name));
        (!allowed).then(|| text.chars().take(100).collect())
    }
}

/// `host[:port]` without the port (an IPv6 literal keeps its brackets).
fn without_port(text: &str) -> &str {
    if text.starts_with('[') {
        return text.split_inclusive(']').next().unwrap_or(text);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => text,
    }
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(listen: &str, public: Option<&str>, allowed: &[&str]) -> HostCheck {
        let url = public.map(|u| Url::parse(u).unwrap());
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostCheck::new(listen.parse().unwrap(), url.as_ref(), &allowed)
    }

    fn refused(c: &HostCheck, host: &str) -> bool {
        c.refused(Some(&HeaderValue::from_str(host).unwrap()))
            .is_some()
    }

    #[test]
    fn on_loopback_only_local_names_addresses_and_the_configured_ones_are_answered() {
        let c = check(
            "127.0.0.1:6288",
            Some("https://Auth.Example.net/oauthd"),
            &["nas.lan"],
        );
        for host in [
            "127.0.0.1:6288",
            "127.0.0.1",
            "[::1]:6288",
            "localhost:6288",
            "LOCALHOST.",
            "app.localhost:6288",
            "192.168.1.5:6288",
            "auth.example.net",
            "auth.example.net.:443",
            "NAS.lan:6288",
        ] {
            assert!(!refused(&c, host), "{host}");
        }
        for host in [
            "evil.example:6288",
            "localhost.evil.example",
            "auth.example.net.evil.example",
            "127.0.0.1.nip.io:6288",
        ] {
            assert!(refused(&c, host), "{host}");
        }
        assert!(c.refused(None).is_none());
    }

    #[test]
    fn beyond_loopback_every_name_is_answered() {
        let c = check("0.0.0.0:6288", None, &[]);
        assert!(!refused(&c, "evil.example"));
    }
}

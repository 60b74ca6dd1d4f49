//! Which names a request may be addressed to (its `Host`). A page on another site can
//! make a browser send requests to oauthd, addressed to that site's own name once the
//! name resolves to oauthd's address (DNS rebinding: 127.0.0.1, a published container
//! port, a LAN address), and read the answers as its own: `/metrics` names providers,
//! namespaces and notification hosts. Those requests are refused. A name is answered when
//! it is an IP address, `localhost` or under `.localhost`, a name without a dot (a
//! container's service name, a machine's short name: no site on the internet has one; not
//! one written with a final dot, `com.`, which only DNS resolves), the
//! host of `public_url`, or matches `allowed_hosts` (a name, `*.suffix`, or `*` for every
//! name).

use actix_web::http::header::HeaderValue;
use std::net::IpAddr;
use url::Url;

#[derive(Debug, Clone)]
pub struct HostCheck {
    /// Names and `*.suffix` patterns, lower case; `None`: every name is answered.
    names: Option<Vec<String>>,
}

impl HostCheck {
    pub fn new(public_url: Option<&Url>, allowed: &[String]) -> HostCheck {
        if allowed.iter().any(|n| n == "*") {
            return HostCheck { names: None };
        }
        let names = public_url
            .and_then(|u| u.host_str())
            .map(str::to_owned)
            .into_iter()
            .chain(allowed.iter().cloned())
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        HostCheck { names: Some(names) }
    }

    /// The names answered besides addresses, localhost and names without a dot, for the
    /// log at start.
    pub fn describe(&self) -> String {
        match &self.names {
            None => "every name (allowed_hosts = [\"*\"])".to_owned(),
            Some(names) if names.is_empty() => {
                "localhost, IP addresses and names without a dot".to_owned()
            }
            Some(names) => {
                // public_url's host, when it is an address or a local name, is among those
                // already.
                let named: Vec<&str> = names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| {
                        n.contains('.')
                            && !n.ends_with("localhost")
                            && n.trim_matches(['[', ']']).parse::<IpAddr>().is_err()
                    })
                    .collect();
                if named.is_empty() {
                    "localhost, IP addresses and names without a dot".to_owned()
                } else {
                    format!(
                        "localhost, IP addresses, names without a dot and {}",
                        named.join(", ")
                    )
                }
            }
        }
    }

    /// The name a request was addressed to (`authority`, the request-target's when it has
    /// one, else `host`), when it is not one this oauthd answers to, shown safely. On
    /// every request: nothing is allocated for a name that is answered.
    pub fn refused(&self, authority: Option<&str>, host: Option<&HeaderValue>) -> Option<String> {
        let names = self.names.as_ref()?;
        let text = match (authority, host) {
            (Some(authority), _) => authority,
            // HTTP/1.0 may leave it out; a browser never does.
            (None, None) => return None,
            (None, Some(host)) => match host.to_str() {
                Ok(text) => text,
                Err(_) => return Some(shown(host.as_bytes())),
            },
        };
        let Some(written) = without_port(text) else {
            return Some(shown(text.as_bytes()));
        };
        let name = written.trim_end_matches('.');
        // `name.` is a name for DNS alone (`com.`, a brand's top-level domain), never a
        // container's service or a machine's short name.
        let for_dns = name.len() != written.len();
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let answered = literal.parse::<IpAddr>().is_ok()
            || (!for_dns && !name.contains('.') && !name.is_empty() && !name.contains(['[', ']']))
            || name.eq_ignore_ascii_case("localhost")
            || ends_with_ignoring_case(name, ".localhost")
            || names.iter().any(|n| match n.strip_prefix('*') {
                Some(suffix) => ends_with_ignoring_case(name, suffix),
                None => n.eq_ignore_ascii_case(name),
            });
        (!answered).then(|| shown(text.as_bytes()))
    }
}

/// The host name of a `Host` value, without its port (an IPv6 literal keeps its brackets).
pub fn name_of(text: &str) -> Option<&str> {
    without_port(text)
}

fn ends_with_ignoring_case(name: &str, suffix: &str) -> bool {
    name.len()
        .checked_sub(suffix.len())
        .and_then(|at| name.get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// At most 100 bytes of what was sent, escaped.
fn shown(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(100)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect()
}

/// `host[:port]` without the port (an IPv6 literal keeps its brackets); `None` when what
/// follows the host is not a port.
fn without_port(text: &str) -> Option<&str> {
    if text.starts_with('[') {
        let end = text.find(']')? + 1;
        let (host, rest) = text.split_at(end);
        return (rest.is_empty() || is_port(rest.strip_prefix(':')?)).then_some(host);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if is_port(port) => Some(host),
        Some(_) => None,
        None => Some(text),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(public: Option<&str>, allowed: &[&str]) -> HostCheck {
        let url = public.map(|u| Url::parse(u).unwrap());
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostCheck::new(url.as_ref(), &allowed)
    }

    fn refused(c: &HostCheck, host: &str) -> bool {
        c.refused(None, Some(&HeaderValue::from_str(host).unwrap()))
            .is_some()
    }

    #[test]
    fn the_start_names_only_what_the_rule_does_not_cover_already() {
        let rule = "localhost, IP addresses and names without a dot";
        for public in [
            "http://127.0.0.1:6288",
            "http://[::1]:6288",
            "http://localhost:6288",
        ] {
            assert_eq!(check(Some(public), &[]).describe(), rule, "{public}");
        }
        assert_eq!(
            check(Some("http://127.0.0.1:6288"), &["nas.lan"]).describe(),
            rule.replace(" and names", ", names") + " and nas.lan"
        );
        assert_eq!(
            check(Some("https://auth.example.net"), &[]).describe(),
            "localhost, IP addresses, names without a dot and auth.example.net"
        );
    }

    #[test]
    fn local_names_addresses_and_the_configured_ones_are_answered() {
        let c = check(
            Some("https://Auth.Example.net/oauthd"),
            &["nas.lan", "*.home.arpa"],
        );
        for host in [
            "127.0.0.1:6288",
            "127.0.0.1",
            "[::1]:6288",
            "[::1]",
            "localhost:6288",
            "LOCALHOST.",
            "app.localhost:6288",
            "192.168.1.5:6288",
            "oauthd:6288",
            "nas",
            "auth.example.net",
            "auth.example.net.:443",
            "NAS.lan:6288",
            "pi.home.arpa",
        ] {
            assert!(!refused(&c, host), "{host}");
        }
        for host in [
            "evil.example:6288",
            "localhost.evil.example",
            "auth.example.net.evil.example",
            "127.0.0.1.nip.io:6288",
            "home.arpa",
            "com.",
            "nas.:6288",
            "[::1]evil.example",
            "[127.0.0.1]x",
            "localhost:abc",
            "",
        ] {
            assert!(refused(&c, host), "{host}");
        }
        assert!(c.refused(None, None).is_none());
        // The request-target's authority wins over Host.
        let localhost = HeaderValue::from_static("localhost");
        assert!(c.refused(Some("evil.example"), Some(&localhost)).is_some());
    }

    #[test]
    fn a_star_answers_every_name() {
        let c = check(None, &["*"]);
        assert!(!refused(&c, "evil.example"));
    }

    #[test]
    fn what_is_shown_of_a_name_is_short_and_escaped() {
        let c = check(None, &[]);
        let long = HeaderValue::from_bytes(&[0xff; 3000]).unwrap();
        let shown = c.refused(None, Some(&long)).unwrap();
        assert!(shown.len() <= 400 && shown.starts_with("\\xff"), "{shown}");
    }
}

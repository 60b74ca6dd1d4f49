//! Whether a URL names this machine, in the senses oauthd's checks need.

use url::{Host, Url};

/// A loopback IP literal (`127.0.0.1`, `::1`): what providers that refuse `localhost`
/// accept as a redirect to this machine.
pub fn is_loopback_ip(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// A loopback IP literal or `localhost`: traffic that never leaves this machine.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        _ => is_loopback_ip(url),
    }
}

/// Whether the URL names this machine: a loopback or unspecified address (also one
/// within an IPv6 address: IPv4-mapped `::ffff:127.0.0.1`, IPv4-compatible `::127.0.0.1`,
/// NAT64's `64:ff9b::127.0.0.1`), or `localhost` and its subdomains.
pub fn is_this_machine(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(Host::Ipv6(ip)) => {
            let nat64 = ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let within = match ip.to_ipv4() {
                Some(v4) => Some(v4),
                None if nat64 => Some(std::net::Ipv4Addr::from(
                    u32::try_from(u128::from(ip) & 0xffff_ffff).unwrap_or(0),
                )),
                None => None,
            };
            ip.is_loopback()
                || ip.is_unspecified()
                || within.is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_this_machine() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(is_loopback_ip(&u("http://127.0.0.2:8080/")));
        assert!(is_loopback_ip(&u("http://[::1]/")));
        assert!(!is_loopback_ip(&u("http://localhost/")));
        assert!(is_loopback(&u("http://localhost:1/")));
        assert!(is_loopback(&u("http://127.0.0.1/")));
        assert!(!is_loopback(&u("http://0.0.0.0/")));
        assert!(!is_loopback(&u("https://example.com/")));
        assert!(is_this_machine(&u("http://0.0.0.0/")));
        assert!(is_this_machine(&u("http://[::ffff:127.0.0.1]/")));
        assert!(is_this_machine(&u("http://[::127.0.0.1]/")));
        assert!(is_this_machine(&u("http://[64:ff9b::7f00:1]/")));
        assert!(!is_this_machine(&u("http://[64:ff9b::808:808]/")));
        assert!(!is_this_machine(&u("http://[2001:db8::7f00:1]/")));
        assert!(is_this_machine(&u("http://app.localhost./")));
        assert!(!is_this_machine(&u("http://localhost.example/")));
    }
}

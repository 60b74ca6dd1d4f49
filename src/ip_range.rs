//! An address or a range of addresses (`10.0.0.2`, `172.16.0.0/12`, `fd00::/8`), as
//! `limits.trusted_proxies` lists them: a reverse proxy on a Docker or Podman network gets
//! another address of its network at each start.

use std::fmt;
use std::net::IpAddr;

/// `addr/prefix`, with no bits set past the prefix. IPv4-mapped IPv6 addresses are held,
/// and matched, as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(ip).into(), 32, self.prefix) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether the range holds many addresses (wider than an IPv4 /16 or an IPv6 /48):
    /// worth a word at start, since every one of them is believed.
    pub fn is_wide(&self) -> bool {
        self.prefix < if self.addr.is_ipv4() { 16 } else { 48 }
    }

    pub fn parse(text: &str) -> Result<IpRange, String> {
        let shape =
            "an address (10.0.0.2, fd00::2) or a range (172.16.0.0/12, fd00::/8), without a port";
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let written = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not {shape}"))?;
        // An IPv4-mapped IPv6 range (::ffff:10.0.0.0/104) is the IPv4 one it maps.
        let addr = written.to_canonical();
        let (bits, written_bits): (u8, u8) = match (addr.is_ipv4(), written.is_ipv4()) {
            (true, false) => (32, 128),
            (true, true) => (32, 32),
            _ => (128, 128),
        };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= written_bits && *p >= written_bits - bits)
                .map(|p| p - (written_bits - bits))
                .ok_or_else(|| {
                    format!(
                        "{text:?}: the length after / is {} to {written_bits}",
                        written_bits - bits
                    )
                })?,
        };
        let wide = match addr {
            IpAddr::V4(v4) => u32::from(v4).into(),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let network = masked(wide, bits, prefix);
        if network != wide {
            let net = match addr {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(
                    u32::try_from(network).unwrap_or(0),
                )),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(network)),
            };
            return Err(format!(
                "{text:?} has address bits set past /{prefix}: the range is {net}/{prefix}"
            ));
        }
        Ok(IpRange { addr, prefix })
    }
}

/// `value`, an address of `bits` bits, with the bits past `prefix` cleared.
fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(bits.saturating_sub(prefix));
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    value & mask
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        IpRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl From<IpAddr> for IpRange {
    fn from(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpRange { addr, prefix }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_ranges_of_both_families_match_what_they_hold() {
        let one = IpRange::parse("10.0.0.2").unwrap();
        assert!(one.contains(&ip("10.0.0.2")));
        assert!(
            one.contains(&ip("::ffff:10.0.0.2")),
            "mapped counts as IPv4"
        );
        assert!(!one.contains(&ip("10.0.0.3")));
        let docker = IpRange::parse("172.16.0.0/12").unwrap();
        assert!(docker.contains(&ip("172.17.0.5")));
        assert!(docker.contains(&ip("172.31.255.255")));
        assert!(!docker.contains(&ip("172.32.0.1")));
        assert!(!docker.contains(&ip("fd00::1")));
        let all = IpRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(&ip("203.0.113.9")));
        assert!(!all.contains(&ip("2001:db8::1")));
        let v6 = IpRange::parse("fd00::/8").unwrap();
        assert!(v6.contains(&ip("fd12:3456::1")));
        assert!(!v6.contains(&ip("fe80::1")));
        assert!(!v6.contains(&ip("10.0.0.2")));
        let mapped = IpRange::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, IpRange::parse("10.0.0.0/8").unwrap());
        let short = IpRange::parse("::ffff:10.0.0.0/8").unwrap_err();
        assert!(short.contains("96 to 128"), "{short}");
        assert_eq!(IpRange::parse("::1").unwrap().to_string(), "::1/128");
        assert!(IpRange::parse("172.16.0.0/12").unwrap().is_wide());
        assert!(!IpRange::parse("172.20.0.0/16").unwrap().is_wide());
        assert!(IpRange::parse("fd00::/8").unwrap().is_wide());
        assert!(!IpRange::parse("fd00:1:2::/48").unwrap().is_wide());
        assert_eq!(
            IpRange::from(ip("::ffff:127.0.0.1")),
            IpRange::parse("127.0.0.1").unwrap()
        );
    }

    #[test]
    fn what_is_not_a_range_is_refused_in_words() {
        for (text, said) in [
            ("10.0.0.2:8080", "without a port"),
            ("proxy", "without a port"),
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0.0/x", "0 to 32"),
            ("10.0.0.5/8", "the range is 10.0.0.0/8"),
            ("fd00::1/8", "the range is fd00::/8"),
        ] {
            let e = IpRange::parse(text).unwrap_err();
            assert!(e.contains(said), "{text}: {e}");
        }
    }
}

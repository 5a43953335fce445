//! The rules of `isolation.egress_allow`: which hosts an agent's HTTP(S) proxy requests may reach.
//! A pattern is an exact name (`registry.npmjs.org`), a wildcard over a domain's subdomains
//! (`*.pythonhosted.org`) or an IP literal (`10.0.0.5`, `[fd00::1]`), each with an optional
//! `:port`; without one it allows the web's ports, 80 and 443. Names compare case-insensitively and
//! without a trailing dot. A name pattern never matches an IP literal target (nor the reverse), and
//! which resolved addresses a name may lead to is the proxy's rule ([`is_internal`]): a name never
//! reaches loopback, link-local or unspecified addresses, an IP literal pattern reaches exactly its
//! address. Pure: no resolving, no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The ports a pattern without `:port` allows.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Which hosts a pattern names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any name ending in `.` + this domain (not the domain itself).
    Subdomains(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// One entry of `isolation.egress_allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: Host,
    port: Option<u16>,
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} {why}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl HostPattern {
    /// Parses `name`, `*.domain` or an IP literal, each with an optional `:port`.
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        let fail = |why| PatternError {
            pattern: text.to_string(),
            why,
        };
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return Err(fail("is empty"));
        }
        if text_trimmed.contains("://") || text_trimmed.contains('/') {
            return Err(fail(
                "is a URL or path; write a host, e.g. registry.npmjs.org:443",
            ));
        }
        let (host, port) = split_port(text_trimmed).map_err(fail)?;
        if let Some(ip) = ip_literal(host) {
            return Ok(HostPattern {
                host: Host::Ip(ip),
                port,
            });
        }
        if host.starts_with('[') {
            return Err(fail("is not an IPv6 address in brackets"));
        }
        let host = normalize(host);
        if let Some(domain) = host.strip_prefix("*.") {
            check_name(domain).map_err(fail)?;
            if !domain.contains('.') {
                return Err(fail("is a wildcard over a whole top-level domain"));
            }
            return Ok(HostPattern {
                host: Host::Subdomains(domain.to_string()),
                port,
            });
        }
        if host.contains('*') {
            return Err(fail("has a wildcard other than a leading `*.`"));
        }
        check_name(&host).map_err(fail)?;
        Ok(HostPattern {
            host: Host::Name(host),
            port,
        })
    }

    /// Whether a request for `host:port` (as the client named it) is allowed by this pattern.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        if !port_ok {
            return false;
        }
        match (&self.host, ip_literal(host)) {
            (Host::Ip(ip), Some(target)) => canonical(*ip) == canonical(target),
            (Host::Ip(_), None) | (Host::Name(_) | Host::Subdomains(_), Some(_)) => false,
            (Host::Name(name), None) => *name == normalize(host),
            (Host::Subdomains(domain), None) => normalize(host)
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// Whether the pattern is an IP literal (which alone may lead to an internal address).
    pub fn is_ip_literal(&self) -> bool {
        matches!(self.host, Host::Ip(_))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(name) => f.write_str(name)?,
            Host::Subdomains(domain) => write!(f, "*.{domain}")?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The allow-list: a target is allowed when any pattern matches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    patterns: Vec<HostPattern>,
}

impl EgressRules {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<EgressRules, PatternError> {
        let patterns = entries
            .iter()
            .map(|e| HostPattern::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(EgressRules { patterns })
    }

    /// Whether nothing is allowed (no proxy is run).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The pattern that allows `host:port`, if any; an IP literal pattern first, since it alone
    /// allows an internal address.
    pub fn allowing(&self, host: &str, port: u16) -> Option<&HostPattern> {
        let mut matching = self.patterns.iter().filter(|p| p.matches(host, port));
        let first = matching.next()?;
        if first.is_ip_literal() {
            return Some(first);
        }
        Some(matching.find(|p| p.is_ip_literal()).unwrap_or(first))
    }
}

/// Whether `ip` is an address a name must never lead to: loopback, link-local (cloud metadata at
/// 169.254.169.254 among them), unspecified or "this network", multicast or broadcast, also in
/// IPv4-mapped or -compatible IPv6 form, and the IPv6 metadata address of EC2.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.octets()[0] == 0
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `host` as an IP literal: dotted IPv4, or IPv6 with or without brackets.
fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .ok()
        .or_else(|| host.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
}

/// Splits `host[:port]`; a bare IPv6 address (several colons, no brackets) has no port.
fn split_port(text: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once(']') {
            Some((_, "")) => (text, None),
            Some((inner, tail)) => match tail.strip_prefix(':') {
                Some(port) => (&text[..inner.len() + 2], Some(port)),
                None => return Err("has text after the IPv6 address"),
            },
            None => return Err("has an unclosed `[`"),
        }
    } else if text.matches(':').count() > 1 {
        (text, None)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err("has a port that is not 1-65535"),
            Ok(port) => Some(port),
        },
    };
    if host.is_empty() {
        return Err("has no host");
    }
    Ok((host, port))
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS name: labels of letters, digits and inner hyphens (underscores too, as some services
/// use), at most 63 bytes each and 253 in all, the last one not all digits (that is an address in
/// a form the resolver would accept, which must be written as a dotted IP literal).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err("is not a host name (letters, digits, inner hyphens; `*.` only in front)");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("looks like an address: write it as a dotted IPv4 or bracketed IPv6 literal");
    }
    if name.starts_with("0x") && !name.contains('.') {
        return Err("looks like an address: write it as a dotted IPv4 or bracketed IPv6 literal");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_exact_name_matches_itself_on_the_web_ports_only() {
        let pattern = p("Registry.NPMjs.org");
        assert!(pattern.matches("registry.npmjs.org", 443));
        assert!(pattern.matches("REGISTRY.npmjs.org.", 80));
        assert!(!pattern.matches("registry.npmjs.org", 8443));
        assert!(!pattern.matches("evil.registry.npmjs.org", 443));
        assert!(!pattern.matches("registry.npmjs.org.evil.com", 443));
        assert!(!pattern.matches("npmjs.org", 443));
    }

    #[test]
    fn a_port_allows_that_port_alone() {
        let pattern = p("example.org:8080");
        assert!(pattern.matches("example.org", 8080));
        assert!(!pattern.matches("example.org", 443));
        assert!(!pattern.matches("example.org", 80));
    }

    #[test]
    fn a_wildcard_matches_subdomains_at_any_depth_but_not_the_domain() {
        let pattern = p("*.example.org");
        assert!(pattern.matches("a.example.org", 443));
        assert!(pattern.matches("a.b.example.org", 443));
        assert!(!pattern.matches("example.org", 443));
        assert!(!pattern.matches("badexample.org", 443));
        assert!(!pattern.matches(".example.org", 443));
        assert!(!pattern.matches("a.example.org.evil", 443));
    }

    #[test]
    fn ip_literals_match_only_the_same_address_and_names_never_match_addresses() {
        let v4 = p("127.0.0.1:9000");
        assert!(v4.is_ip_literal());
        assert!(v4.matches("127.0.0.1", 9000));
        assert!(v4.matches("[::ffff:127.0.0.1]", 9000));
        assert!(!v4.matches("127.0.0.2", 9000));
        assert!(!v4.matches("localhost", 9000));
        assert!(!v4.matches("127.0.0.1", 9001));
        let v6 = p("[fd00::1]:443");
        assert!(v6.matches("[fd00::1]", 443));
        assert!(v6.matches("fd00::1", 443));
        assert!(!v6.matches("[fd00::2]", 443));
        assert!(p("fd00::1").matches("[fd00::1]", 80));
        let name = p("example.org");
        assert!(!name.is_ip_literal());
        assert!(!name.matches("93.184.215.14", 443));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for bad in [
            "",
            " ",
            "*",
            "*.org",
            "https://example.org",
            "example.org/path",
            "ex*ample.org",
            "a.*.example.org",
            "example.org:0",
            "example.org:65536",
            "example.org:http",
            "-bad.example.org",
            "bad-.example.org",
            "exa mple.org",
            "[::1",
            "[::1]x",
            "[example.org]",
            "2130706433",
            "127.1",
            "0x7f000001",
            ":443",
        ] {
            let err = HostPattern::parse(bad).expect_err(bad);
            assert_eq!(err.pattern, bad);
        }
        assert!(HostPattern::parse("under_score.example.org").is_ok());
        assert_eq!(p("*.Example.org:8443").to_string(), "*.example.org:8443");
        assert_eq!(p("[::1]:1").to_string(), "[::1]:1");
    }

    #[test]
    fn the_rules_prefer_an_ip_literal_pattern_and_refuse_what_none_allows() {
        let rules = EgressRules::parse(&["*.example.org", "10.0.0.5:8080"]).unwrap();
        assert!(rules.allowing("pkg.example.org", 443).is_some());
        assert!(rules.allowing("10.0.0.5", 8080).unwrap().is_ip_literal());
        assert!(rules.allowing("10.0.0.5", 443).is_none());
        assert!(rules.allowing("example.com", 443).is_none());
        assert!(EgressRules::parse::<&str>(&[]).unwrap().is_empty());
        assert!(EgressRules::parse(&["ok.org", "bad/"]).is_err());
    }

    #[test]
    fn internal_addresses_are_loopback_link_local_unspecified_and_their_mapped_forms() {
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for external in [
            "93.184.215.14",
            "10.0.0.5",
            "192.168.1.1",
            "2606:4700::1",
            "fd00::1",
        ] {
            assert!(!is_internal(external.parse().unwrap()), "{external}");
        }
    }
}

//! Which destinations a sandbox may reach: `allow` and `deny` lists of
//! `host[:port]`, `*.domain[:port]`, `*[:port]`, `CIDR[:port]` entries (a
//! plain address is a /32; no port means every port). Deny wins.
//!
//! Names act through DNS, because a guest connects to addresses, not names:
//! a name that no allow rule matches, or that a portless deny rule matches,
//! does not resolve; the addresses an allowed name resolves to are recorded
//! as [`Grants`] (with the ports its rules allow), and a connection is
//! allowed only to an address an allow CIDR covers or a grant names.
//!
//! Some addresses are refused whatever a broad rule says ([`SPECIAL`]): the
//! host's loopback, link-local addresses such as the cloud metadata service
//! 169.254.169.254, multicast and reserved ranges. Only an allow CIDR that
//! lies inside such a block opens it (`127.0.0.1:8080`,
//! `169.254.169.254/32`); `0.0.0.0/0` does not, and a name never does, so a
//! hostile DNS answer cannot point an allowed name at them.
//!
//! Guests have IPv4 only, so IPv6 entries are refused when parsed rather
//! than accepted and never matched.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Most entries in one list.
pub const MAX_RULES: usize = 256;
/// Longest entry, in bytes.
const MAX_ENTRY: usize = 300;
/// Most addresses a sandbox's DNS answers may grant; the oldest go first.
pub const MAX_GRANTS: usize = 4096;

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    addr: u32,
    prefix: u8,
}

impl Ipv4Net {
    /// `addr/prefix`; `None` when the prefix is over 32 or host bits are set.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        if prefix > 32 {
            return None;
        }
        let addr = addr.to_bits();
        if addr & !mask(prefix) != 0 {
            return None;
        }
        Some(Ipv4Net { addr, prefix })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.prefix) == self.addr
    }

    /// Whether all of `other` is in this network.
    fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(Ipv4Addr::from_bits(other.addr))
    }
}

const fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - p),
    }
}

const fn net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), prefix) {
        Some(n) => n,
        None => panic!("a valid constant network"),
    }
}

/// Blocks refused unless an allow CIDR inside them opens them, with why.
pub const SPECIAL: [(Ipv4Net, &str); 5] = [
    (net(0, 0, 0, 0, 8), "this-host address (0.0.0.0/8)"),
    (net(127, 0, 0, 0, 8), "loopback address"),
    (
        net(169, 254, 0, 0, 16),
        "link-local address (cloud metadata service)",
    ),
    (net(224, 0, 0, 0, 4), "multicast address"),
    (net(240, 0, 0, 0, 4), "reserved or broadcast address"),
];

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// One name, lowercase, without a trailing dot.
    Name(String),
    /// Names ending in this suffix (".example.com" for `*.example.com`),
    /// with at least one label before it.
    Suffix(String),
    /// Every name (`*`).
    AnyName,
    /// An address range.
    Net(Ipv4Net),
}

/// One entry of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    target: Target,
    /// `None`: every port.
    port: Option<u16>,
    /// The entry as written, for refusal reasons.
    text: String,
}

impl Rule {
    fn matches_name(&self, name: &str) -> bool {
        match &self.target {
            Target::Name(n) => n == name,
            Target::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            Target::AnyName => true,
            Target::Net(_) => false,
        }
    }

    fn net(&self) -> Option<&Ipv4Net> {
        match &self.target {
            Target::Net(n) => Some(n),
            _ => None,
        }
    }

    fn matches_addr(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.net().is_some_and(|n| n.contains(ip)) && self.port.is_none_or(|p| p == port)
    }
}

/// Why a list entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// More entries than [`MAX_RULES`].
    #[error("{list} has {count} entries, at most {MAX_RULES} are allowed")]
    TooManyRules {
        /// "allow" or "deny".
        list: &'static str,
        /// How many there were.
        count: usize,
    },
    /// An entry that is not `host[:port]`, `*.domain[:port]` or `CIDR[:port]`.
    #[error("{list} entry {entry:?}: {why}")]
    BadEntry {
        /// "allow" or "deny".
        list: &'static str,
        /// The entry (cut to a printable length).
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Ports a set of name rules speaks of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ports {
    any: bool,
    some: Vec<u16>,
}

impl Ports {
    fn add(&mut self, port: Option<u16>) {
        match port {
            None => self.any = true,
            Some(p) if !self.some.contains(&p) => self.some.push(p),
            Some(_) => {}
        }
    }

    fn contains(&self, port: u16) -> bool {
        self.any || self.some.contains(&port)
    }

    fn is_empty(&self) -> bool {
        !self.any && self.some.is_empty()
    }

    fn merge(&mut self, other: &Ports) {
        self.any |= other.any;
        for &p in &other.some {
            self.add(Some(p));
        }
    }
}

/// What resolving an allowed name grants to its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    allowed: Ports,
    denied: Ports,
}

impl Grant {
    fn permits(&self, port: u16) -> bool {
        self.allowed.contains(port) && !self.denied.contains(port)
    }
}

/// Why a name or a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A deny entry matched.
    Denied(String),
    /// No allow entry matched.
    NotAllowed,
    /// A [`SPECIAL`] address that no allow CIDR inside its block opens.
    Special(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(rule) => write!(f, "denied by {rule:?}"),
            Refusal::NotAllowed => write!(f, "not allowed"),
            Refusal::Special(what) => write!(f, "{what}, not explicitly allowed"),
        }
    }
}

/// A parsed network policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Policy {
    /// Parses both lists, refusing the first bad entry with its reason.
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Policy, PolicyError> {
        Ok(Policy {
            allow: parse_list("allow", allow)?,
            deny: parse_list("deny", deny)?,
        })
    }

    /// What resolving `name` grants, or why it must not resolve.
    pub fn resolve(&self, name: &str) -> Result<Grant, Refusal> {
        let name = normalize(name);
        let mut grant = Grant::default();
        for rule in self.deny.iter().filter(|r| r.matches_name(&name)) {
            if rule.port.is_none() {
                return Err(Refusal::Denied(rule.text.clone()));
            }
            grant.denied.add(rule.port);
        }
        for rule in self.allow.iter().filter(|r| r.matches_name(&name)) {
            grant.allowed.add(rule.port);
        }
        if grant.allowed.is_empty() {
            return Err(Refusal::NotAllowed);
        }
        Ok(grant)
    }

    /// Whether a connection to `ip:port` may open, given what DNS granted.
    pub fn connect(&self, ip: Ipv4Addr, port: u16, grants: &Grants) -> Result<(), Refusal> {
        if let Some(rule) = self.deny.iter().find(|r| r.matches_addr(ip, port)) {
            return Err(Refusal::Denied(rule.text.clone()));
        }
        let grant = grants.get(ip);
        if grant.is_some_and(|g| g.denied.contains(port)) {
            return Err(Refusal::Denied(format!("a deny entry for a name of {ip}")));
        }
        if let Some((block, what)) = SPECIAL.iter().find(|(b, _)| b.contains(ip)) {
            return match self.explicit_in(block, ip, port) {
                true => Ok(()),
                false => Err(Refusal::Special(what)),
            };
        }
        if self.allow.iter().any(|r| r.matches_addr(ip, port))
            || grant.is_some_and(|g| g.permits(port))
        {
            return Ok(());
        }
        Err(Refusal::NotAllowed)
    }

    /// Whether a DNS answer may carry `ip`: not a [`SPECIAL`] address, unless
    /// an allow CIDR inside its block opens it (on some port).
    pub fn may_answer(&self, ip: Ipv4Addr) -> bool {
        match SPECIAL.iter().find(|(b, _)| b.contains(ip)) {
            None => true,
            Some((block, _)) => self
                .allow
                .iter()
                .filter_map(Rule::net)
                .any(|n| block.covers(n) && n.contains(ip)),
        }
    }

    fn explicit_in(&self, block: &Ipv4Net, ip: Ipv4Addr, port: u16) -> bool {
        self.allow
            .iter()
            .any(|r| r.matches_addr(ip, port) && r.net().is_some_and(|n| block.covers(n)))
    }
}

/// Addresses DNS answers granted, bounded by [`MAX_GRANTS`] (oldest out first).
#[derive(Debug, Default)]
pub struct Grants {
    by_addr: HashMap<Ipv4Addr, Grant>,
    order: VecDeque<Ipv4Addr>,
}

impl Grants {
    /// Records that `ip` was given out for a name granting `grant`.
    pub fn add(&mut self, ip: Ipv4Addr, grant: &Grant) {
        if let Some(g) = self.by_addr.get_mut(&ip) {
            g.allowed.merge(&grant.allowed);
            g.denied.merge(&grant.denied);
            return;
        }
        if self.order.len() >= MAX_GRANTS
            && let Some(old) = self.order.pop_front()
        {
            self.by_addr.remove(&old);
        }
        self.order.push_back(ip);
        self.by_addr.insert(ip, grant.clone());
    }

    fn get(&self, ip: Ipv4Addr) -> Option<&Grant> {
        self.by_addr.get(&ip)
    }

    /// Addresses granted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Lowercase, without one trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn parse_list<S: AsRef<str>>(list: &'static str, entries: &[S]) -> Result<Vec<Rule>, PolicyError> {
    if entries.len() > MAX_RULES {
        return Err(PolicyError::TooManyRules {
            list,
            count: entries.len(),
        });
    }
    entries
        .iter()
        .map(|e| {
            parse_entry(e.as_ref()).map_err(|why| PolicyError::BadEntry {
                list,
                entry: e.as_ref().chars().take(80).collect(),
                why,
            })
        })
        .collect()
}

fn parse_entry(entry: &str) -> Result<Rule, &'static str> {
    if entry.is_empty() {
        return Err("empty entry");
    }
    if entry.len() > MAX_ENTRY {
        return Err("entry too long");
    }
    if entry.starts_with('[') || entry.matches(':').count() > 1 {
        return Err("IPv6 is not supported: guests have IPv4 only");
    }
    let (host, port) = match entry.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (entry, None),
    };
    Ok(Rule {
        target: parse_target(host)?,
        port,
        text: entry.to_string(),
    })
}

fn parse_port(port: &str) -> Result<u16, &'static str> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err("port must be a number from 1 to 65535"),
    }
}

fn parse_target(host: &str) -> Result<Target, &'static str> {
    if host == "*" {
        return Ok(Target::AnyName);
    }
    if host.contains('/') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_net(host).map(Target::Net);
    }
    if let Some(domain) = host.strip_prefix("*.") {
        let domain = normalize(domain);
        valid_name(&domain)?;
        return Ok(Target::Suffix(format!(".{domain}")));
    }
    let name = normalize(host);
    valid_name(&name)?;
    Ok(Target::Name(name))
}

fn parse_net(text: &str) -> Result<Ipv4Net, &'static str> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().map_err(|_| "bad prefix length")?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| "not an IPv4 address")?;
    Ipv4Net::new(addr, prefix).ok_or("prefix over 32, or address bits set beyond the prefix")
}

/// A DNS name: dot-separated labels of 1-63 letters, digits, `-` or `_`,
/// 253 bytes at most.
pub fn valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err("not a host name (labels of letters, digits, '-' or '_')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        Policy::parse(allow, deny).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn granted(p: &Policy, name: &str, addr: &str) -> Grants {
        let mut g = Grants::default();
        g.add(ip(addr), &p.resolve(name).unwrap());
        g
    }

    #[test]
    fn entries_parse_into_names_suffixes_and_networks() {
        let p = policy(
            &[
                "Example.COM.:443",
                "*.pypi.org",
                "*:80",
                "10.1.0.0/16:5432",
                "1.2.3.4",
            ],
            &[],
        );
        let t: Vec<_> = p.allow.iter().map(|r| (r.target.clone(), r.port)).collect();
        assert_eq!(
            t,
            [
                (Target::Name("example.com".into()), Some(443)),
                (Target::Suffix(".pypi.org".into()), None),
                (Target::AnyName, Some(80)),
                (Target::Net(net(10, 1, 0, 0, 16)), Some(5432)),
                (Target::Net(net(1, 2, 3, 4, 32)), None),
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_and_reason() {
        for (entry, why) in [
            ("", "empty entry"),
            ("host:0", "port must be a number from 1 to 65535"),
            ("host:65536", "port must be a number from 1 to 65535"),
            ("host:+80", "port must be a number from 1 to 65535"),
            ("host:", "port must be a number from 1 to 65535"),
            (
                "10.0.0.1/8",
                "prefix over 32, or address bits set beyond the prefix",
            ),
            (
                "10.0.0.0/33",
                "prefix over 32, or address bits set beyond the prefix",
            ),
            ("300.1.1.1", "not an IPv4 address"),
            ("1.2.3.4/x", "bad prefix length"),
            ("[::1]:80", "IPv6 is not supported: guests have IPv4 only"),
            ("::1", "IPv6 is not supported: guests have IPv4 only"),
            (
                "bad host",
                "not a host name (labels of letters, digits, '-' or '_')",
            ),
            (
                "a..b",
                "not a host name (labels of letters, digits, '-' or '_')",
            ),
            ("*.", "a host name has 1 to 253 characters"),
            (
                "a.*.b",
                "not a host name (labels of letters, digits, '-' or '_')",
            ),
        ] {
            let err = Policy::parse(&[entry], &[]).unwrap_err();
            assert_eq!(
                err,
                PolicyError::BadEntry {
                    list: "allow",
                    entry: entry.into(),
                    why
                },
                "{entry:?}"
            );
        }
        let long = "a".repeat(MAX_ENTRY + 1);
        assert!(Policy::parse(&[long.as_str()], &[]).is_err());
        let many = vec!["x.com"; MAX_RULES + 1];
        assert!(matches!(
            Policy::parse(&[], &many),
            Err(PolicyError::TooManyRules { list: "deny", .. })
        ));
    }

    #[test]
    fn names_resolve_only_when_allowed_and_not_denied_on_every_port() {
        let p = policy(
            &["*.example.com:443", "api.other.org"],
            &["evil.example.com"],
        );
        assert!(p.resolve("www.example.com").is_ok());
        assert!(p.resolve("a.b.EXAMPLE.com.").is_ok());
        assert_eq!(p.resolve("example.com"), Err(Refusal::NotAllowed));
        assert_eq!(p.resolve("notexample.com"), Err(Refusal::NotAllowed));
        assert_eq!(
            p.resolve("evil.example.com"),
            Err(Refusal::Denied("evil.example.com".into()))
        );
        assert!(p.resolve("api.other.org").is_ok());
        assert_eq!(p.resolve("other.org"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn connections_follow_grants_and_their_ports() {
        let p = policy(&["*.example.com:443"], &[]);
        let g = granted(&p, "www.example.com", "93.184.216.34");
        assert_eq!(p.connect(ip("93.184.216.34"), 443, &g), Ok(()));
        assert_eq!(
            p.connect(ip("93.184.216.34"), 80, &g),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            p.connect(ip("93.184.216.35"), 443, &g),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            p.connect(ip("93.184.216.35"), 443, &Grants::default()),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(
            &["0.0.0.0/0", "*"],
            &["10.0.0.0/8", "8.8.8.8:53", "db.corp:5432"],
        );
        assert_eq!(p.connect(ip("1.1.1.1"), 443, &Grants::default()), Ok(()));
        assert_eq!(
            p.connect(ip("10.2.3.4"), 443, &Grants::default()),
            Err(Refusal::Denied("10.0.0.0/8".into()))
        );
        assert_eq!(
            p.connect(ip("8.8.8.8"), 53, &Grants::default()),
            Err(Refusal::Denied("8.8.8.8:53".into()))
        );
        assert_eq!(p.connect(ip("8.8.8.8"), 443, &Grants::default()), Ok(()));
        // A name denied on one port resolves, but that port stays closed,
        // even under a CIDR that allows everything.
        let g = granted(&p, "db.corp", "192.168.1.5");
        assert!(matches!(
            p.connect(ip("192.168.1.5"), 5432, &g),
            Err(Refusal::Denied(_))
        ));
        assert_eq!(p.connect(ip("192.168.1.5"), 22, &g), Ok(()));
    }

    #[test]
    fn special_addresses_need_an_allow_cidr_inside_their_block() {
        let wide = policy(&["0.0.0.0/0", "*"], &[]);
        for addr in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(
                matches!(
                    wide.connect(ip(addr), 80, &Grants::default()),
                    Err(Refusal::Special(_))
                ),
                "{addr}"
            );
            assert!(!wide.may_answer(ip(addr)), "{addr}");
        }
        // A name cannot open them, even when DNS points it there.
        let g = granted(&wide, "rebind.example", "169.254.169.254");
        assert!(matches!(
            wide.connect(ip("169.254.169.254"), 80, &g),
            Err(Refusal::Special(_))
        ));
        let explicit = policy(&["127.0.0.1:8080", "169.254.169.254/32"], &[]);
        assert_eq!(
            explicit.connect(ip("127.0.0.1"), 8080, &Grants::default()),
            Ok(())
        );
        assert!(matches!(
            explicit.connect(ip("127.0.0.1"), 8081, &Grants::default()),
            Err(Refusal::Special(_))
        ));
        assert_eq!(
            explicit.connect(ip("169.254.169.254"), 80, &Grants::default()),
            Ok(())
        );
        assert!(explicit.may_answer(ip("127.0.0.1")));
        assert!(!explicit.may_answer(ip("127.0.0.2")));
        // Deny still wins inside a block.
        let both = policy(&["127.0.0.0/8"], &["127.0.0.1:22"]);
        assert!(matches!(
            both.connect(ip("127.0.0.1"), 22, &Grants::default()),
            Err(Refusal::Denied(_))
        ));
    }

    #[test]
    fn grants_are_bounded_and_merge_per_address() {
        let p = policy(&["a.test:80", "b.test:443"], &[]);
        let mut g = Grants::default();
        g.add(ip("192.0.2.7"), &p.resolve("a.test").unwrap());
        g.add(ip("192.0.2.7"), &p.resolve("b.test").unwrap());
        assert_eq!(p.connect(ip("192.0.2.7"), 80, &g), Ok(()));
        assert_eq!(p.connect(ip("192.0.2.7"), 443, &g), Ok(()));
        for i in 0..MAX_GRANTS as u32 + 10 {
            g.add(
                Ipv4Addr::from_bits(0x0b00_0000 + i),
                &p.resolve("a.test").unwrap(),
            );
        }
        assert_eq!(g.len(), MAX_GRANTS);
        assert_eq!(p.connect(ip("192.0.2.7"), 80, &g), Err(Refusal::NotAllowed));
    }

    #[test]
    fn networks_contain_and_cover() {
        let n = net(10, 0, 0, 0, 8);
        assert!(n.contains(ip("10.255.0.1")));
        assert!(!n.contains(ip("11.0.0.0")));
        assert!(net(0, 0, 0, 0, 0).contains(ip("255.255.255.255")));
        assert!(n.covers(&net(10, 1, 0, 0, 16)));
        assert!(!net(10, 1, 0, 0, 16).covers(&n));
    }
}

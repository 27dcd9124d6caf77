//! Compiled rate limits: what a `RateLimitPolicy` (or an Ingress's
//! `limit-*` annotations) asks for, attached to a rule as
//! [`crate::Filter::RateLimit`].
//!
//! The model only holds the *description*; the limiter state (token
//! buckets, Redis connections) lives in the proxy and is attached to
//! [`RateLimit::state`] before a table is published, so a reload that leaves
//! a policy unchanged keeps its buckets (see [`RateLimit::identity`]).

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// Where the counters live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Per replica, in memory (governor). N replicas admit N × the limit.
    Local,
    /// In memory, but each replica enforces `limit / ready replicas`, so the
    /// fleet sums to the limit when the load balancer spreads evenly.
    Cluster,
    /// Exact and global: one GCRA decision per request in Redis.
    Redis(RedisSettings),
}

/// Redis mode settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`; `None` uses the process-wide `--redis-url`.
    pub url: Option<String>,
    /// Longest a decision may wait for Redis.
    pub timeout: Duration,
    /// Answer when Redis is down or slower than `timeout`: `true` admits.
    pub fail_open: bool,
}

/// One part of the key that separates buckets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client address (see [`RateLimit::trusted_hops`]).
    ClientAddress,
    /// A request header's value (missing header: empty value).
    Header(HeaderName),
    /// The route (`kind namespace/name` and rule index).
    Route,
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A compiled rate limit.
pub struct RateLimit {
    /// `namespace/name` of the policy (or `ingress namespace/name/rps` for
    /// annotations): the metric label and the state identity's first part.
    pub policy: Arc<str>,
    /// Requests admitted per `period` on average.
    pub requests: u64,
    /// The period (`1s` or `1m`).
    pub period: Duration,
    /// Bucket capacity: requests admitted at once after an idle period.
    pub burst: u64,
    /// Parts of the key; empty means one bucket for everyone.
    pub key: Box<[KeyPart]>,
    /// Proxies in front of Sluice whose `X-Forwarded-For` entries are
    /// trusted: 0 uses the socket peer; N uses the N-th address from the
    /// right of `X-Forwarded-For` (the peer if the header has fewer).
    pub trusted_hops: u8,
    /// Client networks that are never limited.
    pub allow: Box<[Cidr]>,
    /// Where the counters live.
    pub mode: Mode,
    /// Add `RateLimit` (remaining quota) to allowed responses too.
    pub headers_on_allowed: bool,
    /// Status of a limited request (429).
    pub status: StatusCode,
    /// Most keys held in memory (local and cluster modes).
    pub max_keys: usize,
    /// `RateLimit-Policy` header value, precomputed.
    pub policy_header: HeaderValue,
    /// Runtime state the proxy attaches before publishing (never read by
    /// the model).
    pub state: OnceLock<Arc<dyn Any + Send + Sync>>,
}

// === impl Cidr ===

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid CIDR {s:?}: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("invalid CIDR {s:?}: bad prefix"))?
            }
            None => max,
        };
        Ok(Self { addr: addr.to_canonical(), prefix })
    }

    /// Whether `ip` is inside the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl RateLimit ===

impl RateLimit {
    /// A limit with defaults: key by client address, burst = one period's
    /// quota, 429, local mode, 100,000 keys.
    pub fn new(policy: impl Into<Arc<str>>, requests: u64, period: Duration) -> Self {
        let mut rl = Self {
            policy: policy.into(),
            requests,
            period,
            burst: requests,
            key: Box::new([KeyPart::ClientAddress]),
            trusted_hops: 0,
            allow: Box::new([]),
            mode: Mode::Local,
            headers_on_allowed: false,
            status: StatusCode::TOO_MANY_REQUESTS,
            max_keys: 100_000,
            policy_header: HeaderValue::from_static(""),
            state: OnceLock::new(),
        };
        rl.finish();
        rl
    }

    /// Recomputes derived values after fields were changed.
    pub fn finish(&mut self) {
        // draft-ietf-httpapi-ratelimit-headers: `"default";q=100;w=60`.
        let v = format!("\"default\";q={};w={}", self.requests, self.period.as_secs().max(1));
        self.policy_header = HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""));
    }

    /// Minimum spacing between requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        self.period / u32::try_from(self.requests.max(1)).unwrap_or(u32::MAX)
    }

    /// A fingerprint of everything that shapes the counters: equal
    /// identities may share state across table swaps.
    pub fn identity(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.policy.hash(&mut h);
        self.requests.hash(&mut h);
        self.period.hash(&mut h);
        self.burst.hash(&mut h);
        self.key.hash(&mut h);
        self.mode.hash(&mut h);
        self.max_keys.hash(&mut h);
        h.finish()
    }

    /// Whether `ip` is on the allow-list.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }

    /// The client address for keying and the allow-list: the peer, or the
    /// `trusted_hops`-th entry from the right of `X-Forwarded-For` (all of
    /// its header lines, in order).
    pub fn client_address<'a>(&self, peer: IpAddr, xff: impl DoubleEndedIterator<Item = &'a HeaderValue>) -> IpAddr {
        if self.trusted_hops == 0 {
            return peer;
        }
        xff.rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .nth(usize::from(self.trusted_hops) - 1)
            .and_then(|a| parse_forwarded_addr(a.trim()))
            .unwrap_or(peer)
    }
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]:port` or
/// `v4:port`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| a.parse().ok());
    }
    s.rsplit_once(':').and_then(|(a, _)| a.parse().ok())
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("policy", &self.policy)
            .field("requests", &self.requests)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn cidr_contains_v4_v6_and_mapped() {
        let c = Cidr::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains(ip("10.1.200.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(ip("1.2.3.4")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let host = Cidr::parse("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("banana/8").is_err());
    }

    #[test]
    fn trusted_hops_pick_from_the_right_of_xff() {
        let mut rl = RateLimit::new("p", 1, Duration::from_secs(1));
        let peer = ip("192.0.2.1");
        let xff = [HeaderValue::from_static("203.0.113.7, 198.51.100.2:4711, [2001:db8::1]:80")];
        let pick = |rl: &RateLimit| rl.client_address(peer, xff.iter());
        assert_eq!(pick(&rl), peer, "0 hops: the peer");
        rl.trusted_hops = 1;
        assert_eq!(pick(&rl), ip("2001:db8::1"));
        rl.trusted_hops = 2;
        assert_eq!(pick(&rl), ip("198.51.100.2"));
        rl.trusted_hops = 3;
        assert_eq!(pick(&rl), ip("203.0.113.7"));
        rl.trusted_hops = 4;
        assert_eq!(pick(&rl), peer, "too few entries: the peer");
        assert_eq!(rl.client_address(peer, std::iter::empty()), peer);
        // Several header lines read as one list.
        let lines = [HeaderValue::from_static("203.0.113.7"), HeaderValue::from_static("198.51.100.2")];
        rl.trusted_hops = 2;
        assert_eq!(rl.client_address(peer, lines.iter()), ip("203.0.113.7"));
    }

    #[test]
    fn identity_ignores_state_but_not_the_quota() {
        let a = RateLimit::new("ns/p", 10, Duration::from_secs(1));
        let b = RateLimit::new("ns/p", 10, Duration::from_secs(1));
        let c = RateLimit::new("ns/p", 11, Duration::from_secs(1));
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), c.identity());
        assert_eq!(a.policy_header.to_str().ok(), Some("\"default\";q=10;w=1"));
    }
}

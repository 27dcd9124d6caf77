//! Rate limiting on the request path, and the limiter state that outlives
//! route tables.
//!
//! The model's [`RateLimit`] describes a limit; [`RateLimits::bind`] (control
//! half, before a table is published) attaches state to it: an existing
//! limiter when a limit with the same [`RateLimit::identity`] is already
//! live (so a reload keeps the buckets), a new one otherwise.
//!
//! Modes:
//! - `Local`: governor's GCRA over a sharded map (`dashmap`) of `u64` key
//!   hashes. A check takes one shard's lock for a few atomic operations;
//!   shards are many (4 × cores) and never held across an await, so a
//!   request only waits for another request hashing to the same shard at
//!   the same instant, or for the sweeper's retain pass over that shard.
//!   Idle keys (bucket full again) are evicted every [`SWEEP`] off the
//!   request path. Past `max_keys`, keys not yet held share one overflow
//!   bucket until the sweep makes room: memory stays bounded and unknown
//!   clients are limited together rather than let through.
//! - `Cluster`: `Local` with the quota and burst divided by the ready
//!   replica count ([`RateLimits::set_replicas`]); a new count swaps in
//!   fresh buckets with the new split.
//! - `Redis`: one `EVALSHA` of a GCRA script per decision through a
//!   `ConnectionManager`, awaited after the routing guard is dropped, bounded
//!   by the policy's timeout; on error or timeout the policy's failure mode
//!   answers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::Response;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use sluice_model::ratelimit::{KeyPart, Mode, RateLimit};
use sluice_model::{Filter, Rule};

use crate::body::ResponseBody;

/// How often idle keys are evicted.
pub const SWEEP: Duration = Duration::from_secs(10);

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// GCRA in one script: KEYS[1] bucket, ARGV[1] emission interval (µs),
/// ARGV[2] burst. Uses Redis's clock, so replicas' clocks do not matter.
/// Returns {allowed, remaining, retry_after_us, reset_us}.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - tau > now then
  return {0, 0, new_tat - tau - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tau - new_tat) / interval), 0, new_tat - now}
";

/// Limiter state for every live limit, and the per-route counters.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

struct Inner {
    /// Live limiters by identity (control half only).
    live: Mutex<HashMap<u64, Weak<Limiter>>>,
    /// Redis connections by URL (control half only).
    redis: Mutex<HashMap<String, redis::aio::ConnectionManager>>,
    redis_url: Option<String>,
    replicas: AtomicU32,
    requests: IntCounterVec,
    script: Arc<redis::Script>,
    /// First part of every Redis key.
    key_prefix: Box<str>,
}

/// The state attached to one compiled [`RateLimit`].
struct Bound {
    limiter: Arc<Limiter>,
    /// Counters by route label (every route the limit is attached to).
    counters: HashMap<Arc<str>, Counters>,
}

#[derive(Clone)]
struct Counters {
    allowed: IntCounter,
    limited: IntCounter,
    bypassed: IntCounter,
    failed_open: IntCounter,
    failed_closed: IntCounter,
}

enum Limiter {
    Memory(MemoryLimiter),
    Redis(RedisLimiter),
}

struct MemoryLimiter {
    requests: u64,
    period: Duration,
    burst: u64,
    max_keys: usize,
    /// Replica count the current buckets were split for (1 in local mode).
    split: AtomicU32,
    cluster: bool,
    current: ArcSwap<Keyed>,
}

type Governor = RateLimiter<u64, CappedStore, DefaultClock, StateInformationMiddleware>;

struct Keyed {
    limiter: Governor,
    burst: u32,
    interval: Duration,
}

/// governor's dashmap store with a key cap: past `max_keys`, keys not held
/// yet share `overflow`.
struct CappedStore {
    map: DashMapStateStore<u64>,
    count: AtomicUsize,
    max_keys: usize,
    overflow: InMemoryState,
}

struct RedisLimiter {
    conn: Option<redis::aio::ConnectionManager>,
    prefix: String,
    interval_us: u64,
    burst: u64,
    timeout: Duration,
    fail_open: bool,
    script: Arc<redis::Script>,
}

/// What the synchronous check leaves for later in the request.
#[derive(Default)]
pub(crate) struct Checked {
    /// `RateLimit-Policy` / `RateLimit` for the response, when configured.
    headers: Option<(HeaderValue, HeaderValue)>,
    /// Redis decisions to await once the routing guard is dropped.
    pending: Vec<Pending>,
}

struct Pending {
    limiter: Arc<Limiter>,
    key: u64,
    counters: Option<Counters>,
    policy_header: HeaderValue,
    status: http::StatusCode,
    headers_on_allowed: bool,
}

/// A decision.
enum Verdict {
    Allowed { remaining: u64, reset: Duration },
    Limited { retry_after: Duration },
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

// === impl RateLimits ===

impl RateLimits {
    /// Registers `sluice_ratelimit_requests_total` in `registry`.
    /// `redis_url` is the default for Redis-mode policies without a URL;
    /// `replicas` the initial split for cluster mode. Redis keys start with
    /// `sluice:`; see [`RateLimits::with_key_prefix`].
    pub fn new(registry: &Registry, redis_url: Option<String>, replicas: u32) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_ratelimit_requests_total",
                "Rate limit decisions by route, policy and decision (allowed, limited, bypassed by the \
                 allow-list, failed_open / failed_closed when Redis failed).",
            ),
            &["route", "policy", "decision"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                live: Mutex::default(),
                redis: Mutex::default(),
                redis_url,
                replicas: AtomicU32::new(replicas.max(1)),
                requests,
                script: Arc::new(redis::Script::new(GCRA_LUA)),
                key_prefix: "sluice".into(),
            }),
        })
    }

    /// The same, with Redis keys under `PREFIX:rl:` instead of `sluice:rl:`
    /// (installations sharing one Redis). Call before the limits are used.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: &str) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.key_prefix = prefix.into(),
            None => tracing::error!("Redis key prefix set after the rate limits were shared; keeping sluice:"),
        }
        self
    }

    /// Starts the idle-key sweeper (call inside a Tokio runtime). It stops
    /// when every clone of `self` is dropped.
    pub fn start(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let limiters: Vec<Arc<Limiter>> = inner.live_limiters();
                drop(inner);
                // retain takes each shard's write lock in turn: run it off
                // the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || {
                    for l in limiters {
                        if let Limiter::Memory(m) = &*l {
                            m.sweep();
                        }
                    }
                })
                .await;
            }
        });
    }

    /// Attaches state to each limit (before the table holding them is
    /// published). `routes` are the labels for the per-route counters.
    pub fn bind<'a>(&self, limits: impl IntoIterator<Item = (&'a Arc<RateLimit>, &'a [Arc<str>])>) {
        let mut live = self.inner.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|_, w| w.strong_count() > 0);
        for (rl, routes) in limits {
            let id = rl.identity();
            let limiter = match live.get(&id).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(self.limiter_for(rl));
                    live.insert(id, Arc::downgrade(&l));
                    l
                }
            };
            let counters = routes.iter().map(|r| (r.clone(), self.counters(r, &rl.policy))).collect();
            let bound = Bound { limiter, counters };
            let _ = rl.state.set(Arc::new(bound));
        }
    }

    /// Sets the ready replica count for cluster mode; limiters re-split
    /// (with fresh buckets) when it changed.
    pub fn set_replicas(&self, n: u32) {
        let n = n.max(1);
        if self.inner.replicas.swap(n, Ordering::AcqRel) == n {
            return;
        }
        tracing::info!(replicas = n, "Cluster rate limits re-split");
        for l in self.inner.live_limiters() {
            if let Limiter::Memory(m) = &*l
                && m.cluster
            {
                m.resplit(n);
            }
        }
    }

    /// The replica count cluster mode divides by.
    pub fn replicas(&self) -> u32 {
        self.inner.replicas.load(Ordering::Acquire)
    }

    fn counters(&self, route: &str, policy: &str) -> Counters {
        let c = |d: &str| self.inner.requests.with_label_values(&[route, policy, d]);
        Counters {
            allowed: c("allowed"),
            limited: c("limited"),
            bypassed: c("bypassed"),
            failed_open: c("failed_open"),
            failed_closed: c("failed_closed"),
        }
    }

    fn limiter_for(&self, rl: &RateLimit) -> Limiter {
        match &rl.mode {
            Mode::Local | Mode::Cluster => {
                let cluster = rl.mode == Mode::Cluster;
                let split = if cluster { self.replicas() } else { 1 };
                Limiter::Memory(MemoryLimiter::new(rl, cluster, split))
            }
            Mode::Redis(s) => {
                let url = s.url.clone().or_else(|| self.inner.redis_url.clone());
                let conn = url.and_then(|u| self.redis_conn(&u, s.timeout));
                if conn.is_none() {
                    tracing::error!(policy = %rl.policy, "Redis rate limit without a usable URL (--redis-url or spec.redis.url); answering by its failure mode");
                }
                Limiter::Redis(RedisLimiter {
                    conn,
                    prefix: format!("{}:rl:{}:", self.inner.key_prefix, rl.policy),
                    interval_us: u64::try_from(rl.emission_interval().as_micros()).unwrap_or(u64::MAX).max(1),
                    burst: rl.burst,
                    timeout: s.timeout,
                    fail_open: s.fail_open,
                    script: self.inner.script.clone(),
                })
            }
        }
    }

    fn redis_conn(&self, url: &str, timeout: Duration) -> Option<redis::aio::ConnectionManager> {
        let mut conns = self.inner.redis.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = conns.get(url) {
            return Some(c.clone());
        }
        let client = redis::Client::open(url).map_err(|e| tracing::error!(error = %e, "Invalid Redis URL")).ok()?;
        // Reconnects forever in the background with a short backoff; each
        // attempt and response is bounded by the decision timeout.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(usize::MAX);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| tracing::error!(error = %e, "Cannot create the Redis connection manager"))
            .ok()?;
        conns.insert(url.to_string(), conn.clone());
        Some(conn)
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("replicas", &self.replicas()).finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    fn live_limiters(&self) -> Vec<Arc<Limiter>> {
        let live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.values().filter_map(Weak::upgrade).collect()
    }
}

// === impl MemoryLimiter ===

impl MemoryLimiter {
    fn new(rl: &RateLimit, cluster: bool, split: u32) -> Self {
        let m = Self {
            requests: rl.requests,
            period: rl.period,
            burst: rl.burst,
            max_keys: rl.max_keys,
            split: AtomicU32::new(split),
            cluster,
            current: ArcSwap::from_pointee(Keyed::new(rl.requests, rl.period, rl.burst, rl.max_keys, split)),
        };
        if cluster {
            tracing::info!(policy = %rl.policy, replicas = split, "Cluster rate limit split");
        }
        m
    }

    fn resplit(&self, n: u32) {
        if self.split.swap(n, Ordering::AcqRel) != n {
            self.current.store(Arc::new(Keyed::new(self.requests, self.period, self.burst, self.max_keys, n)));
        }
    }

    fn sweep(&self) {
        let k = self.current.load();
        k.limiter.retain_recent();
        k.limiter.shrink_to_fit();
    }

    fn check(&self, key: u64) -> Verdict {
        let k = self.current.load();
        match k.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                let used = u64::from(k.burst).saturating_sub(remaining);
                Verdict::Allowed {
                    remaining,
                    reset: k.interval.saturating_mul(u32::try_from(used).unwrap_or(u32::MAX)),
                }
            }
            Err(not_until) => Verdict::Limited { retry_after: not_until.wait_time_from(k.limiter.clock().now()) },
        }
    }
}

// === impl Keyed ===

impl Keyed {
    fn new(requests: u64, period: Duration, burst: u64, max_keys: usize, split: u32) -> Self {
        let split = u64::from(split.max(1));
        // Per replica: `requests / split` per period, so one request every
        // `period * split / requests`; burst divided and rounded, at least 1.
        let nanos = period.as_nanos().saturating_mul(u128::from(split)) / u128::from(requests.max(1));
        let interval = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1));
        let burst = ((burst + split / 2) / split).clamp(1, u64::from(u32::MAX));
        let burst32 = u32::try_from(burst).unwrap_or(u32::MAX);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst32).unwrap_or(NonZeroU32::MIN));
        let store = CappedStore {
            map: DashMapStateStore::default(),
            count: AtomicUsize::new(0),
            max_keys,
            overflow: InMemoryState::default(),
        };
        let limiter: Governor = RateLimiter::<u64, CappedStore, DefaultClock, StateInformationMiddleware>::new(
            quota,
            store,
            DefaultClock::default(),
        );
        Self { limiter, burst: burst32, interval }
    }
}

// === impl CappedStore ===

impl StateStore for CappedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(v) = self.map.get(key) {
            return v.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.count.load(Ordering::Relaxed) >= self.max_keys {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut inserted = false;
        let entry = self.map.entry(*key).or_insert_with(|| {
            inserted = true;
            InMemoryState::default()
        });
        if inserted {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        entry.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
        self.count.store(self.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// === impl RedisLimiter ===

impl RedisLimiter {
    async fn check(&self, key: u64) -> Result<Verdict, ()> {
        let Some(conn) = &self.conn else { return Err(()) };
        let mut conn = conn.clone();
        let bucket = format!("{}{key:016x}", self.prefix);
        let mut inv = self.script.key(bucket);
        inv.arg(self.interval_us).arg(self.burst);
        let fut = inv.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok((1, remaining, _, reset))) => Ok(Verdict::Allowed {
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset: Duration::from_micros(u64::try_from(reset).unwrap_or(0)),
            }),
            Ok(Ok((_, _, retry, _))) => {
                Ok(Verdict::Limited { retry_after: Duration::from_micros(u64::try_from(retry).unwrap_or(0)) })
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis rate limit decision failed");
                Err(())
            }
            Err(_) => {
                tracing::debug!(timeout_ms = self.timeout.as_millis() as u64, "Redis rate limit decision timed out");
                Err(())
            }
        }
    }
}

// === request path ===

/// Checks the rule's rate limits (synchronously; Redis decisions are left
/// in `out` for [`settle`]). Returns the answer when a limit refuses.
pub(crate) fn check(
    rule: &Rule,
    peer: IpAddr,
    headers: &HeaderMap,
    out: &mut Checked,
) -> Option<Response<ResponseBody>> {
    for f in rule.filters.iter() {
        let Filter::RateLimit(rl) = f else { continue };
        let Some(bound) = rl.state.get().and_then(|s| s.downcast_ref::<Bound>()) else { continue };
        let counters = bound.counters.get(rule.route.label());
        let client = rl.client_address(peer, headers.get_all("x-forwarded-for").iter());
        if rl.allowed(client) {
            bump(counters, |c| &c.bypassed);
            continue;
        }
        let key = key_of(rl, client, headers, rule);
        match &*bound.limiter {
            Limiter::Memory(m) => match m.check(key) {
                Verdict::Allowed { remaining, reset } => {
                    bump(counters, |c| &c.allowed);
                    if rl.headers_on_allowed {
                        out.headers = Some((rl.policy_header.clone(), ratelimit_value(remaining, reset)));
                    }
                }
                Verdict::Limited { retry_after } => {
                    bump(counters, |c| &c.limited);
                    return Some(limited(rl.status, &rl.policy_header, retry_after));
                }
            },
            Limiter::Redis(_) => out.pending.push(Pending {
                limiter: bound.limiter.clone(),
                key,
                counters: counters.cloned(),
                policy_header: rl.policy_header.clone(),
                status: rl.status,
                headers_on_allowed: rl.headers_on_allowed,
            }),
        }
    }
    None
}

/// Whether Redis decisions are pending.
pub(crate) fn has_pending(c: &Checked) -> bool {
    !c.pending.is_empty()
}

/// Awaits the pending Redis decisions (no routing guard is held).
pub(crate) async fn settle(c: &mut Checked) -> Option<Response<ResponseBody>> {
    for p in std::mem::take(&mut c.pending) {
        let Limiter::Redis(r) = &*p.limiter else { continue };
        match r.check(p.key).await {
            Ok(Verdict::Allowed { remaining, reset }) => {
                bump(p.counters.as_ref(), |c| &c.allowed);
                if p.headers_on_allowed {
                    c.headers = Some((p.policy_header.clone(), ratelimit_value(remaining, reset)));
                }
            }
            Ok(Verdict::Limited { retry_after }) => {
                bump(p.counters.as_ref(), |c| &c.limited);
                return Some(limited(p.status, &p.policy_header, retry_after));
            }
            Err(()) if r.fail_open => bump(p.counters.as_ref(), |c| &c.failed_open),
            Err(()) => {
                bump(p.counters.as_ref(), |c| &c.failed_closed);
                return Some(limited(p.status, &p.policy_header, Duration::from_secs(1)));
            }
        }
    }
    None
}

/// Adds the remaining-quota headers to an allowed response.
pub(crate) fn decorate(c: &Checked, headers: &mut HeaderMap) {
    if let Some((policy, value)) = &c.headers {
        headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
        headers.insert(RATELIMIT.clone(), value.clone());
    }
}

fn key_of(rl: &RateLimit, client: IpAddr, headers: &HeaderMap, rule: &Rule) -> u64 {
    // Fixed keys: every replica (and Redis) sees the same key for a client.
    let mut h = std::hash::DefaultHasher::new();
    for part in rl.key.iter() {
        match part {
            KeyPart::ClientAddress => client.to_canonical().hash(&mut h),
            KeyPart::Header(name) => headers.get(name).map(HeaderValue::as_bytes).hash(&mut h),
            KeyPart::Route => {
                rule.route.kind.hash(&mut h);
                rule.route.label().hash(&mut h);
                rule.index.hash(&mut h);
            }
        }
    }
    h.finish()
}

fn bump(counters: Option<&Counters>, pick: impl Fn(&Counters) -> &IntCounter) {
    if let Some(c) = counters {
        pick(c).inc();
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"default";r=REMAINING;t=SECONDS` (draft-ietf-httpapi-ratelimit-headers).
fn ratelimit_value(remaining: u64, reset: Duration) -> HeaderValue {
    let v = format!("\"default\";r={remaining};t={}", ceil_secs(reset));
    HeaderValue::from_maybe_shared(Bytes::from(v)).unwrap_or(HeaderValue::from_static("\"default\";r=0"))
}

fn limited(status: http::StatusCode, policy: &HeaderValue, retry_after: Duration) -> Response<ResponseBody> {
    let secs = ceil_secs(retry_after).max(1);
    let mut resp = Response::new(ResponseBody::full(Bytes::from_static(b"rate limited\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(secs));
    h.insert(RATELIMIT_POLICY.clone(), policy.clone());
    h.insert(RATELIMIT.clone(), ratelimit_value(0, Duration::from_secs(secs)));
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests;

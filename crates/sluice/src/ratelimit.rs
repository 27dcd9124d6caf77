//! Rate limiting wiring for `sluice run`: the flags, and the replica count
//! cluster-mode limits divide their quota by.

use sluice_controller::Objects;
use sluice_controller::ratelimit::AttachedLimit;
use sluice_proxy::RateLimits;

/// Rate limiting flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RateLimitArgs {
    /// `NAMESPACE/NAME` of the Service selecting the Sluice pods: its ready
    /// EndpointSlice endpoints are the replica count `Cluster` rate limits
    /// divide their quota by (re-split whenever it changes).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_service)]
    pub self_service: Option<(String, String)>,
    /// Replica count for `Cluster` rate limits when `--self-service` is not
    /// set or lists no ready endpoint.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// Redis for `Redis` rate limits that name no `spec.redis.url`
    /// (`redis://HOST:PORT[/DB]`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (`PREFIX:rl:NAMESPACE/POLICY:KEY`): give
    /// each installation sharing one Redis its own, or their policies of the
    /// same name share buckets.
    #[arg(long, value_name = "PREFIX", default_value = "sluice", value_parser = parse_prefix)]
    pub redis_key_prefix: String,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(format!("expected 1-64 characters of [A-Za-z0-9-_.:], got {s:?}"));
    }
    Ok(s.to_string())
}

fn parse_service(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok((ns.into(), n.into())),
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

// === impl RateLimitArgs ===

impl RateLimitArgs {
    /// The replica count: ready endpoints of `--self-service`, else
    /// `--replicas`.
    pub fn replicas(&self, objects: &Objects) -> u32 {
        self.self_service
            .as_ref()
            .map(|(ns, n)| sluice_controller::ratelimit::ready_replicas(objects, ns, n))
            .filter(|n| *n > 0)
            .map_or(self.replicas, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// Attaches limiter state to the limits of a translation (before its table
/// is published).
pub fn bind(limits: &RateLimits, attached: &[AttachedLimit]) {
    limits.bind(attached.iter().map(|a| (&a.limit, a.routes.as_slice())));
}

//! Sluice's compiled routing model: an immutable [`RouteTable`] and its
//! [`Bind::lookup`], plus the pieces a request touches after routing
//! (filters, weighted backend groups, endpoint sets).
//!
//! This crate is pure: no IO, no tokio, no Kubernetes types. The controller
//! translates Kubernetes objects into [`TableInput`] and calls
//! [`RouteTable::compile`]; the proxy reads the result through one atomic
//! pointer. Start reading at [`table`].

pub mod backend;
pub mod duration;
pub mod filter;
pub mod host;
pub mod path;
pub mod ratelimit;
pub mod table;
pub mod tls;

pub use backend::{BackendGroup, BackendId, BackendTarget, EndpointSet, Endpoints, ServiceRef, WeightedBackend};
pub use filter::{Filter, HeaderModifier, PathModifier, Redirect, Rewrite};
pub use host::HostPattern;
pub use path::PathMatch;
pub use ratelimit::RateLimit;
pub use table::{
    Bind, BindKey, Conditions, HeaderMatch, ListenerInput, MatchInput, NoRoute, Precedence, Protocol, QueryMatch,
    RequestParts, RouteInput, RouteMatch, RouteRef, RouteTable, Rule, RuleInput, Snapshot, TableInput, TableUpdate,
    ValueMatch,
};
pub use tls::{CertInput, Certificate, SniCerts, UpstreamTls, UpstreamTlsInput};

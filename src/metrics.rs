//! Prometheus metrics: requests by verdict and upstream, holds, votes, decisions,
//! upstream latency, audit append latency, connections and bytes of bodies in memory.
//! Rendered by the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verdict: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub mode: String,
    pub rules_version: String,
}

/// All of airlock's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Requests by how they ended (`passed`, `forwarded`, or airlock's error code).
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// 1 for the config in force: its mode and its rules' version.
    pub config: Family<ConfigLabels, Gauge>,
    pub held_now: Gauge,
    pub hold_wait: Histogram,
    pub votes: Family<OutcomeLabels, Counter>,
    pub decisions: Family<OutcomeLabels, Counter>,
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    pub audit_append: Histogram,
    /// Open connections per listener (`proxy`, `admin`).
    pub connections: Family<ListenerLabels, Gauge>,
    /// Connections airlock closed, by listener and reason (`silent`, `idle`).
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Failed `accept` calls per listener (each one followed by a back-off pause).
    pub accept_errors: Family<ListenerLabels, Counter>,
    /// Bytes of request bodies kept in memory (`limits.max_held_bytes`).
    pub held_bytes: Gauge,
    /// Notification deliveries by channel and result (`delivered`, `retried`, `failed`).
    pub notifications: Family<NotificationLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub channel: String,
    pub result: String,
}

/// One listener's metric handles (see [`Metrics::for_listener`]).
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub open: Gauge,
    pub silent_closed: Counter,
    pub idle_closed: Counter,
    pub accept_errors: Counter,
}

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("airlock");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by verdict and upstream",
            requests.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "outcomes",
            "Requests by final outcome (passed, forwarded, observed, or airlock's error code)",
            outcomes.clone(),
        );
        let config = Family::<ConfigLabels, Gauge>::default();
        registry.register(
            "config",
            "The configuration in force: mode and rules version (value 1)",
            config.clone(),
        );
        let held_now = Gauge::default();
        registry.register(
            "held",
            "Requests held for approval right now",
            held_now.clone(),
        );
        let hold_wait = Histogram::new(exponential_buckets(0.5, 2.0, 14));
        registry.register(
            "hold_wait_seconds",
            "Time a held request waited for its decision",
            hold_wait.clone(),
        );
        let votes = Family::<OutcomeLabels, Counter>::default();
        registry.register("votes", "Votes cast, by decision", votes.clone());
        let decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "decisions",
            "Approvals decided, by outcome",
            decisions.clone(),
        );
        let upstream_latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to upstream response headers",
            upstream_latency.clone(),
        );
        let audit_append = latency_buckets();
        registry.register(
            "audit_append_seconds",
            "Audit append latency (durable)",
            audit_append.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open connections, by listener",
            connections.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections airlock closed: silent (no first byte within limits.header_timeout) or idle (limits.idle_timeout)",
            connections_closed.clone(),
        );
        let accept_errors = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accept calls (out of file descriptors), by listener",
            accept_errors.clone(),
        );
        let held_bytes = Gauge::default();
        registry.register(
            "held_bytes",
            "Bytes of request bodies kept in memory for inspection or holds",
            held_bytes.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification deliveries to chat and webhook channels, by channel and result (delivered, retried, failed)",
            notifications.clone(),
        );
        Metrics {
            notifications,
            registry,
            requests,
            outcomes,
            config,
            held_now,
            hold_wait,
            votes,
            decisions,
            upstream_latency,
            audit_append,
            connections,
            connections_closed,
            accept_errors,
            held_bytes,
        }
    }

    /// Handles for one listener's connection metrics.
    pub fn for_listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        let closed = |reason: &str| {
            self.connections_closed
                .get_or_create(&ClosedLabels {
                    listener: listener.to_string(),
                    reason: reason.to_string(),
                })
                .clone()
        };
        ListenerMetrics {
            open: self.connections.get_or_create(&labels).clone(),
            silent_closed: closed("silent"),
            idle_closed: closed("idle"),
            accept_errors: self.accept_errors.get_or_create(&labels).clone(),
        }
    }

    /// Handles for one upstream's request counters and latency, resolved once per
    /// configuration so that a request only touches atomics.
    pub fn for_upstream(&self, upstream: &str) -> UpstreamMetrics {
        let counter = |verdict: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    verdict: verdict.to_string(),
                    upstream: upstream.to_string(),
                })
                .clone()
        };
        UpstreamMetrics {
            allow: counter("allow"),
            approve: counter("approve"),
            deny: counter("deny"),
            unauthenticated: counter("unauthenticated"),
            latency: self
                .upstream_latency
                .get_or_create(&UpstreamLabels {
                    upstream: upstream.to_string(),
                })
                .clone(),
        }
    }

    /// Marks the config in force (replacing the previous one).
    pub fn set_config(&self, mode: &str, rules_version: &str) {
        self.config.clear();
        self.config
            .get_or_create(&ConfigLabels {
                mode: mode.to_string(),
                rules_version: rules_version.to_string(),
            })
            .set(1);
    }

    /// Counts a request's final outcome.
    pub fn outcome(&self, outcome: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn vote(&self, decision: &str) {
        self.votes
            .get_or_create(&OutcomeLabels {
                outcome: decision.to_string(),
            })
            .inc();
    }

    pub fn notification(&self, channel: &str, result: &str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                channel: channel.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn decision(&self, outcome: &str) {
        self.decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One upstream's metric handles (see [`Metrics::for_upstream`]).
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    pub allow: Counter,
    pub approve: Counter,
    pub deny: Counter,
    pub unauthenticated: Counter,
    pub latency: Histogram,
}

impl UpstreamMetrics {
    /// The request counter for a verdict.
    pub fn verdict(&self, v: crate::rules::Verdict) -> &Counter {
        match v {
            crate::rules::Verdict::Allow => &self.allow,
            crate::rules::Verdict::Approve => &self.approve,
            crate::rules::Verdict::Deny => &self.deny,
        }
    }
}

//! Prometheus metrics (docs/protocol.md, "Metrics"). Names are constants here; labels carry only
//! route names, decisions, reasons and backends, never paths, subjects or ids. Each gateway
//! instance has its own registry (so two gateways in one process never mix counts); `/metrics`
//! serves it together with the process-wide default registry.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decision::Decision;

/// `countersign_requests_total{route, decision}`.
pub const REQUESTS: &str = "countersign_requests_total";
/// `countersign_rejections_total{route, reason}`.
pub const REJECTIONS: &str = "countersign_rejections_total";
/// `countersign_proof_verify_seconds`.
pub const PROOF_VERIFY: &str = "countersign_proof_verify_seconds";
/// `countersign_upstream_seconds{route}`.
pub const UPSTREAM: &str = "countersign_upstream_seconds";
/// `countersign_upstream_responses_total{route, class}`.
pub const UPSTREAM_RESPONSES: &str = "countersign_upstream_responses_total";
/// `countersign_config_reloads_total{result}`.
pub const CONFIG_RELOADS: &str = "countersign_config_reloads_total";
/// `countersign_requests_in_flight`.
pub const IN_FLIGHT: &str = "countersign_requests_in_flight";
/// `countersign_nonces_outstanding`.
pub const NONCES_OUTSTANDING: &str = "countersign_nonces_outstanding";
/// `countersign_replays_blocked_total{route}`.
pub const REPLAYS_BLOCKED: &str = "countersign_replays_blocked_total";
/// `countersign_audit_write_failures_total`.
pub const AUDIT_FAILURES: &str = "countersign_audit_write_failures_total";
/// `countersign_store_errors_total{backend}`.
pub const STORE_ERRORS: &str = "countersign_store_errors_total";
/// `countersign_device_enrolments_total{source}`: devices enrolled through the gateway.
pub const DEVICE_ENROLMENTS: &str = "countersign_device_enrolments_total";
/// `countersign_approvals_total{route, outcome}`.
pub const APPROVALS: &str = "countersign_approvals_total";
/// `countersign_approvals_pending`.
pub const APPROVALS_PENDING: &str = "countersign_approvals_pending";
/// `countersign_approval_wait_seconds`: from request to approval.
pub const APPROVAL_WAIT: &str = "countersign_approval_wait_seconds";
/// `countersign_approval_webhook_failures_total`: webhook deliveries that failed (each attempt).
pub const APPROVAL_WEBHOOK_FAILURES: &str = "countersign_approval_webhook_failures_total";
/// The `outcome` values of `countersign_approvals_total`.
pub const APPROVAL_OUTCOMES: [&str; 5] = ["requested", "approved", "denied", "expired", "executed"];
/// `countersign_connections_open`: client connections open now.
pub const CONNECTIONS_OPEN: &str = "countersign_connections_open";
/// `countersign_connections_dropped_total{reason}`: client connections the gateway closed
/// before a request was served.
pub const CONNECTIONS_DROPPED: &str = "countersign_connections_dropped_total";
/// `countersign_build_info{version}`.
pub const BUILD_INFO: &str = "countersign_build_info";
/// `countersign_config_routes{risk}`.
pub const CONFIG_ROUTES: &str = "countersign_config_routes";

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and decision.
    pub requests: IntCounterVec,
    /// Refusals by route and reason.
    pub rejections: IntCounterVec,
    /// Proof verification latency.
    pub proof_verify: Histogram,
    /// Upstream latency by route.
    pub upstream: HistogramVec,
    /// Upstream answers by route and status class (`1xx`…`5xx`, `error`).
    pub upstream_responses: IntCounterVec,
    /// Config reloads by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// Requests being handled now (a graceful stop exits when it reaches zero).
    pub in_flight: IntGauge,
    /// Outstanding nonces.
    pub nonces_outstanding: IntGauge,
    /// Replays blocked by route.
    pub replays_blocked: IntCounterVec,
    /// Audit write failures.
    pub audit_failures: IntCounter,
    /// Store errors by backend.
    pub store_errors: IntCounterVec,
    /// Configured routes by risk.
    pub config_routes: IntGaugeVec,
    /// Devices enrolled through the gateway, by source (`invite`, `device`).
    pub device_enrolments: IntCounterVec,
    /// Approvals by route and outcome ([`APPROVAL_OUTCOMES`]).
    pub approvals: IntCounterVec,
    /// Approvals pending now (in the store, shared by replicas).
    pub approvals_pending: IntGauge,
    /// Seconds from a request to its approval.
    pub approval_wait: Histogram,
    /// Failed webhook delivery attempts.
    pub approval_webhook_failures: IntCounter,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections closed before a request was served, by reason.
    pub connections_dropped: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(REQUESTS, "Requests by route and decision."),
            &["route", "decision"],
        )
        .expect("static metric definition is valid");
        let rejections = IntCounterVec::new(
            Opts::new(
                REJECTIONS,
                "Refused high-impact requests by route and reason.",
            ),
            &["route", "reason"],
        )
        .expect("static metric definition is valid");
        let proof_verify = Histogram::with_opts(
            HistogramOpts::new(PROOF_VERIFY, "Time to verify a DPoP proof.").buckets(vec![
                0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
            ]),
        )
        .expect("static metric definition is valid");
        let upstream = HistogramVec::new(
            HistogramOpts::new(UPSTREAM, "Upstream response time by route."),
            &["route"],
        )
        .expect("static metric definition is valid");
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                UPSTREAM_RESPONSES,
                "Upstream answers by route and status class; error when none arrived.",
            ),
            &["route", "class"],
        )
        .expect("static metric definition is valid");
        let config_reloads = IntCounterVec::new(
            Opts::new(CONFIG_RELOADS, "Config reloads (SIGHUP) by result."),
            &["result"],
        )
        .expect("static metric definition is valid");
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let in_flight = IntGauge::new(IN_FLIGHT, "Requests being handled now.")
            .expect("static metric definition is valid");
        let nonces_outstanding = IntGauge::new(
            NONCES_OUTSTANDING,
            "Nonces issued and neither consumed nor expired.",
        )
        .expect("static metric definition is valid");
        let replays_blocked = IntCounterVec::new(
            Opts::new(
                REPLAYS_BLOCKED,
                "Replayed nonces or proofs refused, by route.",
            ),
            &["route"],
        )
        .expect("static metric definition is valid");
        let audit_failures =
            IntCounter::new(AUDIT_FAILURES, "Audit records that could not be written.")
                .expect("static metric definition is valid");
        let store_errors = IntCounterVec::new(
            Opts::new(
                STORE_ERRORS,
                "Replay store operations that failed, by backend.",
            ),
            &["backend"],
        )
        .expect("static metric definition is valid");
        let config_routes = IntGaugeVec::new(
            Opts::new(CONFIG_ROUTES, "Configured routes by risk."),
            &["risk"],
        )
        .expect("static metric definition is valid");
        let device_enrolments = IntCounterVec::new(
            Opts::new(
                DEVICE_ENROLMENTS,
                "Devices enrolled through the gateway, by source (invite, device).",
            ),
            &["source"],
        )
        .expect("static metric definition is valid");
        for source in ["invite", "device"] {
            device_enrolments.with_label_values(&[source]);
        }
        let approvals = IntCounterVec::new(
            Opts::new(APPROVALS, "Approvals by route and outcome."),
            &["route", "outcome"],
        )
        .expect("static metric definition is valid");
        let approvals_pending = IntGauge::new(
            APPROVALS_PENDING,
            "Approvals waiting for their approvers (in the shared store).",
        )
        .expect("static metric definition is valid");
        let approval_wait = Histogram::with_opts(
            HistogramOpts::new(APPROVAL_WAIT, "Seconds from a request to its approval.").buckets(
                vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0,
                ],
            ),
        )
        .expect("static metric definition is valid");
        let approval_webhook_failures = IntCounter::new(
            APPROVAL_WEBHOOK_FAILURES,
            "Approval webhook delivery attempts that failed.",
        )
        .expect("static metric definition is valid");
        let connections_open = IntGauge::new(CONNECTIONS_OPEN, "Client connections open now.")
            .expect("static metric definition is valid");
        let connections_dropped = IntCounterVec::new(
            Opts::new(
                CONNECTIONS_DROPPED,
                "Client connections closed before a request was served, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        for reason in crate::front::DROP_REASONS {
            connections_dropped.with_label_values(&[reason]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Build information; always 1."),
            &["version"],
        )
        .expect("static metric definition is valid");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejections.clone()),
            Box::new(proof_verify.clone()),
            Box::new(upstream.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(config_reloads.clone()),
            Box::new(in_flight.clone()),
            Box::new(nonces_outstanding.clone()),
            Box::new(replays_blocked.clone()),
            Box::new(audit_failures.clone()),
            Box::new(store_errors.clone()),
            Box::new(config_routes.clone()),
            Box::new(device_enrolments.clone()),
            Box::new(approvals.clone()),
            Box::new(approvals_pending.clone()),
            Box::new(approval_wait.clone()),
            Box::new(approval_webhook_failures.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_dropped.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(c)
                .expect("metric names are unique within the registry");
        }
        Metrics {
            registry,
            requests,
            rejections,
            proof_verify,
            upstream,
            upstream_responses,
            config_reloads,
            in_flight,
            nonces_outstanding,
            replays_blocked,
            audit_failures,
            store_errors,
            config_routes,
            device_enrolments,
            approvals,
            approvals_pending,
            approval_wait,
            approval_webhook_failures,
            connections_open,
            connections_dropped,
        }
    }

    /// Counts an approval outcome of `route`.
    pub fn approval(&self, route: &str, outcome: &str) {
        self.approvals.with_label_values(&[route, outcome]).inc();
    }

    /// The per-route series of one route, resolved once so the request path does no label
    /// lookups. Only the decisions a route can take are created (and exported at zero);
    /// `observe` is a high-impact route in observe mode.
    pub fn for_route(&self, route: &str, high_impact: bool, observe: bool) -> RouteMetrics {
        // In `Decision::LABELS` order: passthrough, challenged, accepted, rejected, observed.
        let possible = [!high_impact, high_impact, high_impact, high_impact, observe];
        RouteMetrics {
            decisions: std::array::from_fn(|slot| {
                let label = Decision::LABELS[slot];
                possible[slot].then(|| self.requests.with_label_values(&[route, label]))
            }),
            upstream: self.upstream.with_label_values(&[route]),
            upstream_responses: UPSTREAM_CLASSES
                .map(|class| self.upstream_responses.with_label_values(&[route, class])),
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn enter(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The Prometheus text exposition of this gateway and of the process.
    pub fn render(&self) -> Vec<u8> {
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// One request in flight; dropping it counts the request as done.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `class` labels of `countersign_upstream_responses_total`, indexed by status / 100 - 1;
/// the last one counts requests that got no upstream answer at all.
const UPSTREAM_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// One route's request counters and upstream latency.
#[derive(Clone)]
pub struct RouteMetrics {
    /// By [`Decision::slot`]; only the decisions the route can take.
    decisions: [Option<IntCounter>; 5],
    /// Upstream latency of this route.
    pub upstream: Histogram,
    upstream_responses: [IntCounter; 6],
}

impl RouteMetrics {
    /// Counts one upstream answer by its status, or `None` when the upstream gave none.
    pub fn upstream_response(&self, status: Option<u16>) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => UPSTREAM_CLASSES.len() - 1,
        };
        self.upstream_responses[class].inc();
    }

    /// Counts one request decision.
    pub fn decision(&self, decision: Decision) {
        if let Some(counter) = &self.decisions[decision.slot()] {
            counter.inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

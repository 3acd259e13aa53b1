//! Where a decision is written down: the audit record, the route's metric series and the log
//! line, all from one [`Decision`] (docs/protocol.md, "Audit" and "Metrics").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::{AuditLog, Event, Record};
use crate::decision::Decision;
use crate::metrics::{Metrics, RouteMetrics};
use crate::reason::Reason;
use crate::routes::{Risk, RouteTable};

/// The audit log and the metrics, with each route's series resolved once.
pub struct Ledger {
    audit: AuditLog,
    metrics: Arc<Metrics>,
    routes: HashMap<String, RouteMetrics>,
}

impl Ledger {
    /// A ledger for these routes.
    pub fn new(audit: AuditLog, metrics: Arc<Metrics>, routes: &RouteTable) -> Ledger {
        // Every outcome of every approval route is exported from the start, at zero.
        for route in routes.routes().iter().filter(|r| r.approval.is_some()) {
            for outcome in crate::metrics::APPROVAL_OUTCOMES {
                metrics.approvals.with_label_values(&[&route.name, outcome]);
            }
        }
        let routes = routes
            .routes()
            .iter()
            .map(|r| {
                let series = metrics.for_route(&r.name, r.risk == Risk::High, !r.enforce);
                (r.name.clone(), series)
            })
            .collect();
        Ledger {
            audit,
            metrics,
            routes,
        }
    }

    /// The metrics this ledger counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records a decision about `record`'s request: its audit record (event and reason set from
    /// the decision), its route's counters and a log line. An `accepted` decision is counted only
    /// once its record is written; false when the record could not be written.
    pub fn decide(&self, record: &mut Record, decision: Decision) -> bool {
        record.event = Some(decision.event());
        record.reason = decision.reason().map(Reason::as_str);
        let written = self.write(record);
        if decision == Decision::Accepted && !written {
            return false;
        }
        let route = if record.route.is_empty() {
            "unrouted"
        } else {
            &record.route
        };
        match decision {
            Decision::Rejected(reason) => {
                tracing::info!(route, reason = reason.as_str(), "rejected")
            }
            Decision::Observed(reason) => {
                tracing::info!(route, reason = reason.as_str(), "observed")
            }
            Decision::Accepted => {
                let confirmation_id = record.confirmation_id.as_deref().unwrap_or_default();
                tracing::info!(route, confirmation_id, "accepted");
            }
            Decision::Passthrough | Decision::Challenged => {}
        }
        self.count(&record.route, decision);
        if let Decision::Rejected(reason) = decision {
            self.metrics
                .rejections
                .with_label_values(&[route, reason.as_str()])
                .inc();
            if matches!(reason, Reason::NonceReplay | Reason::JtiReplay) {
                self.metrics
                    .replays_blocked
                    .with_label_values(&[route])
                    .inc();
            }
        }
        written
    }

    /// Counts a decision that writes no audit record (a streamed passthrough).
    pub fn count(&self, route: &str, decision: Decision) {
        if let Some(m) = self.routes.get(route) {
            m.decision(decision);
        }
    }

    /// Counts the upstream's answer to a forwarded request by its status class (`None`: no
    /// answer at all).
    pub fn upstream_answer(&self, route: &str, status: Option<u16>) {
        if let Some(m) = self.routes.get(route) {
            m.upstream_response(status);
        }
    }

    /// Observes the upstream latency of a request forwarded at `started`.
    pub fn upstream_latency(&self, route: &str, started: Instant) {
        if let Some(m) = self.routes.get(route) {
            m.upstream.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Records a forwarded request's end (`completed`, or `passthrough` with
    /// `audit.passthrough`).
    pub fn finish(&self, record: &mut Record, event: Event) {
        record.event = Some(event);
        record.reason = None;
        self.write(record);
    }

    /// Appends a record; a failure is counted and logged, and reported as false.
    pub fn write(&self, record: &Record) -> bool {
        match self.audit.append(record) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.audit_failures.inc();
                tracing::error!(error = %e, "audit record could not be written");
                false
            }
        }
    }
}

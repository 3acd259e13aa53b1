//! What the gateway decided about one request. One type feeds the audit event, the metric label
//! and, through its [`Reason`], the response, so the three cannot disagree (docs/protocol.md,
//! "Audit" and "Metrics").

use crate::audit::Event;
use crate::reason::Reason;

/// A request decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Low-risk, forwarded untouched.
    Passthrough,
    /// Answered with a nonce.
    Challenged,
    /// Confirmed and forwarded.
    Accepted,
    /// Refused, for this reason.
    Rejected(Reason),
    /// Observe mode: forwarded unconfirmed, with the reason it would have been refused.
    Observed(Reason),
}

impl Decision {
    /// The `decision` label values of `countersign_requests_total`, in [`Decision::slot`] order.
    pub const LABELS: [&'static str; 5] = [
        "passthrough",
        "challenged",
        "accepted",
        "rejected",
        "observed",
    ];

    /// The index of this decision's label in [`Decision::LABELS`].
    pub fn slot(self) -> usize {
        match self {
            Decision::Passthrough => 0,
            Decision::Challenged => 1,
            Decision::Accepted => 2,
            Decision::Rejected(_) => 3,
            Decision::Observed(_) => 4,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        Decision::LABELS[self.slot()]
    }

    /// The audit event that records it.
    pub fn event(self) -> Event {
        match self {
            Decision::Passthrough => Event::Passthrough,
            Decision::Challenged => Event::Challenged,
            Decision::Accepted => Event::Accepted,
            Decision::Rejected(_) => Event::Rejected,
            Decision::Observed(_) => Event::Observed,
        }
    }

    /// Why the request was (or would have been) refused.
    pub fn reason(self) -> Option<Reason> {
        match self {
            Decision::Rejected(reason) | Decision::Observed(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decision_names_its_own_label_event_and_reason() {
        let all = [
            (
                Decision::Passthrough,
                "passthrough",
                Event::Passthrough,
                None,
            ),
            (Decision::Challenged, "challenged", Event::Challenged, None),
            (Decision::Accepted, "accepted", Event::Accepted, None),
            (
                Decision::Rejected(Reason::NonceReplay),
                "rejected",
                Event::Rejected,
                Some(Reason::NonceReplay),
            ),
            (
                Decision::Observed(Reason::Unconfirmed),
                "observed",
                Event::Observed,
                Some(Reason::Unconfirmed),
            ),
        ];
        for (decision, label, event, reason) in all {
            assert_eq!(decision.label(), label);
            assert_eq!(decision.event(), event);
            assert_eq!(decision.reason(), reason);
        }
    }
}

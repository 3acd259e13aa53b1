//! Policy and live risk at the time of use, decided after every confirmation check has passed and
//! before anything is forwarded: the route's RFC 9470 step-up requirement, the session's network
//! change, then the embedded Cedar policy over the request's facts (README, "Decisions").
//! No network and no Pingora here: the gateway hands over facts and gets a decision.

pub mod cedar;
mod facts;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::reason::Reason;
use crate::routes::{Route, StepUp};
use crate::session::Session;

pub use cedar::{Engine, EvalError, PolicyError, Verdict};

/// `risk.on_ip_change`: what a high-impact request from another network than the one its session
/// was bound from gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIpChange {
    /// Allowed; the fact is still given to the policy (`context.risk.ip_changed`).
    Allow,
    /// Allowed only with an authentication newer than `risk.max_age`, else `step_up_required`.
    StepUp,
    /// Refused, `risk_denied`.
    Deny,
}

/// `risk:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskConfig {
    /// What a network change does (default allow).
    pub on_ip_change: OnIpChange,
    /// How recent `auth_time` must be to pass a network-change step-up (default 5 min).
    pub max_age: Duration,
}

impl Default for RiskConfig {
    fn default() -> RiskConfig {
        RiskConfig {
            on_ip_change: OnIpChange::Allow,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Where and when a session's binding was made: recorded at its first confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The client network then: `/24` for IPv4, `/64` for IPv6 (see [`network`]).
    pub network: String,
    /// Unix seconds of that first confirmation.
    pub since: u64,
}

/// The client network of an address: its /24 (IPv4) or /64 (IPv6), as text. IPv4-mapped IPv6
/// addresses count as IPv4.
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4_net(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_net(v4),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// The client's address: the peer's, or behind trusted proxies the rightmost `X-Forwarded-For`
/// entry that is not itself a trusted proxy (entries to its left may be forged by the client).
pub fn client_address(
    peer: Option<IpAddr>,
    peer_trusted: bool,
    headers: &http::HeaderMap,
    trusted_proxies: &[ipnet::IpNet],
) -> Option<IpAddr> {
    if !peer_trusted {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.into_iter().rev() {
        // An entry that is no address ends the walk: what lies left of it cannot be trusted.
        let ip: IpAddr = entry.trim().parse().ok()?;
        if !trusted_proxies.iter().any(|net| net.contains(&ip)) {
            return Some(ip);
        }
    }
    peer
}

fn v4_net(ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

/// Everything known about one confirmed high-impact request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The route it matched.
    pub route: &'a Route,
    /// Request method.
    pub method: &'a str,
    /// Request target in origin-form, query included.
    pub target: &'a str,
    /// `Content-Type`, when sent.
    pub content_type: Option<&'a str>,
    /// The buffered body.
    pub body: &'a [u8],
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// The session.
    pub session: &'a Session,
    /// The confirming device key's thumbprint.
    pub device: &'a str,
    /// The binding's recorded origin.
    pub origin: Option<&'a Origin>,
    /// Now.
    pub now: SystemTime,
    /// The approval an execution spends: its id and the subjects that approved it.
    pub approval: Option<(&'a str, &'a [String])>,
}

/// A refusal by policy, step-up or risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why (`policy_denied`, `step_up_required`, `risk_denied`, `policy_error`).
    pub reason: Reason,
    /// The determining policies, for the audit record.
    pub policies: Vec<String>,
    /// RFC 9470 §3 parameters for `WWW-Authenticate` (`acr_values="...", max_age=N`).
    pub challenge: Option<String>,
}

impl Denial {
    fn of(reason: Reason) -> Denial {
        Denial {
            reason,
            policies: Vec::new(),
            challenge: None,
        }
    }
}

/// Decides policy and risk for confirmed requests.
#[derive(Debug, Clone)]
pub struct Guard {
    engine: Option<Arc<Engine>>,
    risk: RiskConfig,
    groups_claim: String,
}

impl Guard {
    /// A guard over the loaded policies (if any), the risk settings and the claim naming groups.
    pub fn new(engine: Option<Arc<Engine>>, risk: RiskConfig, groups_claim: &str) -> Guard {
        Guard {
            engine,
            risk,
            groups_claim: groups_claim.to_string(),
        }
    }

    /// Step-up, then network change, then Cedar; the first refusal wins. On success, the
    /// policies that allowed the request (empty without a policy).
    pub fn decide(&self, facts: &Facts<'_>) -> Result<Vec<String>, Denial> {
        let now = crate::clock::unix_secs(facts.now) as i64;
        let claims = facts.session.claims.as_deref();
        if let Some(step_up) = &facts.route.require {
            if let Some(challenge) = unmet(step_up, claims, now) {
                return Err(Denial {
                    challenge: Some(challenge),
                    ..Denial::of(Reason::StepUpRequired)
                });
            }
        }
        let current = facts.client_ip.map(network);
        let ip_changed = match (facts.origin, &current) {
            (Some(origin), Some(current)) => origin.network != *current,
            // An unknown client address is a change: fail closed.
            (Some(_), None) => true,
            (None, _) => false,
        };
        if ip_changed {
            match self.risk.on_ip_change {
                OnIpChange::Allow => {}
                OnIpChange::Deny => return Err(Denial::of(Reason::RiskDenied)),
                OnIpChange::StepUp => {
                    let fresh = StepUp {
                        acr: Vec::new(),
                        max_age: Some(self.risk.max_age),
                    };
                    if let Some(challenge) = unmet(&fresh, claims, now) {
                        return Err(Denial {
                            challenge: Some(challenge),
                            ..Denial::of(Reason::StepUpRequired)
                        });
                    }
                }
            }
        }
        let Some(engine) = &self.engine else {
            return Ok(Vec::new());
        };
        let query = facts::query(
            facts,
            engine.reads(),
            &self.groups_claim,
            ip_changed,
            current.as_deref(),
            now,
        )
        .map_err(|ambiguous| {
            tracing::info!(route = %facts.route.name, "refused: {ambiguous}");
            Denial::of(Reason::PolicyDenied)
        })?;
        match engine.authorize(query) {
            Ok(Verdict {
                allowed: true,
                policies,
            }) => Ok(policies),
            Ok(Verdict { policies, .. }) => Err(Denial {
                policies,
                ..Denial::of(Reason::PolicyDenied)
            }),
            Err(e) => {
                // Fail closed: a policy that cannot be evaluated allows nothing.
                tracing::warn!(error = %e, route = %facts.route.name, "policy evaluation failed");
                Err(Denial::of(Reason::PolicyError))
            }
        }
    }
}

/// The RFC 9470 §3 challenge parameters when the token does not meet `step_up`.
fn unmet(step_up: &StepUp, claims: Option<&Map<String, Value>>, now: i64) -> Option<String> {
    let acr = claims.and_then(|c| c.get("acr")).and_then(Value::as_str);
    let auth_time = claims
        .and_then(|c| c.get("auth_time"))
        .and_then(Value::as_i64);
    let acr_ok = step_up.acr.is_empty() || acr.is_some_and(|a| step_up.acr.iter().any(|x| x == a));
    let age_ok = step_up.max_age.is_none_or(|max| {
        auth_time.is_some_and(|t| t <= now + 5 && now - t <= max.as_secs() as i64)
    });
    if acr_ok && age_ok {
        return None;
    }
    let mut params = Vec::new();
    if !step_up.acr.is_empty() {
        params.push(format!(r#"acr_values="{}""#, step_up.acr.join(" ")));
    }
    if let Some(max) = step_up.max_age {
        params.push(format!("max_age={}", max.as_secs()));
    }
    Some(params.join(", "))
}

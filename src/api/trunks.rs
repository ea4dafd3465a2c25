//! `GET /v2/Trunks` (Switchboard's own, not Twilio's): each configured trunk and where its
//! registration stands, so an operator can see at a glance whether a carrier will send calls.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::Api;
use crate::sip::register::RegistrationState;

/// What the API shows of a trunk (never its password).
#[derive(Debug, Clone)]
pub struct TrunkSummary {
    pub name: String,
    pub uri: String,
    pub inbound_from: Vec<String>,
    pub register: bool,
    pub dial_allow: Vec<String>,
    pub max_outbound: usize,
    pub keepalive_secs: u64,
}

impl From<&crate::config::TrunkConfig> for TrunkSummary {
    fn from(t: &crate::config::TrunkConfig) -> Self {
        TrunkSummary {
            name: t.name.clone(),
            uri: t.uri.clone(),
            inbound_from: t.inbound_from.clone(),
            register: t.register,
            dial_allow: t.dial_allow.clone(),
            max_outbound: t.max_outbound,
            keepalive_secs: t.keepalive_secs,
        }
    }
}

fn registration(state: Option<&RegistrationState>) -> Value {
    match state {
        None => Value::Null,
        Some(RegistrationState::Registering) => json!({ "state": "registering" }),
        Some(RegistrationState::Registered { expires }) => {
            json!({ "state": "registered", "expires": expires })
        }
        Some(RegistrationState::Failed { status, reason }) => {
            json!({ "state": "failed", "status": status, "reason": reason })
        }
        Some(RegistrationState::Unregistered) => json!({ "state": "unregistered" }),
    }
}

pub async fn list(State(api): State<Arc<Api>>) -> Json<Value> {
    let states = api
        .sip
        .as_ref()
        .map(|s| s.trunk_registrations())
        .unwrap_or_default();
    let reach = api
        .sip
        .as_ref()
        .map(|s| s.trunk_reachability())
        .unwrap_or_default();
    let trunks: Vec<Value> = api
        .trunks
        .iter()
        .map(|t| {
            let state = states.iter().find(|(n, _)| *n == t.name).map(|(_, s)| s);
            let reached = reach.iter().find(|(n, _)| *n == t.name).map(|(_, r)| r);
            let calls_out = api.calls.as_ref().and_then(|c| c.legs.as_ref()).map(|l| {
                l.outbound
                    .trunks()
                    .iter()
                    .find(|o| o.name == t.name)
                    .map(|o| o.active())
                    .unwrap_or(0)
            });
            json!({
                "name": t.name,
                "uri": t.uri,
                "inbound_from": t.inbound_from,
                "register": t.register,
                "registration": if t.register { registration(state) } else { Value::Null },
                "dial_allow": t.dial_allow,
                "max_outbound": t.max_outbound,
                "calls_out": calls_out,
                "keepalive_secs": t.keepalive_secs,
                // null until the first keep-alive is answered or times out (or without them).
                "reachable": reached.map(|r| r.reachable),
                "last_status": reached.map(|r| r.status),
            })
        })
        .collect();
    Json(json!({ "trunks": trunks }))
}

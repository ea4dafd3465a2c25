//! The dispatcher (SIP events → calls) and the life of one call: answer, run the flow's
//! execution effect by effect, persist every step before its effect runs, hang up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::registry::{info_digit, CallKey, CallSignal, Registry};
use super::voice::VoiceChannel;
use crate::flow::{
    Advance, Effect, Engine, Execution, ExecutionInit, ExecutionStatus, Outcome, Trigger,
};
use crate::media::{Codec, MediaEngine, StreamParams};
use crate::routing::{LoadedFlow, Router};
use crate::sip::sdp::{self, Negotiated};
use crate::sip::{Command, Event, IncomingInvite, SipHandle};
use crate::store::{new_sid, now_rfc3339, ExecutionRecord, StepRecord, Store};

const CODECS: &[Codec] = &[Codec::Pcmu, Codec::Pcma];

pub struct CallServices {
    pub sip: SipHandle,
    pub media: Arc<MediaEngine>,
    pub tts: Arc<crate::media::tts::Tts>,
    pub store: Store,
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub public_ip: Option<IpAddr>,
    pub max_calls: usize,
    pub account_sid: String,
}

/// Consume SIP events for the life of the process.
pub async fn dispatch(svc: Arc<CallServices>, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Invite(inv) => on_invite(&svc, *inv),
            Event::Cancelled { call_id } | Event::Bye { call_id } => {
                tracing::info!(%call_id, "caller hung up");
                svc.registry.signal(&call_id, CallSignal::Hangup);
            }
            Event::Ended { call_id, reason } => {
                tracing::info!(%call_id, ?reason, "dialog ended");
                svc.registry.signal(&call_id, CallSignal::Hangup);
            }
            Event::Info {
                call_id,
                content_type,
                body,
            } => {
                if let Some(d) = info_digit(&content_type, &body) {
                    tracing::info!(%call_id, digit = %d, "DTMF via SIP INFO");
                    svc.registry.signal(&call_id, CallSignal::Dtmf(d));
                }
            }
            Event::Acked { call_id } => tracing::debug!(%call_id, "ACK"),
            Event::Refused { .. } => {}
        }
    }
}

fn reject(svc: &CallServices, call_id: &str, status: u16, reason: &str, retry_after: Option<u32>) {
    tracing::info!(%call_id, status, reason, "call rejected");
    svc.sip.send(Command::Reject {
        call_id: call_id.to_string(),
        status,
        reason: reason.to_string(),
        retry_after,
    });
}

fn on_invite(svc: &Arc<CallServices>, inv: IncomingInvite) {
    let call_id = inv.call_id.clone();
    if svc.registry.len() >= svc.max_calls {
        return reject(svc, &call_id, 503, "Service Unavailable", Some(5));
    }
    let sdp_text = String::from_utf8_lossy(&inv.sdp).to_string();
    let neg = match sdp::negotiate(&sdp_text, CODECS) {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(%call_id, error = %e, "SDP offer refused");
            return reject(svc, &call_id, 488, "Not Acceptable Here", None);
        }
    };
    let socket = match svc.media.allocate() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "no RTP port");
            return reject(svc, &call_id, 503, "Service Unavailable", Some(5));
        }
    };
    let flow = svc.router.route(&inv.called);
    let key = CallKey {
        flow_sid: flow.sid.clone(),
        caller: inv.caller.clone(),
        call_id: call_id.clone(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    if !svc.registry.insert(key.clone(), tx) {
        return; // a second INVITE with a live Call-ID: the SIP core already answered it
    }
    tracing::info!(%call_id, from = %inv.caller, to = %inv.called, flow = %flow.name, "incoming call");
    let svc = svc.clone();
    tokio::spawn(async move {
        let call_id = key.call_id.clone();
        run_call(&svc, flow, key, inv, neg, socket, rx).await;
        svc.registry.remove(&call_id);
    });
}

fn call_params(svc: &CallServices, call_sid: &str, inv: &IncomingInvite) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("CallSid", call_sid),
        ("AccountSid", svc.account_sid.as_str()),
        ("From", inv.caller.as_str()),
        ("To", inv.called.as_str()),
        ("Caller", inv.caller.as_str()),
        ("Called", inv.called.as_str()),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
        ("SipCallId", inv.call_id.as_str()),
    ] {
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    m
}

#[allow(clippy::too_many_arguments)]
async fn run_call(
    svc: &CallServices,
    flow: Arc<LoadedFlow>,
    key: CallKey,
    inv: IncomingInvite,
    neg: Negotiated,
    socket: std::net::UdpSocket,
    mut signals: mpsc::UnboundedReceiver<CallSignal>,
) {
    let call_id = key.call_id.clone();
    let params = StreamParams {
        remote: neg.remote_rtp,
        codec: neg.codec,
        payload_type: neg.payload_type,
        telephone_event: neg.telephone_event,
        ptime_ms: neg.ptime_ms,
    };
    let mut media = match svc.media.start(socket, params) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "media start failed");
            return reject(svc, &call_id, 503, "Service Unavailable", Some(5));
        }
    };
    let advertised = svc.public_ip.unwrap_or_else(|| inv.local.ip());
    let answer = sdp::answer(
        &neg,
        SocketAddr::new(advertised, media.local.port()),
        rand::random::<u32>() as u64,
    );
    svc.sip.send(Command::Answer {
        call_id: call_id.clone(),
        sdp: answer,
    });
    tracing::info!(%call_id, codec = ?neg.codec, rtp = %media.local, remote_rtp = %neg.remote_rtp, "answered");

    let call_sid = new_sid("CA");
    let init = ExecutionInit {
        sid: new_sid("FN"),
        flow_sid: flow.sid.clone(),
        channel_address: inv.called.clone(),
        contact_address: inv.caller.clone(),
        data: Value::Object(Map::new()),
    };
    let trigger = Trigger::IncomingCall {
        call: call_params(svc, &call_sid, &inv),
    };
    let (mut exec, mut adv) =
        Engine::start(&flow.flow, init, trigger, chrono::Utc::now().fixed_offset());
    let session_key = key.session_key(flow.flow.definition().flags.allow_concurrent_calls);
    let created = now_rfc3339();
    if let Err(e) = svc
        .store
        .create_execution(&record(
            &exec,
            &inv.caller,
            Some(session_key.clone()),
            &created,
        ))
        .await
    {
        tracing::warn!(%call_id, error = %e, "execution not stored; ending call");
        svc.sip.send(Command::Hangup { call_id });
        return;
    }
    tracing::info!(%call_id, execution = %exec.sid, "execution started");
    let mut voice = VoiceChannel {
        media: &mut media,
        signals: &mut signals,
        tts: &svc.tts,
        call_id: &call_id,
        hung_up: false,
    };
    loop {
        // The step is committed before its effect runs: a crash never loses a decided step.
        persist(
            svc,
            &exec,
            &adv,
            &inv.caller,
            &session_key,
            &created,
            &call_id,
        )
        .await;
        let outcome = match &adv.effect {
            Effect::End(reason) => {
                tracing::info!(%call_id, execution = %exec.sid, %reason, "execution ended");
                break;
            }
            Effect::SayPlay(p) => voice.say_play(p).await,
            other => Outcome::Failed {
                error: format!("{} is not available on voice calls yet", effect_name(other)),
            },
        };
        adv = Engine::resume(
            &flow.flow,
            &mut exec,
            outcome,
            chrono::Utc::now().fixed_offset(),
        );
    }
    if !voice.hung_up {
        svc.sip.send(Command::Hangup {
            call_id: call_id.clone(),
        });
        tracing::info!(%call_id, "hanging up");
    }
    let (sent, received) = media.stats();
    tracing::info!(%call_id, rtp_sent = sent, rtp_received = received, "call finished");
}

fn effect_name(e: &Effect) -> &'static str {
    match e {
        Effect::SayPlay(_) => "say-play",
        Effect::Gather(_) => "gather-input-on-call",
        Effect::Record(_) => "record-voicemail",
        Effect::Connect(_) => "connect-call-to",
        Effect::OutgoingCall(_) => "make-outgoing-call",
        Effect::Redirect(_) => "add-twiml-redirect",
        Effect::HttpRequest(_) => "an HTTP request",
        Effect::SendMessage(_) => "send-message",
        Effect::SendAndWait { .. } | Effect::AwaitReply { .. } => "send-and-wait-for-reply",
        Effect::RunSubflow(_) => "run-subflow",
        Effect::End(_) => "end",
    }
}

fn record(
    exec: &Execution,
    contact: &str,
    active_key: Option<String>,
    created: &str,
) -> ExecutionRecord {
    ExecutionRecord {
        sid: exec.sid.clone(),
        flow_sid: exec.flow_sid.clone(),
        contact: contact.to_string(),
        status: if exec.status == ExecutionStatus::Active {
            "active".into()
        } else {
            "ended".into()
        },
        context: exec.context.clone(),
        state: serde_json::to_value(exec).unwrap_or(json!({})),
        active_key,
        date_created: created.to_string(),
        date_updated: now_rfc3339(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn persist(
    svc: &CallServices,
    exec: &Execution,
    adv: &Advance,
    contact: &str,
    key: &str,
    created: &str,
    call_id: &str,
) {
    let steps: Vec<StepRecord> = adv
        .steps
        .iter()
        .map(|s| StepRecord {
            sid: new_sid("FT"),
            execution_sid: exec.sid.clone(),
            name: s.name.clone(),
            transitioned_from: s.transitioned_from.clone(),
            transitioned_to: s.transitioned_to.clone(),
            event: s.event.clone(),
            context: s.context.clone(),
            error: s.error.clone(),
            date_created: now_rfc3339(),
        })
        .collect();
    for s in &steps {
        if let Some(err) = &s.error {
            tracing::warn!(%call_id, widget = %s.name, error = %err, "step error");
        }
    }
    if let Err(e) = svc
        .store
        .record_progress(
            &record(exec, contact, Some(key.to_string()), created),
            &steps,
        )
        .await
    {
        tracing::error!(%call_id, execution = %exec.sid, error = %e, "cannot persist steps");
    }
}

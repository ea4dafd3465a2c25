//! The dispatcher (SIP events → calls) and the life of one call: answer, run the flow's
//! execution effect by effect, persist every step before its effect runs, hang up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::registry::{info_digit, CallKey, CallSignal, LegEvent, Registry};
use super::voice::VoiceChannel;
use crate::flow::{ExecutionInit, Trigger};
use crate::media::{Codec, MediaEngine, StreamParams};
use crate::routing::{Incoming, LoadedFlow, Router};
use crate::runner::{Finished, NewExecution, Runner};
use crate::sip::sdp::{self, Negotiated};
use crate::sip::{Command, Event, IncomingInvite, SipHandle};
use crate::store::new_sid;

const CODECS: &[Codec] = &[Codec::Pcmu, Codec::Pcma, Codec::G722];

pub struct CallServices {
    pub sip: SipHandle,
    pub media: Arc<MediaEngine>,
    pub prompts: Arc<super::prompts::Prompts>,
    pub recordings: super::recordings::Recordings,
    pub runner: Runner,
    pub router: Arc<Router>,
    pub registry: Arc<Registry>,
    pub public_ip: Option<IpAddr>,
    pub max_calls: usize,
    /// Set when the gateway is shutting down: new calls get 503.
    pub draining: std::sync::atomic::AtomicBool,
    pub speech: Option<Arc<dyn crate::speech::Recognizer>>,
    /// Where inbound SIP MESSAGEs go (the messaging adapter), if enabled.
    pub messages: Option<mpsc::Sender<crate::messaging::InboundMessage>>,
    /// The messaging providers: send-message from a call goes out through them.
    pub outbound_messages: Option<Arc<dyn crate::messaging::MessageSink>>,
    pub account_sid: String,
    /// The API auth token: TwiML requests are signed with it, as Twilio signs its webhooks.
    pub auth_token: String,
    /// Calls out through trunks (second legs); None without `[[trunks]]`.
    pub legs: Option<Arc<super::leg::Legs>>,
}

impl CallServices {
    /// Status callbacks, signed with the API auth token.
    pub fn callbacks(&self) -> super::callbacks::Callbacks {
        super::callbacks::Callbacks {
            http: self.runner.http.client().clone(),
            auth_token: self.auth_token.clone(),
        }
    }
}

/// Consume SIP events for the life of the process.
pub async fn dispatch(svc: Arc<CallServices>, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Invite(inv) => on_invite(&svc, *inv),
            Event::Cancelled { call_id } | Event::Bye { call_id } => {
                if svc.registry.leg_event(&call_id, LegEvent::HungUp) {
                    tracing::info!(%call_id, "far end hung up");
                } else {
                    tracing::info!(%call_id, "caller hung up");
                    svc.registry.signal(&call_id, CallSignal::Hangup);
                }
            }
            Event::Ended { call_id, reason } => {
                tracing::info!(%call_id, ?reason, "dialog ended");
                if !svc.registry.leg_event(&call_id, LegEvent::HungUp) {
                    svc.registry.signal(&call_id, CallSignal::Hangup);
                }
            }
            Event::Info {
                call_id,
                content_type,
                body,
            } => {
                if let Some(d) = info_digit(&content_type, &body) {
                    tracing::info!(%call_id, digit = %d, "DTMF via SIP INFO");
                    if !svc.registry.leg_event(&call_id, LegEvent::Dtmf(d)) {
                        svc.registry.signal(&call_id, CallSignal::Dtmf(d));
                    }
                }
            }
            Event::Acked { call_id } => tracing::debug!(%call_id, "ACK"),
            Event::Message {
                from,
                to,
                body,
                call_id,
                ..
            } => {
                tracing::info!(%call_id, %from, %to, "SIP MESSAGE");
                match &svc.messages {
                    Some(tx) => {
                        let m = crate::messaging::InboundMessage {
                            from,
                            to,
                            body,
                            message_sid: new_sid("SM"),
                            ..Default::default()
                        };
                        if tx.try_send(m).is_err() {
                            tracing::warn!(%call_id, "inbound message queue full; SIP MESSAGE dropped");
                        }
                    }
                    None => {
                        tracing::warn!(%call_id, "SIP MESSAGE received but messaging is not enabled")
                    }
                }
            }
            Event::MediaUpdate {
                call_id,
                remote,
                sending,
                srtp,
                format,
            } => match svc.registry.media(&call_id) {
                Some(m) => {
                    m.set_remote(remote);
                    m.set_sending(sending);
                    m.set_format(format);
                    if let Some(keys) = &srtp {
                        m.set_srtp(keys);
                    }
                    tracing::info!(%call_id, %remote, sending, "media updated by the caller (re-INVITE/UPDATE)");
                }
                None => tracing::debug!(%call_id, "media update for a call without media"),
            },
            Event::Transfer {
                call_id,
                status,
                done,
            } => {
                tracing::info!(%call_id, status, done, "transfer progress");
                svc.registry
                    .signal(&call_id, CallSignal::Transfer { status, done });
            }
            Event::MessageResult { .. } => {}
            Event::Refused { .. }
            | Event::Registered { .. }
            | Event::TrunkRegistration { .. }
            | Event::TrunkReachability { .. } => {}
            Event::DialProgress {
                call_id,
                status,
                early_sdp,
            } => {
                svc.registry
                    .leg_event(&call_id, LegEvent::Progress { status, early_sdp });
            }
            Event::DialAnswered { call_id, sdp } => {
                if !svc.registry.leg_event(&call_id, LegEvent::Answered { sdp }) {
                    // Its call is gone (the caller left as it answered): end it.
                    tracing::info!(%call_id, "far end answered a call nobody waits for; hanging up");
                    svc.sip.send(Command::Hangup { call_id });
                }
            }
            Event::DialFailed {
                call_id,
                status,
                reason,
            } => {
                svc.registry
                    .leg_event(&call_id, LegEvent::Failed { status, reason });
            }
        }
    }
}

fn reject(svc: &CallServices, call_id: &str, status: u16, reason: &str, retry_after: Option<u32>) {
    tracing::info!(%call_id, status, reason, "call rejected");
    crate::metrics::count(&crate::metrics::get().call_failures, &status.to_string());
    svc.sip.send(Command::Reject {
        call_id: call_id.to_string(),
        status,
        reason: reason.to_string(),
        retry_after,
    });
}

fn on_invite(svc: &Arc<CallServices>, inv: IncomingInvite) {
    let received = std::time::Instant::now();
    crate::metrics::get().call_attempts.inc();
    let call_id = inv.call_id.clone();
    if svc.registry.len() >= svc.max_calls
        || svc.draining.load(std::sync::atomic::Ordering::Relaxed)
    {
        return reject(svc, &call_id, 503, "Service Unavailable", Some(5));
    }
    // Every call is an execution in the store: without one it could not be kept.
    if !svc.runner.store.is_available() {
        return reject(svc, &call_id, 503, "Service Unavailable", Some(10));
    }
    let Some(flow) = svc.router.route_for(&inv.called, Incoming::Call) else {
        tracing::info!(%call_id, to = %inv.called, "no flow answers this number ([[routes]], IncomingPhoneNumbers, or a default `flow`)");
        return reject(svc, &call_id, 404, "Not Found", None);
    };
    let sdp_text = String::from_utf8_lossy(&inv.sdp).to_string();
    let neg = match sdp::negotiate(&sdp_text, CODECS, inv.srtp) {
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
        // Dropped however the task ends, a panic included: a dead call never holds a
        // max_calls slot or its Call-ID.
        let _gone = Unregister {
            registry: svc.registry.clone(),
            call_id: key.call_id.clone(),
        };
        run_call(&svc, flow, key, inv, neg, socket, rx, received).await;
    });
}

struct Unregister {
    registry: Arc<Registry>,
    call_id: String,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.registry.remove(&self.call_id);
    }
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
    socket: crate::media::engine::Ports,
    mut signals: mpsc::UnboundedReceiver<CallSignal>,
    received: std::time::Instant,
) {
    let call_id = key.call_id.clone();
    let flow = match svc
        .router
        .test_revision(&svc.runner.store, &flow, &inv.caller)
        .await
    {
        Some(draft) => draft,
        None => flow,
    };
    let concurrent = flow.flow.definition().flags.allow_concurrent_calls;
    // Studio's `allow_concurrent_calls = false`: one call per caller ID at a time. Refused
    // before the answer (486), not answered and then dropped; the store's unique session key
    // still settles a race between two nodes.
    if !concurrent {
        if let Ok(Some(active)) = svc
            .runner
            .store
            .active_for_key(&key.session_key(false))
            .await
        {
            tracing::info!(%call_id, caller = %key.caller, active = %active.sid, "caller already in a call of this flow (allow_concurrent_calls = false)");
            return reject(svc, &call_id, 486, "Busy Here", None);
        }
    }
    let params = StreamParams {
        remote: neg.remote_rtp,
        codec: neg.codec,
        payload_type: neg.payload_type,
        telephone_event: neg.telephone_event,
        ptime_ms: neg.ptime_ms,
        label: call_id.clone(),
        srtp: neg.srtp.as_ref().map(|s| s.keys.clone()),
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
    svc.registry.attach_media(&call_id, media.control());
    svc.sip.send(Command::Answer {
        call_id: call_id.clone(),
        sdp: answer,
    });
    let srtp = neg.srtp.as_ref().map_or("off", |s| s.keys.suite.name());
    tracing::info!(%call_id, codec = ?neg.codec, rtp = %media.local, remote_rtp = %neg.remote_rtp, srtp, "answered");
    let metrics = crate::metrics::get();
    metrics.calls_answered.inc();
    metrics
        .call_setup_seconds
        .observe(received.elapsed().as_secs_f64());
    metrics.calls_active.inc();

    let call_sid = new_sid("CA");
    let params = call_params(svc, &call_sid, &inv);
    let new = NewExecution {
        init: ExecutionInit {
            sid: new_sid("FN"),
            flow_sid: flow.sid.clone(),
            channel_address: inv.called.clone(),
            contact_address: inv.caller.clone(),
            data: Value::Object(Map::new()),
        },
        trigger: Trigger::IncomingCall {
            call: params.clone(),
        },
        contact: inv.caller.clone(),
        active_key: Some(key.session_key(concurrent)),
    };
    let mut voice = VoiceChannel {
        media: &mut media,
        signals: &mut signals,
        prompts: &svc.prompts,
        recordings: &svc.recordings,
        call_id: &call_id,
        call_sid: &call_sid,
        speech: svc.speech.as_ref(),
        http: svc.runner.http.client(),
        call_params: &params,
        flow_sid: &flow.sid,
        auth: Some((svc.account_sid.as_str(), svc.auth_token.as_str())),
        legs: svc.legs.as_deref(),
        messages: svc.outbound_messages.clone(),
        recording: None,
        contact: &inv.caller,
        replies: Some(svc.runner.replies.clone()),
        pending_reply: None,
        hung_up: false,
    };
    match svc.runner.start(&flow, new, &mut voice).await {
        Ok((exec, Finished::Ended(reason))) => {
            tracing::info!(%call_id, execution = %exec.sid, %reason, "call flow ended")
        }
        Ok((exec, Finished::Waiting { .. })) => {
            tracing::warn!(%call_id, execution = %exec.sid, "call flow waits for a message; ending the call")
        }
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "execution could not be stored; ending call")
        }
    }
    let hung_up = voice.hung_up;
    if !hung_up {
        svc.sip.send(Command::Hangup {
            call_id: call_id.clone(),
        });
        tracing::info!(%call_id, "hanging up");
    }
    let (sent, received) = media.stats();
    metrics.calls_active.dec();
    metrics.rtp_packets_sent.inc_by(sent);
    metrics.rtp_packets_received.inc_by(received);
    match media.quality() {
        Some(q) => {
            metrics
                .rtp_packets_lost
                .inc_by(q.expected.saturating_sub(q.received));
            if q.received > 0 {
                metrics.rtp_jitter_ms.observe(q.jitter_ms);
            }
            let lost_by_peer = q
                .peer
                .map(|p| {
                    format!(
                        "{} ({:.1}%)",
                        p.cumulative_lost,
                        p.fraction_lost as f64 * 100.0 / 256.0
                    )
                })
                .unwrap_or_else(|| "no RTCP report".into());
            let peer_jitter = q
                .peer
                .map(|p| format!("{:.1} ms", p.jitter_ms))
                .unwrap_or_default();
            tracing::info!(%call_id, rtp_sent = sent, rtp_received = received, inbound_expected = q.expected, inbound_received = q.received, inbound_jitter_ms = format!("{:.1}", q.jitter_ms), lost_by_peer, peer_jitter, "call finished");
        }
        None => tracing::info!(%call_id, rtp_sent = sent, rtp_received = received, "call finished"),
    }
}

//! make-outgoing-call-v2: a REST-triggered execution places a call through a trunk, and once
//! it is answered the execution goes on as a voice execution on that call (say-play, gather,
//! record, connect-call-to, TwiML redirects). Until then, and for everything a call does not
//! do (messages, HTTP), the execution's own medium performs its effects.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call_recording::{self, CallRecording};
use super::leg::{dial_outcome as dial, dial_status, widget_credentials, Leg, LegRequest};
use super::registry::{CallKey, CallSignal, LegEvent};
use super::session::CallServices;
use super::voice::VoiceChannel;
use crate::flow::{Effect, Outcome, OutgoingCall};
use crate::media::amd::{Amd, AnsweredBy};
use crate::runner::Medium;

/// Longest ring time Studio allows (seconds).
const MAX_RING_SECS: u32 = 600;

/// The call an execution placed, once answered.
struct Answered {
    /// `record` or record-call; dropping it stops and saves it. Declared first, so that happens
    /// before the leg hangs up.
    recording: Option<CallRecording>,
    leg: Leg,
    signals: mpsc::UnboundedReceiver<CallSignal>,
    params: Map<String, Value>,
    hung_up: bool,
    /// Who was called (`contact.channel.address`).
    contact: String,
    /// A send-and-wait's reply wait, between its question and its wait.
    pending_reply: Option<crate::runner::replies::ReplyWait>,
    registry: std::sync::Arc<super::Registry>,
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.registry.remove(&self.leg.call_id);
    }
}

/// A REST execution's medium: `inner` (messages, HTTP) plus the call it may place.
pub struct OutgoingChannel<M> {
    inner: M,
    calls: std::sync::Arc<CallServices>,
    flow_sid: String,
    call: Option<Answered>,
}

impl<M: Medium> OutgoingChannel<M> {
    /// `inner` performs what a call does not.
    pub fn new(inner: M, calls: std::sync::Arc<CallServices>, flow_sid: &str) -> Self {
        OutgoingChannel {
            inner,
            calls,
            flow_sid: flow_sid.to_string(),
            call: None,
        }
    }

    async fn place(&mut self, o: &OutgoingCall) -> Outcome {
        if self.call.is_some() {
            return failed("this execution already placed a call".into());
        }
        let Some(legs) = self.calls.legs.clone() else {
            return failed(
                "make-outgoing-call-v2 needs a [[trunks]] entry to place the call through".into(),
            );
        };
        let to = o.to.trim();
        if to.is_empty() {
            return failed("make-outgoing-call-v2 has nothing to dial (empty `to`)".into());
        }
        let credentials = widget_credentials(&o.sip_auth_username, &o.sip_auth_password);
        let ring = Duration::from_secs(o.timeout_secs.clamp(1, MAX_RING_SECS) as u64);
        let (tx, mut events) = mpsc::unbounded_channel();
        let req = LegRequest {
            target: to,
            caller_id: Some(o.from.as_str()).filter(|f| !f.trim().is_empty()),
            ring_timeout: ring,
            credentials,
        };
        let mut leg = match legs.place(&req, &tx) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(target = %to, error = %e, "refused to dial");
                crate::metrics::outcome(&crate::metrics::get().dials, "refused");
                return failed(e.to_string());
            }
        };
        let give_up = Instant::now() + ring + Duration::from_secs(40);
        loop {
            tokio::select! {
                Some((_, ev)) = events.recv() => match ev {
                    LegEvent::Answered { sdp } => {
                        if let Err(e) = leg.start_media(&sdp) {
                            leg.hangup();
                            return failed(format!("the far end answered with unusable SDP: {e}"));
                        }
                        leg.answered();
                        break;
                    }
                    LegEvent::Failed { status, reason } => {
                        leg.ended();
                        let s = dial_status(status);
                        crate::metrics::outcome(&crate::metrics::get().dials, s);
                        return dial(s, Some(leg.sid.clone()), (s == "failed").then(|| format!("{status} {reason}")));
                    }
                    LegEvent::HungUp => {
                        leg.ended();
                        return dial("failed", Some(leg.sid.clone()), Some("ended before the answer".into()));
                    }
                    LegEvent::Progress { .. } | LegEvent::Dtmf(_) => {}
                },
                _ = tokio::time::sleep_until(give_up) => {
                    leg.hangup();
                    return dial("no-answer", Some(leg.sid.clone()), None);
                }
            }
        }
        // Answered: from here the leg is a call like an incoming one (BYE and INFO reach it
        // through the registry by its Call-ID).
        let (sig_tx, signals) = mpsc::unbounded_channel();
        let registry = self.calls.registry.clone();
        let key = CallKey {
            flow_sid: self.flow_sid.clone(),
            caller: to.to_string(),
            call_id: leg.call_id.clone(),
        };
        registry.insert(key, sig_tx);
        registry.remove_leg(&leg.call_id);
        if let Some(m) = leg.media() {
            registry.attach_media(&leg.call_id, m.control());
        }
        tracing::info!(call_id = %leg.call_id, %to, trunk = %leg.trunk(), "outgoing call answered");
        if let (Some(digits), Some(m)) = (
            o.send_digits.as_deref().filter(|d| !d.trim().is_empty()),
            leg.media_mut(),
        ) {
            m.send_digits(digits);
        }
        let mut params = Map::new();
        for (k, v) in [
            ("CallSid", leg.sid.as_str()),
            ("AccountSid", self.calls.account_sid.as_str()),
            ("From", o.from.as_str()),
            ("To", to),
            ("CallStatus", "in-progress"),
            ("Direction", "outbound-api"),
            ("ApiVersion", "2010-04-01"),
            ("SipCallId", leg.call_id.as_str()),
        ] {
            params.insert(k.into(), json!(v));
        }
        crate::metrics::outcome(&crate::metrics::get().dials, "answered");
        let sid = leg.sid.clone();
        let recording = o.record.then(|| self.record(&leg, o)).flatten();
        let mut call = Answered {
            recording,
            leg,
            signals,
            params,
            hung_up: false,
            contact: to.to_string(),
            pending_reply: None,
            registry,
        };
        let answered_by = match o.machine_detection.as_deref().map(str::to_ascii_lowercase) {
            Some(m) if m == "enable" || m == "detectmessageend" => {
                let who = detect_machine(&mut call, m == "detectmessageend").await;
                tracing::info!(call_id = %call.leg.call_id, answered_by = who.as_str(), "answering machine detection");
                call.params.insert("AnsweredBy".into(), json!(who.as_str()));
                Some(who.as_str().to_string())
            }
            _ => None,
        };
        let hung_up = call.hung_up;
        self.call = Some(call);
        if hung_up {
            return dial("completed", Some(sid), None);
        }
        let mut out = dial("in-progress", Some(sid), None);
        if let Outcome::Dial(d) = &mut out {
            d.answered_by = answered_by;
        }
        out
    }

    /// `record`: the whole call from its answer, beside whatever the flow does on it.
    fn record(&self, leg: &Leg, o: &OutgoingCall) -> Option<CallRecording> {
        let owner = call_recording::Owner {
            call_sid: leg.sid.clone(),
            call_id: leg.call_id.clone(),
            account_sid: self.calls.account_sid.clone(),
        };
        let options = call_recording::Options {
            dual: o.record_dual,
            trim: o.record_trim,
            source: "OutboundAPI",
            callback: o.recording_status_callback.clone(),
        };
        let started = CallRecording::start(
            leg.media()?,
            &self.calls.recordings,
            Some(self.calls.callbacks()),
            owner,
            options,
        );
        match started {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(call_id = %leg.call_id, error = %e, "cannot record the call; it goes on unrecorded");
                None
            }
        }
    }

    /// A voice effect on the answered call.
    async fn on_call(&mut self, effect: &Effect) -> Option<Outcome> {
        let svc = self.calls.clone();
        let call = self.call.as_mut()?;
        let call_id = call.leg.call_id.clone();
        let sid = call.leg.sid.clone();
        let media = call.leg.media_mut()?;
        let mut voice = VoiceChannel {
            media,
            signals: &mut call.signals,
            prompts: &svc.prompts,
            recordings: &svc.recordings,
            call_id: &call_id,
            call_sid: &sid,
            speech: svc.speech.as_ref(),
            http: svc.runner.http.client(),
            call_params: &call.params,
            flow_sid: &self.flow_sid,
            auth: Some((svc.account_sid.as_str(), svc.auth_token.as_str())),
            legs: svc.legs.as_deref(),
            messages: svc.outbound_messages.clone(),
            recording: call.recording.take(),
            contact: &call.contact,
            replies: Some(svc.runner.replies.clone()),
            pending_reply: call.pending_reply.take(),
            hung_up: call.hung_up,
        };
        let out = voice.perform(effect).await;
        call.recording = voice.recording.take();
        call.pending_reply = voice.pending_reply.take();
        call.hung_up = voice.hung_up;
        if call.hung_up {
            // The far end hung up: nothing to BYE.
            call.leg.ended();
        }
        out
    }
}

/// Listen to the first seconds of the answered call (Studio's `machine_detection`).
async fn detect_machine(call: &mut Answered, detect_end: bool) -> AnsweredBy {
    let Some(mut tap) = call.leg.media().map(|m| m.tap()) else {
        return AnsweredBy::Unknown;
    };
    let mut amd = Amd::new(tap.sample_rate, detect_end);
    let until = Instant::now() + Duration::from_secs(31);
    let who = loop {
        tokio::select! {
            frame = tap.frames.recv() => match frame {
                Some(f) => {
                    if let Some(who) = amd.push(&f) {
                        break who;
                    }
                }
                None => break amd.finish(),
            },
            sig = call.signals.recv() => match sig {
                Some(CallSignal::Dtmf(_) | CallSignal::Transfer { .. }) => {}
                Some(CallSignal::Hangup) | None => {
                    call.hung_up = true;
                    break amd.finish();
                }
            },
            _ = tokio::time::sleep_until(until) => break amd.finish(),
        }
    };
    if call.hung_up {
        call.leg.ended();
    }
    who
}

fn failed(error: String) -> Outcome {
    dial("failed", None, Some(error))
}

impl<M: Medium> Medium for OutgoingChannel<M> {
    async fn perform(&mut self, effect: &Effect) -> Option<Outcome> {
        match effect {
            Effect::OutgoingCall(o) => Some(self.place(o).await),
            Effect::SayPlay(_)
            | Effect::Gather(_)
            | Effect::Record(_)
            | Effect::Connect(_)
            | Effect::Redirect(_)
            | Effect::RecordCall(_)
            | Effect::SendAndWait { .. }
            | Effect::AwaitReply { .. }
                if self.call.is_some() =>
            {
                self.on_call(effect).await
            }
            _ => self.inner.perform(effect).await,
        }
    }

    fn waits_for_replies(&self) -> bool {
        self.call.is_some()
    }

    fn name(&self) -> &'static str {
        if self.call.is_some() {
            "voice call"
        } else {
            self.inner.name()
        }
    }
}

//! connect-call-to: ring the other party (one number, several at once, or a SIP endpoint)
//! through a trunk while the caller hears ringback or the far end's early media; bridge the
//! two when one answers; report `DialCallStatus` when either side ends it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::leg::{dial_outcome, dial_status, widget_credentials, Leg, LegEvents, LegRequest};
use super::registry::{CallSignal, LegEvent};
use super::stereo::{Side, StereoMixer};
use super::voice::VoiceChannel;
use crate::flow::{Connect, DialResult, Outcome};
use crate::media::engine::MediaEvent;
use crate::media::{tones, Clip};

/// Numbers one `number-multi` rings at once.
const MAX_PARALLEL: usize = 10;
/// Studio's longest connected call (4 hours).
const MAX_TIME_LIMIT_SECS: u32 = 14_400;
/// How long a leg may stay silent after its ring time before we stop waiting for its answer
/// to our CANCEL (the SIP core gives up by then too).
const CANCEL_GRACE: Duration = Duration::from_secs(40);

fn ringback() -> Arc<Clip> {
    static RINGBACK: OnceLock<Arc<Clip>> = OnceLock::new();
    RINGBACK
        .get_or_init(|| Clip::from_pcm(tones::ringback(8000)))
        .clone()
}

/// Whom a connect-call-to rings, by its noun.
fn targets(c: &Connect) -> Result<Vec<String>, String> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let t: Vec<String> = match c.noun.as_str() {
        "number" | "" => list(&c.to).into_iter().take(1).collect(),
        "number-multi" => list(&c.to).into_iter().take(MAX_PARALLEL).collect(),
        "sip" => {
            let uri = c
                .sip_endpoint
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or(&c.to);
            list(uri).into_iter().take(1).collect()
        }
        "client" => list(&c.to)
            .into_iter()
            .take(1)
            .map(|n| {
                let n = n.strip_prefix("client:").unwrap_or(&n).trim().to_string();
                format!("client:{n}")
            })
            .collect(),
        "conference" => {
            return Err(format!(
                "cannot connect to conference {:?}: conferences are not supported yet",
                c.to
            ))
        }
        other => return Err(format!("unknown connect-call-to noun {other:?}")),
    };
    if t.is_empty() {
        return Err("connect-call-to has nothing to dial (empty `to`)".into());
    }
    Ok(t)
}

fn not_connected(status: &str, error: Option<String>) -> Outcome {
    crate::metrics::outcome(&crate::metrics::get().dials, status);
    dial_outcome(status, None, error)
}

impl VoiceChannel<'_> {
    /// connect-call-to.
    pub async fn connect(&mut self, c: &Connect) -> Outcome {
        let Some(legs) = self.legs else {
            return not_connected(
                "failed",
                Some("connect-call-to needs a [[trunks]] entry to place the call through".into()),
            );
        };
        let targets = match targets(c) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(call_id = %self.call_id, error = %e, "connect-call-to refused");
                return not_connected("failed", Some(e));
            }
        };
        let credentials = if c.noun == "sip" {
            widget_credentials(&c.sip_username, &c.sip_password)
        } else {
            None
        };
        let caller_id = c
            .caller_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                self.call_params
                    .get("From")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
        let ring = Duration::from_secs(c.timeout_secs.clamp(1, 600) as u64);
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut ringing: Vec<Leg> = Vec::new();
        let mut refusals = Vec::new();
        for t in &targets {
            let req = LegRequest {
                target: t,
                caller_id: caller_id.as_deref(),
                ring_timeout: ring,
                credentials: credentials.clone(),
            };
            match legs.place(&req, &tx) {
                Ok(leg) => ringing.push(leg),
                Err(e) => {
                    tracing::warn!(call_id = %self.call_id, target = %t, error = %e, "refused to dial");
                    crate::metrics::outcome(&crate::metrics::get().dials, "refused");
                    refusals.push(e.to_string());
                }
            }
        }
        if ringing.is_empty() {
            return not_connected("failed", Some(refusals.join("; ")));
        }
        self.media.play(&ringback(), super::voice::LOOP_FOREVER);
        let give_up = Instant::now() + ring + CANCEL_GRACE;
        let single = ringing.len() == 1;
        let mut last_failure: Option<(u16, String)> = None;
        let mut early = false;
        let answered = loop {
            tokio::select! {
                sig = self.signals.recv() => match sig {
                    Some(CallSignal::Dtmf(_) | CallSignal::Transfer { .. }) => {}
                    Some(CallSignal::Hangup) | None => return self.canceled(&mut ringing),
                },
                ev = self.media.events.recv() => if ev.is_none() {
                    return self.canceled(&mut ringing);
                },
                Some((id, ev)) = events.recv() => {
                    let Some(i) = ringing.iter().position(|l| l.call_id == id) else {
                        continue;
                    };
                    match ev {
                        LegEvent::Progress { status, early_sdp } => {
                            tracing::info!(call_id = %self.call_id, leg = %id, status, early_media = early_sdp.is_some(), "far end progress");
                            // Early media only when one party rings: several at once would talk over each other.
                            if let (true, Some(sdp)) = (single, early_sdp) {
                                if let Ok(m) = ringing[i].start_media(&sdp) {
                                    if !early {
                                        self.media.stop_playout();
                                        m.relay_to(self.media);
                                        early = true;
                                    }
                                }
                            }
                        }
                        LegEvent::Answered { sdp } => {
                            let mut leg = ringing.swap_remove(i);
                            if let Err(e) = leg.start_media(&sdp) {
                                tracing::warn!(call_id = %self.call_id, leg = %id, error = %e, "far end answered with unusable SDP; hanging it up");
                                leg.hangup();
                                last_failure = Some((488, e.to_string()));
                            } else {
                                leg.answered();
                                break leg;
                            }
                        }
                        LegEvent::Failed { status, reason } => {
                            tracing::info!(call_id = %self.call_id, leg = %id, status, %reason, "far end did not answer");
                            let mut leg = ringing.swap_remove(i);
                            leg.ended();
                            last_failure = Some((status, reason));
                        }
                        LegEvent::HungUp => {
                            let mut leg = ringing.swap_remove(i);
                            leg.ended();
                            last_failure.get_or_insert((487, "ended before the answer".into()));
                        }
                        LegEvent::Dtmf(_) => {}
                    }
                    if ringing.is_empty() {
                        self.media.stop_playout();
                        self.media.unbridge();
                        let (status, reason) = last_failure.unwrap_or((408, "no answer".into()));
                        let s = dial_status(status);
                        return not_connected(s, (s == "failed").then(|| format!("{status} {reason}")));
                    }
                }
                _ = tokio::time::sleep_until(give_up) => {
                    for l in &mut ringing {
                        l.hangup();
                    }
                    self.media.stop_playout();
                    self.media.unbridge();
                    return not_connected("no-answer", None);
                }
            }
        };
        // The others who rang are cancelled as they drop.
        drop(ringing);
        self.bridged(answered, c, events).await
    }

    /// The far end answered: relay both ways until one side hangs up or the time limit.
    async fn bridged(&mut self, mut leg: Leg, c: &Connect, mut events: LegEvents) -> Outcome {
        self.media.stop_playout();
        let Some(far) = leg.media() else {
            return not_connected("failed", Some("the far end's media did not start".into()));
        };
        self.media.bridge(far);
        if let (Some(digits), Some(m)) = (
            c.send_digits.as_deref().filter(|d| !d.trim().is_empty()),
            leg.media_mut(),
        ) {
            m.send_digits(digits);
        }
        let metrics = crate::metrics::get();
        metrics.bridges_active.inc();
        tracing::info!(call_id = %self.call_id, leg = %leg.call_id, trunk = %leg.trunk(), target = %leg.target, "bridged");
        let limit = match c.time_limit_secs {
            0 => MAX_TIME_LIMIT_SECS,
            n => n.min(MAX_TIME_LIMIT_SECS),
        };
        let until = Instant::now() + Duration::from_secs(limit as u64);
        let mut taping = c.record.then(|| self.start_taping(&leg)).flatten();
        // The two taps apart from the recorder, so both can be awaited at once.
        let (mut left, mut right) = match taping.as_mut() {
            Some(t) => (t.left.take(), t.right.take()),
            None => (None, None),
        };
        let caller_left = loop {
            tokio::select! {
                Some(frame) = tap_frame(left.as_mut()) => {
                    if let (Some(t), Some(tap)) = (taping.as_mut(), left.as_ref()) {
                        t.add(Side::Left, &frame, tap.sample_rate);
                    }
                }
                Some(frame) = tap_frame(right.as_mut()) => {
                    if let (Some(t), Some(tap)) = (taping.as_mut(), right.as_ref()) {
                        t.add(Side::Right, &frame, tap.sample_rate);
                    }
                }
                sig = self.signals.recv() => match sig {
                    Some(CallSignal::Dtmf('*')) if c.hangup_on_star => break false,
                    Some(CallSignal::Dtmf(d)) => {
                        if let Some(m) = leg.media_mut() {
                            m.send_digits(&d.to_string());
                        }
                    }
                    Some(CallSignal::Transfer { .. }) => {}
                    Some(CallSignal::Hangup) | None => break true,
                },
                ev = self.media.events.recv() => match ev {
                    None => break true,
                    Some(MediaEvent::Dtmf { digit: '*', .. }) if c.hangup_on_star => {
                        tracing::info!(call_id = %self.call_id, leg = %leg.call_id, "caller pressed * (hangupOnStar)");
                        break false;
                    }
                    Some(_) => {}
                },
                ev = leg.media_event() => if let Some(MediaEvent::Dtmf { .. }) = ev {
                    // Relayed by the media engine itself.
                },
                Some((_, ev)) = events.recv() => match ev {
                    LegEvent::HungUp | LegEvent::Failed { .. } => {
                        leg.ended();
                        break false;
                    }
                    LegEvent::Dtmf(d) => {
                        self.media.send_digits(&d.to_string());
                    }
                    _ => {}
                },
                _ = tokio::time::sleep_until(until) => {
                    tracing::info!(call_id = %self.call_id, leg = %leg.call_id, limit, "time limit reached");
                    break false;
                }
            }
        };
        self.media.unbridge();
        let recording_url = match taping.take() {
            Some(mut t) => {
                (t.left, t.right) = (left.take(), right.take());
                self.finish_taping(t)
            }
            None => None,
        };
        if let Some(m) = leg.media() {
            m.unbridge();
            let (dropped, padded) = self.media.bridge_stats();
            let (sent, received) = m.stats();
            tracing::info!(call_id = %self.call_id, leg = %leg.call_id, far_rtp_sent = sent, far_rtp_received = received, dropped_bytes = dropped, padded_frames = padded, "bridge ended");
        }
        metrics.bridges_active.dec();
        let duration = leg.duration_secs();
        leg.hangup();
        crate::metrics::outcome(&metrics.dials, "completed");
        if caller_left {
            self.caller_left();
        }
        Outcome::Dial(Box::new(DialResult {
            status: "completed".into(),
            sid: Some(leg.sid.clone()),
            duration_secs: duration,
            recording_url,
            caller_hung_up: caller_left,
            ..Default::default()
        }))
    }

    /// The caller hung up while the other legs rang: CANCEL them all (Twilio's `canceled`).
    fn canceled(&mut self, ringing: &mut [Leg]) -> Outcome {
        for l in ringing.iter_mut() {
            l.hangup();
        }
        crate::metrics::outcome(&crate::metrics::get().dials, "canceled");
        tracing::info!(call_id = %self.call_id, "the caller hung up while the call out rang");
        self.caller_left();
        Outcome::Dial(Box::new(DialResult {
            status: "canceled".into(),
            sid: (ringing.len() == 1).then(|| ringing[0].sid.clone()),
            caller_hung_up: true,
            ..Default::default()
        }))
    }

    /// `record`: tap both legs into a stereo recording (left the caller, right the other
    /// party). A recording that cannot start is logged; the call goes on unrecorded.
    fn start_taping(&self, leg: &Leg) -> Option<Taping> {
        let far = leg.media()?;
        let rec = match self.recordings.start_stereo(8000, self.call_sid) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "cannot record the bridged call");
                return None;
            }
        };
        Some(Taping {
            rec,
            mixer: StereoMixer::default(),
            left: Some(self.media.tap()),
            right: Some(far.tap()),
            failed: false,
        })
    }

    /// Stop recording and save it atomically; its URL, or None (logged) when it failed.
    fn finish_taping(&self, mut t: Taping) -> Option<String> {
        // Frames still in flight belong to the recording too.
        for (side, tap) in [(Side::Left, t.left.take()), (Side::Right, t.right.take())] {
            if let Some(mut tap) = tap {
                while let Ok(f) = tap.frames.try_recv() {
                    t.mixer.push(side, &f, tap.sample_rate);
                }
            }
        }
        let (l, r) = t.mixer.flush();
        if t.failed || t.rec.write_stereo(&l, &r).is_err() {
            tracing::error!(call_id = %self.call_id, "recording of the bridged call failed; discarded");
            self.recordings.discard(t.rec);
            return None;
        }
        match self.recordings.finish(t.rec, false, self.call_sid) {
            Ok(saved) => {
                tracing::info!(call_id = %self.call_id, recording = %saved.sid, seconds = saved.duration_secs, "bridged call recorded");
                Some(saved.url)
            }
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "recording of the bridged call could not be saved");
                None
            }
        }
    }
}

/// A bridged call being recorded.
struct Taping {
    rec: super::recordings::Recorder,
    mixer: StereoMixer,
    left: Option<crate::media::engine::Tap>,
    right: Option<crate::media::engine::Tap>,
    failed: bool,
}

impl Taping {
    fn add(&mut self, side: Side, frame: &[i16], rate: u32) {
        self.mixer.push(side, frame, rate);
        let (l, r) = self.mixer.take();
        if !l.is_empty() && !self.failed && self.rec.write_stereo(&l, &r).is_err() {
            self.failed = true;
        }
    }
}

/// The next frame of a tap, or never when there is none.
async fn tap_frame(tap: Option<&mut crate::media::engine::Tap>) -> Option<Vec<i16>> {
    match tap {
        Some(t) => t.frames.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(noun: &str, to: &str) -> Connect {
        Connect {
            noun: noun.into(),
            to: to.into(),
            caller_id: None,
            timeout_secs: 30,
            time_limit_secs: 0,
            record: false,
            sip_endpoint: None,
            sip_username: None,
            sip_password: None,
            send_digits: None,
            hangup_on_star: false,
        }
    }

    #[test]
    fn nouns_name_whom_to_ring() {
        assert_eq!(
            targets(&connect("number", "+15550001")).unwrap(),
            ["+15550001"]
        );
        assert_eq!(
            targets(&connect("number-multi", "+1555000, +1555001,,")).unwrap(),
            ["+1555000", "+1555001"]
        );
        let mut sip = connect("sip", "");
        sip.sip_endpoint = Some("sip:desk@pbx.example".into());
        assert_eq!(targets(&sip).unwrap(), ["sip:desk@pbx.example"]);
        assert!(targets(&connect("number", " ")).is_err());
        assert!(targets(&connect("conference", "room"))
            .unwrap_err()
            .contains("conference"));
        assert_eq!(
            targets(&connect("client", "alice")).unwrap(),
            ["client:alice"]
        );
        assert_eq!(
            targets(&connect("client", "client:bob")).unwrap(),
            ["client:bob"]
        );
    }
}

//! The voice channel: performs the flow's voice effects on a call's media session and reports
//! the outcome. It knows prompts, DTMF and recordings, not widgets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::prompts::Prompts;
use super::recordings::Recordings;
use super::registry::CallSignal;
use crate::flow::{Effect, Gather, Outcome, Prompt, Record};
use crate::media::engine::MediaEvent;
use crate::media::vad::Vad;
use crate::media::{tones, Clip, MediaSession};
use crate::runner::Medium;

/// Studio's `loop: 0` means "until the caller hangs up"; Twilio caps it at 1,000 repetitions.
pub(super) const LOOP_FOREVER: u32 = 1000;
const BEEP_HZ: f64 = 1000.0;
const BEEP_MS: u32 = 400;

pub struct VoiceChannel<'a> {
    pub media: &'a mut MediaSession,
    pub signals: &'a mut mpsc::UnboundedReceiver<CallSignal>,
    pub prompts: &'a Prompts,
    pub recordings: &'a Recordings,
    pub call_id: &'a str,
    pub call_sid: &'a str,
    /// Speech recognition for gathers with speech input, when configured.
    pub speech: Option<&'a Arc<dyn crate::speech::Recognizer>>,
    /// What TwiML redirects need: the HTTP client, `trigger.call`, the flow, the API account.
    pub http: &'a reqwest::Client,
    pub call_params: &'a serde_json::Map<String, serde_json::Value>,
    pub flow_sid: &'a str,
    pub auth: Option<(&'a str, &'a str)>,
    /// Second legs through trunks (connect-call-to), when any trunk is configured.
    pub legs: Option<&'a super::leg::Legs>,
    /// The messaging providers (send-message from a call).
    pub messages: Option<std::sync::Arc<dyn crate::messaging::MessageSink>>,
    /// The recording record-call started (or make-outgoing-call-v2 `record`), until stopped
    /// or the call ends.
    pub recording: Option<super::call_recording::CallRecording>,
    /// The other party's number (`contact.channel.address`): whose SMS reply a
    /// send-and-wait-for-reply waits for, through `replies`.
    pub contact: &'a str,
    pub replies: Option<Arc<crate::runner::replies::Replies>>,
    /// A send-and-wait's wait, registered before its question leaves (a fast reply must
    /// reach the call, not start a conversation).
    pub pending_reply: Option<crate::runner::replies::ReplyWait>,
    pub hung_up: bool,
}

/// Something that happened on the call while we waited.
enum Happening {
    Played(u64),
    Digit(char),
    HungUp,
    Audio(Vec<i16>),
    Transfer(u16, bool),
    Deadline,
}

impl VoiceChannel<'_> {
    /// Wait for the next thing on the call, or `deadline`.
    async fn next(
        &mut self,
        deadline: Option<Instant>,
        tap: Option<&mut mpsc::UnboundedReceiver<Vec<i16>>>,
    ) -> Happening {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let audio = async {
            match tap {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = self.media.events.recv() => match ev {
                Some(MediaEvent::PlayoutDone { id }) => Happening::Played(id),
                Some(MediaEvent::Dtmf { digit, source }) => {
                    tracing::info!(call_id = %self.call_id, %digit, ?source, "DTMF");
                    Happening::Digit(digit)
                }
                None => Happening::HungUp,
            },
            sig = self.signals.recv() => match sig {
                Some(CallSignal::Dtmf(d)) => Happening::Digit(d),
                Some(CallSignal::Transfer { status, done }) => Happening::Transfer(status, done),
                Some(CallSignal::Hangup) | None => Happening::HungUp,
            },
            Some(frame) = audio => Happening::Audio(frame),
            _ = sleep => Happening::Deadline,
        }
    }

    /// send-and-wait-for-reply during a call: the caller's SMS (delivered by the messaging
    /// side through `replies`) while the call goes on in silence, or the timeout.
    fn reply_wait(&self) -> Option<crate::runner::replies::ReplyWait> {
        let key = crate::runner::replies::session_key(self.flow_sid, self.contact);
        Some(self.replies.as_ref()?.wait(&key, self.call_sid))
    }

    async fn await_reply(&mut self, timeout_secs: u32) -> Outcome {
        let Some(mut wait) = self.pending_reply.take().or_else(|| self.reply_wait()) else {
            return Outcome::Timeout;
        };
        tracing::info!(call_id = %self.call_id, contact = %self.contact, timeout_secs, "waiting for the caller's SMS reply");
        let until = Instant::now() + Duration::from_secs(timeout_secs.clamp(1, 86_400) as u64);
        loop {
            tokio::select! {
                Some(fields) = wait.replies.recv() => return Outcome::Reply { fields },
                h = self.next(Some(until), None) => match h {
                    Happening::HungUp => return self.caller_left(),
                    Happening::Deadline => return Outcome::Timeout,
                    _ => {}
                },
            }
        }
    }

    /// Status callbacks signed with the API auth token; None without API credentials.
    pub(super) fn callbacks(&self) -> Option<super::callbacks::Callbacks> {
        self.auth.map(|(_, token)| super::callbacks::Callbacks {
            http: self.http.clone(),
            auth_token: token.to_string(),
        })
    }

    /// The caller hung up: stop what plays and report the hangup to the flow.
    pub(super) fn caller_left(&mut self) -> Outcome {
        self.hung_up = true;
        self.media.stop_playout();
        Outcome::Hangup
    }

    /// Queue a prompt (its say/play clips, `loop` times, then its digits); returns the id of
    /// the last queued item, or None when there is nothing to play. Speech that cannot be
    /// rendered is an error; a `play` URL that cannot be fetched is logged and skipped, as
    /// Twilio's <Play> does.
    async fn queue_prompt(&mut self, p: &Prompt) -> Result<Option<u64>, String> {
        let loops = if p.loop_count == 0 {
            LOOP_FOREVER
        } else {
            p.loop_count
        };
        let mut clip: Option<Arc<Clip>> = None;
        if let Some(text) = p.say.as_deref().filter(|t| !t.trim().is_empty()) {
            let voice = p.voice.as_deref().unwrap_or("alice");
            let language = p.language.as_deref().unwrap_or("en-US");
            match self.prompts.say(text, voice, language).await {
                Ok(c) => clip = Some(c),
                Err(e) => {
                    // Not a silent call: the widget fails and the step log says why.
                    tracing::error!(call_id = %self.call_id, error = %e, "say failed");
                    return Err(e.to_string());
                }
            }
        } else if let Some(url) = p.play.as_deref().filter(|t| !t.trim().is_empty()) {
            match self.prompts.play(url).await {
                Ok(c) => clip = Some(c),
                Err(e) => tracing::error!(call_id = %self.call_id, error = %e, "play failed"),
            }
        }
        let mut last = clip.map(|c| self.media.play(&c, loops));
        if let Some(digits) = p.digits.as_deref().filter(|d| !d.trim().is_empty()) {
            // RFC 4733 events, or in-band tones when the caller has no telephone-event.
            last = Some(self.media.send_digits(digits));
        }
        Ok(last)
    }

    /// say-play: speak or play the prompt `loop` times (and send its digits), then `AudioComplete`.
    pub async fn say_play(&mut self, p: &Prompt) -> Outcome {
        let last = match self.queue_prompt(p).await {
            Ok(Some(last)) => last,
            Ok(None) => return Outcome::AudioComplete,
            Err(error) => return Outcome::Failed { error },
        };
        loop {
            match self.next(None, None).await {
                Happening::Played(id) if id == last => return Outcome::AudioComplete,
                Happening::HungUp => return self.caller_left(),
                _ => {}
            }
        }
    }

    /// gather-input-on-call: prompt, then collect digits until `number_of_digits`, the finish
    /// key, or `timeout` seconds without input (measured from the end of the prompt); with
    /// speech input, an utterance (voice activity, then `speech_timeout` of silence) goes to the
    /// recogniser.
    pub async fn gather(&mut self, g: &Gather) -> Outcome {
        let timeout = Duration::from_secs(g.timeout_secs.clamp(1, 600) as u64);
        let mut prompt = match self.queue_prompt(&g.prompt).await {
            Ok(p) => p,
            Err(error) => return Outcome::Failed { error },
        };
        let mut deadline = prompt.is_none().then(|| Instant::now() + timeout);
        let mut digits = String::new();
        if g.input.speech && self.speech.is_none() {
            // Once per process: Studio's default input is "dtmf speech", so this is every call.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(call_id = %self.call_id, "speech input requested but no speech recogniser is configured ([speech] engine); speech will time out (logged once)");
            } else {
                tracing::debug!(call_id = %self.call_id, "speech input requested without a recogniser");
            }
        }
        let mut tap = (g.input.speech && self.speech.is_some()).then(|| self.media.tap());
        let rate = tap.as_ref().map(|t| t.sample_rate).unwrap_or(8000);
        let mut vad = Vad::new(rate);
        let frame_len = vad.frame_len();
        let speech_end = speech_end(g.speech_timeout.as_deref());
        let max_utterance = rate as usize * 30;
        let (mut pending, mut utterance) = (Vec::new(), Vec::new());
        let mut talking = false;
        loop {
            match self
                .next(deadline, tap.as_mut().map(|t| &mut t.frames))
                .await
            {
                Happening::Played(id) if Some(id) == prompt => {
                    prompt = None;
                    if !talking {
                        deadline = Some(Instant::now() + timeout);
                    }
                }
                Happening::Digit(d) if g.input.dtmf => {
                    if prompt.is_some() && g.stop_gather {
                        self.media.stop_playout(); // barge-in
                        prompt = None;
                    }
                    if g.finish_on_key.contains(d) {
                        return self.end_gather(digits);
                    }
                    digits.push(d);
                    if g.number_of_digits
                        .is_some_and(|n| n > 0 && digits.len() >= n as usize)
                    {
                        return self.end_gather(digits);
                    }
                    if prompt.is_none() {
                        deadline = Some(Instant::now() + timeout);
                    }
                }
                Happening::Audio(frame) => {
                    pending.extend_from_slice(&frame);
                    let mut voiced_now = false;
                    while pending.len() >= frame_len {
                        if vad.is_speech(&pending[..frame_len]) {
                            voiced_now = true;
                            talking = true;
                        }
                        if talking && utterance.len() < max_utterance {
                            utterance.extend_from_slice(&pending[..frame_len]);
                        }
                        pending.drain(..frame_len);
                    }
                    if voiced_now {
                        if prompt.is_some() && g.stop_gather {
                            self.media.stop_playout();
                            prompt = None;
                        }
                        deadline = Some(Instant::now() + speech_end);
                    }
                }
                Happening::Deadline => {
                    drop(tap.take()); // stop listening while the recogniser works
                    if talking && digits.is_empty() {
                        if let Some(r) = self.speech {
                            let hints: Vec<String> = g
                                .hints
                                .as_deref()
                                .unwrap_or("")
                                .split(',')
                                .map(|h| h.trim().to_string())
                                .filter(|h| !h.is_empty())
                                .collect();
                            match r.recognize(&utterance, rate, &hints).await {
                                Ok(Some(rec)) => {
                                    tracing::info!(call_id = %self.call_id, result = %rec.text, "speech recognised");
                                    self.media.stop_playout();
                                    return Outcome::Speech {
                                        result: rec.text,
                                        confidence: rec.confidence,
                                    };
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!(call_id = %self.call_id, error = %e, "speech recognition failed")
                                }
                            }
                        }
                    }
                    return self.end_gather(digits);
                }
                Happening::HungUp => return self.caller_left(),
                _ => {}
            }
        }
    }

    fn end_gather(&mut self, digits: String) -> Outcome {
        self.media.stop_playout();
        // No digits is Studio's `timeout`; the engine maps empty Digits to it.
        Outcome::Digits { digits }
    }

    /// record-voicemail: beep, then record the caller until silence, the finish key,
    /// `max_length` or hang-up.
    pub async fn record(&mut self, r: &Record) -> Outcome {
        if r.play_beep {
            let beep = Clip::from_pcm(tones::beep(BEEP_HZ, BEEP_MS, 8000));
            let id = self.media.play(&beep, 1);
            loop {
                match self.next(None, None).await {
                    Happening::Played(done) if done == id => break,
                    Happening::HungUp => return self.caller_left(),
                    _ => {}
                }
            }
        }
        let mut tap = self.media.tap();
        let mut rec = match self.recordings.start(tap.sample_rate, self.call_sid) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        let mut vad = Vad::new(tap.sample_rate);
        let frame_len = vad.frame_len();
        let mut pending: Vec<i16> = Vec::with_capacity(frame_len * 2);
        let silence = Duration::from_secs(r.timeout_secs.clamp(1, 3600) as u64);
        let end_by =
            Instant::now() + Duration::from_secs(r.max_length_secs.clamp(1, 14_400) as u64);
        let mut last_voice = Instant::now();
        let mut heard = false;
        let mut hung_up = false;
        loop {
            let deadline = end_by.min(last_voice + silence);
            match self.next(Some(deadline), Some(&mut tap.frames)).await {
                Happening::Audio(pcm) => {
                    if let Err(e) = rec.write(&pcm) {
                        return Outcome::Failed {
                            error: e.to_string(),
                        };
                    }
                    pending.extend_from_slice(&pcm);
                    while pending.len() >= frame_len {
                        if vad.is_speech(&pending[..frame_len]) {
                            heard = true;
                            last_voice = Instant::now();
                        }
                        pending.drain(..frame_len);
                    }
                }
                Happening::Digit(d) if r.finish_on_key.contains(d) => break,
                Happening::HungUp => {
                    hung_up = true;
                    self.hung_up = true;
                    break;
                }
                Happening::Deadline => break,
                _ => {}
            }
        }
        // Frames still in flight when we stopped belong to the recording too.
        while let Ok(pcm) = tap.frames.try_recv() {
            let _ = rec.write(&pcm);
        }
        drop(tap);
        if !heard {
            self.recordings.discard(rec);
            return if hung_up {
                Outcome::Hangup
            } else {
                Outcome::NoAudio
            };
        }
        let seconds = rec.seconds();
        match self.recordings.finish(rec, r.trim_silence, self.call_sid) {
            Ok(saved) => {
                tracing::info!(call_id = %self.call_id, recording = %saved.sid, seconds, "recording saved");
                self.after_voicemail(r, &saved);
                Outcome::Recording {
                    url: saved.url,
                    sid: saved.sid,
                    duration_secs: saved.duration_secs,
                    transcription: None,
                    hung_up,
                }
            }
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        }
    }
}

impl VoiceChannel<'_> {
    /// TwiML `<Refer>`: ask the caller's side to call `target` instead (SIP REFER), and wait
    /// for how it went. The target must be one a trunk may dial, as for any call out.
    pub async fn refer(&mut self, target: &str) -> crate::twiml::Transfer {
        use crate::twiml::Transfer;
        let refused = |why: String| Transfer {
            completed: false,
            sip_code: 0,
            hung_up: false,
            error: Some(why),
        };
        let Some(legs) = self.legs else {
            return refused(
                "<Refer> needs a [[trunks]] entry whose dial_allow permits the target".into(),
            );
        };
        if let Err(e) = legs.outbound.permits(target) {
            tracing::warn!(call_id = %self.call_id, %target, error = %e, "refused to transfer");
            return refused(e.to_string());
        }
        tracing::info!(call_id = %self.call_id, %target, "transferring the call (REFER)");
        legs.sip.send(crate::sip::Command::Refer {
            call_id: self.call_id.to_string(),
            target: target.to_string(),
        });
        // The REFER's own answer comes within 32 s (timer F); the transfer itself, reported
        // by NOTIFY, within a ring time.
        let until = Instant::now() + Duration::from_secs(90);
        let mut accepted = false;
        loop {
            match self.next(Some(until), None).await {
                Happening::Transfer(status, done) => {
                    if (200..300).contains(&status) && !done && !accepted {
                        accepted = true; // 202: NOTIFYs follow
                        continue;
                    }
                    if done {
                        return Transfer {
                            completed: (200..300).contains(&status),
                            sip_code: status,
                            hung_up: false,
                            error: None,
                        };
                    }
                }
                Happening::HungUp => {
                    self.hung_up = true;
                    // Transferred: the caller's side hangs up on us once it is connected.
                    return Transfer {
                        completed: accepted,
                        sip_code: if accepted { 200 } else { 0 },
                        hung_up: true,
                        error: None,
                    };
                }
                Happening::Deadline => {
                    return Transfer {
                        completed: false,
                        sip_code: 408,
                        hung_up: false,
                        error: None,
                    }
                }
                _ => {}
            }
        }
    }
}

/// Studio's `speech_timeout`: seconds of silence that end an utterance, or `auto` (1 s).
fn speech_end(v: Option<&str>) -> Duration {
    v.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(60.0)))
        .unwrap_or(Duration::from_secs(1))
}

impl Medium for VoiceChannel<'_> {
    async fn perform(&mut self, effect: &Effect) -> Option<Outcome> {
        if self.hung_up {
            return Some(Outcome::Hangup);
        }
        match effect {
            Effect::SayPlay(p) => Some(self.say_play(p).await),
            Effect::Gather(g) => Some(self.gather(g).await),
            Effect::Record(r) => Some(self.record(r).await),
            Effect::Connect(c) => Some(self.connect(c).await),
            Effect::RecordCall(r) => Some(self.record_call(r)),
            Effect::AwaitReply { timeout_secs } => Some(self.await_reply(*timeout_secs).await),
            // The "text me the link" pattern: sent while the call goes on.
            Effect::SendMessage(_) | Effect::SendAndWait { .. } => {
                let waits = matches!(effect, Effect::SendAndWait { .. });
                if waits {
                    self.pending_reply = self.reply_wait();
                }
                let out = match &self.messages {
                    Some(sink) => {
                        let mut m = crate::messaging::MessagingChannel { sink: sink.clone() };
                        m.perform(effect).await
                    }
                    None => None,
                };
                if waits && !matches!(out, Some(Outcome::MessageSent { .. })) {
                    self.pending_reply = None; // nothing was asked: nothing to wait for
                }
                out
            }
            Effect::Redirect(r) => {
                let env = crate::twiml::RedirectEnv {
                    http: self.http,
                    call: self.call_params,
                    flow_sid: self.flow_sid,
                    auth: self.auth,
                    limits: crate::twiml::Limits::default(),
                };
                let outcome = crate::twiml::run_redirect(self, &env, r).await;
                // A redirect that timed out may have left a prompt playing.
                self.media.stop_playout();
                Some(outcome)
            }
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        "voice call"
    }

    fn waits_for_replies(&self) -> bool {
        true
    }
}

impl crate::twiml::VoiceOps for VoiceChannel<'_> {
    async fn say_play(&mut self, p: &Prompt) -> Outcome {
        VoiceChannel::say_play(self, p).await
    }

    async fn gather(&mut self, g: &Gather) -> Outcome {
        VoiceChannel::gather(self, g).await
    }

    async fn record(&mut self, r: &Record) -> Outcome {
        VoiceChannel::record(self, r).await
    }

    async fn pause(&mut self, d: Duration) -> Outcome {
        let until = Instant::now() + d;
        loop {
            match self.next(Some(until), None).await {
                Happening::Deadline => return Outcome::AudioComplete,
                Happening::HungUp => return self.caller_left(),
                _ => {}
            }
        }
    }

    async fn dial(&mut self, c: &crate::flow::Connect) -> Outcome {
        self.connect(c).await
    }

    async fn send_message(&mut self, m: &crate::flow::Message) -> Outcome {
        let effect = Effect::SendMessage(m.clone());
        match &self.messages {
            Some(sink) => {
                let mut channel = crate::messaging::MessagingChannel { sink: sink.clone() };
                channel
                    .perform(&effect)
                    .await
                    .unwrap_or_else(|| Outcome::DeliveryFailure {
                        error: "no messaging provider".into(),
                    })
            }
            None => Outcome::DeliveryFailure {
                error: "no messaging provider is configured".into(),
            },
        }
    }

    async fn refer(&mut self, target: &str) -> crate::twiml::Transfer {
        VoiceChannel::refer(self, target).await
    }

    fn hangup(&mut self) {
        // The flow ends on the Hangup outcome that follows; the call then sends its BYE.
        self.media.stop_playout();
    }
}

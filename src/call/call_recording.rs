//! A recording of a whole call (make-outgoing-call-v2 `record`, record-call): what the gateway sends (its
//! prompts, or the other party of a bridge) and what the far end sends, from answer to hang-up,
//! mixed to mono or kept apart in two channels (`recording_channels = dual`). It runs in its own
//! task beside the flow, so gathers, voicemails and bridges on the same call go on as usual
//! (each has its own tap); it is saved atomically when the call ends or the recording is
//! stopped, and `recording_status_callback` is told.

use tokio::sync::oneshot;

use super::callbacks::Callbacks;
use super::recordings::{Recorder, Recordings};
use super::stereo::{Side, StereoMixer};
use super::voice::VoiceChannel;
use crate::flow::{Outcome, RecordCall};
use crate::media::engine::{MediaSession, Tap};

/// How often the recording task collects audio (the stereo mixer pads a side that lags more
/// than 160 ms, so this stays well under it).
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How a call is to be recorded.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Two channels (left what the gateway sent, right the far end) instead of one mix.
    pub dual: bool,
    /// Trim leading and trailing silence (mono only, as Twilio).
    pub trim: bool,
    /// Twilio's `RecordingSource` (`OutboundAPI`, `StartCallRecordingAPI`, ...).
    pub source: &'static str,
    /// `recording_status_callback`.
    pub callback: Option<String>,
}

/// Who the recording belongs to.
#[derive(Clone)]
pub struct Owner {
    pub call_sid: String,
    pub call_id: String,
    pub account_sid: String,
}

/// A call being recorded; dropping it stops and saves the recording.
pub struct CallRecording {
    stop: Option<oneshot::Sender<()>>,
}

impl CallRecording {
    /// Start recording `media` from now on. An error (the recording directory) is for the caller
    /// to log: the call goes on unrecorded.
    pub fn start(
        media: &MediaSession,
        recordings: &Recordings,
        callbacks: Option<Callbacks>,
        owner: Owner,
        options: Options,
    ) -> Result<CallRecording, super::recordings::RecordingError> {
        let channels = if options.dual { 2 } else { 1 };
        let mut rec = recordings.start_with(8000, channels, &owner.call_sid)?;
        rec.set_source(options.source);
        let (stop, stopped) = oneshot::channel();
        let job = Job {
            sent: media.tap_sent(),
            heard: media.tap(),
            mixer: StereoMixer::default(),
            rec,
            failed: false,
            dual: options.dual,
            started: crate::store::now_rfc3339(),
        };
        let recordings = recordings.clone();
        tokio::spawn(async move {
            let job = job.run(stopped).await;
            // Finishing syncs and renames files: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || {
                job.save(&recordings, callbacks, &owner, &options)
            })
            .await;
        });
        Ok(CallRecording { stop: Some(stop) })
    }
}

impl Drop for CallRecording {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Job {
    sent: Tap,
    heard: Tap,
    mixer: StereoMixer,
    rec: Recorder,
    failed: bool,
    dual: bool,
    started: String,
}

impl Job {
    /// Record until stopped or until the call's media ends. The task wakes every
    /// [`DRAIN_EVERY`] and takes what both taps hold, not once per frame: thousands of
    /// recorded calls would otherwise cost a hundred task wake-ups a second each.
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) -> Job {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.drain() {
                        break;
                    }
                    // What we send keeps time: the far end cannot stretch the recording.
                    let (l, r) = self.mixer.take_left_clocked();
                    self.write(&l, &r);
                }
                _ = &mut stopped => break,
            }
        }
        // Frames already in flight belong to the recording too.
        self.drain();
        let (l, r) = self.mixer.flush();
        self.write(&l, &r);
        self
    }

    /// Move what both taps hold into the mixer; false once the call's media has ended.
    fn drain(&mut self) -> bool {
        use tokio::sync::mpsc::error::TryRecvError;
        let mut open = true;
        for (side, tap) in [(Side::Left, &mut self.sent), (Side::Right, &mut self.heard)] {
            loop {
                match tap.frames.try_recv() {
                    Ok(f) => self.mixer.push(side, &f, tap.sample_rate),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        open
    }

    fn write(&mut self, l: &[i16], r: &[i16]) {
        if l.is_empty() || self.failed {
            return;
        }
        let written = if self.dual {
            self.rec.write_stereo(l, r)
        } else {
            let mixed: Vec<i16> = l
                .iter()
                .zip(r)
                .map(|(&a, &b)| a.saturating_add(b))
                .collect();
            self.rec.write(&mixed)
        };
        self.failed = written.is_err();
    }

    /// Save the recording (atomically) and tell the status callback.
    fn save(
        self,
        recordings: &Recordings,
        callbacks: Option<Callbacks>,
        owner: &Owner,
        options: &Options,
    ) {
        let Job {
            rec,
            failed,
            started,
            sent,
            heard,
            ..
        } = self;
        // Stop listening before the (blocking) file work.
        drop((sent, heard));
        let saved = if failed {
            recordings.discard(rec);
            None
        } else {
            match recordings.finish(rec, options.trim, &owner.call_sid) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(call_id = %owner.call_id, error = %e, "call recording could not be saved");
                    None
                }
            }
        };
        match &saved {
            Some(s) => {
                tracing::info!(call_id = %owner.call_id, recording = %s.sid, seconds = s.duration_secs, "call recorded")
            }
            None => tracing::error!(call_id = %owner.call_id, "call recording failed; discarded"),
        }
        let (Some(cb), Some(url)) = (callbacks, options.callback.as_deref()) else {
            return;
        };
        if url.trim().is_empty() {
            return;
        }
        let mut params = super::callbacks::recording_status(
            &owner.account_sid,
            &owner.call_sid,
            saved.as_ref(),
            if options.dual { 2 } else { 1 },
            options.source,
        );
        params.push(("RecordingStartTime".into(), started));
        params.push(("RecordingTrack".into(), "both".into()));
        cb.post("recording_status_callback", url, params);
    }
}

impl VoiceChannel<'_> {
    /// record-call: start recording the whole call, or stop (and save) the recording.
    pub fn record_call(&mut self, r: &RecordCall) -> Outcome {
        let failed = |error: &str| Outcome::Failed {
            error: error.to_string(),
        };
        if !r.start {
            return match self.recording.take() {
                Some(rec) => {
                    drop(rec); // stops it; saved in the background
                    Outcome::Done
                }
                None => failed("record-call: this call is not being recorded"),
            };
        }
        if self.recording.is_some() {
            return failed("record-call: this call is already being recorded");
        }
        let callbacks = self.callbacks();
        let owner = Owner {
            call_sid: self.call_sid.to_string(),
            call_id: self.call_id.to_string(),
            account_sid: self.recordings.account_sid.clone(),
        };
        let options = Options {
            dual: r.dual,
            trim: r.trim,
            source: "StartCallRecordingAPI",
            callback: r.recording_status_callback.clone(),
        };
        match CallRecording::start(self.media, self.recordings, callbacks, owner, options) {
            Ok(rec) => {
                tracing::info!(call_id = %self.call_id, "call recording started");
                self.recording = Some(rec);
                Outcome::Done
            }
            Err(e) => {
                tracing::error!(call_id = %self.call_id, error = %e, "cannot record the call");
                failed(&format!("record-call: {e}"))
            }
        }
    }
}

//! The voice channel: performs the flow's voice effects on a call's media session and reports
//! the outcome. It knows prompts and media, not widgets.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::registry::CallSignal;
use crate::channel::Medium;
use crate::flow::{Effect, Outcome, Prompt};
use crate::media::tts::Tts;
use crate::media::{MediaEvent, MediaSession};

/// Studio's `loop: 0` means "until the caller hangs up"; Twilio caps it at 1,000 repetitions.
const LOOP_FOREVER: u32 = 1000;

pub struct VoiceChannel<'a> {
    pub media: &'a mut MediaSession,
    pub signals: &'a mut mpsc::UnboundedReceiver<CallSignal>,
    pub tts: &'a Arc<Tts>,
    pub call_id: &'a str,
    pub hung_up: bool,
}

impl VoiceChannel<'_> {
    /// say-play: speak or play the prompt `loop` times, then `AudioComplete`.
    pub async fn say_play(&mut self, p: &Prompt) -> Outcome {
        let loops = if p.loop_count == 0 {
            LOOP_FOREVER
        } else {
            p.loop_count
        };
        let audio = match (&p.say, &p.play) {
            (Some(text), _) if !text.trim().is_empty() => {
                let voice = p.voice.as_deref().unwrap_or("alice");
                let language = p.language.as_deref().unwrap_or("en-US");
                match self.tts.say(text, voice, language).await {
                    Ok(clip) => Some(clip.encoded(self.media.codec())),
                    Err(e) => {
                        tracing::error!(call_id = %self.call_id, error = %e, "say failed");
                        return Outcome::Failed {
                            error: e.to_string(),
                        };
                    }
                }
            }
            (_, Some(url)) if !url.trim().is_empty() => {
                return Outcome::Failed {
                    error: format!("playing audio URLs is not available yet: {url}"),
                };
            }
            _ => None,
        };
        let Some(audio) = audio else {
            return Outcome::AudioComplete;
        };
        let id = self.media.play(audio, loops);
        loop {
            tokio::select! {
                ev = self.media.events.recv() => match ev {
                    Some(MediaEvent::PlayoutDone { id: done }) if done == id => return Outcome::AudioComplete,
                    Some(_) => {}
                    None => return Outcome::Hangup,
                },
                sig = self.signals.recv() => match sig {
                    Some(CallSignal::Hangup) | None => {
                        self.hung_up = true;
                        self.media.stop_playout();
                        return Outcome::Hangup;
                    }
                    Some(CallSignal::Dtmf(_)) => {}
                },
            }
        }
    }
}

impl Medium for VoiceChannel<'_> {
    async fn perform(&mut self, effect: &Effect) -> Option<Outcome> {
        if self.hung_up {
            return Some(Outcome::Hangup);
        }
        match effect {
            Effect::SayPlay(p) => Some(self.say_play(p).await),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        "voice call"
    }
}

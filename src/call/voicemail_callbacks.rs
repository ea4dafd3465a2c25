//! What follows a saved voicemail (record-voicemail): its `recording_status_callback_url`
//! and, with `transcribe`, a transcription by the configured speech engine posted to
//! `transcription_callback_url` — both in Twilio's parameters, signed, from their own task, so
//! the call goes on at once.

use std::sync::Arc;

use super::recordings::SavedRecording;
use super::voice::VoiceChannel;
use crate::flow::Record;
use crate::store::new_sid;

/// The longest stretch of a voicemail that is transcribed (seconds): recognition runs on the
/// media host's CPU.
const MAX_TRANSCRIBED_SECS: usize = 120;

impl VoiceChannel<'_> {
    pub(super) fn after_voicemail(&self, r: &Record, saved: &SavedRecording) {
        let status_url = r
            .recording_status_callback_url
            .clone()
            .filter(|u| !u.trim().is_empty());
        let transcription_url = r
            .transcription_callback_url
            .clone()
            .filter(|u| !u.trim().is_empty());
        if status_url.is_none() && !r.transcribe {
            return;
        }
        let (Some((account, _)), Some(callbacks)) = (self.auth, self.callbacks()) else {
            tracing::warn!(call_id = %self.call_id, "voicemail callbacks need the API credentials to sign them; not sent");
            return;
        };
        let param = |k: &str| {
            self.call_params
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut common = vec![
            ("AccountSid".to_string(), account.to_string()),
            ("CallSid".to_string(), self.call_sid.to_string()),
            ("RecordingSid".to_string(), saved.sid.clone()),
            ("RecordingUrl".to_string(), saved.url.clone()),
        ];
        if let Some(url) = status_url {
            let p = super::callbacks::recording_status(
                account,
                self.call_sid,
                Some(saved),
                1,
                "RecordVerb",
            );
            callbacks.post("recording_status_callback", &url, p);
        }
        if !r.transcribe {
            return;
        }
        common.extend([
            ("From".to_string(), param("From")),
            ("To".to_string(), param("To")),
            ("ApiVersion".to_string(), "2010-04-01".to_string()),
        ]);
        let speech = self.speech.cloned();
        let wav = self.recordings.path_for(&saved.sid, "wav");
        let call_id = self.call_id.to_string();
        let recording = saved.sid.clone();
        tokio::spawn(async move {
            let text = match (speech, wav) {
                (Some(engine), Some(path)) => transcribe(engine, &path).await,
                (None, _) => Err("no speech engine is configured ([speech] engine)".to_string()),
                (_, None) => Err("the recording has no file".to_string()),
            };
            let sid = new_sid("TR");
            let mut p = common;
            p.push(("TranscriptionSid".to_string(), sid));
            match text {
                Ok(t) => {
                    tracing::info!(%call_id, %recording, chars = t.len(), "voicemail transcribed");
                    p.push(("TranscriptionStatus".to_string(), "completed".to_string()));
                    p.push(("TranscriptionText".to_string(), t));
                }
                Err(e) => {
                    tracing::warn!(%call_id, %recording, error = %e, "voicemail not transcribed");
                    p.push(("TranscriptionStatus".to_string(), "failed".to_string()));
                }
            }
            match transcription_url {
                Some(url) => callbacks.post("transcription_callback", &url, p),
                None => {
                    tracing::debug!(%call_id, "transcribed without a transcription_callback_url")
                }
            }
        });
    }
}

/// The text of a saved WAV (its first [`MAX_TRANSCRIBED_SECS`]).
async fn transcribe(
    engine: Arc<dyn crate::speech::Recognizer>,
    path: &std::path::Path,
) -> Result<String, String> {
    let path = path.to_path_buf();
    let (pcm, rate) = tokio::task::spawn_blocking(move || {
        let r = hound::WavReader::open(&path).map_err(|e| e.to_string())?;
        let rate = r.spec().sample_rate;
        let pcm: Vec<i16> = r
            .into_samples::<i16>()
            .take(MAX_TRANSCRIBED_SECS * rate as usize)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((pcm, rate))
    })
    .await
    .map_err(|e| e.to_string())??;
    match engine.recognize(&pcm, rate, &[]).await {
        Ok(Some(r)) => Ok(r.text),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(e.to_string()),
    }
}

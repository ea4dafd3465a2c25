//! Recordings on disk: `<data-dir>/recordings/RE<32 hex>.wav` (PCM16 mono) with a JSON sidecar
//! in the shape of Twilio's Recording resource. Audio is streamed to a temporary file while
//! recording and renamed into place only when complete, so a crash never leaves half a WAV
//! under a recording's name.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::store::{new_sid, now_rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording WAV: {0}")]
    Wav(#[from] hound::Error),
}

#[derive(Clone)]
pub struct Recordings {
    pub dir: PathBuf,
    pub public_url: String,
    pub account_sid: String,
}

#[derive(Debug)]
pub struct SavedRecording {
    pub sid: String,
    pub url: String,
    pub duration_secs: u32,
}

/// A recording in progress.
pub struct Recorder {
    tmp: PathBuf,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    rate: u32,
    /// 1, or 2 for a bridged call (left: the caller, right: the other party).
    channels: u16,
    /// Sample frames written (one sample per channel each).
    samples: u64,
    /// Twilio's `source` for the sidecar, when not the default for its channels.
    source: Option<&'static str>,
}

impl Recordings {
    pub fn url_for(&self, sid: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Recordings/{sid}",
            self.public_url.trim_end_matches('/'),
            self.account_sid
        )
    }

    pub fn path_for(&self, sid: &str, ext: &str) -> Option<PathBuf> {
        // Only our own SIDs map to files: no path traversal through the API.
        let ok = sid.len() == 34
            && sid.starts_with("RE")
            && sid[2..].chars().all(|c| c.is_ascii_hexdigit());
        ok.then(|| self.dir.join(format!("{sid}.{ext}")))
    }

    /// Start recording `call_sid` at `rate` Hz into a temporary file (named for the call, so a
    /// recording cut off by a crash can be recovered for it at the next start).
    pub fn start(&self, rate: u32, call_sid: &str) -> Result<Recorder, RecordingError> {
        self.start_with(rate, 1, call_sid)
    }

    /// Start a two-channel recording of a bridged call (see [`Recorder::write_stereo`]).
    pub fn start_stereo(&self, rate: u32, call_sid: &str) -> Result<Recorder, RecordingError> {
        self.start_with(rate, 2, call_sid)
    }

    /// Start a recording of `channels` (1, or 2: see [`Recorder::write_stereo`]).
    pub fn start_with(
        &self,
        rate: u32,
        channels: u16,
        call_sid: &str,
    ) -> Result<Recorder, RecordingError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordingError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let call: String = call_sid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let tmp = self.dir.join(format!(
            ".rec-{call}-{:016x}.wav.tmp",
            rand::random::<u64>()
        ));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::new(BufWriter::new(file), spec)?;
        Ok(Recorder {
            tmp,
            writer: Some(writer),
            rate,
            channels,
            samples: 0,
            source: None,
        })
    }

    /// Finish a recording: optionally trim silence, then rename into place with its sidecar.
    pub fn finish(
        &self,
        mut rec: Recorder,
        trim: bool,
        call_sid: &str,
    ) -> Result<SavedRecording, RecordingError> {
        if let Some(w) = rec.writer.take() {
            w.finalize()?;
        }
        if trim && rec.channels == 1 {
            let pcm: Vec<i16> = hound::WavReader::open(&rec.tmp)?
                .into_samples::<i16>()
                .collect::<Result<_, _>>()?;
            let kept = crate::media::vad::trim_silence(&pcm, rec.rate);
            if kept.len() != pcm.len() {
                let spec = hound::WavSpec {
                    channels: 1,
                    sample_rate: rec.rate,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                };
                let mut w = hound::WavWriter::create(&rec.tmp, spec)?;
                for &s in kept {
                    w.write_sample(s)?;
                }
                w.finalize()?;
                rec.samples = kept.len() as u64;
            }
        }
        let sid = new_sid("RE");
        let duration_secs = ((rec.samples + rec.rate as u64 / 2) / rec.rate.max(1) as u64) as u32;
        let wav = self.dir.join(format!("{sid}.wav"));
        sync(&rec.tmp)?;
        std::fs::rename(&rec.tmp, &wav).map_err(|source| RecordingError::Io {
            path: wav.clone(),
            source,
        })?;
        let created = now_rfc3339();
        let meta = json!({
            "sid": sid,
            "account_sid": self.account_sid,
            "call_sid": call_sid,
            "duration": duration_secs.to_string(),
            "channels": rec.channels,
            "sample_rate": rec.rate,
            "status": "completed",
            "source": rec.source.unwrap_or(if rec.channels == 2 { "DialVerb" } else { "RecordVerb" }),
            "media_format": "wav",
            "date_created": created,
            "date_updated": created,
            "uri": format!("/2010-04-01/Accounts/{}/Recordings/{sid}.json", self.account_sid),
        });
        let json_path = self.dir.join(format!("{sid}.json"));
        let tmp = self.dir.join(format!(".{sid}.json.tmp"));
        std::fs::write(&tmp, meta.to_string()).map_err(|source| RecordingError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &json_path).map_err(|source| RecordingError::Io {
            path: json_path.clone(),
            source,
        })?;
        Ok(SavedRecording {
            url: self.url_for(&sid),
            sid,
            duration_secs,
        })
    }

    /// Drop a recording in progress (no audio worth keeping).
    pub fn discard(&self, mut rec: Recorder) {
        rec.writer.take();
        let _ = std::fs::remove_file(&rec.tmp);
    }
}

/// Recordings shorter than this that a crash cut off are not worth keeping.
const MIN_RECOVERED_SECS: f64 = 0.5;

/// What start-up found of recordings that a crash interrupted.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Recordings saved from the audio their temporary file held, with the call they belong to.
    pub saved: Vec<(String, SavedRecording)>,
    /// Temporary files removed (too short, unreadable, or half-written sidecars).
    pub removed: usize,
}

impl Recordings {
    /// At start, before any call records: the temporary files a killed process left behind are
    /// turned into complete recordings when they hold audio, or removed; nothing half-written
    /// stays in the folder.
    pub fn recover_leftovers(&self) -> Recovered {
        let mut out = Recovered::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            let path = entry.path();
            let call = name
                .strip_prefix(".rec-")
                .and_then(|r| r.strip_suffix(".wav.tmp"))
                .and_then(|r| r.rsplit_once('-'))
                .map(|(call, _)| call.to_string());
            let saved = match call {
                Some(call) => match self.recover(&path, &call) {
                    Ok(Some(saved)) => Some((call, saved)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "interrupted recording cannot be recovered");
                        None
                    }
                },
                None => None,
            };
            match saved {
                Some(s) => out.saved.push(s),
                None => {
                    if std::fs::remove_file(&path).is_ok() {
                        out.removed += 1;
                    }
                }
            }
        }
        out
    }

    /// Rewrite a temporary recording whose header was never finalised (hound writes the data
    /// size last) as a valid WAV, and save it. None when it holds too little audio.
    fn recover(
        &self,
        tmp: &Path,
        call_sid: &str,
    ) -> Result<Option<SavedRecording>, RecordingError> {
        let bytes = std::fs::read(tmp).map_err(|source| RecordingError::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        let Some((rate, channels, data)) = unfinished_wav_pcm16(&bytes) else {
            return Ok(None);
        };
        let frame = 2 * channels as usize;
        let data = &data[..data.len() - data.len() % frame];
        let pcm: Vec<i16> = data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let frames = pcm.len() / channels as usize;
        if (frames as f64) < rate as f64 * MIN_RECOVERED_SECS {
            return Ok(None);
        }
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(tmp, spec)?;
        for &s in &pcm {
            w.write_sample(s)?;
        }
        w.finalize()?;
        let rec = Recorder {
            tmp: tmp.to_path_buf(),
            writer: None,
            rate,
            channels,
            samples: frames as u64,
            source: None,
        };
        self.finish(rec, false, call_sid).map(Some)
    }
}

/// Sample rate, channels (1 or 2) and PCM bytes of a 16-bit WAV whose sizes may be unwritten:
/// the data chunk runs to the end of the file.
fn unfinished_wav_pcm16(b: &[u8]) -> Option<(u32, u16, &[u8])> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut fmt = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        let body = at + 8;
        if id == b"data" {
            let data = &b[body..];
            return fmt.map(|(r, c)| (r, c, &data[..data.len() & !1]));
        }
        if id == b"fmt " {
            let f = b.get(body..body.checked_add(16)?)?;
            let channels = u16::from_le_bytes([f[2], f[3]]);
            let bits = u16::from_le_bytes([f[14], f[15]]);
            if !(channels == 1 || channels == 2) || bits != 16 {
                return None;
            }
            fmt = Some(u32::from_le_bytes([f[4], f[5], f[6], f[7]]))
                .filter(|r| *r > 0)
                .map(|r| (r, channels));
        }
        at = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

fn sync(path: &Path) -> Result<(), RecordingError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl Recorder {
    /// Name what made the recording (`OutboundAPI`, ...) in its sidecar.
    pub fn set_source(&mut self, source: &'static str) {
        self.source = Some(source);
    }

    pub fn write(&mut self, pcm: &[i16]) -> Result<(), RecordingError> {
        if let Some(w) = self.writer.as_mut() {
            // The 16-bit writer (every spec here is 16-bit integer PCM) skips the per-sample
            // format checks: a recorder writes 8,000 samples a second for every call.
            let mut w16 = w.get_i16_writer(pcm.len() as u32);
            for &s in pcm {
                w16.write_sample(s);
            }
            w16.flush()?;
            self.samples += pcm.len() as u64;
        }
        Ok(())
    }

    /// Two channels of the same length, interleaved (a stereo recorder).
    pub fn write_stereo(&mut self, left: &[i16], right: &[i16]) -> Result<(), RecordingError> {
        if let Some(w) = self.writer.as_mut() {
            let n = left.len().min(right.len());
            let mut w16 = w.get_i16_writer(2 * n as u32);
            for (&l, &r) in left.iter().zip(right) {
                w16.write_sample(l);
                w16.write_sample(r);
            }
            w16.flush()?;
            self.samples += n as u64;
        }
        Ok(())
    }

    pub fn seconds(&self) -> f64 {
        self.samples as f64 / self.rate.max(1) as f64
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // An unfinished recording (task cancelled) leaves no temporary file behind.
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_renamed_into_place_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recordings {
            dir: dir.path().join("recordings"),
            public_url: "http://127.0.0.1:8080/".into(),
            account_sid: "AC1".into(),
        };
        let mut rec = r.start(8000, "CA1").unwrap();
        rec.write(&vec![0i16; 4000]).unwrap();
        rec.write(
            &(0..16000)
                .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        rec.write(&vec![0i16; 4000]).unwrap();
        let saved = r.finish(rec, true, "CA1").unwrap();
        assert!(saved
            .url
            .starts_with("http://127.0.0.1:8080/2010-04-01/Accounts/AC1/Recordings/RE"));
        let wav = r.path_for(&saved.sid, "wav").unwrap();
        let reader = hound::WavReader::open(&wav).unwrap();
        let secs = reader.duration() as f64 / 8000.0;
        assert!(
            (2.0..2.4).contains(&secs),
            "trimmed to the tone plus margins: {secs}"
        );
        assert_eq!(saved.duration_secs, 2);
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(r.path_for(&saved.sid, "json").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["call_sid"], "CA1");
        // No temporary files remain; discarded recordings leave nothing.
        let rec = r.start(8000, "CA1").unwrap();
        r.discard(rec);
        let names: Vec<String> = std::fs::read_dir(&r.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(r.path_for("../../etc/passwd", "wav").is_none());
    }

    #[test]
    fn a_recording_cut_off_by_a_crash_is_recovered_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recordings {
            dir: dir.path().join("recordings"),
            public_url: "http://127.0.0.1:8080".into(),
            account_sid: "AC1".into(),
        };
        // As a killed process leaves them: the header written with its sizes still 0 (they
        // are filled in on finalize), the audio that reached the disk after it.
        std::fs::create_dir_all(&r.dir).unwrap();
        let unfinished = |samples: usize| {
            let mut b = Vec::new();
            b.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
            b.extend_from_slice(&16u32.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes()); // PCM
            b.extend_from_slice(&1u16.to_le_bytes()); // mono
            b.extend_from_slice(&8000u32.to_le_bytes());
            b.extend_from_slice(&16000u32.to_le_bytes());
            b.extend_from_slice(&2u16.to_le_bytes());
            b.extend_from_slice(&16u16.to_le_bytes());
            b.extend_from_slice(b"data\0\0\0\0");
            for i in 0..samples {
                b.extend_from_slice(&((i % 100) as i16 * 50).to_le_bytes());
            }
            b.push(7); // half a sample: the write the kill interrupted
            b
        };
        std::fs::write(
            r.dir.join(".rec-CAlong-00000001.wav.tmp"),
            unfinished(16000),
        )
        .unwrap();
        std::fs::write(r.dir.join(".rec-CAshort-00000002.wav.tmp"), unfinished(800)).unwrap();
        std::fs::write(r.dir.join(".REdeadbeef.json.tmp"), "{").unwrap();
        std::fs::write(r.dir.join(".rec-garbage.wav.tmp"), "not a wav").unwrap();

        let found = r.recover_leftovers();
        assert_eq!(found.removed, 3, "{found:?}");
        assert_eq!(found.saved.len(), 1);
        let (call, saved) = &found.saved[0];
        assert_eq!(call, "CAlong");
        assert_eq!(saved.duration_secs, 2);
        let wav = hound::WavReader::open(r.path_for(&saved.sid, "wav").unwrap()).unwrap();
        assert_eq!(wav.duration(), 16000);
        let names: Vec<String> = std::fs::read_dir(&r.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(names.len(), 2, "the WAV and its sidecar: {names:?}");
    }
}

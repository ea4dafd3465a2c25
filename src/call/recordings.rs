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
    samples: u64,
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

    pub fn start(&self, rate: u32) -> Result<Recorder, RecordingError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordingError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self
            .dir
            .join(format!(".rec-{:016x}.wav.tmp", rand::random::<u64>()));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::new(BufWriter::new(file), spec)?;
        Ok(Recorder {
            tmp,
            writer: Some(writer),
            rate,
            samples: 0,
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
        if trim {
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
            "channels": 1,
            "sample_rate": rec.rate,
            "status": "completed",
            "source": "RecordVerb",
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

fn sync(path: &Path) -> Result<(), RecordingError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl Recorder {
    pub fn write(&mut self, pcm: &[i16]) -> Result<(), RecordingError> {
        if let Some(w) = self.writer.as_mut() {
            for &s in pcm {
                w.write_sample(s)?;
            }
            self.samples += pcm.len() as u64;
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
        let mut rec = r.start(8000).unwrap();
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
        let rec = r.start(8000).unwrap();
        r.discard(rec);
        let names: Vec<String> = std::fs::read_dir(&r.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(r.path_for("../../etc/passwd", "wav").is_none());
    }
}

//! Speech recognition for `gather-input-on-call` with speech input. Recognisers are pluggable
//! behind [`Recognizer`]; the one shipped runs PocketSphinx as a subprocess (never linked), with
//! a JSGF grammar built from the widget's `hints` when it has any, else the language model.
//! With no recogniser configured, speech input is a clear `timeout`.

use std::future::Future;
use std::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error(
        "speech recogniser {0:?} is not installed (install pocketsphinx and pocketsphinx-en-us)"
    )]
    Missing(String),
    #[error("speech recogniser failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    pub text: String,
    pub confidence: Option<f64>,
}

pub type RecognizeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Recognition>, SpeechError>> + Send + 'a>>;

/// Turns an utterance (mono PCM) into text.
pub trait Recognizer: Send + Sync {
    fn recognize<'a>(
        &'a self,
        pcm: &'a [i16],
        sample_rate: u32,
        hints: &'a [String],
    ) -> RecognizeFuture<'a>;
}

pub use crate::config::SpeechConfig;

pub fn from_config(cfg: &SpeechConfig) -> Option<Box<dyn Recognizer>> {
    match cfg.engine.as_str() {
        "pocketsphinx" => Some(Box::new(PocketSphinx { cfg: cfg.clone() })),
        _ => None,
    }
}

pub struct PocketSphinx {
    cfg: SpeechConfig,
}

/// A JSGF grammar accepting exactly one of the hints (Studio's comma-separated `hints`).
pub fn grammar(hints: &[String]) -> Option<String> {
    let alternatives: Vec<String> = hints
        .iter()
        .map(|h| {
            h.chars()
                .filter(|c| c.is_alphanumeric() || c.is_whitespace() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|h| !h.is_empty())
        .collect();
    (!alternatives.is_empty()).then(|| {
        format!(
            "#JSGF V1.0;\ngrammar hints;\npublic <hint> = {};\n",
            alternatives.join(" | ")
        )
    })
}

impl Recognizer for PocketSphinx {
    fn recognize<'a>(
        &'a self,
        pcm: &'a [i16],
        sample_rate: u32,
        hints: &'a [String],
    ) -> RecognizeFuture<'a> {
        Box::pin(async move {
            let dir = tempfile::tempdir().map_err(|e| SpeechError::Failed(e.to_string()))?;
            // The acoustic model is 16 kHz.
            let wide = crate::media::resample::resample(pcm, sample_rate, 16000);
            let wav = dir.path().join("utterance.wav");
            let clip = crate::media::Clip::from_pcm(wide);
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 16000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let write = || -> Result<(), hound::Error> {
                let mut w = hound::WavWriter::create(&wav, spec)?;
                for &s in clip.pcm() {
                    w.write_sample(s)?;
                }
                w.finalize()
            };
            write().map_err(|e| SpeechError::Failed(e.to_string()))?;
            let mut cmd = tokio::process::Command::new(&self.cfg.command);
            cmd.arg("-infile")
                .arg(&wav)
                .arg("-hmm")
                .arg(&self.cfg.hmm)
                .arg("-dict")
                .arg(&self.cfg.dict)
                .args(["-logfn", "/dev/null"]);
            match grammar(hints) {
                Some(g) => {
                    let path = dir.path().join("hints.jsgf");
                    std::fs::write(&path, g).map_err(|e| SpeechError::Failed(e.to_string()))?;
                    cmd.arg("-jsgf").arg(path);
                }
                None => {
                    cmd.arg("-lm").arg(&self.cfg.lm);
                }
            }
            cmd.stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let out = match tokio::time::timeout(std::time::Duration::from_secs(20), cmd.output())
                .await
            {
                Err(_) => return Err(SpeechError::Failed("timed out after 20 s".into())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SpeechError::Missing(self.cfg.command.clone()))
                }
                Ok(Err(e)) => return Err(SpeechError::Failed(e.to_string())),
                Ok(Ok(o)) => o,
            };
            if !out.status.success() {
                return Err(SpeechError::Failed(format!("exit status {}", out.status)));
            }
            let text = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Ok((!text.is_empty()).then_some(Recognition {
                text,
                confidence: None,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_from_hints() {
        let g = grammar(&[
            "Sales".into(),
            " customer  support ".into(),
            "".into(),
            "o'clock!".into(),
        ])
        .unwrap();
        assert!(
            g.contains("public <hint> = sales | customer support | o'clock;"),
            "{g}"
        );
        assert_eq!(grammar(&[" ".into()]), None);
    }

    #[tokio::test]
    async fn recognises_a_hint_spoken_by_espeak() {
        let have = |c: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {c}"))
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have("pocketsphinx_continuous") || !have("espeak-ng") {
            assert_ne!(
                std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref(),
                Ok("1"),
                "pocketsphinx and espeak-ng are required in CI"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tts = crate::media::tts::Tts::new(dir.path(), "espeak-ng", 150);
        let r = PocketSphinx {
            cfg: SpeechConfig {
                engine: "pocketsphinx".into(),
                ..Default::default()
            },
        };
        let hints: Vec<String> = ["sales", "support", "billing", "operator"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Telephone audio is 8 kHz; the stock model is 16 kHz, so short words can be confused
        // ("sales" and "billing"). These two come through the phone band reliably.
        for (word, voice) in [("operator", "woman"), ("billing", "man")] {
            let clip = tts.say(word, voice, "en-US").await.unwrap();
            let got = r.recognize(clip.pcm(), 8000, &hints).await.unwrap();
            assert_eq!(got.map(|g| g.text).as_deref(), Some(word));
        }
        let clip = tts.say("operator", "woman", "en-US").await.unwrap();
        let missing = PocketSphinx {
            cfg: SpeechConfig {
                command: "/nonexistent/pocketsphinx".into(),
                ..Default::default()
            },
        };
        assert!(matches!(
            missing.recognize(clip.pcm(), 8000, &hints).await,
            Err(SpeechError::Missing(_))
        ));
    }
}

//! Text-to-speech through engines run as subprocesses (espeak-ng's GPL code is never linked),
//! rendered once into a content-addressed cache: `<data-dir>/tts/<sha256>.wav` at 8 kHz.
//! Prompts shipped in `voice-assets/tts/` are compiled in and consulted before rendering.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use super::clip::Clip;

mod seeds {
    include!(concat!(env!("OUT_DIR"), "/seeds.rs"));
}

/// Why a prompt could not be spoken.
#[derive(Debug, Error)]
pub enum TtsError {
    /// The engine's command is not installed (the command).
    #[error("text-to-speech engine {0:?} is not installed (install the espeak-ng package, or set [tts] command)")]
    EngineMissing(String),
    /// The engine ran and failed.
    #[error("text-to-speech engine {engine:?} failed: {detail}")]
    EngineFailed {
        /// The engine's name.
        engine: String,
        /// What it said, or how it ended.
        detail: String,
    },
    /// Reading or writing the cache failed.
    #[error("TTS cache I/O on {path}: {source}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The engine's output is not a WAV file we can read.
    #[error("TTS produced unreadable audio: {0}")]
    Audio(#[from] hound::Error),
    /// The text is empty.
    #[error("nothing to say")]
    Empty,
}

/// Studio's `voice` and `language` mapped to an espeak-ng voice name such as `en-us+f3`.
pub(crate) fn espeak_voice(voice: &str, language: &str) -> String {
    let lang = match language.trim().to_ascii_lowercase().as_str() {
        "" => "en-us".to_string(),
        "en-gb" => "en-gb".to_string(),
        "en-au" | "en-in" | "en-ca" => "en".to_string(),
        "es-mx" | "es-us" => "es-419".to_string(),
        "pt-br" => "pt-br".to_string(),
        "zh-cn" | "zh-tw" | "zh-hk" | "cmn-cn" => "cmn".to_string(),
        other => {
            // Most Studio languages are ll-CC; espeak-ng knows them by ll (de, fr, ja, ...).
            let base = other.split(['-', '_']).next().unwrap_or("en");
            if other == "en-us" {
                "en-us".to_string()
            } else {
                base.to_string()
            }
        }
    };
    let v = voice.trim().to_ascii_lowercase();
    // Studio voices: man, woman, alice, Polly.<Name>, Google.<name>. espeak-ng has male (+m)
    // and female (+f) variants; the nearest is chosen by the voice's known gender.
    let female = matches!(v.as_str(), "woman" | "alice")
        || v.starts_with("polly.")
            && [
                "joanna", "salli", "kimberly", "kendra", "ivy", "amy", "emma", "nicole", "olivia",
                "aria", "ruth", "danielle", "lea", "celine", "vicki", "marlene", "mizuki", "lucia",
                "conchita", "lupe", "penelope", "camila", "vitoria", "ines", "carla", "bianca",
                "zhiyu", "seoyeon", "takumi_f",
            ]
            .iter()
            .any(|n| v[6..].starts_with(n))
        || google_female(&v)
        || v.contains("female")
        || v.ends_with("-f");
    format!("{lang}+{}", if female { "f3" } else { "m3" })
}

/// Google voices are named `Google.<ll-CC>-<Standard|Wavenet|Neural2|…>-<letter>`; for US
/// English Google publishes C, E, F, G and H as female. Other locales' letters differ and are
/// taken as male unless the name says otherwise.
fn google_female(v: &str) -> bool {
    let Some(rest) = v.strip_prefix("google.") else {
        return false;
    };
    rest.starts_with("en-us-")
        && rest
            .rsplit('-')
            .next()
            .is_some_and(|l| matches!(l, "c" | "e" | "f" | "g" | "h"))
}

pub(crate) fn cache_key(engine: &str, voice: &str, text: &str) -> String {
    let mut h = Sha256::new();
    for part in [engine, voice, text] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Text to speech through an espeak-ng compatible command, with a content-addressed cache on
/// disk (`<data_dir>/tts`) and in memory.
pub struct Tts {
    dir: PathBuf,
    command: String,
    speed_wpm: u32,
    memory: Mutex<HashMap<String, Arc<Clip>>>,
    /// One render at a time: many calls asking for the same new prompt start one engine, and
    /// the rest find it in the cache.
    render_lock: tokio::sync::Mutex<()>,
}

impl Tts {
    /// TTS with `command` at `speed_wpm`, caching under `data_dir`.
    pub fn new(data_dir: &Path, command: &str, speed_wpm: u32) -> Self {
        Tts {
            dir: data_dir.join("tts"),
            command: command.to_string(),
            speed_wpm,
            memory: Mutex::default(),
            render_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the configured engine can be run (checked at start-up to warn early).
    pub fn engine_available(&self) -> bool {
        std::process::Command::new(&self.command)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok() // flite answers --version with exit status 1; running at all is what counts
    }

    /// The engine's name: the command's file name (`espeak-ng`, `flite`).
    pub fn engine_name(&self) -> &str {
        Path::new(&self.command)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("espeak-ng")
    }

    fn is_flite(&self) -> bool {
        self.engine_name().starts_with("flite")
    }

    /// The engine's own voice name for Studio's `voice`/`language`.
    fn engine_voice(&self, voice: &str, language: &str) -> String {
        let espeak = espeak_voice(voice, language);
        if self.is_flite() {
            // flite speaks English only; its female and male voices stand in for Studio's.
            if espeak.ends_with("+f3") {
                "slt"
            } else {
                "rms"
            }
            .to_string()
        } else {
            espeak
        }
    }

    /// The cache key of `text` spoken with Studio's `voice` and `language`.
    pub fn key_for(&self, text: &str, voice: &str, language: &str) -> String {
        cache_key(
            self.engine_name(),
            &self.engine_voice(voice, language),
            text.trim(),
        )
    }

    /// `text` as a clip, from the cache or rendered by the engine (then cached).
    pub async fn say(
        &self,
        text: &str,
        voice: &str,
        language: &str,
    ) -> Result<Arc<Clip>, TtsError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TtsError::Empty);
        }
        let ev = self.engine_voice(voice, language);
        let key = cache_key(self.engine_name(), &ev, text);
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let path = self.dir.join(format!("{key}.wav"));
        let clip = match tokio::fs::read(&path).await {
            Ok(bytes) => Clip::from_wav(&bytes)?,
            Err(_) => match seeds::SEEDS.iter().find(|(k, _)| *k == key) {
                Some((_, bytes)) => Clip::from_wav(bytes)?,
                None => {
                    let _one = self.render_lock.lock().await;
                    match tokio::fs::read(&path).await {
                        Ok(bytes) => Clip::from_wav(&bytes)?,
                        Err(_) => {
                            let clip = self.render(text, &ev).await?;
                            self.store(&path, &clip).await?;
                            clip
                        }
                    }
                }
            },
        };
        if let Ok(mut m) = self.memory.lock() {
            // Bounded: a flow with per-caller text (names, amounts) must not grow memory forever.
            if m.len() >= 512 {
                m.clear();
            }
            m.insert(key, clip.clone());
        }
        Ok(clip)
    }

    async fn render(&self, text: &str, voice: &str) -> Result<Arc<Clip>, TtsError> {
        let io = |source| TtsError::Io {
            path: self.dir.clone(),
            source,
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let tmp = self
            .dir
            .join(format!(".render-{:016x}.wav", rand::random::<u64>()));
        let mut cmd = tokio::process::Command::new(&self.command);
        let text_file = tmp.with_extension("txt");
        // SSML: espeak-ng renders the known elements with -m; flite gets plain text.
        let mut markup = false;
        let prepared;
        let text = if super::ssml::is_ssml(text) {
            prepared = match super::ssml::render(text, !self.is_flite()) {
                super::ssml::Rendered::Ssml(s) => {
                    markup = true;
                    s
                }
                super::ssml::Rendered::Plain(p) => p,
            };
            prepared.as_str()
        } else {
            text
        };
        if self.is_flite() {
            // flite reads text from a file (an argument with spaces would be taken literally,
            // one without as a file name).
            tokio::fs::write(&text_file, text).await.map_err(io)?;
            cmd.args(["-voice", voice, "-f"])
                .arg(&text_file)
                .arg("-o")
                .arg(&tmp);
        } else {
            cmd.args(["-v", voice, "-s", &self.speed_wpm.to_string(), "-w"])
                .arg(&tmp)
                .arg("--stdin");
            if markup {
                cmd.arg("-m");
            }
        }
        let child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TtsError::EngineMissing(self.command.clone()))
            }
            Err(e) => {
                return Err(TtsError::EngineFailed {
                    engine: self.command.clone(),
                    detail: e.to_string(),
                })
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            if !self.is_flite() {
                let _ = stdin.write_all(text.as_bytes()).await;
            }
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| TtsError::EngineFailed {
                    engine: self.command.clone(),
                    detail: "timed out after 30 s".into(),
                })?
                .map_err(|e| TtsError::EngineFailed {
                    engine: self.command.clone(),
                    detail: e.to_string(),
                })?;
        let result = if out.status.success() {
            match tokio::fs::read(&tmp).await {
                Ok(bytes) => Clip::from_wav(&bytes).map_err(TtsError::from),
                Err(source) => Err(TtsError::Io {
                    path: tmp.clone(),
                    source,
                }),
            }
        } else {
            Err(TtsError::EngineFailed {
                engine: self.command.clone(),
                detail: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .chars()
                    .take(300)
                    .collect(),
            })
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        let _ = tokio::fs::remove_file(&text_file).await;
        result
    }

    /// Write atomically: a crash never leaves a truncated cache entry behind.
    async fn store(&self, path: &Path, clip: &Clip) -> Result<(), TtsError> {
        let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
        let bytes = clip.to_wav()?;
        let io = |source| TtsError::Io {
            path: path.to_path_buf(),
            source,
        };
        tokio::fs::write(&tmp, bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, path).await.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_map_to_nearest_espeak_voice() {
        assert_eq!(espeak_voice("alice", "en-US"), "en-us+f3");
        assert_eq!(espeak_voice("man", "en-GB"), "en-gb+m3");
        assert_eq!(espeak_voice("Polly.Joanna", "en-US"), "en-us+f3");
        assert_eq!(espeak_voice("Polly.Matthew", "en-US"), "en-us+m3");
        assert_eq!(espeak_voice("woman", "de-DE"), "de+f3");
        assert_eq!(espeak_voice("", ""), "en-us+m3");
        assert_eq!(espeak_voice("Polly.", "ja-JP"), "ja+m3");
        assert_eq!(espeak_voice("Google.en-US-Wavenet-F", "en-US"), "en-us+f3");
        assert_eq!(espeak_voice("Google.en-US-Standard-D", "en-US"), "en-us+m3");
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = cache_key("espeak-ng", "en-us+f3", "hello");
        assert_eq!(a.len(), 64);
        assert_eq!(a, cache_key("espeak-ng", "en-us+f3", "hello"));
        assert_ne!(a, cache_key("espeak-ng", "en-us+m3", "hello"));
    }

    /// The longest run of quiet 20 ms windows in a clip, in seconds.
    fn longest_quiet(clip: &Clip) -> f64 {
        let (mut run, mut best) = (0usize, 0usize);
        for w in clip.pcm().chunks(160) {
            let rms = (w.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            if rms < 100.0 {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        best as f64 * 0.02
    }

    #[tokio::test]
    async fn ssml_breaks_are_silence_and_its_tags_are_not_read_aloud() {
        let dir = tempfile::tempdir().unwrap();
        let tts = Tts::new(dir.path(), "espeak-ng", 160);
        if !tts.engine_available() {
            assert_ne!(
                std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref(),
                Ok("1"),
                "espeak-ng is required in CI"
            );
            return;
        }
        let with = tts
            .say(r#"Hello. <break time="2s"/> Goodbye."#, "alice", "en-US")
            .await
            .unwrap();
        let without = tts.say("Hello. Goodbye.", "alice", "en-US").await.unwrap();
        let pause = longest_quiet(&with);
        assert!(
            (1.8..2.6).contains(&pause),
            "a 2 s break: {pause:.2} s of silence"
        );
        assert!(longest_quiet(&without) < 1.0);
        // The markup adds the pause and nothing spoken.
        let extra = with.duration().as_secs_f64() - without.duration().as_secs_f64();
        assert!((1.3..2.6).contains(&extra), "{extra:.2} s longer");
        let digits = tts
            .say(
                r#"<say-as interpret-as="digits">2024</say-as>"#,
                "alice",
                "en-US",
            )
            .await
            .unwrap();
        let spelled = tts.say("2 0 2 4", "alice", "en-US").await.unwrap();
        let year = tts.say("2024", "alice", "en-US").await.unwrap();
        let secs = |c: &Clip| c.duration().as_secs_f64();
        assert!(
            (secs(&digits) - secs(&spelled)).abs() < 0.15
                && (secs(&digits) - secs(&year)).abs() > 0.15,
            "digits one by one ({:.2} s), as \"2 0 2 4\" ({:.2} s), not as a year ({:.2} s)",
            secs(&digits),
            secs(&spelled),
            secs(&year)
        );
    }

    #[tokio::test]
    async fn flite_renders_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let tts = Tts::new(dir.path(), "flite", 160);
        if !tts.engine_available() {
            // flite is optional (espeak-ng is the default engine); CI installs it.
            assert_ne!(
                std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref(),
                Ok("1"),
                "flite is required in CI"
            );
            return;
        }
        let clip = tts
            .say("Your call is important to us.", "woman", "en-US")
            .await
            .unwrap();
        let secs = clip.duration().as_secs_f64();
        assert!((1.0..5.0).contains(&secs), "{secs}");
        let rms = (clip.pcm().iter().map(|&s| (s as f64).powi(2)).sum::<f64>()
            / clip.pcm().len() as f64)
            .sqrt();
        assert!(rms > 300.0, "speech, not silence: {rms}");
        assert_eq!(
            tts.key_for("Your call is important to us.", "woman", "en-US")
                .len(),
            64
        );
        assert!(dir
            .path()
            .join("tts")
            .join(format!(
                "{}.wav",
                tts.key_for("Your call is important to us.", "woman", "en-US")
            ))
            .exists());
    }

    #[tokio::test]
    async fn missing_engine_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let tts = Tts::new(dir.path(), "/nonexistent/espeak-ng", 160);
        assert!(!tts.engine_available());
        let err = tts
            .say("a prompt no seed has", "alice", "en-US")
            .await
            .unwrap_err();
        assert!(matches!(err, TtsError::EngineMissing(_)), "{err}");
        assert!(err.to_string().contains("not installed"));
    }
}

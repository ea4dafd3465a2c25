//! Turns a flow prompt (say text, play URL or file) into shared audio clips: speech through the
//! TTS cache, files and URLs through the player with a download cache keyed by URL. A prompt
//! that cannot be fetched is a clear error for the step log; the widget still completes, as
//! Twilio's `<Play>` does when its URL fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::media::tts::Tts;
use crate::media::{player, Clip};

/// Downloads larger than this are refused (a 10-minute WAV at 16 kHz is ~19 MB).
const MAX_DOWNLOAD: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{0}")]
    Tts(#[from] crate::media::tts::TtsError),
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("cannot decode {url}: {source}")]
    Decode {
        url: String,
        source: player::PlayerError,
    },
}

pub struct Prompts {
    pub tts: Arc<Tts>,
    http: reqwest::Client,
    cache_dir: PathBuf,
    memory: Mutex<HashMap<String, Arc<Clip>>>,
}

impl Prompts {
    pub fn new(tts: Arc<Tts>, http: reqwest::Client, data_dir: &Path) -> Prompts {
        Prompts {
            tts,
            http,
            cache_dir: data_dir.join("audio-cache"),
            memory: Mutex::default(),
        }
    }

    pub async fn say(
        &self,
        text: &str,
        voice: &str,
        language: &str,
    ) -> Result<Arc<Clip>, PromptError> {
        Ok(self.tts.say(text, voice, language).await?)
    }

    /// A clip for a `play` value: an http(s) URL, a `file://` URL or a local path.
    pub async fn play(&self, url: &str) -> Result<Arc<Clip>, PromptError> {
        let url = url.trim();
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(c);
        }
        let hint = extension_of(url);
        let bytes = if url.starts_with("http://") || url.starts_with("https://") {
            self.download(url).await?
        } else {
            let path = url.strip_prefix("file://").unwrap_or(url);
            tokio::fs::read(path)
                .await
                .map_err(|e| PromptError::Fetch {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?
        };
        let clip =
            player::decode(&bytes, hint.as_deref()).map_err(|source| PromptError::Decode {
                url: url.to_string(),
                source,
            })?;
        if let Ok(mut m) = self.memory.lock() {
            if m.len() >= 256 {
                m.clear();
            }
            m.insert(url.to_string(), clip.clone());
        }
        Ok(clip)
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>, PromptError> {
        let key = hex::encode(Sha256::digest(url.as_bytes()));
        let path = self.cache_dir.join(&key);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Ok(bytes);
        }
        let fail = |reason: String| PromptError::Fetch {
            url: url.to_string(),
            reason,
        };
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_DOWNLOAD {
                return Err(fail(format!("larger than {MAX_DOWNLOAD} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        // Cache atomically; a failed write only costs a later re-download.
        if tokio::fs::create_dir_all(&self.cache_dir).await.is_ok() {
            let tmp = self
                .cache_dir
                .join(format!(".{key}.{:08x}", rand::random::<u32>()));
            if tokio::fs::write(&tmp, &bytes).await.is_ok() {
                let _ = tokio::fs::rename(&tmp, &path).await;
            }
        }
        Ok(bytes)
    }
}

fn extension_of(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next()?;
    let (_, ext) = name.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 5).then(|| ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_from_urls() {
        assert_eq!(
            extension_of("https://x/y/a.MP3?sig=1").as_deref(),
            Some("mp3")
        );
        assert_eq!(extension_of("/var/audio/menu.wav").as_deref(), Some("wav"));
        assert_eq!(extension_of("https://x/stream"), None);
    }
}

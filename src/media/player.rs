//! Audio files for `<Play>` and Say/Play widgets: decode WAV, MP3, OGG/Vorbis or FLAC bytes into a
//! shared 8 kHz mono [`Clip`]. Runs once per file (the result is cached by the caller), never on
//! the packet path, so it may allocate freely; it must not panic on whatever a URL returns.

use std::sync::Arc;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use thiserror::Error;

use super::clip::{Clip, RATE};

/// Longest file accepted, so a hostile or mistaken URL cannot exhaust memory.
pub const MAX_SECONDS: u64 = 600;

#[derive(Debug, Error)]
pub enum PlayerError {
    #[error("audio format not recognised (hint {hint:?}): {reason}")]
    UnrecognisedFormat {
        hint: Option<String>,
        reason: String,
    },
    #[error("the file has no audio track")]
    NoAudioTrack,
    #[error("audio codec not supported: {0}")]
    UnsupportedCodec(String),
    #[error("audio could not be decoded: {0}")]
    Decode(String),
    #[error("the file decodes to no audio")]
    Empty,
    #[error("audio longer than {MAX_SECONDS} s")]
    TooLong,
}

/// Decode `bytes` to an 8 kHz mono clip. `hint` is a file extension (`"mp3"`, `".wav"`) or a
/// MIME type (`"audio/mpeg"`); the content is probed either way, the hint only breaks ties.
pub fn decode(bytes: &[u8], hint: Option<&str>) -> Result<Arc<Clip>, PlayerError> {
    let (mono, rate) = decode_mono(bytes, hint)?;
    Ok(Clip::from_pcm(super::resample::resample(&mono, rate, RATE)))
}

/// Decode to mono PCM at the file's own rate.
fn decode_mono(bytes: &[u8], hint: Option<&str>) -> Result<(Vec<i16>, u32), PlayerError> {
    let mut h = Hint::new();
    if let Some(hint) = hint {
        let hint = hint.trim();
        if hint.contains('/') {
            h.mime_type(hint);
        } else {
            h.with_extension(hint.trim_start_matches('.'));
        }
    }
    let source = std::io::Cursor::new(bytes);
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &h,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| PlayerError::UnrecognisedFormat {
            hint: hint.map(str::to_owned),
            reason: e.to_string(),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(PlayerError::NoAudioTrack)?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(PlayerError::NoAudioTrack)?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| PlayerError::UnsupportedCodec(e.to_string()))?;

    let mut mono: Vec<i16> = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = None;
    let mut last_error: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A truncated file ends where the data ends.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            // Chained streams (new logical OGG stream): keep what we have.
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                if mono.is_empty() {
                    return Err(PlayerError::Decode(e.to_string()));
                }
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            // One corrupt packet is skipped, as players do.
            Err(SymphoniaError::DecodeError(e)) => {
                last_error = Some(e.to_string());
                continue;
            }
            Err(e) => return Err(PlayerError::Decode(e.to_string())),
        };
        let spec = buf.spec();
        let channels = spec.channels().count().max(1);
        let this_rate = spec.rate();
        if this_rate == 0 {
            return Err(PlayerError::Decode("sample rate 0".into()));
        }
        match rate {
            None => rate = Some(this_rate),
            Some(r) if r != this_rate => {
                return Err(PlayerError::Decode(format!(
                    "sample rate changes mid-stream ({r} to {this_rate} Hz)"
                )))
            }
            Some(_) => {}
        }
        buf.copy_to_vec_interleaved(&mut interleaved);
        // Down-mix by averaging the channels.
        mono.extend(interleaved.chunks(channels).map(|frame| {
            let v = frame.iter().sum::<f32>() / frame.len() as f32;
            (v.clamp(-1.0, 1.0) * 32767.0).round() as i16
        }));
        if mono.len() as u64 > MAX_SECONDS * this_rate as u64 {
            return Err(PlayerError::TooLong);
        }
    }
    match rate {
        Some(r) if !mono.is_empty() => Ok((mono, r)),
        _ => Err(match last_error {
            Some(e) => PlayerError::Decode(e),
            None => PlayerError::Empty,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;
    use std::process::Command;

    /// Generate a fixture with sox. `None` (skip) only when sox is missing and peers are not
    /// required; with SWITCHBOARD_REQUIRE_PEERS=1 a missing sox fails the test.
    fn sox(file_name: &str, args: &[&str]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(file_name);
        let mut cmd = Command::new("sox");
        cmd.arg("-n");
        // Output-format options come before the file name, effects after "--".
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        cmd.args(&args[..split])
            .arg(&path)
            .args(args.get(split + 1..).unwrap_or(&[]));
        match cmd.output() {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "sox failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(std::fs::read(&path).expect("sox output"))
            }
            Err(e) => {
                if std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref() == Ok("1") {
                    panic!("sox is required (SWITCHBOARD_REQUIRE_PEERS=1): {e}");
                }
                eprintln!("skipping: sox not available ({e})");
                None
            }
        }
    }

    /// Mean square of the component at `freq` (Goertzel), comparable to a sine's A²/2.
    fn tone_power(pcm: &[i16], freq: f64) -> f64 {
        let coeff = 2.0 * (2.0 * PI * freq / RATE as f64).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in pcm {
            let s = x as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let n = pcm.len() as f64;
        2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    fn assert_one_second_440(clip: &Clip, what: &str) {
        let secs = clip.duration().as_secs_f64();
        assert!((secs - 1.0).abs() < 0.03, "{what}: duration {secs}");
        let mid = &clip.pcm()[800..7200];
        // sox `gain -6` on a full-scale sine: amplitude 0.5, rms 0.354 of full scale.
        let r = rms(mid);
        assert!((r - 11585.0).abs() < 800.0, "{what}: rms {r}");
        let p440 = tone_power(mid, 440.0);
        assert!(
            p440 > 0.8 * r * r,
            "{what}: 440 Hz carries the energy ({p440} vs {})",
            r * r
        );
        assert!(
            tone_power(mid, 600.0) < 0.01 * p440,
            "{what}: no energy at 600 Hz"
        );
    }

    #[test]
    fn wav_at_16k_stereo() {
        let Some(bytes) = sox(
            "t.wav",
            &[
                "-r", "16000", "-c", "2", "-b", "16", "--", "synth", "1", "sine", "440", "gain",
                "-6",
            ],
        ) else {
            return;
        };
        assert_one_second_440(&decode(&bytes, Some("wav")).unwrap(), "wav");
        // Float WAV, no hint.
        let Some(bytes) = sox(
            "f.wav",
            &[
                "-r",
                "22050",
                "-e",
                "floating-point",
                "--",
                "synth",
                "1",
                "sine",
                "440",
                "gain",
                "-6",
            ],
        ) else {
            return;
        };
        assert_one_second_440(&decode(&bytes, None).unwrap(), "float wav");
    }

    #[test]
    fn flac_44k_stereo_is_down_mixed() {
        let Some(bytes) = sox(
            "t.flac",
            &[
                "-r", "44100", "-c", "2", "--", "synth", "1", "sine", "440", "sine", "880", "gain",
                "-6",
            ],
        ) else {
            return;
        };
        let clip = decode(&bytes, Some("audio/flac")).unwrap();
        assert!((clip.duration().as_secs_f64() - 1.0).abs() < 0.03);
        let mid = &clip.pcm()[800..7200];
        // Each channel's tone at amplitude 0.5 is halved by averaging: 0.25 → A²/2 = 4096².
        let expect = (0.25f64 * 32767.0).powi(2) / 2.0;
        for f in [440.0, 880.0] {
            let p = tone_power(mid, f);
            assert!(
                (p / expect - 1.0).abs() < 0.15,
                "{f} Hz power {p} vs {expect}"
            );
        }
    }

    #[test]
    fn ogg_vorbis_48k() {
        let Some(bytes) = sox(
            "t.ogg",
            &[
                "-r", "48000", "-c", "1", "--", "synth", "1", "sine", "440", "gain", "-6",
            ],
        ) else {
            return;
        };
        assert_one_second_440(&decode(&bytes, Some(".ogg")).unwrap(), "vorbis");
    }

    /// sox on this machine has no MP3 encoder (no libmp3lame), and no other encoder is
    /// installed, so the MP3 path is covered with hand-built frames: MPEG-1 Layer III, 44.1 kHz,
    /// 128 kbit/s, mono, whose side information says "no spectral data" — a valid stream that
    /// decodes to silence. It proves the demuxer and decoder are compiled in and wired up, and
    /// that duration comes out right; it does not exercise tonal decoding.
    #[test]
    fn mp3_frames_decode_to_silence_of_the_right_length() {
        const FRAME_LEN: usize = 417; // 144 * 128000 / 44100, no padding
        let mut bytes = Vec::new();
        for _ in 0..39 {
            let mut frame = vec![0u8; FRAME_LEN];
            frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0xC0]);
            bytes.extend(frame);
        }
        let clip = decode(&bytes, Some("mp3")).unwrap();
        let expected = 39.0 * 1152.0 / 44100.0;
        let secs = clip.duration().as_secs_f64();
        assert!((secs - expected).abs() < 0.06, "{secs} vs {expected}");
        assert!(clip.pcm().iter().all(|&s| s == 0));
        // Truncated mid-frame: decodes what is there.
        assert!(decode(&bytes[..FRAME_LEN * 10 + 100], Some("audio/mpeg")).is_ok());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode(b"definitely not audio", Some("wav")).unwrap_err();
        assert!(
            matches!(err, PlayerError::UnrecognisedFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not recognised"));
        assert!(decode(&[], None).is_err());
        // Deterministic pseudo-random garbage, including some with valid magic numbers.
        let mut x: u32 = 12345;
        for prefix in [&b""[..], b"RIFF", b"fLaC", b"OggS", b"ID3", &[0xFF, 0xFB]] {
            for len in [0usize, 10, 100, 5000] {
                let mut bytes = prefix.to_vec();
                for _ in 0..len {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    bytes.push((x >> 16) as u8);
                }
                let _ = decode(&bytes, None);
            }
        }
    }

    #[test]
    fn truncated_files_do_not_panic() {
        let Some(bytes) = sox(
            "t.flac",
            &["-r", "8000", "--", "synth", "0.5", "sine", "440"],
        ) else {
            return;
        };
        for cut in [10, 44, 100, bytes.len() / 2, bytes.len() - 1] {
            let _ = decode(&bytes[..cut], Some("flac"));
        }
        let clip = decode(&bytes, Some("flac")).unwrap();
        assert_eq!(clip.pcm().len(), 4000);
        // Sanity of the helper itself.
        let s: Vec<i16> = (0..8000)
            .map(|i| (10000.0 * (2.0 * PI * 440.0 * i as f64 / 8000.0).sin()) as i16)
            .collect();
        assert!((tone_power(&s, 440.0) - 5e7).abs() < 2e6);
    }
}

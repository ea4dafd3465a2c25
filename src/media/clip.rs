//! A prompt held once in memory and shared by every call that plays it: 8 kHz PCM plus its
//! G.711 encodings, made on first use. Calls keep only an `Arc` and a read position.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::codec::Codec;

pub const RATE: u32 = 8000;

/// A prompt: 8 kHz mono PCM, encoded for each codec on first use and shared by every call that
/// plays it.
#[derive(Debug)]
pub struct Clip {
    pcm: Arc<[i16]>,
    pcmu: OnceLock<Arc<[u8]>>,
    pcma: OnceLock<Arc<[u8]>>,
    g722: OnceLock<Arc<[u8]>>,
}

impl Clip {
    /// A clip of 8 kHz samples.
    pub fn from_pcm(pcm: Vec<i16>) -> Arc<Clip> {
        Arc::new(Clip {
            pcm: pcm.into(),
            pcmu: OnceLock::new(),
            pcma: OnceLock::new(),
            g722: OnceLock::new(),
        })
    }

    /// The samples.
    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }

    /// How long it plays.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.pcm.len() as u64 * 1_000_000 / RATE as u64)
    }

    /// The clip encoded for `codec` (computed once per codec).
    pub fn encoded(&self, codec: Codec) -> Arc<[u8]> {
        let cell = match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
            Codec::G722 => &self.g722,
        };
        cell.get_or_init(|| {
            let mut out = Vec::with_capacity(self.pcm.len());
            codec.encode(&self.pcm, &mut out);
            out.into()
        })
        .clone()
    }

    /// Decode a WAV file (any rate, mono or stereo, 8/16/24/32-bit integer or float) to 8 kHz.
    pub fn from_wav(bytes: &[u8]) -> Result<Arc<Clip>, hound::Error> {
        let reader = hound::WavReader::new(std::io::Cursor::new(bytes))?;
        let spec = reader.spec();
        let channels = spec.channels.max(1) as usize;
        let samples: Vec<i16> = match spec.sample_format {
            hound::SampleFormat::Int => {
                let shift = spec.bits_per_sample.saturating_sub(16);
                let up = 16u16.saturating_sub(spec.bits_per_sample);
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| ((v >> shift) << up) as i16))
                    .collect::<Result<_, _>>()?
            }
            hound::SampleFormat::Float => reader
                .into_samples::<f32>()
                .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i16))
                .collect::<Result<_, _>>()?,
        };
        // Down-mix to mono by averaging channels.
        let mono: Vec<i16> = samples
            .chunks(channels)
            .map(|c| (c.iter().map(|&s| s as i32).sum::<i32>() / c.len() as i32) as i16)
            .collect();
        Ok(Clip::from_pcm(super::resample::resample(
            &mono,
            spec.sample_rate,
            RATE,
        )))
    }

    /// PCM16 mono WAV at 8 kHz, the form the TTS cache stores.
    pub fn to_wav(&self) -> Result<Vec<u8>, hound::Error> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = std::io::Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cursor, spec)?;
            for &s in self.pcm.iter() {
                w.write_sample(s)?;
            }
            w.finalize()?;
        }
        Ok(cursor.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_resampling() {
        let clip = Clip::from_pcm((0..8000).map(|i| ((i % 100) * 100) as i16).collect());
        let wav = clip.to_wav().unwrap();
        let back = Clip::from_wav(&wav).unwrap();
        assert_eq!(back.pcm(), clip.pcm());
        assert_eq!(back.duration(), Duration::from_secs(1));
        assert_eq!(clip.encoded(Codec::Pcmu).len(), 8000);
        assert!(
            Arc::ptr_eq(&clip.encoded(Codec::Pcmu), &clip.encoded(Codec::Pcmu)),
            "encoded once"
        );

        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cur = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
        for _ in 0..16000 {
            w.write_sample(1000i16).unwrap();
            w.write_sample(3000i16).unwrap();
        }
        w.finalize().unwrap();
        let c = Clip::from_wav(&cur.into_inner()).unwrap();
        assert_eq!(c.pcm().len(), 8000);
        assert!((c.pcm()[4000] - 2000).abs() < 5);
        assert!(Clip::from_wav(b"not a wav").is_err());
    }
}

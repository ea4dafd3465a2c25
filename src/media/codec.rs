//! Audio codecs carried over RTP. G.711 is table-free bit arithmetic (ITU-T G.711), so encoding
//! a prompt once per codec is cheap and the per-packet hot path only copies encoded bytes.
//! G.722 (wideband, 16 kHz audio) keeps state, so inbound streams own a [`Decoder`].

use std::sync::OnceLock;

use super::g722::{G722Decoder, G722Encoder};

/// An audio codec we send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law (payload type 0).
    Pcmu,
    /// G.711 A-law (payload type 8).
    Pcma,
    /// G.722 at 64 kbit/s: 16 kHz audio, but an 8 kHz RTP clock (RFC 3551 §4.5.2).
    G722,
}

impl Codec {
    /// Its encoding name in `a=rtpmap`.
    pub fn rtpmap_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// Its RTP clock rate (8000 for all three).
    pub fn rtp_clock_rate(self) -> u32 {
        8000
    }

    /// Samples of audio per second (what the decoder yields).
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::G722 => 16000,
            _ => 8000,
        }
    }

    /// Whether an `a=rtpmap` encoding name and clock rate denote this codec.
    pub fn matches(self, name: &str, rate: u32) -> bool {
        name.eq_ignore_ascii_case(self.rtpmap_name()) && rate == self.rtp_clock_rate()
    }

    /// Encoded bytes of digital silence, at least 60 ms of them (every codec here sends one
    /// byte per RTP clock tick, so a frame of N clock ticks is the first N bytes).
    pub fn silence(self) -> &'static [u8] {
        static PCMU: [u8; 480] = [0xFF; 480];
        static PCMA: [u8; 480] = [0xD5; 480];
        static G722: OnceLock<Vec<u8>> = OnceLock::new();
        match self {
            Codec::Pcmu => &PCMU,
            Codec::Pcma => &PCMA,
            Codec::G722 => G722.get_or_init(|| {
                // Encode long enough for the encoder to settle, keep the settled tail.
                let mut out = Vec::new();
                G722Encoder::new().encode(&[0i16; 3840], &mut out);
                out.split_off(out.len() - 480)
            }),
        }
    }

    /// Encode 8 kHz PCM (the rate prompts are kept at) for this codec.
    pub fn encode(self, pcm8k: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm8k.len());
        match self {
            Codec::Pcmu => out.extend(pcm8k.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Pcma => out.extend(pcm8k.iter().map(|&s| linear_to_alaw(s))),
            Codec::G722 => {
                let wide = super::resample::resample(pcm8k, 8000, 16000);
                G722Encoder::new().encode(&wide, out);
            }
        }
    }
}

/// The audio a stream sends and takes, as a re-negotiation (re-INVITE, UPDATE) may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// The codec.
    pub codec: Codec,
    /// Its payload type (we send with the peer's).
    pub payload_type: u8,
    /// RFC 4733 telephone-event's payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// Packet time in milliseconds.
    pub ptime_ms: u32,
}

/// Per-stream decoder (G.722 is stateful; G.711 is not).
pub enum Decoder {
    /// µ-law or A-law.
    G711(Codec),
    /// G.722, with its state.
    G722(Box<G722Decoder>),
}

impl Decoder {
    /// A decoder for `codec`.
    pub fn new(codec: Codec) -> Decoder {
        match codec {
            Codec::G722 => Decoder::G722(Box::default()),
            other => Decoder::G711(other),
        }
    }

    /// Decode one payload, appending PCM at the codec's sample rate.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        match self {
            Decoder::G711(Codec::Pcma) => out.extend(payload.iter().map(|&b| alaw_to_linear(b))),
            Decoder::G711(_) => out.extend(payload.iter().map(|&b| ulaw_to_linear(b))),
            Decoder::G722(d) => d.decode(payload, out),
        }
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// Encode one 16-bit sample as G.711 µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment is the highest set bit among bits 7..14 of the biased magnitude.
    let exp = segment(s >> 7);
    let mantissa = (s >> (exp + 3)) & 0x0F;
    !(sign | (exp << 4) | mantissa) as u8
}

fn segment(v: i32) -> i32 {
    // v = biased magnitude >> 7, in 1..=255
    let mut e = 0;
    let mut x = v >> 1;
    while x > 0 && e < 7 {
        e += 1;
        x >>= 1;
    }
    e
}

/// Decode one G.711 µ-law byte.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let b = !byte as i32;
    let sign = b & 0x80;
    let exp = (b >> 4) & 0x07;
    let mantissa = b & 0x0F;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exp) - ULAW_BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Encode one 16-bit sample as G.711 A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let s = sample as i32;
    let (sign, mag) = if s >= 0 { (0x80, s) } else { (0x00, -s - 1) };
    let mag = mag.min(0x7FFF);
    let byte = if mag < 256 {
        mag >> 4
    } else {
        let exp = segment_alaw(mag);
        (exp << 4) | ((mag >> (exp + 3)) & 0x0F)
    };
    ((byte | sign) ^ 0x55) as u8
}

fn segment_alaw(mag: i32) -> i32 {
    // mag >= 256: exponent 1..=7 where 256 <= mag < 512 is 1
    let mut e = 1;
    let mut x = mag >> 9;
    while x > 0 && e < 7 {
        e += 1;
        x >>= 1;
    }
    e
}

/// Decode one G.711 A-law byte.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let b = (byte ^ 0x55) as i32;
    let sign = b & 0x80;
    let exp = (b >> 4) & 0x07;
    let mantissa = b & 0x0F;
    let magnitude = if exp == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exp - 1)
    };
    (if sign != 0 { magnitude } else { -magnitude }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantisation step of the segment that `s` falls in, for a round-trip tolerance.
    fn step(s: i16, codec: Codec) -> i32 {
        let m = (s as i32).abs();
        match codec {
            Codec::Pcmu => ((m + ULAW_BIAS) >> 4).max(2) + 2,
            Codec::Pcma | Codec::G722 => (m >> 4).max(16) + 2,
        }
    }

    #[test]
    fn round_trip_within_one_quantisation_step() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for s in (i16::MIN..=i16::MAX).step_by(7) {
                let mut enc = Vec::new();
                codec.encode(&[s], &mut enc);
                let mut dec = Vec::new();
                Decoder::new(codec).decode(&enc, &mut dec);
                let err = (dec[0] as i32 - s as i32).abs();
                let clip = if codec == Codec::Pcmu {
                    32767 - ULAW_CLIP + 200
                } else {
                    0
                };
                assert!(
                    err <= step(s, codec) + clip,
                    "{codec:?} {s} -> {} (err {err})",
                    dec[0]
                );
            }
        }
    }

    #[test]
    fn g722_prompts_encode_to_one_byte_per_clock_tick_and_decode_at_16k() {
        let tone: Vec<i16> = (0..8000)
            .map(|i| ((i as f64 * 0.785).sin() * 8000.0) as i16)
            .collect();
        let mut enc = Vec::new();
        Codec::G722.encode(&tone, &mut enc);
        assert_eq!(enc.len(), 8000, "64 kbit/s: 8000 bytes per second");
        let mut pcm = Vec::new();
        Decoder::new(Codec::G722).decode(&enc, &mut pcm);
        assert_eq!(pcm.len(), 16000);
        let rms = (pcm[2000..14000]
            .iter()
            .map(|&s| (s as f64).powi(2))
            .sum::<f64>()
            / 12000.0)
            .sqrt();
        assert!(rms > 3000.0, "tone survives: {rms}");
        let mut quiet = Vec::new();
        Decoder::new(Codec::G722).decode(&Codec::G722.silence()[..160], &mut quiet);
        assert!(quiet.iter().all(|s| s.abs() < 64), "{quiet:?}");
    }

    #[test]
    fn known_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        // Every byte decodes and re-encodes to itself (the codecs are idempotent on code points),
        // except µ-law's negative zero 0x7F, which maps to +0 (0xFF).
        for b in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#x}");
            if b != 0x7F {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(b)), b, "ulaw {b:#x}");
            }
        }
    }
}

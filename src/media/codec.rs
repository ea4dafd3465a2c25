//! Audio codecs carried over RTP. G.711 is table-free bit arithmetic (ITU-T G.711), so encoding
//! a prompt once per codec is cheap and the per-packet hot path only copies encoded bytes.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub fn rtpmap_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn rtp_clock_rate(self) -> u32 {
        8000
    }

    /// Samples of audio per second (what the decoder yields).
    pub fn sample_rate(self) -> u32 {
        8000
    }

    pub fn matches(self, name: &str, rate: u32) -> bool {
        name.eq_ignore_ascii_case(self.rtpmap_name()) && rate == self.rtp_clock_rate()
    }

    /// The encoded byte that decodes to digital silence.
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
        }
    }

    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len());
        match self {
            Codec::Pcmu => out.extend(pcm.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Pcma => out.extend(pcm.iter().map(|&s| linear_to_alaw(s))),
        }
    }

    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len());
        match self {
            Codec::Pcmu => out.extend(payload.iter().map(|&b| ulaw_to_linear(b))),
            Codec::Pcma => out.extend(payload.iter().map(|&b| alaw_to_linear(b))),
        }
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

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

pub fn ulaw_to_linear(byte: u8) -> i16 {
    let b = !byte as i32;
    let sign = b & 0x80;
    let exp = (b >> 4) & 0x07;
    let mantissa = b & 0x0F;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exp) - ULAW_BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

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
            Codec::Pcma => (m >> 4).max(16) + 2,
        }
    }

    #[test]
    fn round_trip_within_one_quantisation_step() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for s in (i16::MIN..=i16::MAX).step_by(7) {
                let mut enc = Vec::new();
                codec.encode(&[s], &mut enc);
                let mut dec = Vec::new();
                codec.decode(&enc, &mut dec);
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

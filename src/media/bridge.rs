//! Audio between two calls' streams (a bridged call). Each stream hands what it receives to the
//! other stream's [`Inlet`], already in the other's codec; the other's pacing tick takes one
//! frame from its inlet whenever it has no prompt of its own to play. So relayed audio leaves
//! on the receiving leg's own clock, and a leg's jitter or clock drift costs at most a short
//! gap or a dropped slice, never a burst.
//!
//! Lock order: a stream's state, then an inlet; never an inlet first and never two states at
//! once, so two workers serving the two legs of one bridge cannot deadlock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::codec::{Codec, Decoder};
use super::g722::G722Encoder;

/// Bytes per millisecond: every codec here sends one byte per 8 kHz RTP clock tick.
const BYTES_PER_MS: usize = 8;
/// Relayed audio is played once this much is buffered (absorbs the sending leg's jitter).
const PRIME: usize = 40 * BYTES_PER_MS;
/// More than this buffered (the sender's clock runs fast) drops the oldest audio down to PRIME.
const MAX_BUFFERED: usize = 200 * BYTES_PER_MS;
/// Digits waiting to be played out on the receiving leg.
const MAX_DIGITS: usize = 32;

/// What the other leg relays to this stream: audio in this stream's codec, and DTMF digits.
#[derive(Debug, Default)]
pub(crate) struct Inlet {
    /// The receiving stream's codec: what relays must encode into (it may change mid-call).
    pub(crate) codec: Option<Codec>,
    audio: VecDeque<u8>,
    digits: VecDeque<char>,
    /// Playing: enough was buffered once; cleared when the buffer runs dry.
    primed: bool,
    /// Bytes dropped because the buffer overflowed, and frames padded because it was empty.
    pub dropped: u64,
    pub underruns: u64,
}

/// One shared inlet.
pub(crate) type SharedInlet = Arc<Mutex<Inlet>>;

impl Inlet {
    fn push_audio(&mut self, bytes: &[u8]) {
        self.audio.extend(bytes);
        if self.audio.len() > MAX_BUFFERED {
            let excess = self.audio.len() - PRIME;
            self.audio.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// Fill `out` (one frame) with relayed audio; false (and `out` untouched) when there is
    /// not enough yet, so the frame is silence.
    pub(crate) fn take(&mut self, out: Option<&mut [u8]>, len: usize) -> bool {
        if !self.primed {
            if self.audio.len() < PRIME.max(len) {
                return false;
            }
            self.primed = true;
        }
        if self.audio.len() < len {
            self.primed = false;
            self.underruns += 1;
            return false;
        }
        match out {
            Some(o) => {
                for (dst, src) in o[..len].iter_mut().zip(self.audio.drain(..len)) {
                    *dst = src;
                }
            }
            None => {
                self.audio.drain(..len);
            }
        }
        true
    }

    /// The next relayed digit to play out.
    pub(crate) fn next_digit(&mut self) -> Option<char> {
        self.digits.pop_front()
    }

    /// The receiving stream switched to `codec`: what is buffered in the old one is dropped,
    /// and relays encode into the new one from their next packet.
    pub(crate) fn retarget(&mut self, codec: Codec) {
        self.codec = Some(codec);
        self.audio.clear();
        self.primed = false;
    }
}

/// Where a stream sends what it receives: the other leg's inlet, through a transcoder when the
/// two legs negotiated different codecs.
pub(crate) struct Relay {
    inlet: SharedInlet,
    from: Codec,
    to: Codec,
    transcode: Option<Box<Transcode>>,
}

struct Transcode {
    decoder: Decoder,
    from_rate: u32,
    to: Codec,
    /// G.722 keeps state across packets, so one encoder lives as long as the bridge.
    g722: Option<G722Encoder>,
    /// The last sample of the previous packet, for 8 → 16 kHz interpolation across packets.
    last: i16,
    pcm: Vec<i16>,
    rated: Vec<i16>,
    out: Vec<u8>,
}

impl Relay {
    /// A relay from a stream in `from` to an inlet of a stream in `to`.
    pub(crate) fn new(from: Codec, to: Codec, inlet: SharedInlet) -> Relay {
        if let Ok(mut i) = inlet.lock() {
            i.codec = Some(to);
        }
        Relay {
            inlet,
            from,
            to,
            transcode: Transcode::between(from, to),
        }
    }

    /// The sending stream switched to `from` (a re-INVITE).
    pub(crate) fn set_from(&mut self, from: Codec) {
        if from != self.from {
            self.from = from;
            self.transcode = Transcode::between(from, self.to);
        }
    }

    /// One received audio payload (in the sending leg's codec).
    pub(crate) fn push_audio(&mut self, payload: &[u8]) {
        let Ok(mut inlet) = self.inlet.lock() else {
            return;
        };
        if let Some(to) = inlet.codec.filter(|c| *c != self.to) {
            // The receiving leg switched codec.
            self.to = to;
            self.transcode = Transcode::between(self.from, to);
        }
        let bytes: &[u8] = match self.transcode.as_deref_mut() {
            None => payload,
            Some(t) => t.run(payload),
        };
        inlet.push_audio(bytes);
    }

    /// A digit the sending leg pressed (RFC 4733): the receiving leg plays it out.
    pub(crate) fn push_digit(&mut self, digit: char) {
        if let Ok(mut inlet) = self.inlet.lock() {
            if inlet.digits.len() < MAX_DIGITS {
                inlet.digits.push_back(digit);
            }
        }
    }
}

impl Transcode {
    /// A transcoder from `from` to `to`; None when they are the same codec.
    fn between(from: Codec, to: Codec) -> Option<Box<Transcode>> {
        (from != to).then(|| {
            Box::new(Transcode {
                decoder: Decoder::new(from),
                from_rate: from.sample_rate(),
                to,
                g722: (to == Codec::G722).then(G722Encoder::new),
                last: 0,
                pcm: Vec::with_capacity(960),
                rated: Vec::with_capacity(960),
                out: Vec::with_capacity(480),
            })
        })
    }

    fn run(&mut self, payload: &[u8]) -> &[u8] {
        self.pcm.clear();
        self.decoder.decode(payload, &mut self.pcm);
        let to_rate = self.to.sample_rate();
        self.rated.clear();
        match (self.from_rate, to_rate) {
            (16000, 8000) => self.rated.extend(super::resample::halve(&self.pcm)),
            (8000, 16000) => {
                for &s in &self.pcm {
                    self.rated.push(((self.last as i32 + s as i32) / 2) as i16);
                    self.rated.push(s);
                    self.last = s;
                }
            }
            _ => self.rated.extend_from_slice(&self.pcm),
        }
        self.out.clear();
        match self.g722.as_mut() {
            Some(enc) => enc.encode(&self.rated, &mut self.out),
            // G.711 keeps no state: the codec's own encoder.
            None => self.to.encode(&self.rated, &mut self.out),
        }
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{alaw_to_linear, ulaw_to_linear};

    fn tone(n: usize, rate: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 400.0 * i as f64 / rate).sin()) as i16)
            .collect()
    }

    #[test]
    fn a_codec_switch_on_either_leg_retargets_the_relay() {
        let pcm = tone(160 * 4, 8000.0);
        let (mut ulaw, mut alaw) = (Vec::new(), Vec::new());
        Codec::Pcmu.encode(&pcm, &mut ulaw);
        Codec::Pcma.encode(&pcm, &mut alaw);
        let inlet = SharedInlet::default();
        let mut relay = Relay::new(Codec::Pcmu, Codec::Pcmu, inlet.clone());
        relay.push_audio(&ulaw[..160]);
        // The receiving leg switched to PCMA: what was buffered in PCMU is gone, and what the
        // relay pushes next is A-law.
        inlet.lock().unwrap().retarget(Codec::Pcma);
        relay.push_audio(&ulaw[160..480]);
        let mut out = [0u8; 160];
        assert!(inlet.lock().unwrap().take(Some(&mut out), 160));
        let heard: Vec<i16> = out.iter().map(|&b| alaw_to_linear(b)).collect();
        let want: Vec<i16> = pcm[160..320].to_vec();
        let err: f64 = heard
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / 160.0;
        assert!(err < 300.0, "A-law of the PCMU input (mean error {err})");
        // The sending leg switched to PCMA too: bytes now pass through unchanged.
        relay.set_from(Codec::Pcma);
        let mut i = inlet.lock().unwrap();
        i.retarget(Codec::Pcma);
        drop(i);
        relay.push_audio(&alaw[..320]);
        assert!(inlet.lock().unwrap().take(Some(&mut out), 160));
        assert_eq!(&out[..], &alaw[..160]);
    }

    #[test]
    fn same_codec_passes_bytes_through_after_priming() {
        let inlet = SharedInlet::default();
        let mut relay = Relay::new(Codec::Pcmu, Codec::Pcmu, inlet.clone());
        let mut out = [0u8; 160];
        relay.push_audio(&[0x11; 160]);
        assert!(
            !inlet.lock().unwrap().take(Some(&mut out), 160),
            "not primed yet"
        );
        relay.push_audio(&[0x22; 160]);
        let mut i = inlet.lock().unwrap();
        assert!(i.take(Some(&mut out), 160));
        assert_eq!(out, [0x11; 160]);
        assert!(i.take(Some(&mut out), 160));
        assert_eq!(out, [0x22; 160]);
        assert!(
            !i.take(Some(&mut out), 160),
            "ran dry: silence, and prime again"
        );
        assert_eq!(i.underruns, 1);
    }

    #[test]
    fn overflow_keeps_latency_bounded() {
        let inlet = SharedInlet::default();
        let mut relay = Relay::new(Codec::Pcma, Codec::Pcma, inlet.clone());
        for _ in 0..50 {
            relay.push_audio(&[0xD5; 160]);
        }
        let i = inlet.lock().unwrap();
        assert!(i.audio.len() <= MAX_BUFFERED);
        assert!(i.dropped > 0);
    }

    #[test]
    fn pcmu_to_pcma_keeps_the_waveform() {
        let inlet = SharedInlet::default();
        let mut relay = Relay::new(Codec::Pcmu, Codec::Pcma, inlet.clone());
        let pcm = tone(320, 8000.0);
        let mut ulaw = Vec::new();
        Codec::Pcmu.encode(&pcm, &mut ulaw);
        relay.push_audio(&ulaw);
        let mut out = [0u8; 320];
        assert!(inlet.lock().unwrap().take(Some(&mut out), 320));
        for (a, &b) in out.iter().zip(&ulaw) {
            let (x, y) = (alaw_to_linear(*a) as i32, ulaw_to_linear(b) as i32);
            assert!((x - y).abs() <= 300, "{x} vs {y}");
        }
    }

    #[test]
    fn g722_and_g711_transcode_both_ways_with_audio_intact() {
        // G.711 → G.722 → G.711: the tone survives with most of its energy.
        let pcm = tone(1600, 8000.0);
        let mut ulaw = Vec::new();
        Codec::Pcmu.encode(&pcm, &mut ulaw);
        let wide = SharedInlet::default();
        let mut up = Relay::new(Codec::Pcmu, Codec::G722, wide.clone());
        let narrow = SharedInlet::default();
        let mut down = Relay::new(Codec::G722, Codec::Pcmu, narrow.clone());
        for chunk in ulaw.chunks(160) {
            up.push_audio(chunk);
            let mut frame = [0u8; 160];
            while wide.lock().unwrap().take(Some(&mut frame), 160) {
                down.push_audio(&frame);
            }
        }
        let mut back = Vec::new();
        let mut frame = [0u8; 160];
        while narrow.lock().unwrap().take(Some(&mut frame), 160) {
            back.extend(frame.iter().map(|&b| ulaw_to_linear(b)));
        }
        assert!(back.len() >= 800, "{} samples came back", back.len());
        let rms = |s: &[i16]| {
            (s.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
        };
        let (orig, got) = (rms(&pcm[400..]), rms(&back[400..]));
        assert!(got > orig * 0.5 && got < orig * 1.5, "rms {got} vs {orig}");
    }

    #[test]
    fn digits_are_bounded() {
        let inlet = SharedInlet::default();
        let mut relay = Relay::new(Codec::Pcmu, Codec::Pcmu, inlet.clone());
        for _ in 0..100 {
            relay.push_digit('5');
        }
        let mut i = inlet.lock().unwrap();
        assert_eq!(i.digits.len(), MAX_DIGITS);
        assert_eq!(i.next_digit(), Some('5'));
    }
}

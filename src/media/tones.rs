//! Tone generation (DTMF, beeps, silence) and RFC 4733 telephone-event sending.
//!
//! Generated tones are made once per prompt, so they allocate; the RFC 4733 sender is a small
//! iterator over fixed-size packets that the pacing worker drains one per ptime.

use std::f64::consts::PI;

use super::dtmf::digit_event;

/// Row (low group) and column (high group) frequencies of a DTMF digit (ITU-T Q.23).
pub(crate) fn dtmf_frequencies(digit: char) -> Option<(f64, f64)> {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (r, c) = match digit.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((ROWS[r], COLS[c]))
}

fn samples_for(duration_ms: u32, sample_rate: u32) -> usize {
    (duration_ms as u64 * sample_rate as u64 / 1000) as usize
}

/// Peak amplitude in i16 units for a level in dBFS (0 dBFS = full-scale sine).
fn amplitude(dbfs: f64) -> f64 {
    if dbfs.is_nan() {
        return 0.0;
    }
    32767.0 * 10f64.powf(dbfs.min(0.0) / 20.0)
}

/// A DTMF digit as PCM: both tones at `amplitude_dbfs` each (so the sum peaks 6 dB higher and
/// is clamped, never wrapped). `None` for a character that is not a DTMF digit.
pub fn dtmf_tone(
    digit: char,
    sample_rate: u32,
    duration_ms: u32,
    amplitude_dbfs: f64,
) -> Option<Vec<i16>> {
    let (low, high) = dtmf_frequencies(digit)?;
    if sample_rate == 0 {
        return Some(Vec::new());
    }
    let a = amplitude(amplitude_dbfs);
    let rate = sample_rate as f64;
    Some(
        (0..samples_for(duration_ms, sample_rate))
            .map(|i| {
                let t = i as f64 / rate;
                let v = a * ((2.0 * PI * low * t).sin() + (2.0 * PI * high * t).sin());
                v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16
            })
            .collect(),
    )
}

/// A sine beep at -6 dBFS, with 5 ms raised-cosine ramps so it does not click.
pub(crate) fn beep(freq_hz: f64, duration_ms: u32, sample_rate: u32) -> Vec<i16> {
    let n = samples_for(duration_ms, sample_rate);
    if sample_rate == 0 || !freq_hz.is_finite() {
        return vec![0; n];
    }
    let a = amplitude(-6.0);
    let rate = sample_rate as f64;
    let ramp = (samples_for(5, sample_rate)).min(n / 2).max(1);
    (0..n)
        .map(|i| {
            let edge = i.min(n - 1 - i);
            let g = if edge < ramp {
                0.5 - 0.5 * (PI * edge as f64 / ramp as f64).cos()
            } else {
                1.0
            };
            (a * g * (2.0 * PI * freq_hz * i as f64 / rate).sin()).round() as i16
        })
        .collect()
}

/// One cadence of North American ringback (ANSI T1.401): 440 + 480 Hz for 2 s, then 4 s of
/// silence; played in a loop while a second leg rings.
pub fn ringback(sample_rate: u32) -> Vec<i16> {
    let on = samples_for(2000, sample_rate);
    let a = amplitude(-19.0);
    let rate = sample_rate.max(1) as f64;
    let mut pcm: Vec<i16> = (0..on)
        .map(|i| {
            let t = i as f64 / rate;
            (a * ((2.0 * PI * 440.0 * t).sin() + (2.0 * PI * 480.0 * t).sin())).round() as i16
        })
        .collect();
    pcm.extend(silence(4000, sample_rate));
    pcm
}

/// Digits as in-band DTMF at 8 kHz, for a peer without telephone-event: each a `tone_ms`
/// tone then `gap_ms` of silence (a character that is no digit is the silence alone); `w` and
/// `W` pause 0.5 s and 1 s (Twilio's syntax).
pub fn inband_digits(digits: &str, tone_ms: u32, gap_ms: u32) -> Vec<i16> {
    let mut pcm = Vec::new();
    for d in digits.chars() {
        match d {
            'w' => pcm.extend(silence(500, 8000)),
            'W' => pcm.extend(silence(1000, 8000)),
            d => {
                pcm.extend(dtmf_tone(d, 8000, tone_ms, -10.0).unwrap_or_default());
                pcm.extend(silence(gap_ms, 8000));
            }
        }
    }
    pcm
}

/// `duration_ms` of silence at `sample_rate`.
pub fn silence(duration_ms: u32, sample_rate: u32) -> Vec<i16> {
    vec![0; samples_for(duration_ms, sample_rate)]
}

/// RFC 4733 §2.3 volume field: power level of the tone in -dBm0; 10 is a typical DTMF level.
pub(crate) const DEFAULT_VOLUME: u8 = 10;

/// One telephone-event packet to send. Every packet of an event carries the event's start
/// timestamp in the RTP header (§2.5.1.2); only the duration field grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The RFC 4733 payload: event, E bit and volume, duration.
    pub payload: [u8; 4],
    /// RTP marker bit: set on the first packet of the event only (§2.5.1.1).
    pub marker: bool,
    /// The E bit; the final packet is sent three times with it set (§2.5.1.4).
    pub end: bool,
    /// Duration in timestamp units, as written in the payload.
    pub duration: u16,
}

/// Yields the packets of one DTMF event, one per ptime: the first with the marker bit, the
/// duration growing by one ptime each packet, then the final duration three times with the E
/// bit. The caller writes each with the event's start timestamp, and a new sequence number.
#[derive(Debug, Clone)]
pub struct Rfc4733Sender {
    event: u8,
    volume: u8,
    step: u32,
    total: u32,
    sent_progress: u32,
    ends_left: u8,
    first: bool,
}

impl Rfc4733Sender {
    /// `None` when `digit` is not a DTMF digit. Durations beyond one packet's 16-bit field
    /// (8.19 s at 8 kHz) are capped: §2.5.2.3 segmentation is not needed for keypad digits.
    pub fn new(digit: char, duration_ms: u32, ptime_ms: u32, clock_rate: u32) -> Option<Self> {
        let event = digit_event(digit)?;
        let step = (samples_for(ptime_ms.max(1), clock_rate) as u32).clamp(1, u16::MAX as u32);
        let total = (samples_for(duration_ms, clock_rate) as u32).clamp(step, u16::MAX as u32);
        Some(Rfc4733Sender {
            event,
            volume: DEFAULT_VOLUME,
            step,
            total,
            sent_progress: 0,
            ends_left: 3,
            first: true,
        })
    }

    /// The same event at another volume (-dBm0, 0 to 63).
    pub fn with_volume(mut self, volume: u8) -> Self {
        self.volume = volume & 0x3F;
        self
    }

    fn packet(&mut self, duration: u32, end: bool) -> EventPacket {
        let duration = duration.min(u16::MAX as u32) as u16;
        let marker = std::mem::take(&mut self.first);
        let d = duration.to_be_bytes();
        EventPacket {
            payload: [
                self.event,
                (if end { 0x80 } else { 0 }) | self.volume,
                d[0],
                d[1],
            ],
            marker,
            end,
            duration,
        }
    }
}

impl Iterator for Rfc4733Sender {
    type Item = EventPacket;

    fn next(&mut self) -> Option<EventPacket> {
        let progress = self.sent_progress + self.step;
        if progress < self.total {
            self.sent_progress = progress;
            return Some(self.packet(progress, false));
        }
        if self.ends_left == 0 {
            return None;
        }
        self.ends_left -= 1;
        self.sent_progress = self.total;
        Some(self.packet(self.total, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::Rfc4733Receiver;

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    #[test]
    fn dtmf_tone_has_length_and_level() {
        let t = dtmf_tone('5', 8000, 100, -10.0).unwrap();
        assert_eq!(t.len(), 800);
        // Two uncorrelated sines of amplitude a: rms = a.
        let a = 32767.0 * 10f64.powf(-0.5);
        assert!((rms(&t) - a).abs() < a * 0.05, "rms {}", rms(&t));
        assert_eq!(dtmf_tone('5', 16000, 100, -10.0).unwrap().len(), 1600);
        assert!(dtmf_tone('x', 8000, 100, -10.0).is_none());
        // Absurd levels clamp rather than wrap.
        let loud = dtmf_tone('1', 8000, 50, 40.0).unwrap();
        assert!(loud.iter().any(|&s| s == i16::MAX || s > 30000));
        assert!(dtmf_tone('1', 0, 50, -10.0).unwrap().is_empty());
    }

    #[test]
    fn beep_and_silence() {
        let b = beep(1000.0, 200, 8000);
        assert_eq!(b.len(), 1600);
        assert!(b[0].abs() < 100, "ramped start");
        assert!((rms(&b[400..1200]) - 16422.0 / 2f64.sqrt()).abs() < 500.0);
        assert_eq!(silence(20, 16000), vec![0i16; 320]);
        assert_eq!(beep(f64::NAN, 10, 8000), vec![0i16; 80]);
        assert!(beep(1000.0, 0, 8000).is_empty());
    }

    #[test]
    fn sender_packets_follow_rfc4733() {
        let pkts: Vec<_> = Rfc4733Sender::new('#', 100, 20, 8000).unwrap().collect();
        // 100 ms at 20 ms ptime: durations 160..640 without E, then 800 three times with E.
        let durs: Vec<u16> = pkts.iter().map(|p| p.duration).collect();
        assert_eq!(durs, vec![160, 320, 480, 640, 800, 800, 800]);
        assert!(pkts[0].marker);
        assert!(pkts[1..].iter().all(|p| !p.marker));
        let ends: Vec<bool> = pkts.iter().map(|p| p.end).collect();
        assert_eq!(ends, vec![false, false, false, false, true, true, true]);
        for p in &pkts {
            assert_eq!(p.payload[0], 11);
            assert_eq!(p.payload[1] & 0x3F, 10, "volume");
            assert_eq!(p.payload[1] & 0x40, 0, "reserved bit clear");
            assert_eq!(p.payload[1] & 0x80 != 0, p.end);
            assert_eq!(u16::from_be_bytes([p.payload[2], p.payload[3]]), p.duration);
        }
    }

    #[test]
    fn sender_edge_cases() {
        assert!(Rfc4733Sender::new('x', 100, 20, 8000).is_none());
        // Shorter than one ptime: just the three end packets, the first carrying the marker.
        let p: Vec<_> = Rfc4733Sender::new('1', 5, 20, 8000).unwrap().collect();
        assert_eq!(p.len(), 3);
        assert!(p[0].marker && p.iter().all(|p| p.end && p.duration == 160));
        // Very long events cap at the 16-bit duration field and still terminate.
        let p: Vec<_> = Rfc4733Sender::new('1', 60_000, 20, 8000).unwrap().collect();
        assert_eq!(p.last().unwrap().duration, u16::MAX);
        assert!(p.windows(2).all(|w| w[0].duration <= w[1].duration));
        // Zero ptime does not loop forever.
        assert!(Rfc4733Sender::new('1', 100, 0, 8000).unwrap().count() < 200);
        // Non-divisible duration ends exactly on it.
        let p: Vec<_> = Rfc4733Sender::new('1', 50, 20, 8000).unwrap().collect();
        let d: Vec<u16> = p.iter().map(|p| p.duration).collect();
        assert_eq!(d, vec![160, 320, 400, 400, 400]);
        let v = Rfc4733Sender::new('1', 50, 20, 8000)
            .unwrap()
            .with_volume(0xFF);
        assert_eq!(v.take(1).next().unwrap().payload[1], 0x3F);
    }

    #[test]
    fn round_trip_through_receiver_yields_one_digit_per_event() {
        let mut rx = Rfc4733Receiver::default();
        let mut heard = String::new();
        let mut ts = 1000u32;
        for d in "1123*#".chars() {
            for p in Rfc4733Sender::new(d, 120, 20, 8000).unwrap() {
                if let Some(c) = rx.on_packet(ts, &p.payload) {
                    heard.push(c);
                }
            }
            ts = ts.wrapping_add(960 + 400);
        }
        assert_eq!(heard, "1123*#");
    }
}

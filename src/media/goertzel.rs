//! In-band DTMF detection for calls where telephone-event was not negotiated.
//!
//! Goertzel filters at the eight DTMF frequencies (and their second harmonics) run over blocks
//! of 25.6 ms (205 samples at 8 kHz, the classic size whose bins fall close to all eight
//! tones). A block holds a digit when one row and one column tone are loud enough in absolute
//! terms, carry most of the block's energy, stand clear of the other tones of their group, are
//! within the twist limits of each other, and have no strong second harmonic (speech has; DTMF
//! does not). A digit is reported once when two consecutive blocks agree, and again only after
//! a block without it.

use thiserror::Error;

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Block length at 8 kHz; other rates scale it to keep the same 39 Hz bin width.
const BLOCK_8K: u32 = 205;
/// Each tone must be at least this loud (about -36 dBFS per tone; Q.24 asks for reception
/// down to roughly -25 dBm0 per tone, so this leaves margin for line loss).
const MIN_TONE_MEAN_SQUARE: f32 = 134_000.0;
/// Row low-group tone may exceed the column tone by 8 dB ("normal" twist) ...
const NORMAL_TWIST: f32 = 6.31;
/// ... and the column tone may exceed the row tone by 4 dB ("reverse" twist).
const REVERSE_TWIST: f32 = 2.51;
/// The winning tone of a group must be 8 dB above every other tone of that group.
const RELATIVE_PEAK: f32 = 6.31;
/// The two tones together must carry this fraction of the whole block's energy.
const MIN_TONE_FRACTION: f32 = 0.6;
/// A second harmonic within 6 dB of its fundamental marks speech or music, not DTMF.
const MAX_HARMONIC_RATIO: f32 = 0.25;

/// Why a detector cannot be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DtmfDetectError {
    /// The sample rate is outside 8 to 48 kHz (the rate).
    #[error("in-band DTMF detection needs a sample rate from 8000 to 48000 Hz, got {0}")]
    UnsupportedRate(u32),
}

#[derive(Debug, Clone, Copy)]
struct Filter {
    coeff: f32,
}

impl Filter {
    fn new(freq: f32, rate: u32) -> Self {
        Filter {
            coeff: 2.0 * (2.0 * std::f32::consts::PI * freq / rate as f32).cos(),
        }
    }

    /// Squared magnitude of the block's component at the filter frequency, normalised to the
    /// mean square of a sine at that frequency (a sine of amplitude A gives about A²/2).
    fn mean_square(&self, block: &[f32]) -> f32 {
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &x in block {
            let s = x + self.coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - self.coeff * s1 * s2;
        let n = block.len() as f32;
        2.0 * power / (n * n)
    }
}

/// In-band DTMF detection (Goertzel filters over fixed blocks of PCM), one digit per tone.
#[derive(Debug, Clone)]
pub struct InbandDtmf {
    rows: [Filter; 4],
    cols: [Filter; 4],
    row_harmonics: [Filter; 4],
    col_harmonics: [Filter; 4],
    harmonic_check: bool,
    /// Allocated once at construction; the hot path only writes into it.
    block: Vec<f32>,
    filled: usize,
    /// The previous block's candidate digit.
    last_block: Option<char>,
    /// The digit already reported for the tone in progress.
    reported: Option<char>,
}

impl InbandDtmf {
    /// A detector for PCM at `sample_rate` (8000 to 48000 Hz).
    pub fn new(sample_rate: u32) -> Result<Self, DtmfDetectError> {
        if !(8000..=48000).contains(&sample_rate) {
            return Err(DtmfDetectError::UnsupportedRate(sample_rate));
        }
        let len = (BLOCK_8K as u64 * sample_rate as u64).div_ceil(8000) as usize;
        // Second harmonics above Nyquist cannot be measured; those filters see nothing there.
        let harm = |f: f32| Filter::new((2.0 * f).min(sample_rate as f32 / 2.0), sample_rate);
        Ok(InbandDtmf {
            rows: ROWS.map(|f| Filter::new(f, sample_rate)),
            cols: COLS.map(|f| Filter::new(f, sample_rate)),
            row_harmonics: ROWS.map(harm),
            col_harmonics: COLS.map(harm),
            harmonic_check: true,
            block: vec![0.0; len],
            filled: 0,
            last_block: None,
            reported: None,
        })
    }

    /// Turn the second-harmonic (speech) rejection off or on; it is on by default.
    pub fn with_harmonic_check(mut self, on: bool) -> Self {
        self.harmonic_check = on;
        self
    }

    /// Feed PCM at the configured rate; `out` is called once for each newly detected digit.
    pub fn push(&mut self, mut pcm: &[i16], out: &mut impl FnMut(char)) {
        while !pcm.is_empty() {
            let take = (self.block.len() - self.filled).min(pcm.len());
            for (d, &s) in self.block[self.filled..self.filled + take]
                .iter_mut()
                .zip(&pcm[..take])
            {
                *d = s as f32;
            }
            self.filled += take;
            pcm = &pcm[take..];
            if self.filled == self.block.len() {
                self.filled = 0;
                let digit = self.classify();
                if let Some(d) = self.debounce(digit) {
                    out(d);
                }
            }
        }
    }

    /// Drop any partial block and debounce state (e.g. when the stream restarts).
    pub fn reset(&mut self) {
        self.filled = 0;
        self.last_block = None;
        self.reported = None;
    }

    fn debounce(&mut self, digit: Option<char>) -> Option<char> {
        let prev = std::mem::replace(&mut self.last_block, digit);
        match digit {
            None => {
                self.reported = None;
                None
            }
            Some(d) if prev == Some(d) && self.reported != Some(d) => {
                self.reported = Some(d);
                Some(d)
            }
            Some(_) => None,
        }
    }

    fn classify(&self) -> Option<char> {
        let block = &self.block[..];
        let energy = block.iter().map(|x| x * x).sum::<f32>() / block.len() as f32;
        if energy < MIN_TONE_MEAN_SQUARE {
            return None;
        }
        let rows = self.rows.map(|f| f.mean_square(block));
        let cols = self.cols.map(|f| f.mean_square(block));
        let (r, row) = strongest(&rows)?;
        let (c, col) = strongest(&cols)?;
        if row < MIN_TONE_MEAN_SQUARE || col < MIN_TONE_MEAN_SQUARE {
            return None;
        }
        if row > col * NORMAL_TWIST || col > row * REVERSE_TWIST {
            return None;
        }
        let dominates = |powers: &[f32; 4], best: usize| {
            powers
                .iter()
                .enumerate()
                .all(|(i, &p)| i == best || p * RELATIVE_PEAK < powers[best])
        };
        if !dominates(&rows, r) || !dominates(&cols, c) {
            return None;
        }
        if row + col < MIN_TONE_FRACTION * energy {
            return None;
        }
        if self.harmonic_check {
            let rh = self.row_harmonics[r].mean_square(block);
            let ch = self.col_harmonics[c].mean_square(block);
            if rh > row * MAX_HARMONIC_RATIO || ch > col * MAX_HARMONIC_RATIO {
                return None;
            }
        }
        Some(KEYS[r][c])
    }
}

fn strongest(p: &[f32; 4]) -> Option<(usize, f32)> {
    p.iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tones::{dtmf_frequencies, dtmf_tone, silence};
    use rand::{Rng, SeedableRng};
    use std::f64::consts::PI;

    fn detect(det: &mut InbandDtmf, pcm: &[i16]) -> String {
        let mut s = String::new();
        // Feed in 20 ms packets as the RTP path would.
        for chunk in pcm.chunks(160) {
            det.push(chunk, &mut |d| s.push(d));
        }
        s
    }

    fn detect_at(rate: u32, pcm: &[i16]) -> String {
        detect(&mut InbandDtmf::new(rate).unwrap(), pcm)
    }

    fn two_tones(f1: f64, a1: f64, f2: f64, a2: f64, rate: u32, ms: u32) -> Vec<i16> {
        (0..(rate * ms / 1000))
            .map(|i| {
                let t = i as f64 / rate as f64;
                (a1 * (2.0 * PI * f1 * t).sin() + a2 * (2.0 * PI * f2 * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn all_sixteen_digits_at_8_and_16_khz() {
        for rate in [8000, 16000] {
            let mut pcm = Vec::new();
            for d in "123A456B789C*0#D".chars() {
                pcm.extend(dtmf_tone(d, rate, 80, -10.0).unwrap());
                pcm.extend(silence(60, rate));
            }
            assert_eq!(detect_at(rate, &pcm), "123A456B789C*0#D", "rate {rate}");
        }
    }

    #[test]
    fn rejects_unsupported_rates() {
        assert_eq!(
            InbandDtmf::new(4000).err(),
            Some(DtmfDetectError::UnsupportedRate(4000))
        );
        assert!(InbandDtmf::new(0).is_err());
        assert!(InbandDtmf::new(48000).is_ok());
    }

    #[test]
    fn detected_in_white_noise_at_15_db_snr() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for d in "159#".chars() {
            let tone = dtmf_tone(d, 8000, 100, -20.0).unwrap();
            let sig_ms = tone.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tone.len() as f64;
            // Uniform noise in [-b, b] has mean square b²/3.
            let noise_ms = sig_ms / 10f64.powf(1.5);
            let b = (3.0 * noise_ms).sqrt();
            let mut pcm: Vec<i16> = (0..400).map(|_| rng.random_range(-b..b) as i16).collect();
            pcm.extend(tone.iter().map(|&s| s + rng.random_range(-b..b) as i16));
            pcm.extend((0..400).map(|_| rng.random_range(-b..b) as i16));
            assert_eq!(detect_at(8000, &pcm), d.to_string(), "digit {d}");
        }
    }

    #[test]
    fn twist_limits() {
        let (r, c) = dtmf_frequencies('5').unwrap();
        let a = 6000.0;
        let db = |x: f64| a * 10f64.powf(x / 20.0);
        // Row 6 dB louder (within the 8 dB normal twist) and column 3 dB louder (within 4 dB).
        assert_eq!(
            detect_at(8000, &two_tones(r, a, c, db(-6.0), 8000, 120)),
            "5"
        );
        assert_eq!(
            detect_at(8000, &two_tones(r, a, c, db(3.0), 8000, 120)),
            "5"
        );
        // Beyond the limits: rejected.
        assert_eq!(
            detect_at(8000, &two_tones(r, a, c, db(-10.0), 8000, 120)),
            ""
        );
        assert_eq!(detect_at(8000, &two_tones(r, a, c, db(6.0), 8000, 120)), "");
    }

    #[test]
    fn speech_like_single_tones_and_silence_are_ignored() {
        // A vowel-like buzz: 140 Hz fundamental with 25 harmonics falling off at 6 dB/octave.
        let buzz: Vec<i16> = (0..8000)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let f0 = 140.0 + 20.0 * (2.0 * PI * 3.0 * t).sin();
                (1..=25)
                    .map(|k| 8000.0 / k as f64 * (2.0 * PI * f0 * k as f64 * t).sin())
                    .sum::<f64>() as i16
            })
            .collect();
        assert_eq!(detect_at(8000, &buzz), "");
        // A row tone with its own strong second harmonic plus a column tone: DTMF frequencies
        // but not DTMF, caught by the harmonic check.
        let (r, c) = dtmf_frequencies('1').unwrap();
        let mut harm = two_tones(r, 6000.0, c, 6000.0, 8000, 200);
        for (i, s) in harm.iter_mut().enumerate() {
            *s += (5000.0 * (2.0 * PI * 2.0 * r * i as f64 / 8000.0).sin()) as i16;
        }
        assert_eq!(detect_at(8000, &harm), "");
        let lenient = InbandDtmf::new(8000).unwrap().with_harmonic_check(false);
        assert_eq!(detect(&mut { lenient }, &harm), "1");
        // Single tones.
        for f in [697.0, 1209.0, 1000.0, 440.0] {
            assert_eq!(
                detect_at(8000, &two_tones(f, 8000.0, 0.0, 0.0, 8000, 300)),
                ""
            );
        }
        // Silence and quiet tones.
        assert_eq!(detect_at(8000, &silence(1000, 8000)), "");
        assert_eq!(
            detect_at(8000, &dtmf_tone('1', 8000, 200, -50.0).unwrap()),
            ""
        );
    }

    #[test]
    fn held_digit_reported_once_and_repeats_need_a_gap() {
        assert_eq!(
            detect_at(8000, &dtmf_tone('7', 8000, 1000, -10.0).unwrap()),
            "7"
        );
        let mut pcm = dtmf_tone('1', 8000, 100, -10.0).unwrap();
        pcm.extend(silence(60, 8000));
        pcm.extend(dtmf_tone('1', 8000, 100, -10.0).unwrap());
        assert_eq!(detect_at(8000, &pcm), "11");
        // Back-to-back different digits need no gap.
        let mut pcm = dtmf_tone('1', 8000, 100, -10.0).unwrap();
        pcm.extend(dtmf_tone('2', 8000, 100, -10.0).unwrap());
        assert_eq!(detect_at(8000, &pcm), "12");
        // Too short for two consecutive blocks.
        assert_eq!(
            detect_at(8000, &dtmf_tone('1', 8000, 30, -10.0).unwrap()),
            ""
        );
    }

    #[test]
    fn garbage_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut det = InbandDtmf::new(16000).unwrap();
        for _ in 0..200 {
            let len = rng.random_range(0..700);
            let pcm: Vec<i16> = (0..len).map(|_| rng.random()).collect();
            det.push(&pcm, &mut |_| {});
        }
        det.push(&[i16::MAX; 1000], &mut |_| {});
        det.push(&[i16::MIN; 1000], &mut |_| {});
        det.push(&[], &mut |_| {});
        det.reset();
    }
}

//! Voice activity detection for `<Record>` silence timeouts and for trimming recordings.
//!
//! Energy-based, per 20 ms frame: a frame is speech when it is clearly louder (10 dB) than the
//! noise floor and not too quiet in absolute terms. The noise floor drops at once to any quieter
//! frame and rises only 2.5 dB/s: pauses between syllables pull it down to the background, a
//! long stretch of continuous speech does not become "background" within seconds, and steady
//! noise, however loud, sets the floor to itself from its first frame. A
//! hangover keeps the decision on for 300 ms after the last loud frame so word endings and short
//! stops do not count as silence.

/// How far above the floor a frame must be to count as speech.
const THRESHOLD_DB: f32 = 10.0;
/// 0.05 dB per 20 ms frame: 2.5 dB/s.
const FLOOR_RISE_DB: f32 = 0.05;
/// Quieter frames are never speech (about -50 dBFS mean square).
const ABSOLUTE_MIN_DB: f32 = -50.0;
/// Frames kept "speech" after the last loud one (300 ms).
const HANGOVER_FRAMES: u32 = 15;
/// Silence kept around speech by [`trim_silence`].
const TRIM_MARGIN_MS: usize = 100;

#[derive(Debug, Clone)]
pub struct Vad {
    frame_len: usize,
    /// Noise floor estimate (dBFS): falls at once to a quieter frame, rises slowly, so a long
    /// stretch of continuous speech is not mistaken for the new background.
    floor: Option<f32>,
    hangover: u32,
}

impl Vad {
    pub fn new(sample_rate: u32) -> Self {
        Vad {
            frame_len: (sample_rate as usize / 50).max(1),
            floor: None,
            hangover: 0,
        }
    }

    /// Samples in one 20 ms frame at this rate.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Classify one frame (ideally [`frame_len`](Self::frame_len) samples; any length works),
    /// with hangover applied.
    pub fn is_speech(&mut self, frame: &[i16]) -> bool {
        let loud = self.is_loud(frame);
        if loud {
            self.hangover = HANGOVER_FRAMES;
            true
        } else if self.hangover > 0 {
            self.hangover -= 1;
            true
        } else {
            false
        }
    }

    /// The raw decision without hangover; updates the noise floor.
    fn is_loud(&mut self, frame: &[i16]) -> bool {
        if frame.is_empty() {
            return false;
        }
        let mean_square =
            frame.iter().map(|&s| (s as f32) * (s as f32)).sum::<f32>() / frame.len() as f32;
        let db = 10.0 * (mean_square / (32768.0 * 32768.0) + 1e-12).log10();
        let floor = match self.floor {
            Some(f) if db >= f => f + FLOOR_RISE_DB,
            _ => db,
        };
        self.floor = Some(floor);
        db > floor + THRESHOLD_DB && db > ABSOLUTE_MIN_DB
    }
}

/// The part of `pcm` from the first to the last speech frame, with 100 ms of margin each
/// side; empty when there is no speech at all.
pub fn trim_silence(pcm: &[i16], sample_rate: u32) -> &[i16] {
    let mut vad = Vad::new(sample_rate);
    let n = vad.frame_len();
    let mut first = None;
    let mut last = 0;
    for (i, frame) in pcm.chunks(n).enumerate() {
        if vad.is_loud(frame) {
            first.get_or_insert(i);
            last = i;
        }
    }
    let Some(first) = first else {
        return &pcm[..0];
    };
    let margin = sample_rate as usize * TRIM_MARGIN_MS / 1000;
    let start = (first * n).saturating_sub(margin);
    let end = ((last + 1) * n).saturating_add(margin).min(pcm.len());
    &pcm[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::f64::consts::PI;

    fn noise(rng: &mut impl Rng, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|_| (rng.random_range(-1.0..1.0) * amp) as i16)
            .collect()
    }

    /// Speech-like: noise plus a 150 Hz buzz under a 4 Hz syllable envelope that dips to zero.
    fn speechy(rng: &mut impl Rng, rate: u32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let env = (2.0 * PI * 2.0 * t).sin().abs();
                let v = 6000.0 * (2.0 * PI * 150.0 * t).sin() + rng.random_range(-4000.0..4000.0);
                (env * v) as i16
            })
            .collect()
    }

    fn decisions(vad: &mut Vad, pcm: &[i16]) -> Vec<bool> {
        pcm.chunks(vad.frame_len())
            .map(|f| vad.is_speech(f))
            .collect()
    }

    #[test]
    fn speech_between_quiet_stretches() {
        for rate in [8000u32, 16000] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let r = rate as usize;
            let mut pcm = noise(&mut rng, 30.0, r);
            pcm.extend(speechy(&mut rng, rate, 2 * r));
            pcm.extend(noise(&mut rng, 30.0, 2 * r));
            let mut vad = Vad::new(rate);
            let d = decisions(&mut vad, &pcm);
            assert_eq!(d.len(), 250);
            assert!(
                d[..50].iter().all(|&s| !s),
                "leading background is not speech"
            );
            let voiced = d[50..150].iter().filter(|&&s| s).count();
            assert!(voiced > 85, "speech frames detected: {voiced}/100");
            // Hangover covers 300 ms after the last loud frame, then silence.
            assert!(d[150], "hangover right after speech");
            assert!(d[170..].iter().all(|&s| !s), "silence after the hangover");
        }
    }

    #[test]
    fn steady_noise_and_silence_are_not_speech() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let mut vad = Vad::new(8000);
        // Loud steady noise (-20 dBFS) sets its own floor.
        let d = decisions(&mut vad, &noise(&mut rng, 5000.0, 8000 * 3));
        assert!(d[2..].iter().all(|&s| !s), "{d:?}");
        let mut vad = Vad::new(8000);
        assert!(decisions(&mut vad, &vec![0; 8000]).iter().all(|&s| !s));
        // A quiet blip (above the floor but below -50 dBFS) is not speech either.
        let mut vad = Vad::new(8000);
        let mut pcm = vec![0i16; 4000];
        pcm.extend(noise(&mut rng, 60.0, 800));
        assert!(decisions(&mut vad, &pcm).iter().all(|&s| !s));
        assert!(!vad.is_speech(&[]));
    }

    #[test]
    fn speech_after_noise_raises_from_the_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut vad = Vad::new(8000);
        let mut pcm = noise(&mut rng, 800.0, 8000);
        pcm.extend(speechy(&mut rng, 8000, 8000));
        let d = decisions(&mut vad, &pcm);
        assert!(d[..50].iter().all(|&s| !s));
        assert!(d[50..].iter().filter(|&&s| s).count() > 35);
    }

    #[test]
    fn trim_keeps_speech_with_margins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut pcm = noise(&mut rng, 20.0, 8000);
        let speech_start = pcm.len();
        // Start the burst at a loud point of its envelope so the edge is sharp.
        let burst: Vec<i16> = speechy(&mut rng, 8000, 8000 + 1000)[1000..].to_vec();
        pcm.extend(&burst);
        let speech_end = pcm.len();
        pcm.extend(noise(&mut rng, 20.0, 16000));
        let trimmed = trim_silence(&pcm, 8000);
        let start = trimmed.as_ptr() as usize - pcm.as_ptr() as usize;
        let start = start / 2;
        let end = start + trimmed.len();
        // Within 100 ms margin (+1 frame for frame alignment) of the true edges.
        assert!(
            start + 800 >= speech_start && start <= speech_start,
            "start {start}"
        );
        assert!(
            end >= speech_end - 1200 && end <= speech_end + 800 + 160,
            "end {end} vs {speech_end}"
        );
        assert!(trim_silence(&vec![0; 8000], 8000).is_empty());
        assert!(trim_silence(&[], 8000).is_empty());
        assert!(trim_silence(&[1000, -1000], 0).len() <= 2);
    }
}

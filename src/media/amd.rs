//! Answering machine detection on the first seconds of an answered call, as Twilio reports it
//! in `AnsweredBy`. Sans-IO: fed decoded audio, it answers once it knows.
//!
//! A person answers with a short "hello?" and waits; a machine plays a long greeting. So: speech
//! that ends (1.2 s of silence) within 2.4 s of its start is a human; speech that goes on past
//! 2.4 s is a machine (`machine_start`). To find where the greeting ends (`DetectMessageEnd`),
//! it listens on for a beep (a pure tone of 0.16 s or more: `machine_end_beep`) or a pause that
//! ends the greeting (`machine_end_silence`). Nothing but silence for 5 s is `unknown`, and so
//! is no decision within 30 s (`machine_end_other` once a machine was heard). The thresholds are
//! Twilio's defaults (speech threshold 2400 ms, speech end 1200 ms, silence timeout 5000 ms).

use super::vad::Vad;

const FRAME_MS: u32 = 20;
/// Speech longer than this is a greeting.
const SPEECH_THRESHOLD_MS: u32 = 2400;
/// Silence after speech that ends an utterance (the VAD's own 300 ms hangover comes first).
const SPEECH_END_MS: u32 = 1200;
/// Silence from the answer after which we give up: `unknown`.
const INITIAL_SILENCE_MS: u32 = 5000;
/// No decision by then: `unknown` (or `machine_end_other`).
const MAX_MS: u32 = 30_000;
/// A beep: this many consecutive 20 ms frames of one pure tone.
const BEEP_FRAMES: u32 = 8;

/// Who answered (Twilio's `AnsweredBy` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    /// A short greeting, then silence.
    Human,
    /// A long greeting (Enable: reported as soon as it is known).
    MachineStart,
    /// The greeting ended with a beep (DetectMessageEnd).
    MachineEndBeep,
    /// The greeting ended with silence (DetectMessageEnd).
    MachineEndSilence,
    /// A machine whose greeting did not end within the time limit.
    MachineEndOther,
    /// Silence, or nothing decisive.
    Unknown,
}

impl AnsweredBy {
    /// The `AnsweredBy` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::MachineStart => "machine_start",
            AnsweredBy::MachineEndBeep => "machine_end_beep",
            AnsweredBy::MachineEndSilence => "machine_end_silence",
            AnsweredBy::MachineEndOther => "machine_end_other",
            AnsweredBy::Unknown => "unknown",
        }
    }
}

/// The detector for one call.
#[derive(Debug)]
pub struct Amd {
    vad: Vad,
    rate: u32,
    frame_len: usize,
    pending: Vec<i16>,
    /// Wait for the end of a machine's greeting instead of answering at its start.
    detect_end: bool,
    elapsed_ms: u32,
    /// When speech first began.
    onset_ms: Option<u32>,
    /// Silence since the last speech frame.
    silence_ms: u32,
    machine: bool,
    /// Consecutive frames of one pure tone, and its frequency.
    tone_frames: u32,
    tone_hz: f64,
    done: Option<AnsweredBy>,
}

impl Amd {
    /// A detector for audio at `rate` Hz; `detect_end` for Studio's `DetectMessageEnd`.
    pub fn new(rate: u32, detect_end: bool) -> Amd {
        let vad = Vad::new(rate);
        Amd {
            frame_len: vad.frame_len(),
            vad,
            rate,
            pending: Vec::new(),
            detect_end,
            elapsed_ms: 0,
            onset_ms: None,
            silence_ms: 0,
            machine: false,
            tone_frames: 0,
            tone_hz: 0.0,
            done: None,
        }
    }

    /// Feed decoded audio; the verdict once there is one (then always the same).
    pub fn push(&mut self, pcm: &[i16]) -> Option<AnsweredBy> {
        self.pending.extend_from_slice(pcm);
        let mut at = 0;
        while self.done.is_none() && self.pending.len() - at >= self.frame_len {
            let frame = self.pending[at..at + self.frame_len].to_vec();
            at += self.frame_len;
            self.done = self.frame(&frame);
        }
        self.pending.drain(..at);
        self.done
    }

    /// The verdict when the audio stops (the caller hung up, the time ran out).
    pub fn finish(&mut self) -> AnsweredBy {
        *self.done.get_or_insert(if self.machine {
            AnsweredBy::MachineEndOther
        } else {
            AnsweredBy::Unknown
        })
    }

    fn frame(&mut self, frame: &[i16]) -> Option<AnsweredBy> {
        self.elapsed_ms += FRAME_MS;
        if self.machine && self.detect_end {
            match pure_tone(frame, self.rate) {
                Some(hz)
                    if self.tone_frames > 0 && (hz - self.tone_hz).abs() < self.tone_hz * 0.05 =>
                {
                    self.tone_frames += 1;
                    if self.tone_frames >= BEEP_FRAMES {
                        return Some(AnsweredBy::MachineEndBeep);
                    }
                }
                Some(hz) => {
                    self.tone_frames = 1;
                    self.tone_hz = hz;
                }
                None => self.tone_frames = 0,
            }
        }
        if self.vad.is_speech(frame) {
            self.onset_ms.get_or_insert(self.elapsed_ms);
            self.silence_ms = 0;
        } else if self.onset_ms.is_some() {
            self.silence_ms += FRAME_MS;
        }
        let Some(onset) = self.onset_ms else {
            return (self.elapsed_ms >= INITIAL_SILENCE_MS).then_some(AnsweredBy::Unknown);
        };
        if self.silence_ms >= SPEECH_END_MS {
            if self.machine {
                return self.detect_end.then_some(AnsweredBy::MachineEndSilence);
            }
            let spoke = self.elapsed_ms - self.silence_ms - onset;
            if spoke <= SPEECH_THRESHOLD_MS {
                return Some(AnsweredBy::Human);
            }
        }
        if !self.machine && self.silence_ms == 0 && self.elapsed_ms - onset > SPEECH_THRESHOLD_MS {
            self.machine = true;
            if !self.detect_end {
                return Some(AnsweredBy::MachineStart);
            }
        }
        (self.elapsed_ms >= MAX_MS).then(|| self.finish())
    }
}

/// The frequency of `frame` when it is one pure tone between 300 and 3,400 Hz, loud enough
/// (about -30 dBFS): a sinusoid satisfies x[n] = c·x[n-1] - x[n-2] with c = 2·cos(ω), so the
/// least-squares c leaves almost no residual; speech and noise leave plenty.
fn pure_tone(frame: &[i16], rate: u32) -> Option<f64> {
    if frame.len() < 16 {
        return None;
    }
    let x: Vec<f64> = frame.iter().map(|&s| s as f64).collect();
    let energy: f64 = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    if energy < 1000.0 * 1000.0 {
        return None;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for n in 2..x.len() {
        num += x[n - 1] * (x[n] + x[n - 2]);
        den += x[n - 1] * x[n - 1];
    }
    if den <= 0.0 {
        return None;
    }
    let c = (num / den).clamp(-2.0, 2.0);
    let residual: f64 = (2..x.len())
        .map(|n| (x[n] - c * x[n - 1] + x[n - 2]).powi(2))
        .sum::<f64>()
        / (x.len() - 2) as f64;
    if residual > energy * 0.02 {
        return None;
    }
    let hz = (c / 2.0).acos() * rate as f64 / (2.0 * std::f64::consts::PI);
    (300.0..=3400.0).contains(&hz).then_some(hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speech-like sound: a 140 Hz voice with harmonics, in syllables of `syllable_ms` with
    /// 80 ms between them, for `ms` in all.
    fn talk(ms: u32) -> Vec<i16> {
        let n = (ms * 8) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let in_syllable = (i % 1600) < 1000; // 125 ms on, 75 ms off
                if !in_syllable {
                    return 0;
                }
                let env = (std::f64::consts::PI * (i % 1600) as f64 / 1000.0).sin();
                let v: f64 = (1..8)
                    .map(|h| (2.0 * std::f64::consts::PI * 140.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (6000.0 * env * v) as i16
            })
            .collect()
    }

    fn silence(ms: u32) -> Vec<i16> {
        vec![0; (ms * 8) as usize]
    }

    fn beep(ms: u32) -> Vec<i16> {
        (0..(ms * 8) as usize)
            .map(|i| {
                (10000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect()
    }

    fn run(detect_end: bool, parts: &[Vec<i16>]) -> AnsweredBy {
        let mut amd = Amd::new(8000, detect_end);
        for p in parts {
            for chunk in p.chunks(160) {
                if let Some(v) = amd.push(chunk) {
                    return v;
                }
            }
        }
        amd.finish()
    }

    #[test]
    fn a_short_hello_is_a_human() {
        let hello = [silence(400), talk(700), silence(3000)];
        assert_eq!(run(false, &hello), AnsweredBy::Human);
        assert_eq!(run(true, &hello), AnsweredBy::Human);
    }

    #[test]
    fn a_long_greeting_is_a_machine_and_its_beep_ends_it() {
        let greeting = [
            silence(300),
            talk(6000),
            silence(400),
            beep(500),
            silence(2000),
        ];
        assert_eq!(run(false, &greeting), AnsweredBy::MachineStart);
        assert_eq!(run(true, &greeting), AnsweredBy::MachineEndBeep);
        let no_beep = [silence(300), talk(6000), silence(3000)];
        assert_eq!(run(true, &no_beep), AnsweredBy::MachineEndSilence);
    }

    #[test]
    fn silence_is_unknown_and_speech_is_not_a_tone() {
        assert_eq!(run(false, &[silence(6000)]), AnsweredBy::Unknown);
        assert_eq!(run(true, &[talk(40_000)]), AnsweredBy::MachineEndOther);
        assert!(pure_tone(&beep(20), 8000).is_some_and(|hz| (hz - 1000.0).abs() < 10.0));
        assert_eq!(pure_tone(&talk(20)[..160], 8000), None);
        assert_eq!(pure_tone(&silence(20), 8000), None);
    }
}

//! Sample-rate conversion for prompts (TTS output at 22.05 kHz, files at any rate) to the
//! call's rate. Windowed-sinc interpolation with the cut-off below the lower Nyquist rate, so
//! speech resampled to 8 kHz does not alias. Runs once per prompt, never per packet; only
//! [`halve`], the bridge's and the bridge recorder's 16 → 8 kHz step, runs per packet.

use std::f64::consts::PI;

const HALF_TAPS: i64 = 16;

/// 16 kHz to 8 kHz by averaging each pair of samples: a two-tap low-pass before dropping
/// every other sample, enough for a phone line and cheap enough for every relayed packet.
pub fn halve(pcm16k: &[i16]) -> impl Iterator<Item = i16> + '_ {
    pcm16k
        .chunks_exact(2)
        .map(|p| ((p[0] as i32 + p[1] as i32) / 2) as i16)
}

pub fn resample(input: &[i16], from_hz: u32, to_hz: u32) -> Vec<i16> {
    if from_hz == to_hz || input.is_empty() || from_hz == 0 || to_hz == 0 {
        return input.to_vec();
    }
    let ratio = to_hz as f64 / from_hz as f64;
    let cutoff = ratio.min(1.0) * 0.95; // fraction of the input Nyquist band that survives
    let out_len = ((input.len() as f64) * ratio).floor() as usize;
    let scale = if ratio < 1.0 {
        HALF_TAPS as f64 / ratio
    } else {
        HALF_TAPS as f64
    };
    let half = scale.ceil() as i64;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 / ratio; // position in input samples
        let centre = t.floor() as i64;
        let mut acc = 0.0;
        let mut wsum = 0.0;
        for k in (centre - half + 1)..=(centre + half) {
            if k < 0 || k as usize >= input.len() {
                continue;
            }
            let x = t - k as f64;
            let sinc = if x.abs() < 1e-9 {
                1.0
            } else {
                (PI * x * cutoff).sin() / (PI * x * cutoff)
            };
            // Blackman window over the kernel span.
            let w = 0.42 + 0.5 * (PI * x / scale).cos() + 0.08 * (2.0 * PI * x / scale).cos();
            let w = if x.abs() >= scale { 0.0 } else { w };
            let c = sinc * w;
            acc += input[k as usize] as f64 * c;
            wsum += c;
        }
        let v = if wsum.abs() > 1e-9 { acc / wsum } else { 0.0 };
        out.push(v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<i16> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| ((2.0 * PI * freq * i as f64 / rate as f64).sin() * 10000.0) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_in_band_tones_and_removes_out_of_band() {
        let pass = resample(&tone(1000.0, 22050, 0.5), 22050, 8000);
        assert_eq!(pass.len(), 4000);
        let r = rms(&pass[200..3800]);
        assert!((r - 7071.0).abs() < 500.0, "1 kHz survives: rms {r}");
        let stop = resample(&tone(6000.0, 22050, 0.5), 22050, 8000);
        assert!(
            rms(&stop[200..3800]) < 1000.0,
            "6 kHz (above 4 kHz Nyquist) is filtered"
        );
        let up = resample(&tone(440.0, 8000, 0.1), 8000, 16000);
        assert_eq!(up.len(), 1600);
    }
}

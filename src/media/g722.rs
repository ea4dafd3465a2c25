//! ITU-T G.722 at 64 kbit/s: sub-band ADPCM for 16 kHz wideband audio.
//!
//! A 24-tap quadrature mirror filter splits each pair of input samples into one low-band
//! (0–4 kHz) and one high-band (4–8 kHz) sample. The low band is coded with 6-bit adaptive
//! quantisation, the high band with 2 bits, each against a pole-zero predictor (two poles, six
//! zeros) that encoder and decoder adapt identically from the transmitted codes. One octet
//! carries both: high-band code in the top two bits. Only the 4 most significant bits of the
//! low-band code drive adaptation, which is what lets 56/48 kbit/s receivers drop the rest.
//!
//! Arithmetic follows the recommendation's fixed-point blocks (names in comments: INVQAL,
//! LOGSCL, SCALEL, UPPOL1/2, UPZERO, FILTEP/FILTEZ...), so output interoperates with other
//! implementations. Note the RTP clock rate of G.722 is 8000 although it carries 16 kHz audio
//! (RFC 3551 §4.5.2).

const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];
/// Low-band quantiser decision levels (block 1L, QUANTL), scaled by the step size.
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Low-band code for a negative / positive difference at each decision interval.
const ILN: [i32; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
const ILP: [i32; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Log step-size multipliers (LOGSCL) indexed through RL42.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table (SCALEL/SCALEH).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Inverse quantiser outputs: 4-bit (adaptation path) and 6-bit (low-band reconstruction).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// High band: 2-bit codes, inverse quantiser and log step multipliers.
const IHN: [i32; 3] = [0, 1, 0];
const IHP: [i32; 3] = [0, 3, 2];
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const WH: [i32; 3] = [0, -214, 798];
const RH2: [usize; 4] = [2, 1, 2, 1];

fn sat(v: i32) -> i32 {
    v.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// Adaptive predictor and step-size state of one sub-band (identical in encoder and decoder).
#[derive(Debug, Clone, Default)]
struct Band {
    /// Predicted signal (PREDIC), and its pole and zero parts.
    s: i32,
    sp: i32,
    sz: i32,
    /// Reconstructed signal, partial reconstruction and quantised differences, newest first.
    r: [i32; 3],
    p: [i32; 3],
    d: [i32; 7],
    /// Pole and zero predictor coefficients (current and updated).
    a: [i32; 3],
    ap: [i32; 3],
    b: [i32; 7],
    bp: [i32; 7],
    /// Log step size and step size.
    nb: i32,
    det: i32,
}

impl Band {
    fn new(det: i32) -> Self {
        Band {
            det,
            ..Band::default()
        }
    }

    /// LOGSCL/LOGSCH then SCALEL/SCALEH: adapt the step size from the log multiplier `w`.
    fn adapt_scale(&mut self, w: i32, nb_max: i32, shift_base: i32) {
        self.nb = (((self.nb * 127) >> 7) + w).clamp(0, nb_max);
        let wd1 = ((self.nb >> 6) & 31) as usize;
        let wd2 = shift_base - (self.nb >> 11);
        let wd3 = if wd2 < 0 {
            ILB[wd1] << -wd2
        } else {
            ILB[wd1] >> wd2
        };
        self.det = wd3 << 2;
    }

    /// Block 4: reconstruct, update the pole-zero predictor and predict the next sample.
    fn update(&mut self, dx: i32) {
        // RECONS, PARREC
        self.d[0] = dx;
        self.r[0] = sat(self.s + dx);
        self.p[0] = sat(self.sz + dx);

        // UPPOL2: second pole coefficient.
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;
        let wd1 = sat(self.a[1] << 2);
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let mut wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        wd3 += (self.a[2] * 32512) >> 15;
        self.ap[2] = wd3.clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, limited for stability by the second.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = sat(15360 - self.ap[2]);
        self.ap[1] = sat(wd1 + wd2).clamp(-limit, limit);

        // UPZERO: sign-sign update of the six zero coefficients.
        let step = if dx == 0 { 0 } else { 128 };
        let sg0 = dx >> 15;
        for i in 1..7 {
            let sgi = self.d[i] >> 15;
            let wd2 = if sgi == sg0 { step } else { -step };
            let wd3 = (self.b[i] * 32640) >> 15;
            self.bp[i] = sat(wd2 + wd3);
        }

        // DELAYA: shift the delay lines.
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
            self.b[i] = self.bp[i];
        }
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
            self.a[i] = self.ap[i];
        }

        // FILTEP: pole section.
        let wd1 = (self.a[1] * sat(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat(self.r[2] + self.r[2])) >> 15;
        self.sp = sat(wd1 + wd2);

        // FILTEZ: zero section.
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * sat(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = sat(sz);

        // PREDIC
        self.s = sat(self.sp + self.sz);
    }

    /// Low band, shared by encoder and decoder: INVQAL, LOGSCL, SCALEL and block 4 from the
    /// 4 most significant bits of the 6-bit code.
    fn low_adapt(&mut self, code6: i32) {
        let ril = ((code6 >> 2) & 0x0F) as usize;
        let dlow = (self.det * QM4[ril]) >> 15;
        self.adapt_scale(WL[RL42[ril]], 18432, 8);
        self.update(dlow);
    }

    /// High band, shared: INVQAH, LOGSCH, SCALEH and block 4. Returns the quantised difference.
    fn high_adapt(&mut self, code2: i32) -> i32 {
        let ih = (code2 & 3) as usize;
        let dhigh = (self.det * QM2[ih]) >> 15;
        self.adapt_scale(WH[RH2[ih]], 22528, 10);
        self.update(dhigh);
        dhigh
    }
}

/// A G.722 (64 kbit/s) encoder for one stream: 16 kHz PCM in, one byte per two samples out.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    qmf: [i32; 24],
    low: Band,
    high: Band,
    /// An odd input sample waiting for its pair (packets of odd length are unusual but legal).
    pending: Option<i16>,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in its initial state.
    pub fn new() -> Self {
        G722Encoder {
            qmf: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
            pending: None,
        }
    }

    /// Encode 16 kHz PCM; appends one octet per two input samples.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len().div_ceil(2));
        let mut rest = pcm;
        if let Some(first) = self.pending.take() {
            match rest.split_first() {
                Some((&second, tail)) => {
                    out.push(self.encode_pair(first, second));
                    rest = tail;
                }
                None => {
                    self.pending = Some(first);
                    return;
                }
            }
        }
        let mut pairs = rest.chunks_exact(2);
        for pair in &mut pairs {
            out.push(self.encode_pair(pair[0], pair[1]));
        }
        if let [last] = pairs.remainder() {
            self.pending = Some(*last);
        }
    }

    fn encode_pair(&mut self, s0: i16, s1: i16) -> u8 {
        // Transmit QMF: every other output of the 24-tap filter gives one sample per band.
        self.qmf.copy_within(2.., 0);
        self.qmf[22] = s0 as i32;
        self.qmf[23] = s1 as i32;
        let (mut odd, mut even) = (0i32, 0i32);
        for i in 0..12 {
            odd += self.qmf[2 * i] * QMF[i];
            even += self.qmf[2 * i + 1] * QMF[11 - i];
        }
        let xlow = (even + odd) >> 14;
        let xhigh = (even - odd) >> 14;

        // Block 1L, QUANTL: find the decision interval of the difference signal.
        let el = sat(xlow - self.low.s);
        let wd = if el >= 0 { el } else { -(el + 1) };
        let mut i = 1;
        while i < 30 && wd >= (Q6[i] * self.low.det) >> 12 {
            i += 1;
        }
        let ilow = if el < 0 { ILN[i] } else { ILP[i] };
        self.low.low_adapt(ilow);

        // Block 1H, QUANTH
        let eh = sat(xhigh - self.high.s);
        let wd = if eh >= 0 { eh } else { -(eh + 1) };
        let mih = if wd >= (564 * self.high.det) >> 12 {
            2
        } else {
            1
        };
        let ihigh = if eh < 0 { IHN[mih] } else { IHP[mih] };
        self.high.high_adapt(ihigh);

        ((ihigh << 6) | ilow) as u8
    }
}

/// A G.722 (64 kbit/s) decoder for one stream: one byte in, two 16 kHz samples out.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    qmf: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in its initial state.
    pub fn new() -> Self {
        G722Decoder {
            qmf: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Decode octets; appends two 16 kHz samples per octet. Every octet value is valid.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<i16>) {
        out.reserve(data.len() * 2);
        for &code in data {
            let ilow = (code & 0x3F) as i32;
            let ihigh = (code >> 6) as i32;

            // Block 5L: 6-bit inverse quantiser and reconstruction, limited (LIMIT).
            let wd = (self.low.det * QM6[ilow as usize]) >> 15;
            let rlow = (self.low.s + wd).clamp(-16384, 16383);
            self.low.low_adapt(ilow);

            let s_high = self.high.s;
            let dhigh = self.high.high_adapt(ihigh);
            let rhigh = (dhigh + s_high).clamp(-16384, 16383);

            // Receive QMF: recombine the bands into two output samples.
            self.qmf.copy_within(2.., 0);
            self.qmf[22] = rlow + rhigh;
            self.qmf[23] = rlow - rhigh;
            let (mut x1, mut x2) = (0i32, 0i32);
            for i in 0..12 {
                x2 += self.qmf[2 * i] * QMF[i];
                x1 += self.qmf[2 * i + 1] * QMF[11 - i];
            }
            out.push(sat(x1 >> 11) as i16);
            out.push(sat(x2 >> 11) as i16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::f64::consts::PI;

    fn sine(freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / 16000.0).sin()) as i16)
            .collect()
    }

    fn round_trip(pcm: &[i16]) -> (Vec<u8>, Vec<i16>) {
        let mut enc = G722Encoder::new();
        let mut bytes = Vec::new();
        // 20 ms packets, as the RTP path would.
        for chunk in pcm.chunks(320) {
            enc.encode(chunk, &mut bytes);
        }
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(160) {
            dec.decode(chunk, &mut out);
        }
        (bytes, out)
    }

    /// SNR after aligning for the codec delay (the two QMFs add 22 samples; search around it).
    fn best_snr(input: &[i16], output: &[i16], skip: usize) -> (f64, usize) {
        let mut best = (f64::MIN, 0);
        for delay in 0..64 {
            let (mut sig, mut err) = (0.0, 0.0);
            for i in skip..input.len() - 64 {
                let x = input[i] as f64;
                let y = output[i + delay] as f64;
                sig += x * x;
                err += (x - y) * (x - y);
            }
            let snr = 10.0 * (sig / err.max(1e-9)).log10();
            if snr > best.0 {
                best = (snr, delay);
            }
        }
        best
    }

    #[test]
    fn sine_survives_with_good_snr() {
        for (freq, amp) in [(1000.0, 10000.0), (300.0, 3000.0), (5000.0, 6000.0)] {
            let input = sine(freq, amp, 16000);
            let (bytes, output) = round_trip(&input);
            assert_eq!(bytes.len(), 8000);
            assert_eq!(output.len(), 16000);
            let (snr, delay) = best_snr(&input, &output, 1600);
            assert!(snr > 20.0, "{freq} Hz: SNR {snr:.1} dB at delay {delay}");
        }
    }

    #[test]
    fn sweep_aligns_at_the_qmf_delay() {
        // A chirp is not periodic, so the best alignment is unambiguous: the transmit and
        // receive QMFs together delay the signal by 22 samples.
        let input: Vec<i16> = (0..16000)
            .map(|i| {
                let t = i as f64 / 16000.0;
                (8000.0 * (2.0 * PI * (200.0 * t + 1500.0 * t * t)).sin()) as i16
            })
            .collect();
        let (_, output) = round_trip(&input);
        let (snr, delay) = best_snr(&input, &output, 800);
        assert_eq!(delay, 22);
        assert!(snr > 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn silence_stays_silent() {
        let (_, output) = round_trip(&[0i16; 8000]);
        assert!(
            output.iter().all(|&s| s.abs() < 16),
            "max {:?}",
            output.iter().max()
        );
    }

    #[test]
    fn encoder_output_length_and_odd_packets() {
        let input = sine(1000.0, 8000.0, 1601);
        let mut enc = G722Encoder::new();
        let mut bytes = Vec::new();
        // Odd-length chunks must give the same stream as even ones.
        for chunk in input.chunks(161) {
            enc.encode(chunk, &mut bytes);
        }
        assert_eq!(bytes.len(), 800, "the odd last sample waits for its pair");
        let mut reference = Vec::new();
        G722Encoder::new().encode(&input[..1600], &mut reference);
        assert_eq!(bytes, reference);
        let mut none = Vec::new();
        enc.encode(&[], &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn different_inputs_give_different_streams() {
        // Guards against an encoder that ignores its input.
        let (a, _) = round_trip(&sine(1000.0, 8000.0, 3200));
        let (b, _) = round_trip(&sine(2000.0, 8000.0, 3200));
        assert_ne!(a, b);
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        dec.decode(&[], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn random_bytes_and_extreme_input_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for _ in 0..100 {
            let bytes: Vec<u8> = (0..rng.random_range(0..400))
                .map(|_| rng.random())
                .collect();
            dec.decode(&bytes, &mut out);
        }
        dec.decode(&[0x00; 4000], &mut out);
        dec.decode(&[0xFF; 4000], &mut out);
        let mut enc = G722Encoder::new();
        let mut bytes = Vec::new();
        let square: Vec<i16> = (0..8000)
            .map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        enc.encode(&square, &mut bytes);
        let noise: Vec<i16> = (0..8000).map(|_| rng.random()).collect();
        enc.encode(&noise, &mut bytes);
        assert_eq!(bytes.len(), 8000);
    }
}

//! Both sides of a bridged call as one stereo recording at 8 kHz: left the caller, right the
//! other party. Each side's decoded audio arrives as its packets do; the mixer writes what both
//! sides have, and pads a side that went quiet (no packets: muted, on hold, lost) with silence
//! once the other is ahead by more than a short lag, so one silent side never stalls the
//! recording.

use std::collections::VecDeque;

/// How far one side may run ahead (8 kHz samples: 160 ms) before the other is padded.
const MAX_LAG: usize = 1280;

/// Aligns two mono streams into stereo frames.
#[derive(Debug, Default)]
pub struct StereoMixer {
    left: VecDeque<i16>,
    right: VecDeque<i16>,
}

/// Which side a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller.
    Left,
    /// The other party.
    Right,
}

impl StereoMixer {
    /// One decoded frame of `side` at `rate` Hz (8 or 16 kHz; 16 kHz is halved).
    pub fn push(&mut self, side: Side, frame: &[i16], rate: u32) {
        let q = match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        };
        if rate == 16_000 {
            q.extend(crate::media::resample::halve(frame));
        } else {
            q.extend(frame.iter().copied());
        }
    }

    /// The samples both sides have (a side far behind is padded first), as (left, right).
    pub fn take(&mut self) -> (Vec<i16>, Vec<i16>) {
        let (l, r) = (self.left.len(), self.right.len());
        if l > r + MAX_LAG {
            self.right.extend(std::iter::repeat_n(0, l - r));
        } else if r > l + MAX_LAG {
            self.left.extend(std::iter::repeat_n(0, r - l));
        }
        let n = self.left.len().min(self.right.len());
        (
            self.left.drain(..n).collect(),
            self.right.drain(..n).collect(),
        )
    }

    /// As [`take`](Self::take), with the left side as the clock: a right side that runs ahead
    /// (a peer sending faster than real time) loses what is beyond the lag instead of
    /// lengthening the recording.
    pub fn take_left_clocked(&mut self) -> (Vec<i16>, Vec<i16>) {
        let (l, r) = (self.left.len(), self.right.len());
        if r > l + MAX_LAG {
            self.right.truncate(l + MAX_LAG);
        }
        self.take()
    }

    /// Everything left, the shorter side padded.
    pub fn flush(&mut self) -> (Vec<i16>, Vec<i16>) {
        let n = self.left.len().max(self.right.len());
        self.left.resize(n, 0);
        self.right.resize(n, 0);
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_are_aligned_and_a_quiet_side_is_padded() {
        let mut m = StereoMixer::default();
        m.push(Side::Left, &[1; 160], 8000);
        assert_eq!(
            m.take().0.len(),
            0,
            "nothing until the other side has audio"
        );
        m.push(Side::Right, &[2; 320], 16_000);
        let (l, r) = m.take();
        assert_eq!((l.len(), r.len()), (160, 160));
        assert!(l.iter().all(|&s| s == 1) && r.iter().all(|&s| s == 2));
        // The other party goes quiet: after the lag, the caller's audio is written with silence.
        for _ in 0..9 {
            m.push(Side::Left, &[3; 160], 8000);
        }
        let (l, r) = m.take();
        assert_eq!(l.len(), 1440);
        assert!(r.iter().all(|&s| s == 0));
        m.push(Side::Right, &[4; 80], 8000);
        let (l, r) = m.flush();
        assert_eq!((l, r.len()), (vec![0; 80], 80));
    }
}

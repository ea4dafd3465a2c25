//! Inbound reorder/jitter buffer: RTP payloads go in as they arrive, and come out in sequence
//! order, one per 20 ms tick, once the buffer holds `depth` frames' worth of sequence numbers.
//!
//! Frames live in fixed slots allocated once (index = sequence number modulo capacity), so
//! push and pop never allocate. Sequence numbers are compared with 16-bit wrap-around (RFC
//! 3550 §A.1 style): a distance beyond ±`RESTART_JUMP` means the sender restarted its stream
//! (or a new SSRC took over), and the buffer starts again rather than waiting for numbers that
//! will never come. When the buffer runs dry (silence suppression, hold, loss at the tail) it
//! refills to `depth` before playing again, rather than reporting every tick as a loss.

/// Largest payload a slot holds: 60 ms of G.711 or 30 ms of 16-bit 8 kHz PCM.
pub const MAX_FRAME: usize = 480;
/// Sequence jump (either way) treated as a new stream rather than loss or lateness.
const RESTART_JUMP: i32 = 1000;
/// Deepest buffer accepted (2.56 s at 20 ms), to bound memory.
const MAX_DEPTH: usize = 128;

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Buffered.
    Accepted,
    /// Accepted as the first packet of a new stream; what was buffered was dropped.
    Restarted,
    /// A packet of that sequence number is already buffered.
    Duplicate,
    /// Its turn to play has passed.
    Late,
    /// Larger than [`MAX_FRAME`].
    TooLarge,
}

/// What [`JitterBuffer::pop`] returned for this frame time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopResult {
    /// A frame of this many bytes was copied to the caller's buffer (truncated to its length).
    Frame(usize),
    /// The frame due now never arrived (or not in time): conceal it.
    Missing,
    /// Nothing to play yet: the buffer is (re)filling.
    Empty,
}

/// Counters since the buffer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets offered to `push` within the size limit.
    pub received: u64,
    /// Packets that arrived after their turn.
    pub late: u64,
    /// Packets that were already buffered.
    pub duplicate: u64,
    /// Frames reported `Missing`, or skipped when a jump forward outran the buffer.
    pub lost: u64,
    /// Times the buffer started over (a new SSRC, or a large jump in sequence number).
    pub restarts: u64,
    /// Packets larger than [`MAX_FRAME`].
    pub too_large: u64,
    /// Frames that had arrived but were discarded because a later packet outran the window.
    pub overrun: u64,
}

#[derive(Clone)]
struct Slot {
    full: bool,
    seq: u16,
    timestamp: u32,
    len: u16,
    data: [u8; MAX_FRAME],
}

const EMPTY_SLOT: Slot = Slot {
    full: false,
    seq: 0,
    timestamp: 0,
    len: 0,
    data: [0; MAX_FRAME],
};

/// A fixed-depth reorder and playout buffer for one inbound RTP stream: packets are pushed as
/// they arrive and one frame is popped per frame time.
pub struct JitterBuffer {
    depth: usize,
    slots: Box<[Slot]>,
    ssrc: Option<u32>,
    /// The next sequence number to play; `None` before the first packet.
    head: Option<u16>,
    /// Highest sequence number buffered (meaningful while `head` is set).
    highest: u16,
    buffered: usize,
    playing: bool,
    /// Once anything was played, sequence numbers before `head` are always late.
    played_any: bool,
    last_timestamp: Option<u32>,
    stats: JitterStats,
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("depth", &self.depth)
            .field("head", &self.head)
            .field("buffered", &self.buffered)
            .field("playing", &self.playing)
            .field("stats", &self.stats)
            .finish()
    }
}

fn seq_distance(from: u16, to: u16) -> i32 {
    to.wrapping_sub(from) as i16 as i32
}

impl JitterBuffer {
    /// `depth_frames` is clamped to 1..=128.
    pub fn new(depth_frames: usize) -> Self {
        let depth = depth_frames.clamp(1, MAX_DEPTH);
        // Room for reordering beyond the playout depth before packets are pushed out. A power
        // of two divides 65536, so `seq % capacity` stays collision-free across the wrap.
        let capacity = (depth * 2).max(depth + 8).next_power_of_two();
        JitterBuffer {
            depth,
            slots: vec![EMPTY_SLOT; capacity].into_boxed_slice(),
            ssrc: None,
            head: None,
            highest: 0,
            buffered: 0,
            playing: false,
            played_any: false,
            last_timestamp: None,
            stats: JitterStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames buffered before playout starts.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Frames currently held.
    pub fn len(&self) -> usize {
        self.buffered
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// RTP timestamp of the last frame returned by `pop`.
    pub fn last_timestamp(&self) -> Option<u32> {
        self.last_timestamp
    }

    /// Forget everything buffered and start over with the next packet (statistics are kept).
    pub fn reset(&mut self) {
        for s in self.slots.iter_mut() {
            s.full = false;
        }
        self.head = None;
        self.buffered = 0;
        self.playing = false;
        self.played_any = false;
        self.last_timestamp = None;
    }

    /// As [`push`](Self::push), restarting the buffer when the SSRC changes.
    pub fn push_ssrc(&mut self, ssrc: u32, seq: u16, timestamp: u32, payload: &[u8]) -> PushResult {
        if self.ssrc.is_some_and(|s| s != ssrc) {
            self.ssrc = Some(ssrc);
            return self.restart(seq, timestamp, payload);
        }
        self.ssrc = Some(ssrc);
        self.push(seq, timestamp, payload)
    }

    /// Offer one packet's payload.
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8]) -> PushResult {
        if payload.len() > MAX_FRAME {
            self.stats.too_large += 1;
            return PushResult::TooLarge;
        }
        self.stats.received += 1;
        let Some(head) = self.head else {
            self.head = Some(seq);
            self.highest = seq;
            self.store(seq, timestamp, payload);
            return PushResult::Accepted;
        };
        let d = seq_distance(head, seq);
        if d.abs() > RESTART_JUMP {
            self.stats.received -= 1; // counted again by the nested push
            return self.restart(seq, timestamp, payload);
        }
        let cap = self.slots.len() as i32;
        if d < 0 {
            // Before the playout point. While nothing has played yet, an early packet that
            // arrived late just moves the start back, if the window still fits.
            let fits = seq_distance(seq, self.highest) < cap;
            if self.played_any || !fits {
                self.stats.late += 1;
                return PushResult::Late;
            }
            self.head = Some(seq);
        } else if d >= cap {
            // Ahead of the window: move the playout point so the packet fits, giving up on
            // (or discarding) what lies between.
            let new_head = seq.wrapping_sub(cap as u16 - 1);
            let mut s = head;
            while s != new_head {
                let idx = self.index(s);
                if self.slots[idx].full && self.slots[idx].seq == s {
                    self.slots[idx].full = false;
                    self.buffered -= 1;
                    self.stats.overrun += 1;
                } else {
                    self.stats.lost += 1;
                }
                s = s.wrapping_add(1);
            }
            self.head = Some(new_head);
            if self.buffered == 0 {
                self.highest = seq;
            }
        }
        let idx = self.index(seq);
        if self.slots[idx].full && self.slots[idx].seq == seq {
            self.stats.duplicate += 1;
            return PushResult::Duplicate;
        }
        self.store(seq, timestamp, payload);
        PushResult::Accepted
    }

    /// Call once per frame tick. Copies the due frame into `out`.
    pub fn pop(&mut self, out: &mut [u8]) -> PopResult {
        let Some(head) = self.head else {
            return PopResult::Empty;
        };
        if self.buffered == 0 {
            // Ran dry: refill to depth before playing again.
            self.playing = false;
            return PopResult::Empty;
        }
        if !self.playing {
            let span = seq_distance(head, self.highest) + 1;
            if span < self.depth as i32 {
                return PopResult::Empty;
            }
            self.playing = true;
        }
        self.played_any = true;
        self.head = Some(head.wrapping_add(1));
        let idx = self.index(head);
        let slot = &mut self.slots[idx];
        if slot.full && slot.seq == head {
            slot.full = false;
            self.buffered -= 1;
            let n = (slot.len as usize).min(out.len());
            out[..n].copy_from_slice(&slot.data[..n]);
            self.last_timestamp = Some(slot.timestamp);
            PopResult::Frame(n)
        } else {
            self.stats.lost += 1;
            PopResult::Missing
        }
    }

    fn restart(&mut self, seq: u16, timestamp: u32, payload: &[u8]) -> PushResult {
        self.reset();
        self.stats.restarts += 1;
        match self.push(seq, timestamp, payload) {
            PushResult::Accepted => PushResult::Restarted,
            other => other,
        }
    }

    fn index(&self, seq: u16) -> usize {
        seq as usize % self.slots.len()
    }

    fn store(&mut self, seq: u16, timestamp: u32, payload: &[u8]) {
        let idx = self.index(seq);
        let slot = &mut self.slots[idx];
        slot.full = true;
        slot.seq = seq;
        slot.timestamp = timestamp;
        slot.len = payload.len() as u16;
        slot.data[..payload.len()].copy_from_slice(payload);
        self.buffered += 1;
        if self.buffered == 1 || seq_distance(self.highest, seq) > 0 {
            self.highest = seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Pops until the buffer is empty, returning the first payload byte of each frame
    /// (`None` for Missing), skipping the initial fill ticks.
    fn drain(jb: &mut JitterBuffer) -> Vec<Option<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..1000 {
            match jb.pop(&mut buf) {
                PopResult::Frame(n) => {
                    assert!(n > 0);
                    out.push(Some(buf[0]));
                }
                PopResult::Missing => out.push(None),
                PopResult::Empty => break,
            }
        }
        out
    }

    fn push_all(jb: &mut JitterBuffer, seqs: &[u16]) {
        for &s in seqs {
            jb.push(s, s as u32 * 160, &[s as u8; 160]);
        }
    }

    #[test]
    fn in_order_waits_for_depth_then_plays() {
        let mut jb = JitterBuffer::new(3);
        let mut buf = [0u8; MAX_FRAME];
        jb.push(10, 0, &[10; 160]);
        jb.push(11, 160, &[11; 160]);
        assert_eq!(jb.pop(&mut buf), PopResult::Empty, "not filled to depth");
        jb.push(12, 320, &[12; 160]);
        assert_eq!(jb.pop(&mut buf), PopResult::Frame(160));
        assert_eq!(buf[0], 10);
        assert_eq!(jb.last_timestamp(), Some(0));
        assert_eq!(drain(&mut jb), vec![Some(11), Some(12)]);
        assert_eq!(jb.stats().received, 3);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let mut jb = JitterBuffer::new(4);
        push_all(&mut jb, &[2, 1, 4, 3, 0, 6, 5]);
        let got: Vec<_> = drain(&mut jb).into_iter().flatten().collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut jb = JitterBuffer::new(2);
        assert_eq!(jb.push(1, 0, &[1]), PushResult::Accepted);
        assert_eq!(jb.push(1, 0, &[1]), PushResult::Duplicate);
        push_all(&mut jb, &[2, 2, 3]);
        assert_eq!(drain(&mut jb), vec![Some(1), Some(2), Some(3)]);
        assert_eq!(jb.stats().duplicate, 2);
    }

    #[test]
    fn loss_is_reported_once_per_missing_frame() {
        let mut jb = JitterBuffer::new(2);
        push_all(&mut jb, &[1, 2, 4, 7]);
        assert_eq!(
            drain(&mut jb),
            vec![Some(1), Some(2), None, Some(4), None, None, Some(7)]
        );
        assert_eq!(jb.stats().lost, 3);
    }

    #[test]
    fn late_packets_are_dropped_and_counted() {
        let mut jb = JitterBuffer::new(2);
        let mut buf = [0u8; MAX_FRAME];
        push_all(&mut jb, &[1, 3]);
        assert_eq!(jb.pop(&mut buf), PopResult::Frame(160));
        assert_eq!(jb.pop(&mut buf), PopResult::Missing); // 2 due now, not here
        assert_eq!(jb.push(2, 320, &[2; 160]), PushResult::Late);
        assert_eq!(jb.push(1, 160, &[1; 160]), PushResult::Late);
        assert_eq!(drain(&mut jb), vec![Some(3)]);
        assert_eq!(jb.stats().late, 2);
    }

    #[test]
    fn wraps_around_at_65535() {
        let mut jb = JitterBuffer::new(3);
        push_all(&mut jb, &[65534, 0, 65535, 1, 2, 65533]);
        let got = drain(&mut jb);
        assert_eq!(
            got,
            vec![Some(253), Some(254), Some(255), Some(0), Some(1), Some(2)]
        );
        assert_eq!(jb.stats().late + jb.stats().lost, 0);

        // A full window straddling the wrap, reordered, with a depth whose natural slot count
        // (2 × depth) does not divide 65536.
        let mut jb = JitterBuffer::new(11);
        let seqs: Vec<u16> = (0..22u16).map(|i| 65530u16.wrapping_add(i)).collect();
        let mut shuffled = seqs.clone();
        shuffled.reverse();
        for &s in &shuffled {
            assert_eq!(jb.push(s, 0, &[s as u8]), PushResult::Accepted, "seq {s}");
        }
        let got: Vec<u8> = drain(&mut jb).into_iter().flatten().collect();
        let want: Vec<u8> = seqs.iter().map(|&s| s as u8).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn big_jump_and_ssrc_change_restart() {
        let mut jb = JitterBuffer::new(2);
        push_all(&mut jb, &[100, 101, 102]);
        assert_eq!(jb.push(30000, 0, &[7; 10]), PushResult::Restarted);
        assert_eq!(jb.len(), 1);
        jb.push(30001, 160, &[8; 10]);
        assert_eq!(drain(&mut jb), vec![Some(7), Some(8)]);
        assert_eq!(jb.stats().restarts, 1);

        let mut jb = JitterBuffer::new(2);
        assert_eq!(jb.push_ssrc(1, 5, 0, &[5]), PushResult::Accepted);
        assert_eq!(jb.push_ssrc(1, 6, 0, &[6]), PushResult::Accepted);
        assert_eq!(jb.push_ssrc(2, 6, 0, &[9]), PushResult::Restarted);
        assert_eq!(jb.push_ssrc(2, 7, 0, &[10]), PushResult::Accepted);
        assert_eq!(drain(&mut jb), vec![Some(9), Some(10)]);
        assert_eq!(jb.stats().received, 4);

        jb.reset();
        assert_eq!(jb.pop(&mut [0u8; 4]), PopResult::Empty);
    }

    #[test]
    fn runs_dry_then_refills() {
        let mut jb = JitterBuffer::new(2);
        push_all(&mut jb, &[1, 2]);
        assert_eq!(drain(&mut jb), vec![Some(1), Some(2)]);
        // A pause: nothing arrives, nothing is counted lost.
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..10 {
            assert_eq!(jb.pop(&mut buf), PopResult::Empty);
        }
        assert_eq!(jb.stats().lost, 0);
        jb.push(3, 0, &[3]);
        assert_eq!(jb.pop(&mut buf), PopResult::Empty, "refilling");
        jb.push(4, 0, &[4]);
        assert_eq!(drain(&mut jb), vec![Some(3), Some(4)]);
    }

    #[test]
    fn oversize_and_window_overrun() {
        let mut jb = JitterBuffer::new(2);
        assert_eq!(jb.push(1, 0, &[0; MAX_FRAME + 1]), PushResult::TooLarge);
        assert_eq!(jb.stats().too_large, 1);
        // Capacity is 16 slots for depth 2: seq 30 pushes the window past 1..=14.
        push_all(&mut jb, &[1, 2, 30]);
        assert_eq!(jb.stats().overrun, 2);
        assert_eq!(jb.stats().lost, 12);
        let got = drain(&mut jb);
        assert_eq!(got.len(), 16);
        assert_eq!(got.last(), Some(&Some(30)));
        // A small output buffer gets a truncated frame, not a panic.
        push_all(&mut jb, &[31, 32]);
        let mut tiny = [0u8; 3];
        assert_eq!(jb.pop(&mut tiny), PopResult::Frame(3));
        assert_eq!(jb.push(33, 0, &[]), PushResult::Accepted);
    }

    #[test]
    fn capacity_divides_the_sequence_space() {
        for depth in 0..=200 {
            let jb = JitterBuffer::new(depth);
            assert_eq!(65536 % jb.slots.len(), 0, "depth {depth}");
            assert!(jb.slots.len() >= jb.depth() + 8);
        }
    }

    #[test]
    fn random_traffic_never_panics_and_stays_consistent() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for depth in [0, 1, 3, 50, 1000] {
            let mut jb = JitterBuffer::new(depth);
            let mut buf = [0u8; 100];
            let mut seq: u16 = 65_400; // start near the wrap
            for _ in 0..5000 {
                match rng.random_range(0..10) {
                    0 => seq = rng.random(),
                    1..=3 => seq = seq.wrapping_sub(rng.random_range(0..20)),
                    _ => seq = seq.wrapping_add(rng.random_range(0..4)),
                }
                let len = rng.random_range(0..600);
                jb.push_ssrc(rng.random_range(0..2), seq, 0, &vec![1u8; len]);
                if rng.random_bool(0.5) {
                    jb.pop(&mut buf);
                }
                assert!(jb.len() <= jb.slots.len());
                let full = jb.slots.iter().filter(|s| s.full).count();
                assert_eq!(full, jb.len(), "buffered count matches occupied slots");
            }
        }
    }
}

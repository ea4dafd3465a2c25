//! RTCP (RFC 3550 §6) for one stream: receiver statistics kept per inbound packet (loss,
//! extended highest sequence, interarrival jitter per §A.8), compound SR + SDES packets built
//! into a caller buffer, and parsing of the peer's SR/RR so loss and jitter can be reported.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sender reports go out every this many outbound packets (5 s at 20 ms).
pub(crate) const REPORT_EVERY_PACKETS: u64 = 250;

/// What we know of one inbound stream, for our receiver reports (RFC 3550 §6.4).
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// The stream's SSRC, once a packet arrived (a new SSRC starts the statistics over).
    pub ssrc: Option<u32>,
    base_seq: u16,
    max_seq: u16,
    cycles: u32,
    /// Packets received.
    pub received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, scaled by 16 (RFC 3550 §A.8).
    jitter_q4: u32,
    transit: Option<u32>,
    /// Middle 32 bits of the NTP time of the last SR received, and when it arrived.
    last_sr: Option<(u32, std::time::Instant)>,
}

impl ReceiverStats {
    /// Account one RTP packet: `arrival` in the stream's clock units.
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival: u32) {
        if self.ssrc != Some(ssrc) {
            *self = ReceiverStats {
                ssrc: Some(ssrc),
                base_seq: seq,
                max_seq: seq,
                ..Default::default()
            };
        } else if seq.wrapping_sub(self.max_seq) < 0x8000 {
            if seq < self.max_seq {
                // 16 bits of cycles make the 32-bit extended sequence of RFC 3550 §A.1.
                self.cycles = self.cycles.wrapping_add(1) & 0xFFFF;
            }
            self.max_seq = seq;
        }
        self.received += 1;
        // Transit times and their differences are modulo 2^32 like the timestamps they come
        // from (RFC 3550 §A.8): a peer's timestamps are arbitrary, so nothing here may overflow.
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs() as u64;
            // J += (|D| - J) / 16, kept scaled by 16.
            let j = self.jitter_q4 as u64;
            self.jitter_q4 = (j + d).saturating_sub((j + 8) >> 4).min(u32::MAX as u64) as u32;
        }
        self.transit = Some(transit);
    }

    /// Note the peer's sender report (the middle 32 bits of its NTP time), for LSR/DLSR.
    pub fn on_sender_report(&mut self, ntp_middle: u32) {
        self.last_sr = Some((ntp_middle, std::time::Instant::now()));
    }

    /// The extended highest sequence number received (cycles in the high 16 bits).
    pub fn extended_max(&self) -> u32 {
        (self.cycles << 16) | self.max_seq as u32
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        if self.received == 0 {
            return 0;
        }
        (self.extended_max() as u64).saturating_sub(self.base_seq as u64) + 1
    }

    /// Interarrival jitter, in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// A report block (24 bytes) about this source; updates the interval counters.
    fn report_block(&mut self, out: &mut [u8]) {
        let expected = self.expected();
        let lost = expected.saturating_sub(self.received).min(0x7F_FFFF) as u32;
        let exp_int = expected - self.expected_prior.min(expected);
        let rec_int = self.received - self.received_prior.min(self.received);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_int = exp_int.saturating_sub(rec_int);
        let fraction = (lost_int << 8)
            .checked_div(exp_int)
            .map_or(0, |f| f.min(255) as u8);
        let (lsr, dlsr) = match self.last_sr {
            Some((mid, at)) => (mid, (at.elapsed().as_secs_f64() * 65536.0) as u32),
            None => (0, 0),
        };
        out[0..4].copy_from_slice(&self.ssrc.unwrap_or(0).to_be_bytes());
        out[4] = fraction;
        out[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        out[8..12].copy_from_slice(&self.extended_max().to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter().to_be_bytes());
        out[16..20].copy_from_slice(&lsr.to_be_bytes());
        out[20..24].copy_from_slice(&dlsr.to_be_bytes());
    }
}

fn ntp_now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + 2_208_988_800; // 1900 epoch
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs as u32, frac as u32)
}

/// Build a compound SR (+ one report block when we receive media) + SDES CNAME into `out`;
/// returns its length. `out` must hold at least 100 bytes.
pub(crate) fn sender_report(
    out: &mut [u8],
    ssrc: u32,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    stats: &mut ReceiverStats,
    cname: &str,
) -> usize {
    let rc = u8::from(stats.ssrc.is_some() && stats.received > 0);
    let sr_len = 28 + 24 * rc as usize;
    out[0] = 0x80 | rc;
    out[1] = 200;
    out[2..4].copy_from_slice(&((sr_len / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let (s, f) = ntp_now();
    out[8..12].copy_from_slice(&s.to_be_bytes());
    out[12..16].copy_from_slice(&f.to_be_bytes());
    out[16..20].copy_from_slice(&rtp_ts.to_be_bytes());
    out[20..24].copy_from_slice(&packets.to_be_bytes());
    out[24..28].copy_from_slice(&octets.to_be_bytes());
    if rc == 1 {
        stats.report_block(&mut out[28..52]);
    }
    // SDES with one chunk: SSRC, CNAME item, end, padded to 32 bits.
    let cname = &cname.as_bytes()[..cname.len().min(60)];
    let chunk = 4 + 2 + cname.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    let p = &mut out[sr_len..sr_len + 4 + padded];
    p.fill(0);
    p[0] = 0x81;
    p[1] = 202;
    p[2..4].copy_from_slice(&((padded / 4) as u16).to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p[8] = 1; // CNAME
    p[9] = cname.len() as u8;
    p[10..10 + cname.len()].copy_from_slice(cname);
    sr_len + 4 + padded
}

/// What a peer's compound RTCP packet told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerReport {
    /// NTP middle 32 bits of its SR, if it sent one.
    pub sr_ntp_middle: Option<u32>,
    /// Its report about our stream: fraction lost (0–255), cumulative lost, jitter (ts units).
    pub about_us: Option<(u8, u32, u32)>,
}

/// Read a peer's compound RTCP packet: its SR time and its report block about `our_ssrc`;
/// None when it is not RTCP (version 2) or a length field runs past the data.
pub fn parse(mut data: &[u8], our_ssrc: u32) -> Option<PeerReport> {
    let mut r = PeerReport::default();
    let mut any = false;
    while data.len() >= 8 {
        if data[0] >> 6 != 2 {
            return None;
        }
        let rc = (data[0] & 0x1F) as usize;
        let pt = data[1];
        let len = (u16::from_be_bytes([data[2], data[3]]) as usize + 1) * 4;
        if len > data.len() {
            return None;
        }
        let pkt = &data[..len];
        let blocks = match pt {
            200 if len >= 28 => {
                r.sr_ntp_middle = Some(u32::from_be_bytes([pkt[10], pkt[11], pkt[12], pkt[13]]));
                &pkt[28..]
            }
            // The length field comes from the network: an RR shorter than its fixed part (a
            // length of 0 says 4 bytes) carries no report blocks.
            201 if len >= 8 => &pkt[8..],
            _ => &[][..],
        };
        for b in blocks.chunks_exact(24).take(rc) {
            if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) == our_ssrc {
                let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
                r.about_us = Some((b[4], lost, u32::from_be_bytes([b[12], b[13], b[14], b[15]])));
            }
        }
        any = true;
        data = &data[len..];
    }
    any.then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_jitter_in_our_report_round_trip_through_the_parser() {
        let mut stats = ReceiverStats::default();
        // 100 packets with every 10th lost, arriving with a little jitter.
        for i in 0u16..100 {
            if i % 10 == 5 {
                continue;
            }
            let jitter = if i % 2 == 0 { 8 } else { 0 };
            stats.on_rtp(
                0xABCD,
                65500u16.wrapping_add(i),
                i as u32 * 160,
                i as u32 * 160 + 1000 + jitter,
            );
        }
        assert_eq!(stats.received, 90);
        assert_eq!(stats.expected(), 100);
        assert_eq!(
            stats.extended_max(),
            (1 << 16) | 63,
            "sequence wrapped once"
        );
        let mut buf = [0u8; 128];
        let n = sender_report(
            &mut buf,
            0x1234,
            999,
            50,
            8000,
            &mut stats,
            "switchboard@test",
        );
        assert_eq!(n % 4, 0);
        // Read it back as the caller would: the report block is about 0xABCD.
        let r = parse(&buf[..n], 0xABCD).unwrap();
        let (fraction, lost, jitter) = r.about_us.unwrap();
        assert_eq!(lost, 10);
        assert_eq!(fraction, (10 * 256 / 100) as u8);
        assert!((3..=8).contains(&jitter), "{jitter}");
        assert!(r.sr_ntp_middle.is_some());
        assert_eq!(buf[1], 200);
        assert_eq!(buf[28 + 24 + 1], 202, "SDES follows the SR");
        // Garbage is refused, not a panic.
        assert!(parse(&[0x80, 200, 0xFF, 0xFF, 0, 0, 0, 0], 1).is_none());
        assert!(parse(&[1, 2, 3], 1).is_none());
    }

    #[test]
    fn hostile_timestamps_and_sequences_do_not_overflow() {
        // Found by fuzzing (target rtp): a jitter near u32::MAX overflowed `jitter + 8`.
        let mut stats = ReceiverStats::default();
        for i in 0..200_000u32 {
            let ts = if i % 2 == 0 { 0 } else { 0x7FFF_FFFF };
            stats.on_rtp(1, (i as u16).wrapping_mul(40_000), ts, i.wrapping_mul(7));
        }
        let _ = (stats.expected(), stats.jitter(), stats.extended_max());
        let mut buf = [0u8; 128];
        let _ = sender_report(&mut buf, 2, 0, 0, 0, &mut stats, "x");
    }

    #[test]
    fn short_packets_whose_length_field_lies_are_not_a_panic() {
        // An 8-byte RR whose length field is 0 (says 4 bytes): once reached `&pkt[8..]` on a
        // 4-byte slice and killed the media worker.
        let rr = [0x81, 201, 0, 0, 0, 0, 0, 1];
        assert!(parse(&rr, 1).is_some());
        // An SR that says it is shorter than an SR, and an RR claiming 31 blocks in 8 bytes.
        assert!(parse(&[0x80, 200, 0, 1, 0, 0, 0, 1], 1).is_some());
        assert_eq!(
            parse(&[0x9F, 201, 0, 1, 0, 0, 0, 1], 1).map(|r| r.about_us),
            Some(None)
        );
        // Every prefix and every length field of a real compound packet.
        let mut stats = ReceiverStats::default();
        stats.on_rtp(7, 1, 160, 200);
        let mut buf = [0u8; 128];
        let n = sender_report(&mut buf, 9, 1, 1, 160, &mut stats, "x@y");
        for cut in 0..=n {
            for l in 0..=255u8 {
                let mut b = buf[..cut].to_vec();
                if b.len() >= 4 {
                    b[3] = l;
                    b[2] = 0;
                }
                let _ = parse(&b, 7);
            }
        }
    }
}

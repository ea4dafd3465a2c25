//! RTP packets (RFC 3550) for one outbound stream, and parsing of inbound packets with
//! webrtc-rs's sans-IO `rtc-rtp`. Outbound headers are written into a caller-owned buffer so
//! the per-packet path allocates nothing.

use rtc_rtp::header::Header;
use rtc_shared::marshal::{Marshal, Unmarshal};

pub(crate) const HEADER_LEN: usize = 12;

/// Sequence, timestamp and SSRC of one outbound stream.
#[derive(Debug, Clone)]
pub struct RtpSender {
    /// The stream's SSRC (random).
    pub ssrc: u32,
    /// The audio payload type.
    pub payload_type: u8,
    seq: u16,
    timestamp: u32,
    first: bool,
}

impl RtpSender {
    /// A stream with random SSRC, first sequence number and first timestamp (RFC 3550 §5.1).
    pub fn new(payload_type: u8) -> Self {
        RtpSender {
            ssrc: rand::random(),
            payload_type,
            seq: rand::random(),
            timestamp: rand::random(),
            first: true,
        }
    }

    /// Write header + payload for the current timestamp into `out`; returns the packet length.
    /// `marker` is forced on the first packet of the stream (RFC 3551 §4.1 talkspurt start).
    pub fn write(
        &mut self,
        out: &mut [u8],
        payload: &[u8],
        payload_type: u8,
        marker: bool,
    ) -> usize {
        let ts = self.timestamp;
        self.write_at(out, payload, payload_type, marker, ts)
    }

    /// As [`write`](Self::write) with an explicit timestamp (RFC 4733 events keep their start
    /// timestamp on every packet).
    pub fn write_at(
        &mut self,
        out: &mut [u8],
        payload: &[u8],
        payload_type: u8,
        marker: bool,
        timestamp: u32,
    ) -> usize {
        let h = Header {
            version: 2,
            marker: marker || self.first,
            payload_type,
            sequence_number: self.seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        // The header is 12 bytes with no CSRC/extension, so marshal_to cannot overflow `out`
        // (callers size buffers as HEADER_LEN + max payload).
        let n = h.marshal_to(&mut out[..HEADER_LEN]).unwrap_or(HEADER_LEN);
        out[n..n + payload.len()].copy_from_slice(payload);
        n + payload.len()
    }

    /// The RTP timestamp of the next frame.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Advance the media clock by `samples` (one frame sent or skipped).
    pub fn advance(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
    }
}

/// A parsed inbound packet borrowing its payload.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The payload type.
    pub payload_type: u8,
    /// The sequence number.
    pub sequence: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The sender's SSRC.
    pub ssrc: u32,
    /// The marker bit.
    pub marker: bool,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

/// Parse an RTP packet; None for anything that is not RTP version 2 (or is RTCP on the RTP
/// port) or whose padding is inconsistent.
pub fn parse(packet: &[u8]) -> Option<Inbound<'_>> {
    let mut buf = packet;
    let h = Header::unmarshal(&mut buf).ok()?;
    if h.version != 2 {
        return None;
    }
    let mut payload = buf;
    if h.padding {
        let pad = *payload.last()? as usize;
        if pad == 0 || pad > payload.len() {
            return None;
        }
        payload = &payload[..payload.len() - pad];
    }
    // RTCP multiplexed on the RTP port (RFC 5761) uses payload types 64..=95 with the marker.
    if h.marker && (72..=76).contains(&h.payload_type) {
        return None;
    }
    Some(Inbound {
        payload_type: h.payload_type,
        sequence: h.sequence_number,
        timestamp: h.timestamp,
        ssrc: h.ssrc,
        marker: h.marker,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parseable_packets_with_advancing_sequence() {
        let mut s = RtpSender::new(0);
        let mut buf = [0u8; 200];
        let n = s.write(&mut buf, &[0xFF; 160], 0, false);
        assert_eq!(n, 172);
        let p = parse(&buf[..n]).unwrap();
        assert!(p.marker, "first packet carries the marker");
        let (seq0, ts0) = (p.sequence, p.timestamp);
        s.advance(160);
        let n = s.write(&mut buf, &[1; 160], 0, false);
        let p = parse(&buf[..n]).unwrap();
        assert!(!p.marker);
        assert_eq!(p.sequence, seq0.wrapping_add(1));
        assert_eq!(p.timestamp, ts0.wrapping_add(160));
        assert_eq!(p.ssrc, s.ssrc);
        assert_eq!(p.payload, &[1; 160]);
    }

    #[test]
    fn rejects_short_and_bad_packets() {
        assert!(parse(&[0x80, 0, 0]).is_none());
        assert!(parse(&[0x40; 20]).is_none(), "version 1");
        let mut bad_pad = [0u8; 14];
        bad_pad[0] = 0xA0; // padding bit
        bad_pad[13] = 9; // more padding than payload
        assert!(parse(&bad_pad).is_none());
    }
}

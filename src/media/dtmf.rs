//! RFC 4733 telephone-event reception: one digit per event, however many times the sender
//! repeats the start or end packets (§2.5.1.4: end packets are sent three times).

/// The digit of an RFC 4733 event code (0-9, `*`, `#`, A-D); None for other events.
pub fn event_digit(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        _ => return None,
    })
}

/// The RFC 4733 event code of a DTMF digit; None for other characters.
pub fn digit_event(d: char) -> Option<u8> {
    Some(match d.to_ascii_uppercase() {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => d.to_ascii_uppercase() as u8 - b'A' + 12,
        _ => return None,
    })
}

/// Tracks the event in progress by its RTP timestamp, which is constant for all packets of one
/// event (§2.5.1.2), so retransmissions and the triple end packets report nothing new.
#[derive(Debug, Default, Clone)]
pub struct Rfc4733Receiver {
    last: Option<(u32, u8)>,
}

impl Rfc4733Receiver {
    /// Feed one telephone-event payload; returns a digit when a new event starts.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        if payload.len() < 4 {
            return None;
        }
        let event = payload[0];
        let digit = event_digit(event)?;
        if self.last == Some((timestamp, event)) {
            return None;
        }
        self.last = Some((timestamp, event));
        Some(digit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_digit_per_event_despite_repeats() {
        let mut r = Rfc4733Receiver::default();
        let start = [1u8, 0x0a, 0, 160];
        let end = [1u8, 0x8a, 3, 0x20];
        assert_eq!(r.on_packet(1000, &start), Some('1'));
        assert_eq!(r.on_packet(1000, &start), None);
        for _ in 0..3 {
            assert_eq!(r.on_packet(1000, &end), None);
        }
        // Same digit again is a new event with a new timestamp.
        assert_eq!(r.on_packet(2000, &end), Some('1'));
        assert_eq!(r.on_packet(3000, &[11, 0x8a, 0, 0]), Some('#'));
        assert_eq!(r.on_packet(4000, &[200, 0, 0, 0]), None, "not a DTMF event");
        assert_eq!(r.on_packet(5000, &[1, 0]), None, "truncated");
    }

    #[test]
    fn digit_mapping_round_trips() {
        for d in "0123456789*#ABCD".chars() {
            assert_eq!(event_digit(digit_event(d).unwrap()), Some(d));
        }
        assert_eq!(digit_event('x'), None);
    }
}

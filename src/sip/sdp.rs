//! SDP offer/answer for one audio stream (RFC 3264), with the RFC 3551 static payload table
//! because many trunks omit `a=rtpmap` for static types.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::media::codec::Codec;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP has no audio stream")]
    NoAudio,
    #[error("SDP has no usable connection address")]
    NoConnection,
    #[error("SDP line {line} is malformed: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("no common codec: offered payload types {0:?}")]
    NoCommonCodec(Vec<u8>),
}

/// What we learnt from the remote offer and chose for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_rtp: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    /// Payload type of RFC 4733 telephone-event at 8 kHz, when offered.
    pub telephone_event: Option<u8>,
    pub ptime_ms: u32,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn answer(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "recvonly",
            Direction::RecvOnly => "sendonly",
            Direction::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Default)]
struct Offer {
    session_ip: Option<IpAddr>,
    media_ip: Option<IpAddr>,
    port: Option<u16>,
    formats: Vec<u8>,
    rtpmap: Vec<(u8, String, u32)>,
    ptime: Option<u32>,
    direction: Option<Direction>,
    in_audio: bool,
    seen_audio: bool,
}

/// Parse a remote offer and choose what to answer with. `supported` lists our codecs in our
/// preference order; the offerer's order wins among those both sides support (RFC 3264 §6.1).
pub fn negotiate(sdp: &str, supported: &[Codec]) -> Result<Negotiated, SdpError> {
    let mut o = Offer::default();
    for (i, raw) in sdp.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let Some((kind, value)) = line.split_once('=') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(SdpError::Malformed {
                line: i + 1,
                reason: "expected <type>=<value>",
            });
        };
        match kind {
            "c" => {
                let ip = parse_connection(value).ok_or(SdpError::Malformed {
                    line: i + 1,
                    reason: "bad c= line",
                })?;
                if o.in_audio {
                    o.media_ip = Some(ip);
                } else if !o.seen_audio {
                    o.session_ip = Some(ip);
                }
            }
            "m" => {
                // Only the first audio stream is used; later streams are declined implicitly.
                let mut parts = value.split_whitespace();
                let media = parts.next().unwrap_or("");
                if media == "audio" && !o.seen_audio {
                    let port = parts.next().and_then(|p| p.split('/').next()?.parse().ok());
                    let _proto = parts.next();
                    o.port = Some(port.ok_or(SdpError::Malformed {
                        line: i + 1,
                        reason: "bad m= port",
                    })?);
                    o.formats = parts.filter_map(|f| f.parse().ok()).collect();
                    o.in_audio = true;
                    o.seen_audio = true;
                } else {
                    o.in_audio = false;
                }
            }
            "a" if o.in_audio || !o.seen_audio => parse_attribute(value, &mut o),
            _ => {}
        }
    }
    if !o.seen_audio {
        return Err(SdpError::NoAudio);
    }
    let ip = o.media_ip.or(o.session_ip).ok_or(SdpError::NoConnection)?;
    let port = o.port.ok_or(SdpError::NoAudio)?;

    let name_of = |pt: u8| -> Option<(String, u32)> {
        o.rtpmap
            .iter()
            .find(|(p, _, _)| *p == pt)
            .map(|(_, n, r)| (n.clone(), *r))
            .or_else(|| static_payload(pt).map(|(n, r)| (n.to_string(), r)))
    };
    let mut chosen = None;
    for &pt in &o.formats {
        if let Some((name, rate)) = name_of(pt) {
            if let Some(c) = supported.iter().find(|c| c.matches(&name, rate)) {
                chosen = Some((*c, pt));
                break;
            }
        }
    }
    let (codec, payload_type) = chosen.ok_or_else(|| SdpError::NoCommonCodec(o.formats.clone()))?;
    let telephone_event = o.formats.iter().copied().find(|&pt| {
        name_of(pt).is_some_and(|(n, r)| n.eq_ignore_ascii_case("telephone-event") && r == 8000)
    });
    Ok(Negotiated {
        remote_rtp: SocketAddr::new(ip, port),
        codec,
        payload_type,
        telephone_event,
        ptime_ms: o.ptime.filter(|p| (10..=60).contains(p)).unwrap_or(20),
        direction: o.direction.unwrap_or(Direction::SendRecv),
    })
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_whitespace();
    let (_net, _ty, addr) = (parts.next()?, parts.next()?, parts.next()?);
    // Multicast forms carry a TTL suffix ("224.2.1.1/127").
    addr.split('/').next()?.parse().ok()
}

fn parse_attribute(value: &str, o: &mut Offer) {
    let (name, rest) = value.split_once(':').unwrap_or((value, ""));
    match name {
        "rtpmap" => {
            let mut parts = rest.split_whitespace();
            let pt = parts.next().and_then(|p| p.parse().ok());
            let enc = parts.next();
            if let (Some(pt), Some(enc)) = (pt, enc) {
                let mut e = enc.split('/');
                let n = e.next().unwrap_or("").to_string();
                let rate = e.next().and_then(|r| r.parse().ok()).unwrap_or(8000);
                o.rtpmap.push((pt, n, rate));
            }
        }
        "ptime" => o.ptime = rest.trim().parse().ok(),
        "sendrecv" => o.direction = Some(Direction::SendRecv),
        "sendonly" => o.direction = Some(Direction::SendOnly),
        "recvonly" => o.direction = Some(Direction::RecvOnly),
        "inactive" => o.direction = Some(Direction::Inactive),
        _ => {}
    }
}

/// RFC 3551 §6 static audio payload types that we may meet.
pub fn static_payload(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        18 => ("G729", 8000),
        _ => return None,
    })
}

/// Build our answer for a negotiated stream.
pub fn answer(n: &Negotiated, local: SocketAddr, session_id: u64) -> String {
    let ip_kind = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let mut pts = n.payload_type.to_string();
    let mut attrs = format!(
        "a=rtpmap:{} {}/{}\r\n",
        n.payload_type,
        n.codec.rtpmap_name(),
        n.codec.rtp_clock_rate()
    );
    if let Some(te) = n.telephone_event {
        pts.push_str(&format!(" {te}"));
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=switchboard {session_id} {session_id} IN {ip_kind} {ip}\r\ns=switchboard\r\n\
         c=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n{attrs}a=ptime:{ptime}\r\na={dir}\r\n",
        port = local.port(),
        ptime = n.ptime_ms,
        dir = n.direction.answer(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Codec] = &[Codec::Pcmu, Codec::Pcma];

    #[test]
    fn picks_offerers_first_common_codec_and_telephone_event() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 18 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n";
        let n = negotiate(sdp, ALL).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.payload_type, 8);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.ptime_ms, 30);
        assert_eq!(n.remote_rtp, "127.0.0.2:4000".parse().unwrap());
    }

    #[test]
    fn media_level_connection_wins_and_static_types_need_no_rtpmap() {
        let sdp = "v=0\nc=IN IP4 1.1.1.1\nm=audio 5000 RTP/AVP 0\nc=IN IP4 127.0.0.9\n";
        let n = negotiate(sdp, ALL).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.remote_rtp, "127.0.0.9:5000".parse().unwrap());
        assert_eq!(n.telephone_event, None);
    }

    #[test]
    fn no_common_codec_and_no_audio_are_errors() {
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=audio 5000 RTP/AVP 18 4\n";
        assert_eq!(
            negotiate(sdp, ALL),
            Err(SdpError::NoCommonCodec(vec![18, 4]))
        );
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=video 5000 RTP/AVP 96\n";
        assert_eq!(negotiate(sdp, ALL), Err(SdpError::NoAudio));
        assert!(negotiate("garbage", ALL).is_err());
    }

    #[test]
    fn answer_mirrors_direction_and_lists_telephone_event() {
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=audio 5000 RTP/AVP 0 96\na=rtpmap:96 telephone-event/8000\na=sendonly\n";
        let n = negotiate(sdp, ALL).unwrap();
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        assert!(a.contains("m=audio 20000 RTP/AVP 0 96\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:96 telephone-event/8000"));
        assert!(a.contains("a=recvonly"));
    }
}

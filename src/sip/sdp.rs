//! SDP offer/answer for one audio stream (RFC 3264), with the RFC 3551 static payload table
//! because many trunks omit `a=rtpmap` for static types.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::media::codec::Codec;

/// Why an offer cannot be answered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    /// No `m=audio` line.
    #[error("SDP has no audio stream")]
    NoAudio,
    /// No `c=` line with an address we can send to.
    #[error("SDP has no usable connection address")]
    NoConnection,
    /// A line we need could not be read.
    #[error("SDP line {line} is malformed: {reason}")]
    Malformed {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// None of the offered payload types is one of our codecs (the offered types).
    #[error("no common codec: offered payload types {0:?}")]
    NoCommonCodec(Vec<u8>),
    /// The audio is offered only over SRTP (the profile, e.g. `RTP/SAVP`).
    #[error("only secure RTP ({0}) is offered, and SRTP is not supported")]
    SrtpOnly(String),
    /// Our own answer (to re-negotiate against) names no codec we know.
    #[error("our own session description has no codec we know")]
    OwnSession,
}

/// One `m=` line of the offer, as the answer must mirror it (RFC 3264 §6: one answer line
/// per offered line, in order; streams we decline get port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    /// The media type, e.g. `audio`, `video`.
    pub media: String,
    /// The transport profile, e.g. `RTP/AVP`.
    pub proto: String,
    /// The first offered format, which a declined line repeats.
    pub first_format: String,
}

/// What we learnt from the remote offer and chose for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP.
    pub remote_rtp: SocketAddr,
    /// The codec chosen.
    pub codec: Codec,
    /// Its payload type in the offer.
    pub payload_type: u8,
    /// Payload type of RFC 4733 telephone-event at 8 kHz, when offered.
    pub telephone_event: Option<u8>,
    /// Packet time in milliseconds (`a=ptime` when 10 to 60, else 20).
    pub ptime_ms: u32,
    /// The offer's direction attribute.
    pub direction: Direction,
    /// Every offered m-line, and which of them is the audio stream we took.
    pub offered: Vec<MediaLine>,
    /// Index in `offered` of the audio stream we took.
    pub audio_index: usize,
}

/// An SDP direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The direction that answers this one (`sendonly` is answered `recvonly`).
    fn mirrored(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// The attribute that answers this direction.
    fn answer(self) -> &'static str {
        match self.mirrored() {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    line: Option<MediaLine>,
    ip: Option<IpAddr>,
    port: u16,
    formats: Vec<u8>,
    rtpmap: Vec<(u8, String, u32)>,
    ptime: Option<u32>,
    direction: Option<Direction>,
}

impl Stream {
    fn is_audio(&self) -> bool {
        self.line.as_ref().is_some_and(|l| l.media == "audio")
    }
    /// Plain RTP: the only profile we can answer.
    fn is_plain_rtp(&self) -> bool {
        self.line
            .as_ref()
            .is_some_and(|l| l.proto.eq_ignore_ascii_case("RTP/AVP"))
    }
    fn is_secure(&self) -> bool {
        self.line.as_ref().is_some_and(|l| {
            let p = l.proto.to_ascii_uppercase();
            p.contains("SAVP") || p.starts_with("UDP/TLS")
        })
    }
}

/// The session level (index 0) and each media stream in order.
fn parse_streams(sdp: &str) -> Result<Vec<Stream>, SdpError> {
    let mut streams = vec![Stream::default()];
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
        let cur = streams.len() - 1;
        match kind {
            "c" => {
                let ip = parse_connection(value).ok_or(SdpError::Malformed {
                    line: i + 1,
                    reason: "bad c= line",
                })?;
                streams[cur].ip = Some(ip);
            }
            "m" => {
                let mut parts = value.split_whitespace();
                let media = parts.next().unwrap_or("").to_string();
                let port = parts
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or(SdpError::Malformed {
                        line: i + 1,
                        reason: "bad m= port",
                    })?;
                let proto = parts.next().unwrap_or("RTP/AVP").to_string();
                let formats: Vec<&str> = parts.collect();
                streams.push(Stream {
                    line: Some(MediaLine {
                        media,
                        proto,
                        first_format: formats.first().unwrap_or(&"0").to_string(),
                    }),
                    port,
                    formats: formats.iter().filter_map(|f| f.parse().ok()).collect(),
                    ..Stream::default()
                });
            }
            "a" => parse_attribute(value, &mut streams[cur]),
            _ => {}
        }
    }
    Ok(streams)
}

/// Why an offer must be refused before any codec is looked at, as a short text for a
/// `Warning` header: today only SRTP without a plain RTP alternative (RFC 3264 §6 would
/// otherwise have us answer an RTP/SAVP line with RTP/AVP, which the offerer must not accept).
pub(crate) fn offer_refusal(sdp: &str) -> Option<&'static str> {
    let streams = parse_streams(sdp).ok()?;
    let audio = || {
        streams
            .iter()
            .skip(1)
            .filter(|s| s.is_audio() && s.port != 0)
    };
    let secure = audio().any(|s| s.is_secure());
    let plain = audio().any(|s| s.is_plain_rtp());
    (secure && !plain).then_some("SRTP (RTP/SAVP) is not supported yet: offer RTP/AVP")
}

/// Parse a remote offer and choose what to answer with. `supported` lists our codecs in our
/// preference order; the offerer's order wins among those both sides support (RFC 3264 §6.1).
/// The first plain RTP audio stream with a common codec is taken; every other stream is
/// declined in the answer.
pub fn negotiate(sdp: &str, supported: &[Codec]) -> Result<Negotiated, SdpError> {
    let streams = parse_streams(sdp)?;
    let session = &streams[0];
    let media = &streams[1..];
    if !media.iter().any(Stream::is_audio) {
        return Err(SdpError::NoAudio);
    }
    let mut first_error = None;
    for (index, o) in media.iter().enumerate() {
        if !o.is_audio() || o.port == 0 {
            continue;
        }
        if !o.is_plain_rtp() {
            let proto = o.line.as_ref().map(|l| l.proto.clone()).unwrap_or_default();
            first_error.get_or_insert(if o.is_secure() {
                SdpError::SrtpOnly(proto)
            } else {
                SdpError::NoAudio
            });
            continue;
        }
        let name_of = |pt: u8| -> Option<(String, u32)> {
            o.rtpmap
                .iter()
                .find(|(p, _, _)| *p == pt)
                .map(|(_, n, r)| (n.clone(), *r))
                .or_else(|| static_payload(pt).map(|(n, r)| (n.to_string(), r)))
        };
        let chosen = o.formats.iter().find_map(|&pt| {
            let (name, rate) = name_of(pt)?;
            let c = supported.iter().find(|c| c.matches(&name, rate))?;
            Some((*c, pt))
        });
        let Some((codec, payload_type)) = chosen else {
            first_error.get_or_insert(SdpError::NoCommonCodec(o.formats.clone()));
            continue;
        };
        let ip = o.ip.or(session.ip).ok_or(SdpError::NoConnection)?;
        let telephone_event = o.formats.iter().copied().find(|&pt| {
            name_of(pt).is_some_and(|(n, r)| n.eq_ignore_ascii_case("telephone-event") && r == 8000)
        });
        return Ok(Negotiated {
            remote_rtp: SocketAddr::new(ip, o.port),
            codec,
            payload_type,
            telephone_event,
            ptime_ms: o.ptime.filter(|p| (10..=60).contains(p)).unwrap_or(20),
            direction: o
                .direction
                .or(session.direction)
                .unwrap_or(Direction::SendRecv),
            offered: media.iter().filter_map(|s| s.line.clone()).collect(),
            audio_index: index,
        });
    }
    Err(first_error.unwrap_or(SdpError::NoAudio))
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_whitespace();
    let (_net, _ty, addr) = (parts.next()?, parts.next()?, parts.next()?);
    // Multicast forms carry a TTL suffix ("224.2.1.1/127").
    addr.split('/').next()?.parse().ok()
}

fn parse_attribute(value: &str, o: &mut Stream) {
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
    let audio = format!(
        "m=audio {port} RTP/AVP {pts}\r\n{attrs}a=ptime:{ptime}\r\na={dir}\r\n",
        port = local.port(),
        ptime = n.ptime_ms,
        dir = n.direction.answer(),
    );
    let mut media = String::new();
    if n.offered.is_empty() {
        media.push_str(&audio);
    }
    for (i, line) in n.offered.iter().enumerate() {
        if i == n.audio_index {
            media.push_str(&audio);
        } else {
            // Declined (RFC 3264 §6): same media and proto, port 0, one format.
            media.push_str(&format!(
                "m={} 0 {} {}\r\n",
                line.media, line.proto, line.first_format
            ));
        }
    }
    format!(
        "v=0\r\no=switchboard {session_id} {session_id} IN {ip_kind} {ip}\r\ns=switchboard\r\n\
         c=IN {ip_kind} {ip}\r\nt=0 0\r\n{media}"
    )
}

/// Our offer for a call we place: one audio stream with `codecs` in our preference order,
/// RFC 4733 telephone-event (101), 20 ms packets, `sendrecv`.
pub fn offer(codecs: &[Codec], local: SocketAddr, session_id: u64) -> String {
    let ip_kind = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let mut pts = String::new();
    let mut maps = String::new();
    for c in codecs {
        let pt = match c {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        };
        pts.push_str(&format!("{pt} "));
        maps.push_str(&format!(
            "a=rtpmap:{pt} {}/{}\r\n",
            c.rtpmap_name(),
            c.rtp_clock_rate()
        ));
    }
    format!(
        "v=0\r\no=switchboard {session_id} {session_id} IN {ip_kind} {ip}\r\ns=switchboard\r\n\
         c=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}101\r\n{maps}\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        port = local.port()
    )
}

/// Our side of a session we offered, narrowed to what the far end's `answer` accepted (its
/// codec, telephone-event, ptime): what later offers inside the dialog are answered against.
pub fn settled(offer: &str, answer_sdp: &str) -> Result<String, SdpError> {
    let mine = parse_streams(offer)?;
    let audio = mine
        .iter()
        .skip(1)
        .find(|s| s.is_audio())
        .ok_or(SdpError::OwnSession)?;
    let ip = audio.ip.or(mine[0].ip).ok_or(SdpError::OwnSession)?;
    let id = offer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(1);
    let n = negotiate(answer_sdp, &[Codec::Pcmu, Codec::Pcma, Codec::G722])?;
    // `answer` writes the direction that answers theirs, which is ours.
    Ok(answer(&n, SocketAddr::new(ip, audio.port), id))
}

/// What a new offer inside a dialog (re-INVITE, UPDATE) changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reanswer {
    /// Our answer: the session we already have, its direction and version updated.
    pub sdp: String,
    /// Where the peer now wants our RTP.
    pub remote_rtp: SocketAddr,
    /// Whether we may send: the peer receives (`sendrecv`/`recvonly`) and names an address
    /// (`c=0.0.0.0` is the old RFC 2543 hold).
    pub sending: bool,
}

/// Answer a new offer in an established session whose current answer is `ours`: the same
/// codec, local address and session id (RFC 3264 §8: the version goes up when anything
/// changed); hold and resume through the direction, a new address or port moves our RTP. A
/// codec switch is not followed: an offer without our codec is refused (the call keeps its
/// session).
pub fn reanswer(offer: &str, ours: &str) -> Result<Reanswer, SdpError> {
    let mine = parse_streams(ours)?;
    let audio = mine
        .iter()
        .skip(1)
        .find(|s| s.is_audio())
        .ok_or(SdpError::NoAudio)?;
    // Our answer names one audio codec first (then telephone-event).
    const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];
    let first = *audio.formats.first().ok_or(SdpError::OwnSession)?;
    let (name, rate) = audio
        .rtpmap
        .iter()
        .find(|(pt, ..)| *pt == first)
        .map(|(_, n, r)| (n.clone(), *r))
        .or_else(|| static_payload(first).map(|(n, r)| (n.to_string(), r)))
        .ok_or(SdpError::OwnSession)?;
    let codec = ALL
        .into_iter()
        .find(|c| c.matches(&name, rate))
        .ok_or(SdpError::OwnSession)?;
    let ip = audio.ip.or(mine[0].ip).ok_or(SdpError::NoAudio)?;
    let local = SocketAddr::new(ip, audio.port);
    let (id, version) = ours
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("o="))
        .and_then(|o| {
            let mut f = o.split_whitespace().skip(1);
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or((1, 1));
    let n = negotiate(offer, &[codec])?;
    let held_by_address = n.remote_rtp.ip().is_unspecified();
    let sending =
        matches!(n.direction, Direction::SendRecv | Direction::RecvOnly) && !held_by_address;
    let same = answer(&n, local, id);
    let unchanged = strip_origin(&same) == strip_origin(ours);
    let version = if unchanged { version } else { version + 1 };
    let sdp = same.replacen(
        &format!("o=switchboard {id} {id} "),
        &format!("o=switchboard {id} {version} "),
        1,
    );
    Ok(Reanswer {
        sdp,
        remote_rtp: n.remote_rtp,
        sending,
    })
}

fn strip_origin(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| !l.starts_with("o="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_is_our_offer_narrowed_to_their_answer() {
        let ours = offer(
            &[Codec::Pcmu, Codec::Pcma],
            "127.0.0.1:20000".parse().unwrap(),
            7,
        );
        let theirs = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 8\r\na=sendonly\r\n";
        let s = settled(&ours, theirs).unwrap();
        assert!(s.contains("m=audio 20000 RTP/AVP 8\r\n"), "{s}");
        assert!(
            s.contains("a=recvonly"),
            "they only send, so we only receive: {s}"
        );
        assert!(s.contains("o=switchboard 7 7 "), "{s}");
        let both = theirs.replace("a=sendonly", "a=sendrecv");
        assert!(settled(&ours, &both).unwrap().contains("a=sendrecv"));
    }

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

    #[test]
    fn every_offered_stream_gets_an_answer_line() {
        // Audio and video: the video line is declined with port 0, in the offered order.
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 5002 RTP/AVP 31 96\r\na=rtpmap:96 H264/90000\r\n\
                   m=audio 5000 RTP/AVP 0\r\nm=application 5004 UDP/BFCP *\r\n";
        let n = negotiate(sdp, ALL).unwrap();
        assert_eq!(n.remote_rtp, "127.0.0.1:5000".parse().unwrap());
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        let m: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m,
            vec![
                "m=video 0 RTP/AVP 31",
                "m=audio 20000 RTP/AVP 0",
                "m=application 0 UDP/BFCP *"
            ],
            "{a}"
        );
    }

    #[test]
    fn srtp_only_offers_are_refused_and_plain_alternatives_taken() {
        let savp = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n\
                    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        assert!(offer_refusal(savp).is_some_and(|w| w.contains("SRTP")));
        assert_eq!(
            negotiate(savp, ALL),
            Err(SdpError::SrtpOnly("RTP/SAVP".into()))
        );
        // An SRTP line with a plain RTP alternative: the plain one is answered, the SRTP one declined.
        let both = format!("{savp}m=audio 5002 RTP/AVP 0\r\n");
        assert_eq!(offer_refusal(&both), None);
        let n = negotiate(&both, ALL).unwrap();
        assert_eq!(n.remote_rtp.port(), 5002);
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        assert!(
            a.contains("m=audio 0 RTP/SAVP 0\r\nm=audio 20000 RTP/AVP 0\r\n"),
            "{a}"
        );
        let dtls = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 UDP/TLS/RTP/SAVPF 0\r\n";
        assert!(offer_refusal(dtls).is_some());
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(offer_refusal(plain), None);
    }

    #[test]
    fn reoffers_hold_resume_and_move_the_media() {
        let offer = |dir: &str, ip: &str, port: u16| {
            format!(
                "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={dir}\r\n"
            )
        };
        let first = negotiate(&offer("sendrecv", "127.0.0.2", 4000), ALL).unwrap();
        let ours = answer(&first, "127.0.0.1:20000".parse().unwrap(), 77);
        // The peer holds us (sendonly): we answer recvonly and stop sending.
        let hold = reanswer(&offer("sendonly", "127.0.0.2", 4000), &ours).unwrap();
        assert!(!hold.sending);
        assert!(hold.sdp.contains("a=recvonly"), "{}", hold.sdp);
        assert!(
            hold.sdp.contains("o=switchboard 77 78 "),
            "version up: {}",
            hold.sdp
        );
        assert!(
            hold.sdp.contains("m=audio 20000 RTP/AVP 0 101"),
            "{}",
            hold.sdp
        );
        // Inactive, and the old c=0.0.0.0 hold.
        assert!(
            !reanswer(&offer("inactive", "127.0.0.2", 4000), &hold.sdp)
                .unwrap()
                .sending
        );
        let old = reanswer(&offer("sendrecv", "0.0.0.0", 4000), &ours).unwrap();
        assert!(!old.sending);
        // Resume at a new port: sending again, to the new address.
        let resume = reanswer(&offer("sendrecv", "127.0.0.3", 4100), &hold.sdp).unwrap();
        assert!(resume.sending);
        assert_eq!(resume.remote_rtp, "127.0.0.3:4100".parse().unwrap());
        assert!(resume.sdp.contains("a=sendrecv") && resume.sdp.contains("o=switchboard 77 79 "));
        // The same offer again changes nothing: same version (RFC 3264 §8).
        let again = reanswer(&offer("sendrecv", "127.0.0.3", 4100), &resume.sdp).unwrap();
        assert_eq!(again.sdp, resume.sdp);
        // An offer without our codec is refused; the call keeps its session.
        let pcma = offer("sendrecv", "127.0.0.2", 4000).replace("RTP/AVP 0 101", "RTP/AVP 8");
        assert!(reanswer(&pcma, &ours).is_err());
    }
}

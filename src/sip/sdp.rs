//! SDP offer/answer for one audio stream (RFC 3264), with the RFC 3551 static payload table
//! because many trunks omit `a=rtpmap` for static types, and SDES keys for SRTP (RFC 4568):
//! `RTP/SAVP` offers, and `RTP/AVP` offers that carry `a=crypto` ("best effort" SRTP, as
//! baresip and many PBXs send it), are answered encrypted when the policy allows.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

pub use crate::config::SrtpPolicy;
use crate::media::codec::{Codec, Format};
use crate::media::srtp::{MasterKey, SrtpKeys, Suite};

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
    /// The audio is offered only over SRTP (the profile, e.g. `RTP/SAVP`) and SRTP is off.
    #[error("only secure RTP ({0}) is offered, and SRTP is off here")]
    SrtpOff(String),
    /// SRTP is required and the offer has no audio stream with a key we can use.
    #[error("SRTP is required, and no audio stream is offered with a usable a=crypto key")]
    SrtpRequired,
    /// Secure RTP without an SDES key we can use (DTLS-SRTP, other suites, MKIs).
    #[error("secure RTP ({0}) is offered without an SDES key in AES_CM_128_HMAC_SHA1_80 or _32")]
    NoUsableCrypto(String),
    /// The answer to our offer chose an `a=crypto` tag or suite we did not offer.
    #[error("the answer's a=crypto does not match any key we offered")]
    CryptoMismatch,
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
    /// SRTP, when the stream we took is secured: the offer's `a=crypto` tag and both keys
    /// (ours fresh from [`negotiate`]).
    pub srtp: Option<Sdes>,
}

/// An SDES-keyed stream: the `a=crypto` tag both sides use and the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdes {
    /// The tag of the chosen `a=crypto` line.
    pub tag: u32,
    /// The suite and both keys.
    pub keys: SrtpKeys,
}

/// One `a=crypto` line we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Crypto {
    tag: u32,
    suite: Suite,
    key: MasterKey,
}

/// An `a=crypto:<tag> <suite> inline:<key>[|lifetime]` value (RFC 4568 §9.1) we can use: one
/// key of 30 bytes, no MKI (we send none and cannot tell keys apart by it), no session
/// parameters (UNENCRYPTED_SRTP and the like change the transform).
fn parse_crypto(value: &str) -> Option<Crypto> {
    let mut parts = value.split_whitespace();
    let tag = parts.next()?.parse().ok()?;
    let suite = Suite::parse(parts.next()?)?;
    let key_params = parts.next()?;
    if parts.next().is_some() || key_params.contains(';') {
        return None;
    }
    let inline = key_params.strip_prefix("inline:")?;
    let mut fields = inline.split('|');
    let key = MasterKey::from_base64(fields.next()?)?;
    for f in fields {
        if f.contains(':') {
            return None; // an MKI
        }
    }
    Some(Crypto { tag, suite, key })
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
    /// `a=crypto` lines we can use, in the offered order.
    cryptos: Vec<Crypto>,
}

impl Stream {
    fn is_audio(&self) -> bool {
        self.line.as_ref().is_some_and(|l| l.media == "audio")
    }
    /// Plain RTP (perhaps with best-effort `a=crypto`).
    fn is_plain_rtp(&self) -> bool {
        self.line
            .as_ref()
            .is_some_and(|l| l.proto.eq_ignore_ascii_case("RTP/AVP"))
    }
    /// SDES-keyed SRTP profiles: `RTP/SAVP`, and `RTP/SAVPF` (its feedback is optional).
    fn is_sdes_profile(&self) -> bool {
        self.line.as_ref().is_some_and(|l| {
            l.proto.eq_ignore_ascii_case("RTP/SAVP") || l.proto.eq_ignore_ascii_case("RTP/SAVPF")
        })
    }
    fn is_secure(&self) -> bool {
        self.line.as_ref().is_some_and(|l| {
            let p = l.proto.to_ascii_uppercase();
            p.contains("SAVP") || p.starts_with("UDP/TLS")
        })
    }
    fn proto(&self) -> String {
        self.line
            .as_ref()
            .map(|l| l.proto.clone())
            .unwrap_or_default()
    }
    /// How this stream can be taken under `policy`: Ok(Some(crypto)) encrypted, Ok(None)
    /// plain, Err why not at all.
    fn security(&self, policy: SrtpPolicy) -> Result<Option<&Crypto>, SdpError> {
        let crypto = self.cryptos.first();
        if self.is_sdes_profile() {
            return match (policy, crypto) {
                (SrtpPolicy::Off, _) => Err(SdpError::SrtpOff(self.proto())),
                (_, Some(c)) => Ok(Some(c)),
                (_, None) => Err(SdpError::NoUsableCrypto(self.proto())),
            };
        }
        if self.is_secure() {
            // DTLS-SRTP (UDP/TLS/RTP/SAVP): keys from a handshake we do not do, whatever
            // the policy.
            return Err(SdpError::NoUsableCrypto(self.proto()));
        }
        if !self.is_plain_rtp() {
            return Err(SdpError::NoAudio);
        }
        match (policy, crypto) {
            (SrtpPolicy::Off, _) => Ok(None),
            (_, Some(c)) => Ok(Some(c)),
            (SrtpPolicy::Optional, None) => Ok(None),
            (SrtpPolicy::Required, None) => Err(SdpError::SrtpRequired),
        }
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

/// Why an offer must be refused under `policy` before any codec is looked at, as a short text
/// for a `Warning` header: secure RTP with SRTP off, plain RTP with SRTP required, or secure
/// RTP keyed in a way we cannot use. (RFC 3264 §6 would otherwise have us answer an RTP/SAVP
/// line with RTP/AVP, which the offerer must not accept.)
pub fn offer_refusal(sdp: &str, policy: SrtpPolicy) -> Option<&'static str> {
    let streams = parse_streams(sdp).ok()?;
    let audio: Vec<&Stream> = streams
        .iter()
        .skip(1)
        .filter(|s| s.is_audio() && s.port != 0)
        .collect();
    let verdicts: Vec<_> = audio.iter().map(|s| s.security(policy)).collect();
    if audio.is_empty() || verdicts.iter().any(Result::is_ok) {
        return None;
    }
    verdicts.iter().find_map(|v| match v {
        Err(SdpError::SrtpOff(_)) => Some("SRTP is off here: offer RTP/AVP"),
        Err(SdpError::SrtpRequired) => {
            Some("SRTP is required: offer RTP/SAVP with an a=crypto AES_CM_128_HMAC_SHA1_80 key")
        }
        Err(SdpError::NoUsableCrypto(_)) => Some(
            "secure RTP needs SDES keys (a=crypto AES_CM_128_HMAC_SHA1_80 or _32, no MKI); DTLS-SRTP is not supported",
        ),
        _ => None,
    })
}

/// Parse a remote offer and choose what to answer with. `supported` lists our codecs in our
/// preference order; the offerer's order wins among those both sides support (RFC 3264 §6.1).
/// The first audio stream with a common codec that `srtp` allows is taken, an encrypted one
/// before a plain one (an offer may carry both); every other stream is declined in the answer.
pub fn negotiate(sdp: &str, supported: &[Codec], srtp: SrtpPolicy) -> Result<Negotiated, SdpError> {
    let streams = parse_streams(sdp)?;
    let session = &streams[0];
    let media = &streams[1..];
    if !media.iter().any(Stream::is_audio) {
        return Err(SdpError::NoAudio);
    }
    let mut first_error = None;
    let mut plain = None;
    for (index, o) in media.iter().enumerate() {
        if !o.is_audio() || o.port == 0 {
            continue;
        }
        let crypto = match o.security(srtp) {
            Ok(c) => c,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
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
        let n = Negotiated {
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
            srtp: crypto.map(|c| Sdes {
                tag: c.tag,
                keys: SrtpKeys {
                    suite: c.suite,
                    local: MasterKey::random(),
                    remote: c.key.clone(),
                },
            }),
        };
        if n.srtp.is_some() {
            return Ok(n);
        }
        plain.get_or_insert(n);
    }
    plain.ok_or(first_error.unwrap_or(SdpError::NoAudio))
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
        "crypto" => o.cryptos.extend(parse_crypto(rest)),
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
    // A secured stream answers in the offer's own profile (SAVP, SAVPF, or AVP with
    // best-effort a=crypto) with our key under the offer's tag.
    let proto = match &n.srtp {
        Some(sdes) => {
            attrs.push_str(&crypto_line(sdes.tag, sdes.keys.suite, &sdes.keys.local));
            n.offered
                .get(n.audio_index)
                .map_or("RTP/SAVP", |l| l.proto.as_str())
        }
        None => "RTP/AVP",
    };
    let audio = format!(
        "m=audio {port} {proto} {pts}\r\n{attrs}a=ptime:{ptime}\r\na={dir}\r\n",
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

fn crypto_line(tag: u32, suite: Suite, key: &MasterKey) -> String {
    format!(
        "a=crypto:{tag} {} inline:{}\r\n",
        suite.name(),
        key.to_base64()
    )
}

/// Our offer for a call we place: one audio stream with `codecs` in our preference order,
/// RFC 4733 telephone-event (101), 20 ms packets, `sendrecv`. With SRTP `Required` it is
/// `RTP/SAVP`; `Optional` offers `RTP/AVP` with the same keys (best effort: a peer that knows
/// SDES answers encrypted, any other answers plain). Each suite gets its own fresh key.
pub fn offer(codecs: &[Codec], local: SocketAddr, session_id: u64, srtp: SrtpPolicy) -> String {
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
    let (proto, keys) = match srtp {
        SrtpPolicy::Off => ("RTP/AVP", String::new()),
        SrtpPolicy::Optional => ("RTP/AVP", offered_keys()),
        SrtpPolicy::Required => ("RTP/SAVP", offered_keys()),
    };
    format!(
        "v=0\r\no=switchboard {session_id} {session_id} IN {ip_kind} {ip}\r\ns=switchboard\r\n\
         c=IN {ip_kind} {ip}\r\nt=0 0\r\nm=audio {port} {proto} {pts}101\r\n{maps}\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n{keys}a=ptime:20\r\na=sendrecv\r\n",
        port = local.port()
    )
}

fn offered_keys() -> String {
    Suite::ALL
        .iter()
        .zip(1u32..)
        .map(|(suite, tag)| crypto_line(tag, *suite, &MasterKey::random()))
        .collect()
}

/// The far end's `answer` to our `offer`: what [`negotiate`] makes of it, with SRTP keyed by
/// the key we offered under the tag it chose. An offer with `RTP/SAVP` needs an encrypted
/// answer; one with best-effort keys takes either.
pub fn negotiate_answer(
    offer: &str,
    answer_sdp: &str,
    supported: &[Codec],
) -> Result<Negotiated, SdpError> {
    let mine = parse_streams(offer)?;
    let audio = mine
        .iter()
        .skip(1)
        .find(|s| s.is_audio() && s.port != 0)
        .ok_or(SdpError::OwnSession)?;
    let policy = match (audio.is_sdes_profile(), audio.cryptos.is_empty()) {
        (true, _) => SrtpPolicy::Required,
        (false, false) => SrtpPolicy::Optional,
        (false, true) => SrtpPolicy::Off,
    };
    let mut n = negotiate(answer_sdp, supported, policy)?;
    if let Some(sdes) = n.srtp.as_mut() {
        let ours = audio
            .cryptos
            .iter()
            .find(|c| c.tag == sdes.tag && c.suite == sdes.keys.suite)
            .ok_or(SdpError::CryptoMismatch)?;
        sdes.keys.local = ours.key.clone();
    }
    Ok(n)
}

/// Our side of a session we offered, narrowed to what the far end's `answer` accepted (its
/// codec, telephone-event, ptime): what later offers inside the dialog are answered against.
pub fn settled(offer: &str, answer_sdp: &str) -> Result<String, SdpError> {
    let mine = parse_streams(offer)?;
    let audio = mine
        .iter()
        .skip(1)
        .find(|s| s.is_audio() && s.port != 0)
        .ok_or(SdpError::OwnSession)?;
    let ip = audio.ip.or(mine[0].ip).ok_or(SdpError::OwnSession)?;
    let id = offer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(1);
    let n = negotiate_answer(offer, answer_sdp, &[Codec::Pcmu, Codec::Pcma, Codec::G722])?;
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
    /// The SRTP keys from now on, on an encrypted session (the peer may have sent a new key).
    pub srtp: Option<SrtpKeys>,
    /// The codec, payload types and ptime from now on (a re-offer may switch codec).
    pub format: Format,
}

/// Answer a new offer in an established session whose current answer is `ours`: the same
/// codec, local address and session id (RFC 3264 §8: the version goes up when anything
/// changed); hold and resume through the direction, a new address or port moves our RTP. The
/// codec is kept while the offer still has it; an offer without it switches to the offer's
/// first codec we know, and one with none we know is refused (the call keeps its session). An encrypted session stays encrypted and a plain one plain; we keep our key
/// unless the suite changes (then ours is new too), and take the peer's new key if it sent one.
pub fn reanswer(offer: &str, ours: &str) -> Result<Reanswer, SdpError> {
    let mine = parse_streams(ours)?;
    let audio = mine
        .iter()
        .skip(1)
        .find(|s| s.is_audio() && s.port != 0)
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
    let policy = if audio.cryptos.is_empty() {
        SrtpPolicy::Off
    } else {
        SrtpPolicy::Required
    };
    let mut n = match negotiate(offer, &[codec], policy) {
        Err(SdpError::NoCommonCodec(_)) => negotiate(offer, &ALL, policy)?,
        kept => kept?,
    };
    if let (Some(sdes), Some(kept)) = (n.srtp.as_mut(), audio.cryptos.first()) {
        if sdes.keys.suite == kept.suite {
            sdes.keys.local = kept.key.clone();
        }
    }
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
        srtp: n.srtp.map(|s| s.keys),
        format: Format {
            codec: n.codec,
            payload_type: n.payload_type,
            telephone_event: n.telephone_event,
            ptime_ms: n.ptime_ms,
        },
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
            SrtpPolicy::Off,
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
        let n = negotiate(sdp, ALL, SrtpPolicy::Off).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.payload_type, 8);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.ptime_ms, 30);
        assert_eq!(n.remote_rtp, "127.0.0.2:4000".parse().unwrap());
    }

    #[test]
    fn media_level_connection_wins_and_static_types_need_no_rtpmap() {
        let sdp = "v=0\nc=IN IP4 1.1.1.1\nm=audio 5000 RTP/AVP 0\nc=IN IP4 127.0.0.9\n";
        let n = negotiate(sdp, ALL, SrtpPolicy::Off).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.remote_rtp, "127.0.0.9:5000".parse().unwrap());
        assert_eq!(n.telephone_event, None);
    }

    #[test]
    fn no_common_codec_and_no_audio_are_errors() {
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=audio 5000 RTP/AVP 18 4\n";
        assert_eq!(
            negotiate(sdp, ALL, SrtpPolicy::Off),
            Err(SdpError::NoCommonCodec(vec![18, 4]))
        );
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=video 5000 RTP/AVP 96\n";
        assert_eq!(negotiate(sdp, ALL, SrtpPolicy::Off), Err(SdpError::NoAudio));
        assert!(negotiate("garbage", ALL, SrtpPolicy::Off).is_err());
    }

    #[test]
    fn answer_mirrors_direction_and_lists_telephone_event() {
        let sdp = "v=0\nc=IN IP4 127.0.0.1\nm=audio 5000 RTP/AVP 0 96\na=rtpmap:96 telephone-event/8000\na=sendonly\n";
        let n = negotiate(sdp, ALL, SrtpPolicy::Off).unwrap();
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
        let n = negotiate(sdp, ALL, SrtpPolicy::Off).unwrap();
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

    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    #[test]
    fn srtp_offers_follow_the_policy() {
        let savp = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n\
             a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}{KEY}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^20\r\n"
        );
        // Off: refused with a reason; on: answered in SAVP under the offer's tag, our own key.
        assert!(offer_refusal(&savp, SrtpPolicy::Off).is_some_and(|w| w.contains("SRTP is off")));
        assert_eq!(
            negotiate(&savp, ALL, SrtpPolicy::Off),
            Err(SdpError::SrtpOff("RTP/SAVP".into()))
        );
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Required] {
            assert_eq!(offer_refusal(&savp, policy), None);
            let n = negotiate(&savp, ALL, policy).unwrap();
            let sdes = n.srtp.clone().expect("encrypted");
            // The AES-256 line is skipped: tag 2, the 32-bit suite.
            assert_eq!((sdes.tag, sdes.keys.suite), (2, Suite::AesCm128HmacSha1_32));
            assert_eq!(sdes.keys.remote, MasterKey::from_base64(KEY).unwrap());
            assert_ne!(sdes.keys.local, sdes.keys.remote);
            let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
            assert!(a.contains("m=audio 20000 RTP/SAVP 0\r\n"), "{a}");
            let line = format!(
                "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
                sdes.keys.local.to_base64()
            );
            assert!(a.contains(&line), "{a}");
        }
        // Best effort (RTP/AVP with keys, as baresip's `srtp`): encrypted unless SRTP is off,
        // and answered in RTP/AVP.
        let best = savp.replace("RTP/SAVP", "RTP/AVP");
        let n = negotiate(&best, ALL, SrtpPolicy::Optional).unwrap();
        assert!(n.srtp.is_some());
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        assert!(
            a.contains("m=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:2 "),
            "{a}"
        );
        let n = negotiate(&best, ALL, SrtpPolicy::Off).unwrap();
        assert!(n.srtp.is_none());
        assert!(!answer(&n, "127.0.0.1:20000".parse().unwrap(), 7).contains("crypto"));
        // Required: plain RTP is refused, with a reason.
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(
            negotiate(plain, ALL, SrtpPolicy::Required),
            Err(SdpError::SrtpRequired)
        );
        assert!(offer_refusal(plain, SrtpPolicy::Required).is_some());
        assert_eq!(offer_refusal(plain, SrtpPolicy::Optional), None);
        assert_eq!(offer_refusal(plain, SrtpPolicy::Off), None);
        // SAVP without a key we can use, DTLS-SRTP, and a key with an MKI: refused.
        for bad in [
            "m=audio 5000 RTP/SAVP 0\r\n".to_string(),
            "m=audio 5000 UDP/TLS/RTP/SAVPF 0\r\na=fingerprint:sha-256 AB\r\n".to_string(),
            format!("m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4\r\n"),
            "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\r\n".to_string(),
            format!("m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP\r\n"),
        ] {
            let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\n{bad}");
            assert!(matches!(
                negotiate(&sdp, ALL, SrtpPolicy::Optional),
                Err(SdpError::NoUsableCrypto(_))
            ), "{bad}");
            assert!(offer_refusal(&sdp, SrtpPolicy::Optional).is_some(), "{bad}");
        }
    }

    #[test]
    fn an_encrypted_line_is_taken_before_a_plain_one_unless_srtp_is_off() {
        let both = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5002 RTP/AVP 0\r\n\
             m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
        );
        let n = negotiate(&both, ALL, SrtpPolicy::Optional).unwrap();
        assert_eq!(n.remote_rtp.port(), 5000);
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        assert!(
            a.contains("m=audio 0 RTP/AVP 0\r\nm=audio 20000 RTP/SAVP 0\r\n"),
            "{a}"
        );
        let n = negotiate(&both, ALL, SrtpPolicy::Off).unwrap();
        assert_eq!(n.remote_rtp.port(), 5002);
        let a = answer(&n, "127.0.0.1:20000".parse().unwrap(), 7);
        let m: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m,
            ["m=audio 20000 RTP/AVP 0", "m=audio 0 RTP/SAVP 0"],
            "{a}"
        );
        assert_eq!(offer_refusal(&both, SrtpPolicy::Off), None);
    }

    #[test]
    fn our_keyed_offer_is_matched_by_the_answer_it_gets() {
        let local = "127.0.0.1:20000".parse().unwrap();
        let ours = offer(&[Codec::Pcmu], local, 9, SrtpPolicy::Required);
        assert!(ours.contains("m=audio 20000 RTP/SAVP 0 101\r\n"), "{ours}");
        let keys: Vec<&str> = ours
            .lines()
            .filter(|l| l.starts_with("a=crypto:"))
            .collect();
        assert_eq!(keys.len(), 2, "{ours}");
        assert!(keys[0].starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(keys[1].starts_with("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
        assert_ne!(keys[0][40..], keys[1][40..], "a key per suite");
        // The far end answers tag 2 with its key: we send with our tag-2 key.
        let their = MasterKey::random();
        let answer_sdp = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/SAVP 0\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
            their.to_base64()
        );
        let n = negotiate_answer(&ours, &answer_sdp, &[Codec::Pcmu]).unwrap();
        let sdes = n.srtp.unwrap();
        assert_eq!(sdes.keys.remote, their);
        assert_eq!(
            format!(
                "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}",
                sdes.keys.local.to_base64()
            ),
            keys[1]
        );
        // An answer with a tag we never offered, or a plain answer to SAVP, is refused.
        let wrong = answer_sdp.replace("a=crypto:2 ", "a=crypto:7 ");
        assert_eq!(
            negotiate_answer(&ours, &wrong, &[Codec::Pcmu]),
            Err(SdpError::CryptoMismatch)
        );
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 0\r\n";
        assert!(negotiate_answer(&ours, plain, &[Codec::Pcmu]).is_err());
        // Best effort: a plain answer is plain, a keyed one encrypted.
        let best = offer(&[Codec::Pcmu], local, 9, SrtpPolicy::Optional);
        assert!(best.contains("m=audio 20000 RTP/AVP 0 101\r\n") && best.contains("a=crypto:1 "));
        assert!(negotiate_answer(&best, plain, &[Codec::Pcmu])
            .unwrap()
            .srtp
            .is_none());
        let keyed = answer_sdp.replace("RTP/SAVP", "RTP/AVP");
        let n = negotiate_answer(&best, &keyed, &[Codec::Pcmu]).unwrap();
        assert!(n.srtp.is_some());
        // What later offers in the dialog are answered against keeps our key.
        let s = settled(&ours, &answer_sdp).unwrap();
        assert!(s.contains(keys[1]), "{s}");
        assert!(!offer(&[Codec::Pcmu], local, 9, SrtpPolicy::Off).contains("crypto"));
    }

    #[test]
    fn a_reoffer_is_answered_against_the_stream_we_took_not_a_declined_one() {
        // Found by fuzzing: the first audio line of our answer is a declined one (port 0).
        let offer = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
             m=audio 4002 RTP/AVP 0\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}\r\n"
        );
        let n = negotiate(&offer, ALL, SrtpPolicy::Optional).unwrap();
        let ours = answer(&n, "127.0.0.1:20000".parse().unwrap(), 9);
        assert!(ours.starts_with("v=0") && ours.contains("m=audio 0 RTP/SAVP 0\r\n"));
        let again = reanswer(&offer, &ours).unwrap();
        assert_eq!(again.sdp, ours, "the same offer changes nothing");
        assert_eq!(again.srtp.map(|k| k.local), n.srtp.map(|s| s.keys.local));
    }

    #[test]
    fn a_reoffer_keeps_our_key_and_takes_the_peers_new_one() {
        let offer_with = |key: &MasterKey, dir: &str| {
            format!(
                "v=0\r\no=- 1 2 IN IP4 127.0.0.2\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                 m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\na={dir}\r\n",
                key.to_base64()
            )
        };
        let theirs = MasterKey::random();
        let first = negotiate(&offer_with(&theirs, "sendrecv"), ALL, SrtpPolicy::Optional).unwrap();
        let ours = answer(&first, "127.0.0.1:20000".parse().unwrap(), 77);
        let our_key = first.srtp.clone().unwrap().keys.local;
        // Hold with the same key: our key stays, the keys reported are the ones in use.
        let hold = reanswer(&offer_with(&theirs, "sendonly"), &ours).unwrap();
        assert!(!hold.sending);
        let keys = hold.srtp.clone().unwrap();
        assert_eq!(
            (keys.local.clone(), keys.remote.clone()),
            (our_key.clone(), theirs.clone())
        );
        assert!(hold.sdp.contains(&our_key.to_base64()), "{}", hold.sdp);
        // Resume with a new key of theirs: taken; ours still the same.
        let fresh = MasterKey::random();
        let resume = reanswer(&offer_with(&fresh, "sendrecv"), &hold.sdp).unwrap();
        let keys = resume.srtp.unwrap();
        assert_eq!((keys.local, keys.remote), (our_key, fresh));
        // An encrypted call is not downgraded: a plain re-offer is refused.
        let plain = offer_with(&theirs, "sendrecv").replace("RTP/SAVP", "RTP/AVP");
        let plain: String = plain
            .lines()
            .filter(|l| !l.starts_with("a=crypto"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(reanswer(&plain, &ours).is_err());
        // And a plain call is not upgraded.
        let plain_first = negotiate(&plain, ALL, SrtpPolicy::Off).unwrap();
        let plain_ours = answer(&plain_first, "127.0.0.1:20000".parse().unwrap(), 5);
        assert!(reanswer(&offer_with(&theirs, "sendrecv"), &plain_ours).is_err());
        assert!(reanswer(&plain, &plain_ours).unwrap().srtp.is_none());
    }

    #[test]
    fn reoffers_hold_resume_and_move_the_media() {
        let offer = |dir: &str, ip: &str, port: u16| {
            format!(
                "v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={dir}\r\n"
            )
        };
        let first = negotiate(&offer("sendrecv", "127.0.0.2", 4000), ALL, SrtpPolicy::Off).unwrap();
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
        assert_eq!(again.format.codec, Codec::Pcmu);
        // An offer that still has our codec keeps it, even listed second.
        let both = offer("sendrecv", "127.0.0.3", 4100).replace("RTP/AVP 0 101", "RTP/AVP 8 0 101");
        let kept = reanswer(&both, &resume.sdp).unwrap();
        assert_eq!(
            (kept.format.codec, kept.format.payload_type),
            (Codec::Pcmu, 0)
        );
        // One without it switches to the offer's codec, telephone-event kept.
        let pcma = offer("sendrecv", "127.0.0.2", 4000).replace("RTP/AVP 0 101", "RTP/AVP 8 101");
        let switched = reanswer(&pcma, &ours).unwrap();
        assert_eq!(
            switched.format,
            Format {
                codec: Codec::Pcma,
                payload_type: 8,
                telephone_event: Some(101),
                ptime_ms: 20
            }
        );
        assert!(
            switched.sdp.contains("m=audio 20000 RTP/AVP 8 101\r\n"),
            "{}",
            switched.sdp
        );
        assert!(
            switched.sdp.contains("o=switchboard 77 78 "),
            "{}",
            switched.sdp
        );
        // Later offers are answered against the switched session.
        let back = reanswer(&offer("sendrecv", "127.0.0.2", 4000), &switched.sdp).unwrap();
        assert_eq!(back.format.codec, Codec::Pcmu);
        // An offer with no codec we know is refused; the call keeps its session.
        let g729 = offer("sendrecv", "127.0.0.2", 4000).replace("RTP/AVP 0 101", "RTP/AVP 18");
        assert!(reanswer(&g729, &ours).is_err());
    }
}

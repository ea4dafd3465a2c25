//! SRTP and SRTCP (RFC 3711) for one stream, keyed by SDES (RFC 4568): one context protects
//! what we send with our master key, another authenticates and decrypts what the peer sends
//! with theirs. The ciphers are the webrtc-rs `rtc-srtp` crate's (ring underneath); this module
//! holds the key types the SDP layer signals and the per-stream state the pacing workers use.

use std::fmt;

use base64::Engine as _;
use rand::Rng as _;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

/// Master key (16 bytes) and master salt (14 bytes) of the AES_CM_128 suites.
pub const MASTER_LEN: usize = 30;
const KEY_LEN: usize = 16;

/// The SDES crypto suites we take (RFC 4568 §6.2), in our preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// `AES_CM_128_HMAC_SHA1_80`: the one every SDES endpoint has.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`: a 4-byte tag on RTP (SRTCP keeps 10 bytes).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite, in the order we offer them.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// Its name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite an `a=crypto` names (case as written: RFC 4568 names are case-sensitive, but
    /// some phones lower-case them).
    pub fn parse(name: &str) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// A master key and salt, as one `inline:` value carries them. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_LEN]);

impl MasterKey {
    /// A fresh key from the thread's CSPRNG (one per stream and direction, never reused).
    pub fn random() -> MasterKey {
        let mut k = [0u8; MASTER_LEN];
        rand::rng().fill(&mut k[..]);
        MasterKey(k)
    }

    /// From the base64 of an `inline:` key parameter; None unless it is exactly 30 bytes.
    pub fn from_base64(text: &str) -> Option<MasterKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        Some(MasterKey(bytes.try_into().ok()?))
    }

    /// The base64 an `inline:` key parameter carries.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// What one secured stream is keyed with: the suite both sides agreed on, our key (what we
/// send) and the peer's (what it sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// The agreed suite.
    pub suite: Suite,
    /// Ours: it protects what we send.
    pub local: MasterKey,
    /// The peer's: what it sends is checked and decrypted with it.
    pub remote: MasterKey,
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    /// The context could not be made from the keys.
    #[error("SRTP keys: {0}")]
    Keys(String),
    /// A packet failed authentication, was a replay, or was too short.
    #[error("SRTP packet refused: {0}")]
    Packet(String),
}

/// Distinct SSRCs the receiving context keeps state for before it starts afresh. The crate
/// makes state for an SSRC before it checks the packet's tag, so a stranger spraying random
/// SSRCs at the port must not grow it without bound; a real peer uses one or two.
const MAX_RX_SSRCS: usize = 16;

/// Both directions of one stream.
pub struct Srtp {
    keys: SrtpKeys,
    tx: Context,
    rx: Context,
    /// SSRCs `rx` holds state for (RTP and RTCP alike).
    rx_ssrcs: Vec<u32>,
}

fn context(suite: Suite, key: &MasterKey, receiving: bool) -> Result<Context, SrtpError> {
    let provider =
        rtc_srtp::crypto::default_provider().map_err(|e| SrtpError::Keys(e.to_string()))?;
    // Replay protection on what we receive (RFC 3711 §3.3.2); the crate has none by default.
    let (rtp, rtcp) = if receiving {
        (
            Some(rtc_srtp::option::srtp_replay_protection(64)),
            Some(rtc_srtp::option::srtcp_replay_protection(64)),
        )
    } else {
        (None, None)
    };
    Context::new(
        &key.0[..KEY_LEN],
        &key.0[KEY_LEN..],
        suite.profile(),
        rtp,
        rtcp,
        provider.crypto(),
    )
    .map_err(|e| SrtpError::Keys(e.to_string()))
}

/// The SSRC of an RTP or RTCP packet (bytes 8..12 and 4..8).
fn ssrc_at(packet: &[u8], at: usize) -> Option<u32> {
    let b = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl Srtp {
    /// Contexts for both directions.
    pub fn new(keys: &SrtpKeys) -> Result<Srtp, SrtpError> {
        Ok(Srtp {
            tx: context(keys.suite, &keys.local, false)?,
            rx: context(keys.suite, &keys.remote, true)?,
            keys: keys.clone(),
            rx_ssrcs: Vec::new(),
        })
    }

    /// Take new keys (a re-INVITE's): a new peer key restarts only what we receive, so our own
    /// packet index goes on and no keystream is used twice; a new suite or key of ours
    /// restarts both.
    pub fn rekey(&mut self, keys: &SrtpKeys) -> Result<(), SrtpError> {
        if *keys == self.keys {
            return Ok(());
        }
        if keys.suite == self.keys.suite && keys.local == self.keys.local {
            self.rx = context(keys.suite, &keys.remote, true)?;
            self.rx_ssrcs.clear();
        } else {
            *self = Srtp::new(keys)?;
        }
        self.keys = keys.clone();
        Ok(())
    }

    /// The keys in use.
    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }

    /// An RTP packet as it goes on the wire.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<bytes::BytesMut, SrtpError> {
        self.tx
            .encrypt_rtp(packet)
            .map_err(|e| SrtpError::Packet(e.to_string()))
    }

    /// Make room in `rx` for `ssrc`: past [`MAX_RX_SSRCS`] strangers it starts afresh (a
    /// long-running real stream then loses its rollover count, which only an attack costs).
    fn admit(&mut self, ssrc: Option<u32>) -> Result<(), SrtpError> {
        let ssrc = ssrc.ok_or_else(|| SrtpError::Packet("too short".into()))?;
        if self.rx_ssrcs.contains(&ssrc) {
            return Ok(());
        }
        if self.rx_ssrcs.len() >= MAX_RX_SSRCS {
            self.rx = context(self.keys.suite, &self.keys.remote, true)?;
            self.rx_ssrcs.clear();
        }
        self.rx_ssrcs.push(ssrc);
        Ok(())
    }

    /// A received SRTP packet, authenticated and decrypted.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<bytes::BytesMut, SrtpError> {
        self.admit(ssrc_at(packet, 8))?;
        self.rx
            .decrypt_rtp(packet)
            .map_err(|e| SrtpError::Packet(e.to_string()))
    }

    /// An RTCP compound packet as it goes on the wire (SRTCP).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<bytes::BytesMut, SrtpError> {
        self.tx
            .encrypt_rtcp(packet)
            .map_err(|e| SrtpError::Packet(e.to_string()))
    }

    /// A received SRTCP packet, authenticated and decrypted.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<bytes::BytesMut, SrtpError> {
        self.admit(ssrc_at(packet, 4))?;
        self.rx
            .decrypt_rtcp(packet)
            .map_err(|e| SrtpError::Packet(e.to_string()))
    }
}

/// What goes on the wire for `packet`: protected on an encrypted stream (held in `keep`), as
/// it is on a plain one.
pub fn seal<'a>(
    srtp: Option<&mut Srtp>,
    packet: &'a [u8],
    keep: &'a mut Option<bytes::BytesMut>,
    rtcp: bool,
) -> Result<&'a [u8], SrtpError> {
    let Some(srtp) = srtp else {
        return Ok(packet);
    };
    let wire = if rtcp {
        srtp.protect_rtcp(packet)?
    } else {
        srtp.protect_rtp(packet)?
    };
    Ok(&keep.insert(wire)[..])
}

/// What a received datagram carries: authenticated and decrypted on an encrypted stream (held
/// in `keep`), as it came on a plain one.
pub fn open<'a>(
    srtp: Option<&mut Srtp>,
    datagram: &'a [u8],
    keep: &'a mut Option<bytes::BytesMut>,
    rtcp: bool,
) -> Result<&'a [u8], SrtpError> {
    let Some(srtp) = srtp else {
        return Ok(datagram);
    };
    let plain = if rtcp {
        srtp.unprotect_rtcp(datagram)?
    } else {
        srtp.unprotect_rtp(datagram)?
    };
    Ok(&keep.insert(plain)[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::RtpSender;

    fn pair(suite: Suite) -> (Srtp, Srtp) {
        let (a, b) = (MasterKey::random(), MasterKey::random());
        let ours = SrtpKeys {
            suite,
            local: a.clone(),
            remote: b.clone(),
        };
        let theirs = SrtpKeys {
            suite,
            local: b,
            remote: a,
        };
        (Srtp::new(&ours).unwrap(), Srtp::new(&theirs).unwrap())
    }

    fn packet(rtp: &mut RtpSender, payload: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 200];
        let n = rtp.write(&mut buf, payload, 0, false);
        rtp.advance(payload.len() as u32);
        buf[..n].to_vec()
    }

    #[test]
    fn both_suites_round_trip_and_hide_the_payload() {
        for suite in Suite::ALL {
            let (mut us, mut them) = pair(suite);
            let mut rtp = RtpSender::new(0);
            let payload = [0x55u8; 160];
            for _ in 0..3 {
                let plain = packet(&mut rtp, &payload);
                let wire = us.protect_rtp(&plain).unwrap();
                let tag = if suite == Suite::AesCm128HmacSha1_80 {
                    10
                } else {
                    4
                };
                assert_eq!(wire.len(), plain.len() + tag, "{suite:?}");
                assert_eq!(wire[..12], plain[..12], "the header stays readable");
                assert_ne!(wire[12..172], plain[12..], "the payload is encrypted");
                assert_eq!(&them.unprotect_rtp(&wire).unwrap()[..], &plain[..]);
            }
        }
    }

    #[test]
    fn tampered_replayed_and_short_packets_are_refused() {
        let (mut us, mut them) = pair(Suite::AesCm128HmacSha1_80);
        let mut rtp = RtpSender::new(0);
        let wire = us.protect_rtp(&packet(&mut rtp, &[1u8; 160])).unwrap();
        let mut bad = wire.to_vec();
        bad[40] ^= 1;
        assert!(
            them.unprotect_rtp(&bad).is_err(),
            "a flipped bit fails auth"
        );
        assert!(them.unprotect_rtp(&wire).is_ok());
        assert!(them.unprotect_rtp(&wire).is_err(), "a replay is refused");
        for n in 0..16 {
            assert!(them.unprotect_rtp(&wire[..n]).is_err());
            assert!(them.unprotect_rtcp(&wire[..n]).is_err());
        }
        // A packet keyed by someone else fails too.
        let (mut stranger, _) = pair(Suite::AesCm128HmacSha1_80);
        let forged = stranger
            .protect_rtp(&packet(&mut rtp, &[1u8; 160]))
            .unwrap();
        assert!(them.unprotect_rtp(&forged).is_err());
    }

    #[test]
    fn strangers_spraying_ssrcs_keep_the_state_bounded_and_the_peer_heard() {
        let (mut us, mut them) = pair(Suite::AesCm128HmacSha1_80);
        let mut rtp = RtpSender::new(0);
        for ssrc in 0..1000u32 {
            let mut junk = packet(&mut rtp, &[9u8; 170]);
            junk[8..12].copy_from_slice(&ssrc.to_be_bytes());
            assert!(them.unprotect_rtp(&junk).is_err());
            assert!(them.rx_ssrcs.len() <= MAX_RX_SSRCS);
        }
        let real = us.protect_rtp(&packet(&mut rtp, &[1u8; 160])).unwrap();
        assert!(them.unprotect_rtp(&real).is_ok());
    }

    #[test]
    fn srtcp_round_trips() {
        let (mut us, mut them) = pair(Suite::AesCm128HmacSha1_32);
        let mut report = [0u8; 128];
        let mut stats = crate::media::rtcp::ReceiverStats::default();
        let n = crate::media::rtcp::sender_report(&mut report, 7, 160, 1, 160, &mut stats, "x@y");
        let wire = us.protect_rtcp(&report[..n]).unwrap();
        // SRTCP keeps a 10-byte tag with both suites, plus the 4-byte index.
        assert_eq!(wire.len(), n + 14);
        assert_eq!(&them.unprotect_rtcp(&wire).unwrap()[..], &report[..n]);
    }

    #[test]
    fn a_new_peer_key_keeps_our_sending_index() {
        let (mut us, mut them) = pair(Suite::AesCm128HmacSha1_80);
        let mut rtp = RtpSender::new(0);
        let first = us.protect_rtp(&packet(&mut rtp, &[2u8; 160])).unwrap();
        assert!(them.unprotect_rtp(&first).is_ok());
        let fresh = MasterKey::random();
        let mut keys = us.keys().clone();
        keys.remote = fresh.clone();
        us.rekey(&keys).unwrap();
        // Our side still sends with the old context: the peer keeps decrypting.
        let second = us.protect_rtp(&packet(&mut rtp, &[2u8; 160])).unwrap();
        assert!(them.unprotect_rtp(&second).is_ok());
        // And what the peer now sends with its new key is taken.
        let mut theirs = them.keys().clone();
        theirs.local = fresh;
        them.rekey(&theirs).unwrap();
        let mut rtp2 = RtpSender::new(0);
        let back = them.protect_rtp(&packet(&mut rtp2, &[3u8; 160])).unwrap();
        assert!(us.unprotect_rtp(&back).is_ok());
    }

    #[test]
    fn keys_parse_from_base64_and_never_print() {
        let k = MasterKey::random();
        assert_eq!(MasterKey::from_base64(&k.to_base64()), Some(k.clone()));
        assert_eq!(MasterKey::from_base64("c2hvcnQ="), None);
        assert_eq!(MasterKey::from_base64("not base64!"), None);
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert_eq!(
            Suite::parse("aes_cm_128_hmac_sha1_32"),
            Some(Suite::AesCm128HmacSha1_32)
        );
        assert_eq!(Suite::parse("AES_256_CM_HMAC_SHA1_80"), None);
    }
}

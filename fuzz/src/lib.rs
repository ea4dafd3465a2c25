//! The fuzz targets' bodies, one function per target. Each `src/bin/<target>.rs` hands AFL++'s
//! input to one of these; the unit test below runs every seed through them in a plain build
//! (`cargo test --lib` here), so a target that cannot take its own corpus is caught without AFL.
//!
//! A target must never panic on any input: a panic is what AFL reports as a crash.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use switchboard::media::codec::Codec;
use switchboard::sip::acl::Acl;
use switchboard::sip::core::{Output, SipCore};
use switchboard::sip::{Command, CoreConfig, Event, Peer, Transport};

/// A small reader over the input for targets that derive a structure (a sequence of packets,
/// choices) from the bytes.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits `data` at `sep` (a byte that text protocols do not use, so seeds stay readable).
fn segments(data: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    data.split(move |&b| b == sep)
}

/// Splits at the first newline: (first line, the rest).
fn first_line(s: &str) -> (&str, &str) {
    s.split_once('\n').unwrap_or((s, ""))
}

// ---------------------------------------------------------------------------------------------
// 1. SIP

/// `sip::message::parse` and `salvage`, and the header helpers on what they return.
pub fn sip_parse(data: &[u8]) {
    use switchboard::sip::message::{self, SipMessage};
    match message::parse(data, 65535) {
        Ok(SipMessage::Request(r)) => {
            for v in &r.vias {
                let _ = message::param(v, "branch");
                let _ = message::has_param(v, "rport");
            }
            let _ = message::param(&r.from, "tag");
            let _ = message::user_of(message::uri_of(&r.from));
            let _ = message::user_of(&r.uri);
            if let Some(c) = &r.contact {
                let _ = message::uri_of(c);
            }
        }
        Ok(SipMessage::Response(r)) => {
            let _ = r.branch;
        }
        Err(f) => {
            let (_, salvage) = *f;
            let _ = salvage.can_answer();
        }
    }
    let _ = message::salvage(data);
}

const SIP_LOCAL: &str = "127.0.0.1:5060";

fn sip_peer(choice: u8) -> Peer {
    let (addr, transport) = match choice % 4 {
        0 => ("127.0.0.1:5070", Transport::Udp),
        1 => ("127.0.0.1:5070", Transport::Tcp),
        // Admitted by the ACL but not an SMS trunk (MESSAGE gets 403).
        2 => ("127.0.0.2:5060", Transport::Udp),
        // Refused by the ACL.
        _ => ("192.0.2.7:5060", Transport::Udp),
    };
    Peer {
        addr: addr.parse().unwrap_or_else(|_| unreachable!()),
        transport,
    }
}

/// The sans-IO SIP core: datagrams separated by 0xFF; each starts with a control byte (peer,
/// transport, how far the fake clock moves, what the application answers to an INVITE). The
/// outputs are drained after each step, then every timer is run out on an advancing clock.
/// `$BRANCH$` in a datagram becomes the branch of the last request the core sent (random, so
/// a response to our MESSAGE or BYE could not be written otherwise), `$CALLID$` its Call-ID.
/// An input that starts with `trust:` configures a trunk (127.0.0.2) and a user (alice/
/// wonderland), so INVITEs and REGISTERs are challenged and credentials checked, and starts a
/// registration with a registrar at 127.0.0.1:5070 (answer it with `$CALLID$`/`$BRANCH$`) and
/// an outbound call `fuzz-out` to the same address.
pub fn sip_core(data: &[u8]) {
    let (trusting, data) = match data.strip_prefix(b"trust:") {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let cfg = CoreConfig {
        max_message_bytes: 65535,
        server_name: "switchboard-fuzz".into(),
        acl: Acl::parse(&["127.0.0.0/8".to_string()]).unwrap_or_else(|_| unreachable!()),
        message_sources: Acl::parse(&["127.0.0.1".to_string()]).unwrap_or_else(|_| unreachable!()),
        // Rate limits and bans would make most of a fuzz input a no-op: off, the TCP limits as
        // configured by default.
        defence: switchboard::config::DefenceConfig {
            enabled: false,
            ..Default::default()
        },
        tcp: Default::default(),
        trust: None,
        digest_algorithms: vec![
            switchboard::sip::digest::Algorithm::Md5,
            switchboard::sip::digest::Algorithm::Sha256,
        ],
        advertise: None,
        srtp: switchboard::config::SrtpPolicy::Optional,
        trunk_srtp: Default::default(),
    };
    let cfg = if trusting {
        let trunk = switchboard::config::TrunkConfig {
            name: "carrier".into(),
            uri: "sip:127.0.0.2".into(),
            inbound_from: vec!["127.0.0.2/32".into()],
            username: Some("acct".into()),
            password: Some("secret".into()),
            register: true,
            register_expires: 600,
            caller_id: None,
            dial_allow: vec![],
            max_outbound: 10,
            calls_per_second: 10,
            keepalive_secs: 0,
            tls_ca: None,
            srtp: switchboard::config::SrtpPolicy::Off,
        };
        let user = switchboard::config::UserConfig {
            username: "alice".into(),
            password: "wonderland".into(),
        };
        cfg.with_trunks(&[trunk], &[user])
            .unwrap_or_else(|_| unreachable!())
    } else {
        cfg
    };
    let mut core = SipCore::new(cfg);
    let local: SocketAddr = SIP_LOCAL.parse().unwrap_or_else(|_| unreachable!());
    let start = Instant::now();
    let mut now = start;
    let mut calls: Vec<String> = Vec::new();
    let mut sent = Sent::default();
    let local_addr: SocketAddr = SIP_LOCAL.parse().unwrap_or_else(|_| unreachable!());
    if trusting {
        core.handle_command(
            now,
            Command::Register {
                spec: Box::new(switchboard::sip::register::RegistrationSpec {
                    trunk: "carrier".into(),
                    peer: sip_peer(0),
                    registrar: "sip:127.0.0.1:5070".into(),
                    username: "acct".into(),
                    password: "secret".into(),
                    expires: 600,
                }),
                local: local_addr,
            },
        );
        drain(&mut core, now, 0, &mut calls, &mut sent);
        // And an outbound call (Call-ID `fuzz-out`) with credentials for the trunk's challenges.
        core.handle_command(
            now,
            Command::Dial {
                spec: Box::new(switchboard::sip::dial::DialSpec {
                    call_id: "fuzz-out".into(),
                    peer: sip_peer(0),
                    request_uri: "sip:+15551234@127.0.0.1:5070".into(),
                    from_user: "+15550100".into(),
                    sdp: "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n".into(),
                    credentials: Some(("acct".into(), "secret".into())),
                    ring_timeout: Duration::from_secs(20),
                    redirect_hosts: vec!["127.0.0.1:5090".into()],
                    headers: vec![],
                }),
                local: local_addr,
            },
        );
        drain(&mut core, now, 0, &mut calls, &mut sent);
    }
    for seg in segments(data, 0xFF).take(64) {
        let mut input = Input::new(seg);
        let ctl = input.u8();
        now += Duration::from_millis(u64::from(ctl >> 4) * 250);
        let datagram = replace(input.rest(), b"$BRANCH$", &sent.branch);
        let datagram = replace(&datagram, b"$CALLID$", &sent.call_id);
        core.handle_message(now, sip_peer(ctl), local, &datagram);
        drain(&mut core, now, ctl, &mut calls, &mut sent);
        if ctl & 0x08 != 0 {
            core.handle_timeout(now);
            drain(&mut core, now, ctl, &mut calls, &mut sent);
        }
        if ctl & 0x80 != 0 && trusting {
            core.handle_command(now, Command::UnregisterAll);
            drain(&mut core, now, ctl, &mut calls, &mut sent);
        }
    }
    // Run every timer out (retransmissions, timer H, purges), bounded.
    for _ in 0..256 {
        let Some(at) = core.poll_timeout() else { break };
        now = now.max(at);
        core.handle_timeout(now);
        drain(&mut core, now, 0, &mut calls, &mut sent);
    }
    let _ = core.dialog_count();
    let _ = core.bindings(now, "alice");
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(i) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The branch and Call-ID of the last request the core sent.
#[derive(Default)]
struct Sent {
    branch: Vec<u8>,
    call_id: Vec<u8>,
}

/// The value after `key` in a request the core sent (up to `;` or the line's end).
fn sent_value(data: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    if data.starts_with(b"SIP/2.0") {
        return None;
    }
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let len = data[at..]
        .iter()
        .position(|&b| b == b';' || b == b'\r')
        .unwrap_or(data.len() - at);
    Some(data[at..at + len].to_vec())
}

fn drain(core: &mut SipCore, now: Instant, ctl: u8, calls: &mut Vec<String>, sent: &mut Sent) {
    // Commands issued while draining produce more output: bounded so a loop cannot form.
    for _ in 0..1024 {
        let Some(out) = core.poll_output() else {
            return;
        };
        let ev = match out {
            Output::Event(ev) => ev,
            Output::Transmit(t) => {
                if let Some(b) = sent_value(&t.data, b"branch=") {
                    sent.branch = b;
                }
                if let Some(c) = sent_value(&t.data, b"Call-ID: ") {
                    sent.call_id = c;
                }
                continue;
            }
            // The driver closes a banned source's TCP connections; nothing to do here.
            Output::Banned(_) => continue,
        };
        let cmd = match ev {
            Event::Invite(inv) => {
                calls.push(inv.call_id.clone());
                match ctl & 0x03 {
                    0 => {
                        let sdp = switchboard::sip::sdp::negotiate(
                            &String::from_utf8_lossy(&inv.sdp),
                            &[Codec::Pcmu, Codec::Pcma, Codec::G722],
                            inv.srtp,
                        )
                        .map(|n| switchboard::sip::sdp::answer(&n, inv.local, 1))
                        .unwrap_or_default();
                        Some(Command::Answer {
                            call_id: inv.call_id,
                            sdp,
                        })
                    }
                    1 => Some(Command::Reject {
                        call_id: inv.call_id,
                        status: 486,
                        reason: "Busy Here".into(),
                        retry_after: Some(5),
                    }),
                    2 => Some(Command::Hangup {
                        call_id: inv.call_id,
                    }),
                    _ => None,
                }
            }
            Event::Acked { call_id } if ctl & 0x04 != 0 => Some(Command::Hangup { call_id }),
            Event::Message { peer, .. } if ctl & 0x04 != 0 => Some(Command::SendMessage {
                id: 1,
                peer,
                local: SIP_LOCAL.parse().unwrap_or_else(|_| unreachable!()),
                request_uri: "sip:+15550001@127.0.0.1".into(),
                from_user: "+15550002".into(),
                body: "reply".into(),
            }),
            _ => None,
        };
        if let Some(cmd) = cmd {
            core.handle_command(now, cmd);
        }
    }
    // Commands for calls seen earlier (a hang-up racing the peer's requests).
    if ctl & 0x40 != 0 {
        if let Some(call_id) = calls.first().cloned() {
            core.handle_command(now, Command::Hangup { call_id });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. SDP

/// Offer/answer: the first byte chooses our codec preference (bits 0-2), the SRTP policy
/// (bits 3-4) and the address family (bit 7); the rest is the offer. It is also taken as a
/// re-offer to our answer, and as the answer to an offer of ours.
pub fn sdp(data: &[u8]) {
    use switchboard::sip::sdp::{self, SrtpPolicy};
    let mut input = Input::new(data);
    let ctl = input.u8();
    let policy = match (ctl >> 3) & 0x03 {
        0 => SrtpPolicy::Off,
        1 => SrtpPolicy::Optional,
        _ => SrtpPolicy::Required,
    };
    let all = [Codec::Pcmu, Codec::Pcma, Codec::G722];
    let supported: Vec<Codec> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| ctl & (1 << i) != 0)
        .map(|(_, c)| *c)
        .collect();
    let offer = String::from_utf8_lossy(input.rest());
    let _ = sdp::offer_refusal(&offer, policy);
    let ours = sdp::offer(
        &supported,
        "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!()),
        1,
        policy,
    );
    let _ = sdp::negotiate_answer(&ours, &offer, &supported);
    if let Ok(n) = sdp::negotiate(&offer, &supported, policy) {
        let local: SocketAddr = if ctl & 0x80 != 0 {
            "[::1]:40000".parse().unwrap_or_else(|_| unreachable!())
        } else {
            "127.0.0.1:40000".parse().unwrap_or_else(|_| unreachable!())
        };
        let answer = sdp::answer(&n, local, u64::from(ctl));
        // Our own answer must be an offer we accept, encrypted exactly when it was.
        let again = sdp::negotiate(&answer, &[n.codec], policy);
        assert!(
            again.as_ref().is_ok_and(|a| a.srtp.is_some() == n.srtp.is_some()),
            "our answer does not parse: {answer:?} {again:?}"
        );
        // The same offer again inside the dialog keeps the session.
        let re = sdp::reanswer(&offer, &answer);
        if let (Ok(re), Some(sdes)) = (&re, &n.srtp) {
            let keys = re.srtp.as_ref().map(|k| &k.local);
            assert_eq!(keys, Some(&sdes.keys.local), "our key changed: {re:?}");
        }
    }
    for pt in 0..=u8::MAX {
        let _ = sdp::static_payload(pt);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. RTP and RTCP

/// `media::rtp::parse`; packets that parse are also accounted in RTCP receiver statistics.
/// Input: packets, each preceded by a length byte and a 4-byte arrival time.
pub fn rtp(data: &[u8]) {
    use switchboard::media::{rtcp::ReceiverStats, rtp};
    let _ = rtp::parse(data);
    let mut input = Input::new(data);
    let mut stats = ReceiverStats::default();
    while !input.is_empty() {
        let len = usize::from(input.u8());
        let arrival = input.u32();
        let pkt = input.bytes(len);
        if let Some(p) = rtp::parse(pkt) {
            assert!(p.payload.len() <= pkt.len());
            stats.on_rtp(p.ssrc, p.sequence, p.timestamp, arrival);
            let _ = (stats.extended_max(), stats.expected(), stats.jitter());
        }
    }
}

/// `media::rtcp::parse` of a compound packet (our SSRC from the first 4 bytes), then the
/// report feeding the receiver statistics as it does on a live stream.
pub fn rtcp(data: &[u8]) {
    use switchboard::media::rtcp;
    let mut input = Input::new(data);
    let ssrc = input.u32();
    let _ = rtcp::parse(data, ssrc);
    if let Some(r) = rtcp::parse(input.rest(), ssrc) {
        let mut stats = rtcp::ReceiverStats::default();
        if let Some(ntp) = r.sr_ntp_middle {
            stats.on_sender_report(ntp);
        }
    }
}

/// SRTP/SRTCP unprotect on a stream keyed with a fixed key: arbitrary packets must be refused
/// cleanly, and packets that parse as RTP are also protected and must come back unchanged.
/// Input: packets, each preceded by a length byte; the first byte's low bit picks the suite.
pub fn srtp(data: &[u8]) {
    use switchboard::media::{
        rtp,
        srtp::{MasterKey, Srtp, SrtpKeys, Suite},
    };
    let mut input = Input::new(data);
    let suite = if input.u8() & 1 == 0 {
        Suite::AesCm128HmacSha1_80
    } else {
        Suite::AesCm128HmacSha1_32
    };
    let key = MasterKey::from_base64("WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")
        .unwrap_or_else(|| unreachable!());
    let keys = SrtpKeys {
        suite,
        local: key.clone(),
        remote: key,
    };
    let (Ok(mut rx), Ok(mut tx)) = (Srtp::new(&keys), Srtp::new(&keys)) else {
        return;
    };
    while !input.is_empty() {
        let len = usize::from(input.u8());
        let pkt = input.bytes(len);
        if let Ok(plain) = rx.unprotect_rtp(pkt) {
            assert!(plain.len() <= pkt.len());
            let _ = rtp::parse(&plain);
        }
        let _ = rx.unprotect_rtcp(pkt);
        // Only packets like ours (no header extension): rtc-srtp stops reading a one-byte
        // extension at ID 15 and then protects and unprotects such a packet's tail
        // differently, which fuzzing found; we never send extensions.
        if rtp::parse(pkt).is_some() && pkt.first().is_some_and(|b| b & 0x10 == 0) {
            if let Ok(wire) = tx.protect_rtp(pkt) {
                if let Ok(back) = rx.unprotect_rtp(&wire) {
                    assert_eq!(&back[..], pkt, "round trip changed the packet");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. RFC 4733

/// `Rfc4733Receiver::on_packet` over a sequence: each packet is a 4-byte RTP timestamp, a
/// length byte (0–15) and that many payload bytes. A new digit is reported only when the
/// (timestamp, event) pair changes.
pub fn dtmf(data: &[u8]) {
    use switchboard::media::dtmf::{self, Rfc4733Receiver};
    let mut input = Input::new(data);
    let mut rx = Rfc4733Receiver::default();
    let mut last: Option<(u32, u8)> = None;
    while !input.is_empty() {
        let ts = input.u32();
        let len = usize::from(input.u8() & 0x0F);
        let payload = input.bytes(len);
        let got = rx.on_packet(ts, payload);
        if let Some(d) = got {
            let ev = payload[0];
            assert_eq!(dtmf::event_digit(ev), Some(d));
            assert_ne!(
                last,
                Some((ts, ev)),
                "a repeated packet reported a digit twice"
            );
            assert_eq!(dtmf::digit_event(d), Some(ev));
            last = Some((ts, ev));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. TwiML

/// `twiml::parse::parse` of a voice document.
pub fn twiml(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let _ = switchboard::twiml::parse::parse(&src);
}

// ---------------------------------------------------------------------------------------------
// 6. Flow JSON

/// Flow import: `routing::LoadedFlow::from_json` (JSON, validation, template compilation) and
/// `flow::validate::validate` on the same value.
pub fn flow(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = switchboard::routing::LoadedFlow::from_json("fuzz", text);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = switchboard::flow::validate::validate(&v);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Liquid

/// A hostile template (the first line; `\u{1}` in it stands for a newline) rendered against a
/// context (the rest, as JSON, or a default context when it is not JSON). AFL's hang timeout
/// is the check that a render finishes quickly.
pub fn liquid(data: &[u8]) {
    use switchboard::flow::template::{Scope, Templates};
    let text = String::from_utf8_lossy(data);
    let (template, context) = first_line(&text);
    let template = template.replace('\u{1}', "\n");
    let ctx = serde_json::from_str(context).unwrap_or_else(|_| {
        serde_json::json!({
            "flow": {"variables": {"n": 3, "s": "abc", "list": [1, 2, 3]}},
            "trigger": {"call": {"From": "+15551234", "To": "+15559999"}},
            "widgets": {"w": {"Digits": "12", "parsed": {"a": [1, {"b": "c"}]}}}
        })
    });
    let scope = Scope::new(&ctx);
    let mut t = Templates::default();
    let _ = t.add(&template);
    let _ = t.render(&template, &scope);
    let _ = switchboard::flow::template::is_template(&template);
}

// ---------------------------------------------------------------------------------------------
// 8. SMPP

/// `pdu::decode` over a stream (as the link reads it), then the bodies: short messages,
/// message ids, and their text decoded by data_coding.
pub fn smpp(data: &[u8]) {
    use switchboard::messaging::providers::smpp::{pdu, text};
    let mut buf = BytesMut::from(data);
    for _ in 0..1024 {
        let before = buf.len();
        match pdu::decode(&mut buf) {
            Ok(Some(p)) => {
                assert!(
                    buf.len() < before,
                    "decode returned a PDU without consuming it"
                );
                let again = pdu::Pdu::new(p.command_id, p.seq, p.body.clone());
                assert_eq!(again.encode().len(), 16 + p.body.len());
                let _ = pdu::message_id(&p.body);
                let _ = pdu::status_name(p.status);
                if let Ok(sm) = pdu::parse_short_message(&p.body) {
                    let _ = text::decode(sm.data_coding, &sm.payload);
                    let back = pdu::short_message_body(&sm);
                    let _ = pdu::parse_short_message(&back);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Text decoding on its own: first byte is the data_coding.
    if let Some((&dc, octets)) = data.split_first() {
        let s = text::decode(dc, octets);
        let _ = text::encode(&s);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Inbound webhook

/// The webhook's body decoding, message extraction and `X-Twilio-Signature` check. First line:
/// the signature header as given; the rest: the form body.
pub fn webhook(data: &[u8]) {
    use switchboard::web::params::{decode_form, encode};
    use switchboard::web::signature;
    let (given, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let given = String::from_utf8_lossy(given);
    let params = decode_form(body);
    let url = "https://gw.example/messaging/inbound?x=1";
    let _ = signature::valid("token", url, &params, &given);
    // A correct signature is always accepted, whatever the parameters.
    let good = signature::sign("token", url, &params);
    assert!(signature::valid("token", url, &params, &good));
    let _ = switchboard::messaging::webhook::inbound_message(&params);
    // encode then decode is the identity on a value.
    for (k, v) in params.iter().take(8) {
        let round = decode_form(format!("{}={}", encode(k), encode(v)).as_bytes());
        if !k.is_empty() || !v.is_empty() {
            assert_eq!(round, vec![(k.clone(), v.clone())], "encode/decode differ");
        }
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the seed test runs each one's corpus through it).
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_parse", sip_parse),
    ("sip_core", sip_core),
    ("sdp", sdp),
    ("rtp", rtp),
    ("rtcp", rtcp),
    ("dtmf", dtmf),
    ("twiml", twiml),
    ("flow", flow),
    ("liquid", liquid),
    ("smpp", smpp),
    ("webhook", webhook),
];

#[cfg(test)]
mod tests {
    /// Every seed of every target goes through its target without a panic (a plain build, no
    /// AFL): `cargo test --lib` in this folder.
    #[test]
    fn every_seed_runs_through_its_target() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in super::TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).expect("a corpus folder per target") {
                let path = entry.expect("readable corpus folder").path();
                target(&std::fs::read(&path).expect("readable seed"));
                n += 1;
            }
            assert!(n > 0, "no seed for {name}");
        }
    }
}

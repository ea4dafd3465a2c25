//! Our INVITE as a client (RFC 3261 §13.2, §17.1.1): the offer sent and retransmitted
//! (timer A) until the far end answers or timer B gives up; provisional answers reported
//! (183 with a session is early media); challenges (401/407) answered with the trunk's
//! credentials; 3xx followed to the trunk's own hosts; every non-2xx final acknowledged inside
//! the transaction and a 2xx from the dialog; CANCEL when the ring time runs out or the
//! caller gives up. Sans-IO, one per outbound call; the core owns them by Call-ID and turns an
//! answer into a dialog like any other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client_tx::{ClientTx, TxTimer};
use super::core::{host_port, Peer, Transport, T1};
use super::digest::Challenge;
use super::message::{uri_of, Response};

/// Timer B: no final answer (nor a provisional one) to our INVITE in 64·T1.
const TIMER_B: Duration = Duration::from_secs(32);
/// Redirects followed for one call.
const MAX_REDIRECTS: u8 = 3;

/// What an outbound call needs.
#[derive(Clone, PartialEq, Eq)]
pub struct DialSpec {
    /// The call's Call-ID (chosen by the caller, so it can follow the call).
    pub call_id: String,
    /// Where the INVITE goes (the trunk's address).
    pub peer: Peer,
    /// Whom we call: `sip:+15551234@carrier.example`.
    pub request_uri: String,
    /// Our From user (the caller ID).
    pub from_user: String,
    /// Our SDP offer.
    pub sdp: String,
    /// Digest username and password for the trunk's challenges.
    pub credentials: Option<(String, String)>,
    /// How long it may ring before we CANCEL.
    pub ring_timeout: Duration,
    /// Hosts (`host[:port]`) a 3xx may send us to: the trunk's own.
    pub redirect_hosts: Vec<String>,
    /// Extra headers for the INVITE (a SIP URI's `X-` headers), already checked by the caller;
    /// any with a control character is dropped here all the same.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for DialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialSpec")
            .field("call_id", &self.call_id)
            .field("peer", &self.peer)
            .field("request_uri", &self.request_uri)
            .field("from_user", &self.from_user)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "***")),
            )
            .field("ring_timeout", &self.ring_timeout)
            .finish()
    }
}

/// How the far end answered, for the dialog the core makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The far end's SDP answer.
    pub sdp: String,
    /// Our From header, with our tag.
    pub from: String,
    /// Their To header, with their tag.
    pub to: String,
    /// Their Contact URI: where requests inside the dialog go.
    pub remote_target: String,
    /// The route set (Record-Route reversed, RFC 3261 §12.1.2).
    pub route_set: Vec<String>,
    /// The CSeq of the INVITE that was answered.
    pub cseq: u32,
    /// The highest CSeq we sent in the dialog (a PRACK's may follow the INVITE's): the next
    /// request inside it counts on from here.
    pub local_cseq: u32,
}

/// What happened to an outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialEvent {
    /// A provisional answer (180, 183); `early_sdp` when it carries a session (early media).
    Progress {
        /// 180, 183...
        status: u16,
        /// The far end's early media session, when it sent one.
        early_sdp: Option<String>,
    },
    /// Answered.
    Answered(Box<Answered>),
    /// It ended without an answer: busy (486/600), refused, no answer (487 after our CANCEL),
    /// unreachable (408).
    Failed {
        /// The far end's status, 408 when it never answered, 487 when we cancelled.
        status: u16,
        /// Its reason phrase, or ours.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE sent, nothing heard yet (timer A retransmits on UDP).
    Calling,
    /// A provisional answer came: ringing.
    Proceeding,
    /// A final answer came (or we gave up); 2xx retransmissions are acknowledged again.
    Done,
}

pub(crate) struct Dial {
    spec: DialSpec,
    local: SocketAddr,
    from_tag: String,
    uri: String,
    cseq: u32,
    branch: String,
    invite: Vec<u8>,
    phase: Phase,
    interval: Duration,
    retransmit_at: Option<Instant>,
    timeout_at: Option<Instant>,
    ring_deadline: Option<Instant>,
    /// We asked to stop (ring timeout or the caller); CANCEL waits for a provisional answer.
    cancelling: bool,
    cancel: Option<ClientTx>,
    answered_nonce: Option<String>,
    nc: u32,
    redirects: u8,
    /// The ACK for the 2xx, resent when the 2xx is.
    ack: Option<Vec<u8>>,
    /// Why we cancelled (reported when the 487 comes).
    cancel_reason: &'static str,
    /// The RSeq of the last reliable provisional we acknowledged with PRACK (RFC 3262).
    rseq: Option<u32>,
    /// The PRACK in flight (a non-INVITE transaction of its own, §17.1.2).
    prack: Option<ClientTx>,
    /// The CSeq of the INVITE (PRACKs count on from it).
    invite_cseq: u32,
}

/// `host[:port]` of a SIP URI, lower-cased.
fn host_of(uri: &str) -> String {
    let rest = uri.trim();
    let rest = rest
        .strip_prefix("sips:")
        .or_else(|| rest.strip_prefix("sip:"))
        .unwrap_or(rest);
    let rest = rest.split([';', '?', '>']).next().unwrap_or("");
    rest.rsplit('@').next().unwrap_or("").to_ascii_lowercase()
}

impl Dial {
    pub(crate) fn new(spec: DialSpec, local: SocketAddr) -> Dial {
        Dial {
            uri: spec.request_uri.clone(),
            spec,
            local,
            from_tag: super::core::new_tag(),
            cseq: 0,
            branch: String::new(),
            invite: Vec::new(),
            phase: Phase::Calling,
            interval: T1,
            retransmit_at: None,
            timeout_at: None,
            ring_deadline: None,
            cancelling: false,
            cancel: None,
            answered_nonce: None,
            nc: 0,
            redirects: 0,
            ack: None,
            cancel_reason: "",
            rseq: None,
            prack: None,
            invite_cseq: 0,
        }
    }

    pub(crate) fn peer(&self) -> Peer {
        self.spec.peer
    }

    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    /// Our SDP offer.
    pub(crate) fn offer(&self) -> &str {
        &self.spec.sdp
    }

    /// Whether we asked to stop this call (ring time, hang-up).
    pub(crate) fn cancelled(&self) -> bool {
        self.cancelling
    }

    /// Whether `r` answers our current INVITE (or its CANCEL).
    pub(crate) fn owns(&self, r: &Response) -> bool {
        (r.cseq_method == "INVITE" && r.branch.as_deref() == Some(self.branch.as_str()))
            || (r.cseq_method == "CANCEL" && self.cancel.as_ref().is_some_and(|c| c.matches(r)))
            || (r.cseq_method == "PRACK" && self.prack.as_ref().is_some_and(|c| c.matches(r)))
    }

    /// The trunk cannot be reached (the connection was refused): before any answer, the call
    /// fails as if the trunk had answered 503 (RFC 3261 §8.1.3.1).
    pub(crate) fn transport_failed(&mut self) -> Option<DialEvent> {
        if self.phase != Phase::Calling {
            return None;
        }
        self.phase = Phase::Done;
        Some(DialEvent::Failed {
            status: 503,
            reason: "cannot connect to the trunk".into(),
        })
    }

    /// The first INVITE.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<u8> {
        self.ring_deadline = Some(now + self.spec.ring_timeout);
        self.send_invite(now, None)
    }

    pub(crate) fn next_timer(&self) -> Option<Instant> {
        let mut t = [self.retransmit_at, self.timeout_at, self.ring_deadline]
            .into_iter()
            .flatten()
            .min();
        for c in [&self.cancel, &self.prack].into_iter().flatten() {
            t = Some(t.map_or(c.next_timer(), |x| x.min(c.next_timer())));
        }
        if self.phase == Phase::Done {
            return None;
        }
        t
    }

    fn our_from(&self) -> String {
        format!(
            "<sip:{}@{}>;tag={}",
            self.spec.from_user,
            host_port(self.local),
            self.from_tag
        )
    }

    fn extra_headers(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.spec.headers {
            let clean = |s: &str| !s.is_empty() && !s.bytes().any(|b| b < 0x20 || b == 0x7f);
            if clean(name) && !name.contains(':') && clean(value) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out
    }

    fn send_invite(&mut self, now: Instant, auth: Option<String>) -> Vec<u8> {
        self.cseq += 1;
        self.invite_cseq = self.cseq;
        self.rseq = None;
        self.prack = None;
        self.branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let local = host_port(self.local);
        let data = format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: <{uri}>\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\n\
             Contact: <sip:{}@{local}{}>\r\n{}{}Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n\
             Supported: timer, 100rel\r\nUser-Agent: switchboard\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{}",
            self.spec.peer.transport.as_str(),
            self.branch,
            self.our_from(),
            self.spec.call_id,
            self.cseq,
            self.spec.from_user,
            self.spec.peer.transport.uri_param(),
            auth.unwrap_or_default(),
            self.extra_headers(),
            self.spec.sdp.len(),
            self.spec.sdp,
            uri = self.uri,
        )
        .into_bytes();
        self.invite = data.clone();
        self.phase = Phase::Calling;
        self.interval = T1;
        self.retransmit_at = (self.spec.peer.transport == Transport::Udp).then(|| now + T1);
        self.timeout_at = Some(now + TIMER_B);
        data
    }

    /// PRACK for a reliable provisional `r` (RFC 3262 §7.2): a request of the early dialog,
    /// to its remote target through its route set, with `RAck: <RSeq> <INVITE CSeq> INVITE`.
    fn send_prack(&mut self, now: Instant, r: &Response, rseq: u32) -> Vec<u8> {
        self.cseq += 1;
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let target = r
            .contacts
            .first()
            .map(|c| uri_of(c).to_string())
            .unwrap_or_else(|| self.uri.clone());
        let mut routes = String::new();
        for route in r.record_routes.iter().rev() {
            routes.push_str(&format!("Route: {route}\r\n"));
        }
        let data = format!(
            "PRACK {target} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             {routes}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} PRACK\r\nRAck: {rseq} {} INVITE\r\n\
             Content-Length: 0\r\n\r\n",
            self.spec.peer.transport.as_str(),
            host_port(self.local),
            self.our_from(),
            r.to,
            self.spec.call_id,
            self.cseq,
            self.invite_cseq,
        )
        .into_bytes();
        let udp = self.spec.peer.transport == Transport::Udp;
        self.prack = Some(ClientTx::new(now, branch, self.cseq, data.clone(), udp));
        data
    }

    /// The ACK of a non-2xx final answer: same branch, inside the transaction (§17.1.1.3).
    fn ack_non_2xx(&self, r: &Response) -> Vec<u8> {
        format!(
            "ACK {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            self.uri,
            self.spec.peer.transport.as_str(),
            host_port(self.local),
            self.branch,
            self.our_from(),
            r.to,
            self.spec.call_id,
            self.cseq
        )
        .into_bytes()
    }

    /// The ACK of a 2xx: a request of the dialog, to the remote target (§13.2.2.4).
    fn ack_2xx(&self, a: &Answered) -> Vec<u8> {
        let mut routes = String::new();
        for r in &a.route_set {
            routes.push_str(&format!("Route: {r}\r\n"));
        }
        format!(
            "ACK {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch=z9hG4bK{:016x};rport\r\nMax-Forwards: 70\r\n\
             {routes}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            a.remote_target,
            self.spec.peer.transport.as_str(),
            host_port(self.local),
            rand::random::<u64>(),
            a.from,
            a.to,
            self.spec.call_id,
            a.cseq
        )
        .into_bytes()
    }

    fn cancel_request(&self) -> Vec<u8> {
        format!(
            "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: <{}>\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            self.uri,
            self.spec.peer.transport.as_str(),
            host_port(self.local),
            self.branch,
            self.our_from(),
            self.uri,
            self.spec.call_id,
            self.cseq
        )
        .into_bytes()
    }

    /// Stop ringing (the caller left): CANCEL now, or as soon as a provisional answer allows.
    pub(crate) fn cancel(&mut self, now: Instant, reason: &'static str) -> Vec<Vec<u8>> {
        if self.phase == Phase::Done || self.cancelling {
            return Vec::new();
        }
        self.cancelling = true;
        self.cancel_reason = reason;
        self.ring_deadline = None;
        if self.phase == Phase::Proceeding {
            return vec![self.send_cancel(now)];
        }
        Vec::new()
    }

    fn send_cancel(&mut self, now: Instant) -> Vec<u8> {
        let data = self.cancel_request();
        let udp = self.spec.peer.transport == Transport::Udp;
        self.cancel = Some(ClientTx::new(
            now,
            self.branch.clone(),
            self.cseq,
            data.clone(),
            udp,
        ));
        data
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.retransmit_at = None;
        self.timeout_at = None;
        self.ring_deadline = None;
        self.cancel = None;
    }

    pub(crate) fn on_timer(&mut self, now: Instant) -> (Vec<Vec<u8>>, Option<DialEvent>) {
        let mut send = Vec::new();
        if self.phase == Phase::Done {
            return (send, None);
        }
        if self.timeout_at.is_some_and(|t| t <= now) {
            self.finish();
            return (
                send,
                Some(DialEvent::Failed {
                    status: 408,
                    reason: "no answer from the trunk".into(),
                }),
            );
        }
        if let Some(p) = self.prack.as_mut() {
            match p.on_timer(now) {
                TxTimer::Resend(d) => send.push(d),
                // The far end's own 18x retransmissions and its final answer go on regardless.
                TxTimer::TimedOut => self.prack = None,
                TxTimer::Nothing => {}
            }
        }
        if let Some(c) = self.cancel.as_mut() {
            match c.on_timer(now) {
                TxTimer::Resend(d) => send.push(d),
                TxTimer::TimedOut => {
                    self.finish();
                    return (
                        send,
                        Some(DialEvent::Failed {
                            status: 408,
                            reason: "the trunk did not answer our CANCEL".into(),
                        }),
                    );
                }
                TxTimer::Nothing => {}
            }
        }
        if self.retransmit_at.is_some_and(|t| t <= now) && self.phase == Phase::Calling {
            // Timer A doubles without a cap until timer B (§17.1.1.2).
            self.interval *= 2;
            self.retransmit_at = Some(now + self.interval);
            send.push(self.invite.clone());
        }
        if self.ring_deadline.is_some_and(|t| t <= now) {
            send.extend(self.cancel(now, "no answer before the ring timeout"));
        }
        (send, None)
    }

    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        r: &Response,
    ) -> (Vec<Vec<u8>>, Option<DialEvent>) {
        let mut send = Vec::new();
        if r.cseq_method == "PRACK" {
            // Its final answer ends the PRACK transaction; nothing else depends on it.
            if r.status >= 200 {
                self.prack = None;
            }
            return (send, None);
        }
        if r.cseq_method == "CANCEL" {
            // The 200 to our CANCEL: the 487 to the INVITE follows.
            if let Some(c) = self.cancel.as_mut() {
                if r.status < 200 {
                    c.provisional(now);
                }
            }
            return (send, None);
        }
        if r.status < 200 {
            if self.phase == Phase::Done {
                return (send, None);
            }
            let first = self.phase == Phase::Calling;
            self.phase = Phase::Proceeding;
            self.retransmit_at = None;
            // Timer B stops once the far end has it; the ring deadline bounds it from here.
            self.timeout_at = None;
            if first && self.cancelling && self.cancel.is_none() {
                send.push(self.send_cancel(now));
            }
            if r.status == 100 {
                return (send, None);
            }
            if let Some(rseq) = r.rseq.filter(|_| r.require.iter().any(|t| t == "100rel")) {
                match self.rseq {
                    // A retransmission (or one overtaken by a later one): already taken.
                    Some(last) if rseq <= last => return (send, None),
                    // Out of order: RFC 3262 §4 has us wait for the missing one.
                    Some(last) if rseq > last + 1 => return (send, None),
                    _ => {}
                }
                self.rseq = Some(rseq);
                send.push(self.send_prack(now, r, rseq));
            }
            let early = (!r.body.is_empty() && is_sdp(r))
                .then(|| String::from_utf8_lossy(&r.body).to_string());
            return (
                send,
                Some(DialEvent::Progress {
                    status: r.status,
                    early_sdp: early,
                }),
            );
        }
        if r.status < 300 {
            let answered = Answered {
                sdp: String::from_utf8_lossy(&r.body).to_string(),
                from: self.our_from(),
                to: r.to.clone(),
                remote_target: r
                    .contacts
                    .first()
                    .map(|c| uri_of(c).to_string())
                    .unwrap_or_else(|| self.uri.clone()),
                route_set: r.record_routes.iter().rev().cloned().collect(),
                cseq: r.cseq,
                local_cseq: self.cseq,
            };
            if self.phase == Phase::Done {
                // A retransmitted 2xx: our ACK was lost.
                if let Some(ack) = &self.ack {
                    send.push(ack.clone());
                }
                return (send, None);
            }
            let ack = self.ack_2xx(&answered);
            self.ack = Some(ack.clone());
            send.push(ack);
            self.finish();
            return (send, Some(DialEvent::Answered(Box::new(answered))));
        }
        // Every non-2xx final is acknowledged, retransmissions included.
        send.push(self.ack_non_2xx(r));
        if self.phase == Phase::Done {
            return (send, None);
        }
        if self.cancelling && r.status == 487 {
            self.finish();
            return (
                send,
                Some(DialEvent::Failed {
                    status: 487,
                    reason: self.cancel_reason.to_string(),
                }),
            );
        }
        match r.status {
            401 | 407 if !self.cancelling => {
                let values = if r.status == 401 {
                    &r.www_authenticate
                } else {
                    &r.proxy_authenticate
                };
                let retry = match (&self.spec.credentials, Challenge::best(values)) {
                    (Some((user, pass)), Some(ch))
                        if self.answered_nonce.as_deref() != Some(ch.nonce.as_str())
                            || ch.stale =>
                    {
                        if self.answered_nonce.as_deref() != Some(ch.nonce.as_str()) {
                            self.nc = 0;
                        }
                        self.nc += 1;
                        self.answered_nonce = Some(ch.nonce.clone());
                        let cnonce = format!("{:016x}", rand::random::<u64>());
                        let value = ch.answer(user, pass, "INVITE", &self.uri, &cnonce, self.nc);
                        let name = if r.status == 401 {
                            "Authorization"
                        } else {
                            "Proxy-Authorization"
                        };
                        Some(format!("{name}: {value}\r\n"))
                    }
                    _ => None,
                };
                match retry {
                    Some(auth) => {
                        send.push(self.send_invite(now, Some(auth)));
                        (send, None)
                    }
                    None => {
                        self.finish();
                        (
                            send,
                            Some(DialEvent::Failed {
                                status: r.status,
                                reason: "the trunk refused our credentials".into(),
                            }),
                        )
                    }
                }
            }
            300..=399 if !self.cancelling && self.redirects < MAX_REDIRECTS => {
                let allowed = |uri: &str| {
                    let h = host_of(uri);
                    h == host_of(&self.spec.request_uri)
                        || self
                            .spec
                            .redirect_hosts
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(&h))
                };
                let target = r
                    .contacts
                    .iter()
                    .map(|c| uri_of(c).to_string())
                    .find(|u| allowed(u));
                match target {
                    Some(uri) => {
                        self.redirects += 1;
                        self.uri = uri;
                        send.push(self.send_invite(now, None));
                        (send, None)
                    }
                    None => {
                        self.finish();
                        (
                            send,
                            Some(DialEvent::Failed {
                                status: r.status,
                                reason: "redirected outside the trunk".into(),
                            }),
                        )
                    }
                }
            }
            status => {
                self.finish();
                (
                    send,
                    Some(DialEvent::Failed {
                        status,
                        reason: r.reason.clone(),
                    }),
                )
            }
        }
    }
}

fn is_sdp(r: &Response) -> bool {
    r.content_type
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{Algorithm, Check, Credentials, NonceBook};
    use crate::sip::message::{self, SipMessage};

    fn spec(credentials: bool) -> DialSpec {
        DialSpec {
            call_id: "out1".into(),
            peer: Peer {
                addr: "127.0.0.1:5080".parse().unwrap(),
                transport: Transport::Udp,
            },
            request_uri: "sip:+15551234@127.0.0.1:5080".into(),
            from_user: "+15550100".into(),
            sdp: "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n".into(),
            credentials: credentials.then(|| ("acct".into(), "secret".into())),
            ring_timeout: Duration::from_secs(20),
            redirect_hosts: vec!["127.0.0.1:5090".into()],
            headers: vec![
                ("X-Ticket".into(), "42".into()),
                ("X-Evil".into(), "1\r\nContact: <sip:x@evil>".into()),
            ],
        }
    }

    fn text(d: &[u8]) -> String {
        String::from_utf8_lossy(d).to_string()
    }

    fn header(d: &[u8], name: &str) -> Option<String> {
        text(d)
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    }

    /// The far end's answer to `req`.
    fn answer(req: &[u8], status: u16, extra: &str, body: &str) -> Response {
        let t = text(req);
        let pick = |n: &str| {
            t.lines()
                .find(|l| l.starts_with(n))
                .unwrap_or("")
                .to_string()
        };
        let to = if status > 100 {
            format!("{};tag=far", pick("To:"))
        } else {
            pick("To:")
        };
        let raw = format!(
            "SIP/2.0 {status} Reason\r\n{}\r\n{}\r\n{to}\r\n{}\r\n{}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            pick("Via:"),
            pick("From:"),
            pick("Call-ID:"),
            pick("CSeq:"),
            body.len()
        );
        match message::parse(raw.as_bytes(), 65535) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    #[test]
    fn ringing_early_media_answer_and_ack_from_the_dialog() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        assert!(text(&inv).starts_with("INVITE sip:+15551234@127.0.0.1:5080 SIP/2.0\r\n"));
        assert!(text(&inv).contains("\r\nX-Ticket: 42\r\n"));
        assert!(
            !text(&inv).contains("evil"),
            "a header with a line break is dropped"
        );
        assert!(header(&inv, "From:")
            .unwrap()
            .starts_with("<sip:+15550100@127.0.0.1:5060>;tag="));
        assert!(text(&inv).ends_with("m=audio 20000 RTP/AVP 0\r\n"));
        assert_eq!(
            d.on_response(t0, &answer(&inv, 100, "", "")),
            (vec![], None)
        );
        let early = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 30000 RTP/AVP 0\r\n";
        let (_, ev) = d.on_response(
            t0,
            &answer(&inv, 183, "Content-Type: application/sdp\r\n", early),
        );
        assert_eq!(
            ev,
            Some(DialEvent::Progress {
                status: 183,
                early_sdp: Some(early.into())
            })
        );
        let ok = answer(
            &inv,
            200,
            "Contact: <sip:far@127.0.0.1:5080;transport=udp>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nContent-Type: application/sdp\r\n",
            early,
        );
        let (send, ev) = d.on_response(t0, &ok);
        let Some(DialEvent::Answered(a)) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(a.sdp, early);
        assert!(a.to.ends_with(";tag=far"));
        assert_eq!(
            a.route_set,
            vec!["<sip:p2;lr>".to_string(), "<sip:p1;lr>".to_string()]
        );
        let ack = text(&send[0]);
        assert!(
            ack.starts_with("ACK sip:far@127.0.0.1:5080;transport=udp SIP/2.0"),
            "{ack}"
        );
        assert!(
            ack.contains("Route: <sip:p2;lr>\r\nRoute: <sip:p1;lr>\r\n")
                && ack.contains("CSeq: 1 ACK")
        );
        // A retransmitted 2xx gets the same ACK again; no new event; no timers left.
        assert_eq!(d.on_response(t0, &ok), (vec![send[0].clone()], None));
        assert_eq!(d.next_timer(), None);
    }

    #[test]
    fn reliable_provisionals_are_pracked_once_each_in_order() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        assert!(text(&inv).contains("Supported: timer, 100rel\r\n"));
        let reliable = |rseq: u32, status: u16| {
            answer(
                &inv,
                status,
                &format!(
                    "Require: 100rel\r\nRSeq: {rseq}\r\nContact: <sip:far@127.0.0.1:5080>\r\n\
                     Record-Route: <sip:p1;lr>\r\n"
                ),
                "",
            )
        };
        let (send, ev) = d.on_response(t0, &reliable(1, 183));
        assert!(matches!(ev, Some(DialEvent::Progress { status: 183, .. })));
        let prack = text(&send[0]);
        assert!(
            prack.starts_with("PRACK sip:far@127.0.0.1:5080 SIP/2.0\r\n"),
            "{prack}"
        );
        assert!(prack.contains("\r\nRAck: 1 1 INVITE\r\n"), "{prack}");
        assert!(
            prack.contains("\r\nCSeq: 2 PRACK\r\n") && prack.contains("Route: <sip:p1;lr>\r\n")
        );
        assert!(header(&send[0], "To:").unwrap().ends_with(";tag=far"));
        // Lost on UDP: the PRACK is resent on its own timer.
        let t1 = t0 + Duration::from_millis(600);
        assert!(d.next_timer().is_some_and(|t| t <= t1));
        let (again, _) = d.on_timer(t1);
        assert!(again.iter().any(|m| text(m) == prack), "{again:?}");
        // The far end retransmits the 183: nothing new. One out of order: ignored.
        assert_eq!(d.on_response(t1, &reliable(1, 183)), (vec![], None));
        assert_eq!(d.on_response(t1, &reliable(3, 180)), (vec![], None));
        // Our PRACK's 200 ends its transaction; the next one in order gets CSeq 3.
        let prack_ok = answer(&send[0], 200, "", "");
        assert!(d.owns(&prack_ok));
        assert_eq!(d.on_response(t1, &prack_ok), (vec![], None));
        let (send, _) = d.on_response(t1, &reliable(2, 180));
        assert!(text(&send[0]).contains("RAck: 2 1 INVITE\r\nContent-Length: 0"));
        assert!(text(&send[0]).contains("CSeq: 3 PRACK"));
        // An unreliable 180 needs nothing.
        let (send2, _) = d.on_response(t1, &answer(&inv, 180, "", ""));
        assert!(send2.is_empty());
        let ok = answer(&inv, 200, "Contact: <sip:far@127.0.0.1:5080>\r\n", "");
        let (ack, ev) = d.on_response(t1, &ok);
        let Some(DialEvent::Answered(a)) = ev else {
            panic!("{ev:?}")
        };
        assert!(text(&ack[0]).contains("CSeq: 1 ACK"));
        assert_eq!(
            (a.cseq, a.local_cseq),
            (1, 3),
            "a BYE counts on from the PRACKs"
        );
    }

    #[test]
    fn a_proxy_challenge_is_answered_once_and_a_second_refusal_fails() {
        let t0 = Instant::now();
        let mut book = NonceBook::new("carrier", Duration::from_secs(60), 10);
        let mut d = Dial::new(spec(true), local());
        let inv = d.start(t0);
        let ch = book.challenge(t0, Algorithm::Md5, false);
        let (send, ev) = d.on_response(
            t0,
            &answer(&inv, 407, &format!("Proxy-Authenticate: {ch}\r\n"), ""),
        );
        assert!(ev.is_none());
        let ack = text(&send[0]);
        assert!(ack.starts_with("ACK ") && ack.contains(";tag=far") && ack.contains("CSeq: 1 ACK"));
        assert_eq!(
            header(&send[0], "Via:"),
            header(&inv, "Via:"),
            "the ACK is in the transaction"
        );
        let again = &send[1];
        assert!(header(again, "CSeq:").unwrap().starts_with("2 INVITE"));
        assert_eq!(header(again, "Call-ID:"), header(&inv, "Call-ID:"));
        let creds = Credentials::parse(&header(again, "Proxy-Authorization:").unwrap()).unwrap();
        assert_eq!(
            book.check(t0, &creds, "INVITE", "sip:+15551234@127.0.0.1:5080", |_| {
                Some("secret")
            }),
            Check::Accepted("acct".into())
        );
        // The same nonce challenged again: the credentials are wrong.
        let (send, ev) = d.on_response(
            t0,
            &answer(again, 407, &format!("Proxy-Authenticate: {ch}\r\n"), ""),
        );
        assert_eq!(send.len(), 1, "only the ACK");
        assert!(matches!(ev, Some(DialEvent::Failed { status: 407, .. })));
        // Without credentials a 401 fails at once.
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        let (_, ev) = d.on_response(
            t0,
            &answer(&inv, 401, &format!("WWW-Authenticate: {ch}\r\n"), ""),
        );
        assert!(matches!(ev, Some(DialEvent::Failed { status: 401, .. })));
    }

    #[test]
    fn busy_is_acknowledged_and_reported() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        let busy = answer(&inv, 486, "", "");
        let (send, ev) = d.on_response(t0, &busy);
        assert!(text(&send[0]).starts_with("ACK "));
        assert_eq!(
            ev,
            Some(DialEvent::Failed {
                status: 486,
                reason: "Reason".into()
            })
        );
        // Its retransmission is acknowledged again, without another event.
        let (send, ev) = d.on_response(t0, &busy);
        assert!(text(&send[0]).starts_with("ACK ") && ev.is_none());
    }

    #[test]
    fn no_answer_in_the_ring_time_is_cancelled() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        d.on_response(t0, &answer(&inv, 180, "", ""));
        assert_eq!(d.next_timer(), Some(t0 + Duration::from_secs(20)));
        let (send, ev) = d.on_timer(t0 + Duration::from_secs(20));
        assert!(ev.is_none());
        let cancel = text(&send[0]);
        assert!(
            cancel.starts_with("CANCEL sip:+15551234@127.0.0.1:5080 SIP/2.0"),
            "{cancel}"
        );
        assert_eq!(
            header(&send[0], "Via:"),
            header(&inv, "Via:"),
            "the INVITE's branch"
        );
        assert!(cancel.contains("CSeq: 1 CANCEL"));
        assert_eq!(
            d.on_response(t0, &answer(&send[0], 200, "", "")),
            (vec![], None)
        );
        let (send, ev) = d.on_response(t0, &answer(&inv, 487, "", ""));
        assert!(text(&send[0]).starts_with("ACK "));
        assert_eq!(
            ev,
            Some(DialEvent::Failed {
                status: 487,
                reason: "no answer before the ring timeout".into()
            })
        );
    }

    #[test]
    fn a_cancel_before_any_answer_waits_for_the_first_provisional() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        assert!(
            d.cancel(t0, "the caller hung up").is_empty(),
            "RFC 3261 §9.1: not before a 1xx"
        );
        let (send, _) = d.on_response(t0, &answer(&inv, 100, "", ""));
        assert!(text(&send[0]).starts_with("CANCEL "));
    }

    #[test]
    fn unanswered_invites_are_retransmitted_until_timer_b() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        let mut resent = Vec::new();
        let t = loop {
            let t = d.next_timer().unwrap();
            let (send, ev) = d.on_timer(t);
            resent.extend(send);
            if let Some(ev) = ev {
                assert!(matches!(ev, DialEvent::Failed { status: 408, .. }));
                break t;
            }
        };
        assert_eq!(t, t0 + TIMER_B);
        // Timer A: 0.5, 1, 2, 4, 8, 16 s.
        assert_eq!(resent.len(), 6);
        assert!(resent.iter().all(|r| *r == inv));
    }

    #[test]
    fn redirects_are_followed_to_the_trunks_hosts_only() {
        let t0 = Instant::now();
        let mut d = Dial::new(spec(false), local());
        let inv = d.start(t0);
        let (send, ev) = d.on_response(
            t0,
            &answer(&inv, 302, "Contact: <sip:+15551234@127.0.0.1:5090>\r\n", ""),
        );
        assert!(ev.is_none());
        assert!(text(&send[1]).starts_with("INVITE sip:+15551234@127.0.0.1:5090 SIP/2.0"));
        let (_, ev) = d.on_response(
            t0,
            &answer(
                &send[1],
                302,
                "Contact: <sip:+15551234@198.51.100.1>\r\n",
                "",
            ),
        );
        assert_eq!(
            ev,
            Some(DialEvent::Failed {
                status: 302,
                reason: "redirected outside the trunk".into()
            })
        );
    }
}

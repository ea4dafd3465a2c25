//! A sans-IO SIP user agent client for one call over UDP: INVITE with an SDP offer, 1xx/2xx/
//! final responses, ACK, BYE in both directions, and the RFC 3261 §17.1 retransmission timers
//! (A/B for INVITE, E/F for BYE). It is fed messages and the time, and returns [`Action`]s; the
//! driver in `caller::driver` owns the socket and one map of these for all calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::message::{self, Request};

/// RFC 3261 timer T1 (round-trip estimate) and T2 (cap for non-INVITE retransmits).
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);

/// How a call ended, from the signalling's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Answered and hung up cleanly (BYE answered 2xx) by us or by the far end.
    Completed { by_remote: bool },
    /// A final non-2xx answer to the INVITE.
    Refused { status: u16, reason: String },
    /// No final answer to the INVITE in time.
    SetupTimeout,
    /// Answered, but our BYE got no 2xx in 64·T1 (or got a non-2xx).
    ByeFailed(String),
    /// The 200 had no SDP answer we can use.
    BadAnswer(String),
    /// Stopped by the caller (overall deadline) before it ended by itself.
    Aborted,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send to the target.
    Send(Vec<u8>),
    /// Send a response to where a request came from.
    Reply(Vec<u8>, SocketAddr),
    /// 200 OK received (first time): start media with this SDP answer.
    Answered { sdp: String },
    /// The call is over; the driver removes it.
    Ended(End),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Proceeding,
    Confirmed,
    Terminating,
    Done,
}

/// What a call needs to build its requests.
#[derive(Debug, Clone)]
pub struct Params {
    pub call_id: String,
    pub from_user: String,
    pub request_uri: String,
    pub local: SocketAddr,
    pub sdp_offer: String,
    pub setup_timeout: Duration,
}

/// The parts of a response the dialog needs (from `sip::message` plus a header scan).
#[derive(Debug, Clone, Default)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub cseq_method: &'a str,
    pub to: &'a str,
    pub contact: Option<&'a str>,
    pub body: &'a str,
}

impl<'a> ResponseView<'a> {
    /// Scan a raw response that `sip::message::parse` accepted.
    pub fn from_raw(raw: &'a str, status: u16, cseq_method: &'a str) -> ResponseView<'a> {
        let (head, body) = split_body(raw);
        let reason = head
            .lines()
            .next()
            .and_then(|l| l.splitn(3, ' ').nth(2))
            .unwrap_or("")
            .trim();
        ResponseView {
            status,
            reason,
            cseq_method,
            to: header(head, "to", "t").unwrap_or(""),
            contact: header(head, "contact", "m").map(message::uri_of),
            body,
        }
    }
}

pub fn split_body(raw: &str) -> (&str, &str) {
    raw.split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""))
}

/// First value of a header (long or compact name) in a message head.
pub fn header<'a>(head: &'a str, long: &str, short: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        let k = k.trim();
        (k.eq_ignore_ascii_case(long) || k.eq_ignore_ascii_case(short)).then(|| v.trim())
    })
}

pub struct Uac {
    p: Params,
    local_tag: String,
    invite_branch: String,
    invite: Vec<u8>,
    pub state: State,
    started: Instant,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Instant,
    /// To header of the 2xx (with the remote tag) and the remote target (Contact).
    remote_to: String,
    remote_target: String,
    ack: Vec<u8>,
    bye: Vec<u8>,
    pub answered_at: Option<Instant>,
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Uac {
    pub fn new(p: Params, now: Instant) -> Uac {
        let local_tag = token();
        let invite_branch = format!("z9hG4bK{}", token());
        let mut u = Uac {
            local_tag,
            invite_branch,
            invite: Vec::new(),
            state: State::Calling,
            started: now,
            retransmit_at: None,
            interval: T1,
            give_up_at: now + p.setup_timeout,
            remote_to: String::new(),
            remote_target: String::new(),
            ack: Vec::new(),
            bye: Vec::new(),
            answered_at: None,
            p,
        };
        u.invite = u.build_invite().into_bytes();
        u
    }

    pub fn call_id(&self) -> &str {
        &self.p.call_id
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn local_party(&self) -> String {
        format!(
            "<sip:{}@{}>;tag={}",
            self.p.from_user, self.p.local, self.local_tag
        )
    }

    fn build_invite(&self) -> String {
        let p = &self.p;
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{user}@{local}>\r\nUser-Agent: switchboard-call\r\n\
             Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            uri = p.request_uri,
            local = p.local,
            branch = self.invite_branch,
            from = self.local_party(),
            cid = p.call_id,
            user = p.from_user,
            len = p.sdp_offer.len(),
            sdp = p.sdp_offer,
        )
    }

    fn in_dialog(&self, method: &str, cseq: u32, branch: &str) -> String {
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             User-Agent: switchboard-call\r\nContent-Length: 0\r\n\r\n",
            target = self.remote_target,
            local = self.p.local,
            from = self.local_party(),
            to = self.remote_to,
            cid = self.p.call_id,
        )
    }

    /// Send the INVITE.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.retransmit_at = Some(now + T1);
        self.interval = T1;
        vec![Action::Send(self.invite.clone())]
    }

    /// The earliest time [`Uac::on_timer`] has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.state {
            State::Calling => Some(
                self.retransmit_at
                    .map_or(self.give_up_at, |r| r.min(self.give_up_at)),
            ),
            State::Proceeding => Some(self.give_up_at),
            State::Terminating => Some(
                self.retransmit_at
                    .map_or(self.give_up_at, |r| r.min(self.give_up_at)),
            ),
            State::Confirmed | State::Done => None,
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Calling | State::Proceeding if now >= self.give_up_at => {
                let was = self.state;
                self.state = State::Done;
                let mut out = Vec::new();
                if was == State::Proceeding {
                    out.push(Action::Send(self.cancel()));
                }
                out.push(Action::Ended(End::SetupTimeout));
                out
            }
            State::Calling if self.retransmit_at.is_some_and(|t| now >= t) => {
                // Timer A doubles without a cap (RFC 3261 §17.1.1.2).
                self.interval *= 2;
                self.retransmit_at = Some(now + self.interval);
                vec![Action::Send(self.invite.clone())]
            }
            State::Terminating if now >= self.give_up_at => {
                self.state = State::Done;
                vec![Action::Ended(End::ByeFailed("no answer to BYE".into()))]
            }
            State::Terminating if self.retransmit_at.is_some_and(|t| now >= t) => {
                // Timer E doubles up to T2 (§17.1.2.2).
                self.interval = (self.interval * 2).min(T2);
                self.retransmit_at = Some(now + self.interval);
                vec![Action::Send(self.bye.clone())]
            }
            _ => Vec::new(),
        }
    }

    fn cancel(&self) -> Vec<u8> {
        format!(
            "CANCEL {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: <{uri}>\r\nCall-ID: {cid}\r\nCSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
            uri = self.p.request_uri,
            local = self.p.local,
            branch = self.invite_branch,
            from = self.local_party(),
            cid = self.p.call_id,
        )
        .into_bytes()
    }

    fn ack_non_2xx(&self, to: &str) -> Vec<u8> {
        format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            uri = self.p.request_uri,
            local = self.p.local,
            branch = self.invite_branch,
            from = self.local_party(),
            cid = self.p.call_id,
        )
        .into_bytes()
    }

    pub fn on_response(&mut self, now: Instant, r: &ResponseView<'_>) -> Vec<Action> {
        match (r.cseq_method, self.state) {
            ("INVITE", State::Calling | State::Proceeding) => match r.status {
                100..=199 => {
                    self.state = State::Proceeding;
                    self.retransmit_at = None;
                    Vec::new()
                }
                200..=299 => {
                    self.remote_to = r.to.to_string();
                    self.remote_target = r
                        .contact
                        .filter(|c| !c.is_empty())
                        .map_or_else(|| self.p.request_uri.clone(), str::to_string);
                    self.ack = self
                        .in_dialog("ACK", 1, &format!("z9hG4bK{}", token()))
                        .into_bytes();
                    self.state = State::Confirmed;
                    self.retransmit_at = None;
                    self.answered_at = Some(now);
                    vec![
                        Action::Send(self.ack.clone()),
                        Action::Answered {
                            sdp: r.body.to_string(),
                        },
                    ]
                }
                _ => {
                    self.state = State::Done;
                    vec![
                        Action::Send(self.ack_non_2xx(r.to)),
                        Action::Ended(End::Refused {
                            status: r.status,
                            reason: r.reason.to_string(),
                        }),
                    ]
                }
            },
            // A retransmitted 2xx: our ACK was lost.
            ("INVITE", State::Confirmed | State::Terminating) if (200..300).contains(&r.status) => {
                vec![Action::Send(self.ack.clone())]
            }
            ("BYE", State::Terminating) if r.status >= 200 => {
                self.state = State::Done;
                if r.status < 300 {
                    vec![Action::Ended(End::Completed { by_remote: false })]
                } else {
                    vec![Action::Ended(End::ByeFailed(format!(
                        "BYE answered {} {}",
                        r.status, r.reason
                    )))]
                }
            }
            _ => Vec::new(),
        }
    }

    /// The 200 carried an unusable SDP answer: hang up at once.
    pub fn reject_answer(&mut self, now: Instant, why: String) -> Vec<Action> {
        let mut out = self.hangup(now);
        out.retain(|a| !matches!(a, Action::Ended(_)));
        self.state = State::Done;
        out.push(Action::Ended(End::BadAnswer(why)));
        out
    }

    /// Hang up: BYE when answered, CANCEL before (the call then ends as aborted).
    pub fn hangup(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Confirmed => {
                self.bye = self
                    .in_dialog("BYE", 2, &format!("z9hG4bK{}", token()))
                    .into_bytes();
                self.state = State::Terminating;
                self.interval = T1;
                self.retransmit_at = Some(now + T1);
                self.give_up_at = now + 64 * T1;
                vec![Action::Send(self.bye.clone())]
            }
            State::Calling | State::Proceeding => {
                self.state = State::Done;
                vec![Action::Send(self.cancel()), Action::Ended(End::Aborted)]
            }
            State::Terminating | State::Done => Vec::new(),
        }
    }

    /// A request from the far end in this dialog.
    pub fn on_request(&mut self, _now: Instant, req: &Request, from: SocketAddr) -> Vec<Action> {
        match req.method.as_str() {
            "ACK" => Vec::new(),
            "BYE" => {
                let mut out = vec![Action::Reply(response(req, 200, "OK"), from)];
                if matches!(self.state, State::Confirmed | State::Terminating) {
                    self.state = State::Done;
                    out.push(Action::Ended(End::Completed { by_remote: true }));
                }
                out
            }
            "OPTIONS" | "INFO" | "NOTIFY" | "UPDATE" => {
                vec![Action::Reply(response(req, 200, "OK"), from)]
            }
            _ => vec![Action::Reply(response(req, 501, "Not Implemented"), from)],
        }
    }
}

/// A response to `req` that echoes the headers RFC 3261 §8.2.6.2 requires.
pub fn response(req: &Request, status: u16, reason: &str) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for v in &req.vias {
        out.push_str("Via: ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\nContent-Length: 0\r\n\r\n",
        req.from, req.to, req.call_id, req.cseq, req.cseq_method
    ));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, SipMessage};

    fn uac(now: Instant) -> Uac {
        Uac::new(
            Params {
                call_id: "c1@test".into(),
                from_user: "+15550100000".into(),
                request_uri: "sip:ivr@127.0.0.1:5060".into(),
                local: "127.0.0.1:40000".parse().unwrap(),
                sdp_offer: "v=0\r\n".into(),
                setup_timeout: Duration::from_secs(32),
            },
            now,
        )
    }

    fn sent(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn view<'a>(raw: &'a str) -> ResponseView<'a> {
        let Ok(SipMessage::Response(r)) = parse(raw.as_bytes(), 65535) else {
            panic!("not a response: {raw}")
        };
        let status = r.status;
        let method: &'static str = if r.cseq_method == "BYE" {
            "BYE"
        } else {
            "INVITE"
        };
        ResponseView::from_raw(raw, status, method)
    }

    fn resp(status: &str, cseq: &str, extra: &str, body: &str) -> String {
        format!(
            "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKx\r\n\
             From: <sip:+15550100000@127.0.0.1:40000>;tag=a\r\nTo: <sip:ivr@127.0.0.1:5060>;tag=gw1\r\n\
             Call-ID: c1@test\r\nCSeq: {cseq}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn invite_parses_and_is_retransmitted_on_timer_a_until_provisional() {
        let t0 = Instant::now();
        let mut u = uac(t0);
        let inv = sent(&u.start(t0));
        let Ok(SipMessage::Request(r)) = parse(inv[0].as_bytes(), 65535) else {
            panic!("{}", inv[0])
        };
        assert_eq!(r.method, "INVITE");
        assert_eq!(r.call_id, "c1@test");
        assert_eq!(r.body, b"v=0\r\n");
        assert_eq!(u.next_timer(), Some(t0 + T1));
        assert_eq!(sent(&u.on_timer(t0 + T1)).len(), 1);
        assert_eq!(u.next_timer(), Some(t0 + T1 + 2 * T1), "doubled");
        assert!(u.on_timer(t0 + T1 + T1).is_empty(), "not yet");
        u.on_response(t0 + T1 * 2, &view(&resp("100 Trying", "1 INVITE", "", "")));
        assert_eq!(u.state, State::Proceeding);
        assert_eq!(u.next_timer(), Some(t0 + Duration::from_secs(32)));
        let end = u.on_timer(t0 + Duration::from_secs(32));
        assert!(end.contains(&Action::Ended(End::SetupTimeout)), "{end:?}");
    }

    #[test]
    fn answer_ack_and_remote_bye() {
        let t0 = Instant::now();
        let mut u = uac(t0);
        u.start(t0);
        let ok = resp(
            "200 OK",
            "1 INVITE",
            "Contact: <sip:gw@127.0.0.1:5060>\r\nContent-Type: application/sdp\r\n",
            "v=0\r\nm=audio 20000 RTP/AVP 0\r\n",
        );
        let out = u.on_response(t0, &view(&ok));
        let acks = sent(&out);
        assert!(
            acks[0].starts_with("ACK sip:gw@127.0.0.1:5060 SIP/2.0"),
            "{}",
            acks[0]
        );
        assert!(acks[0].contains("To: <sip:ivr@127.0.0.1:5060>;tag=gw1"));
        assert!(matches!(&out[1], Action::Answered { sdp } if sdp.contains("m=audio 20000")));
        assert_eq!(u.next_timer(), None);
        // A retransmitted 200 is acknowledged again.
        assert_eq!(sent(&u.on_response(t0, &view(&ok))), acks);
        let bye = "BYE sip:+15550100000@127.0.0.1:40000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb\r\n\
                   From: <sip:ivr@127.0.0.1:5060>;tag=gw1\r\nTo: <sip:+15550100000@127.0.0.1:40000>;tag=a\r\n\
                   Call-ID: c1@test\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n";
        let Ok(SipMessage::Request(req)) = parse(bye.as_bytes(), 65535) else {
            panic!()
        };
        let gw: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let out = u.on_request(t0, &req, gw);
        let Action::Reply(bytes, to) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*to, gw);
        let text = String::from_utf8_lossy(bytes);
        assert!(
            text.starts_with("SIP/2.0 200 OK\r\n") && text.contains("CSeq: 7 BYE"),
            "{text}"
        );
        assert_eq!(out[1], Action::Ended(End::Completed { by_remote: true }));
    }

    #[test]
    fn our_bye_is_retransmitted_on_timer_e_and_completes_on_200() {
        let t0 = Instant::now();
        let mut u = uac(t0);
        u.start(t0);
        u.on_response(t0, &view(&resp("200 OK", "1 INVITE", "", "")));
        let bye = sent(&u.hangup(t0));
        assert!(
            bye[0].starts_with("BYE sip:ivr@127.0.0.1:5060"),
            "no Contact: Request-URI"
        );
        assert!(bye[0].contains("CSeq: 2 BYE"));
        let mut t = t0;
        let mut gaps = Vec::new();
        while let Some(next) = u.next_timer() {
            if next >= t0 + 64 * T1 {
                break;
            }
            gaps.push(next - t);
            t = next;
            assert_eq!(sent(&u.on_timer(t)), bye);
        }
        assert_eq!(&gaps[..4], &[T1, 2 * T1, 4 * T1, T2]);
        assert!(gaps[4..].iter().all(|g| *g == T2));
        let out = u.on_response(t, &view(&resp("200 OK", "2 BYE", "", "")));
        assert_eq!(
            out,
            vec![Action::Ended(End::Completed { by_remote: false })]
        );
    }

    #[test]
    fn refusal_is_acknowledged_and_reported() {
        let t0 = Instant::now();
        let mut u = uac(t0);
        u.start(t0);
        let out = u.on_response(
            t0,
            &view(&resp("488 Not Acceptable Here", "1 INVITE", "", "")),
        );
        let ack = sent(&out);
        assert!(ack[0].starts_with("ACK sip:ivr@127.0.0.1:5060"));
        assert!(ack[0].contains("CSeq: 1 ACK") && ack[0].contains(";tag=gw1"));
        assert_eq!(
            out[1],
            Action::Ended(End::Refused {
                status: 488,
                reason: "Not Acceptable Here".into()
            })
        );
    }

    #[test]
    fn bye_without_answer_goes_unanswered_and_fails_after_64_t1() {
        let t0 = Instant::now();
        let mut u = uac(t0);
        u.start(t0);
        u.on_response(t0, &view(&resp("200 OK", "1 INVITE", "", "")));
        u.hangup(t0);
        let out = u.on_timer(t0 + 64 * T1);
        assert!(
            matches!(&out[..], [Action::Ended(End::ByeFailed(_))]),
            "{out:?}"
        );
    }
}

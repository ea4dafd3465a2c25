//! Sans-IO SIP user-agent server: the transactions and dialogs that an IVR gateway needs
//! (RFC 3261 §13, §15, §17 for the server side of INVITE and the client side of our own BYE).
//!
//! It is fed datagrams/stream messages, commands from calls and the clock, and it returns
//! messages to send and events for the call layer. No sockets, no tokio: the driver in
//! `endpoint.rs` owns the I/O, and the tests here drive it directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::acl::Acl;
use super::message::{
    self, has_param, param, uri_of, user_of, Message, Request, Response, Salvage,
};

/// RFC 3261 timer base values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
const TIMER_64T1: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

/// The far end of a message: where it came from, and so where answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub max_message_bytes: usize,
    pub server_name: String,
    pub acl: Acl,
    /// Sources whose MESSAGE requests are taken as inbound SMS (the SMS trunks). A MESSAGE
    /// turns into paid outbound replies, so any other admitted source gets 403.
    pub message_sources: Acl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingInvite {
    pub call_id: String,
    pub from: String,
    pub to: String,
    pub request_uri: String,
    /// User part of the From URI: the caller's number.
    pub caller: String,
    /// User part of the Request-URI: the number that was dialled.
    pub called: String,
    pub peer: Peer,
    pub local: SocketAddr,
    pub sdp: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// We sent BYE and it was answered (or timed out).
    HungUp,
    /// The 2xx we sent was never acknowledged.
    AckTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Invite(Box<IncomingInvite>),
    /// An instant message (RFC 3428) outside any dialog, already answered with 200.
    Message {
        from: String,
        to: String,
        body: String,
        call_id: String,
        peer: Peer,
    },
    /// The final answer to a MESSAGE we sent (`status` 408 when nobody answered).
    MessageResult {
        id: u64,
        status: u16,
        reason: String,
    },
    Cancelled {
        call_id: String,
    },
    Acked {
        call_id: String,
    },
    Bye {
        call_id: String,
    },
    Info {
        call_id: String,
        content_type: String,
        body: Vec<u8>,
    },
    Ended {
        call_id: String,
        reason: EndReason,
    },
    /// A request we refused at the door (bad syntax, ACL): logged by the driver.
    Refused {
        peer: Peer,
        status: u16,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a text/plain MESSAGE to `to` at `peer` (a configured trunk), from our `local` address.
    SendMessage {
        id: u64,
        peer: Peer,
        local: SocketAddr,
        request_uri: String,
        from_user: String,
        body: String,
    },
    Answer {
        call_id: String,
        sdp: String,
    },
    Reject {
        call_id: String,
        status: u16,
        reason: String,
        retry_after: Option<u32>,
    },
    Hangup {
        call_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Peer,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE received, final response not yet sent.
    Proceeding,
    /// 2xx sent, waiting for ACK.
    Answered,
    /// Non-2xx final sent, waiting for ACK.
    Rejected,
    Confirmed,
    /// Our BYE is outstanding.
    Ending,
}

/// Headers a response echoes from its request.
#[derive(Debug, Clone)]
struct Head {
    vias: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    cseq_method: String,
}

impl Head {
    fn of(r: &Request) -> Self {
        Head {
            vias: r.vias.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            call_id: r.call_id.clone(),
            cseq: r.cseq,
            cseq_method: r.cseq_method.clone(),
        }
    }
}

#[derive(Debug)]
struct Dialog {
    peer: Peer,
    local: SocketAddr,
    state: State,
    invite: Head,
    invite_branch: String,
    local_tag: String,
    remote_target: String,
    route_set: Vec<String>,
    /// The last response to the INVITE, resent on retransmitted INVITEs and by timer G / 2xx retransmission.
    last_response: Vec<u8>,
    local_sdp: String,
    retransmit_interval: Duration,
    local_cseq: u32,
    bye: Option<Vec<u8>>,
    bye_deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// Resend the final INVITE response until ACK (2xx: §13.3.1.4; non-2xx: timer G).
    Retransmit,
    /// Give up waiting for ACK (64*T1).
    AckTimeout,
    /// Resend our BYE (timer E).
    ByeRetransmit,
    /// Give up on our BYE (timer F).
    ByeTimeout,
    /// Resend a MESSAGE (timer E; keyed by branch).
    MessageRetransmit,
    /// Give up on a MESSAGE (timer F).
    MessageTimeout,
}

pub struct SipCore {
    cfg: CoreConfig,
    dialogs: HashMap<String, Dialog>,
    /// Responses to non-INVITE requests, kept for 64*T1 so retransmissions get the same answer.
    answered: HashMap<(String, String), (Vec<u8>, Instant)>,
    timers: BTreeMap<(Instant, u64), (String, TimerKind)>,
    timer_seq: u64,
    next_purge: Option<Instant>,
    /// MESSAGE client transactions by branch.
    messages: HashMap<String, MessageTx>,
    out: VecDeque<Output>,
}

#[derive(Debug)]
struct MessageTx {
    id: u64,
    peer: Peer,
    data: Vec<u8>,
    interval: Duration,
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE";

impl SipCore {
    pub fn new(cfg: CoreConfig) -> Self {
        SipCore {
            cfg,
            dialogs: HashMap::new(),
            answered: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_purge: None,
            messages: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.keys().next().map(|(t, _)| *t);
        match (t, self.next_purge) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One SIP message from the network. `local` is our address as the peer sees it.
    pub fn handle_message(&mut self, now: Instant, peer: Peer, local: SocketAddr, data: &[u8]) {
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive (RFC 5626 CRLF ping)
        }
        match message::parse(data, self.cfg.max_message_bytes) {
            Ok(Message::Request(req)) => {
                if !self.cfg.acl.allows(peer.addr.ip()) {
                    if req.method != "ACK" {
                        self.reply(peer, &Head::of(&req), 403, "Forbidden", None, "", b"");
                    }
                    self.refused(
                        peer,
                        403,
                        format!("{} from {} not allowed by ACL", req.method, peer.addr),
                    );
                    return;
                }
                self.on_request(now, peer, local, req)
            }
            Ok(Message::Response(resp)) => self.on_response(resp),
            Err(failure) => {
                let (err, salvage) = *failure;
                self.on_garbage(peer, err.to_string(), salvage)
            }
        }
    }

    fn refused(&mut self, peer: Peer, status: u16, reason: String) {
        self.out.push_back(Output::Event(Event::Refused {
            peer,
            status,
            reason,
        }));
    }

    fn on_garbage(&mut self, peer: Peer, reason: String, s: Salvage) {
        if s.can_answer() && self.cfg.acl.allows(peer.addr.ip()) {
            let cseq = s.cseq.clone().unwrap_or_default();
            let mut parts = cseq.split_whitespace();
            let head = Head {
                vias: s.vias.clone(),
                from: s.from.clone().unwrap_or_default(),
                to: s.to.clone().unwrap_or_default(),
                call_id: s.call_id.clone().unwrap_or_default(),
                cseq: parts.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                cseq_method: parts
                    .next()
                    .map(str::to_string)
                    .or_else(|| s.method.clone())
                    .unwrap_or_default(),
            };
            let warning = format!("Warning: 399 switchboard \"{}\"\r\n", sanitize(&reason));
            self.reply(peer, &head, 400, "Bad Request", None, &warning, b"");
            self.refused(peer, 400, reason);
        } else {
            self.refused(peer, 0, format!("dropped: {reason}"));
        }
    }

    fn on_request(&mut self, now: Instant, peer: Peer, local: SocketAddr, req: Request) {
        let head = Head::of(&req);
        if req.method != req.cseq_method && req.method != "ACK" && req.method != "CANCEL" {
            self.reply(
                peer,
                &head,
                400,
                "Bad Request",
                None,
                "Warning: 399 switchboard \"CSeq method mismatch\"\r\n",
                b"",
            );
            return;
        }
        if req.max_forwards == Some(0) && req.method != "ACK" {
            self.reply(peer, &head, 483, "Too Many Hops", None, "", b"");
            return;
        }
        let branch = param(&req.vias[0], "branch").unwrap_or_default();
        // Retransmitted non-INVITE requests get the answer they got the first time.
        if req.method != "INVITE" && req.method != "ACK" {
            if let Some((bytes, _)) = self.answered.get(&(branch.clone(), req.method.clone())) {
                let data = bytes.clone();
                self.send(peer, data);
                return;
            }
        }
        match req.method.as_str() {
            "INVITE" => self.on_invite(now, peer, local, req, branch),
            "ACK" => self.on_ack(&req, &branch),
            "CANCEL" => self.on_cancel(now, peer, &req, &branch),
            "BYE" => self.on_bye(now, peer, &req, &branch),
            "OPTIONS" => {
                let extra = format!("Allow: {ALLOW}\r\nAccept: application/sdp\r\n");
                self.reply_cached(now, peer, &head, &branch, 200, "OK", &extra);
            }
            "INFO" => {
                let to_tag = param(&req.to, "tag");
                match to_tag
                    .as_deref()
                    .and_then(|_| self.dialogs.get(&req.call_id))
                {
                    Some(_) => {
                        self.reply_cached(now, peer, &head, &branch, 200, "OK", "");
                        self.out.push_back(Output::Event(Event::Info {
                            call_id: req.call_id.clone(),
                            content_type: req.content_type.clone().unwrap_or_default(),
                            body: req.body.clone(),
                        }));
                    }
                    None => self.reply_481(now, peer, &head, &branch),
                }
            }
            "MESSAGE" => self.on_message(now, peer, &req, &branch),
            "REGISTER" | "SUBSCRIBE" | "NOTIFY" | "PUBLISH" | "REFER" | "UPDATE" | "PRACK" => {
                let extra = format!("Allow: {ALLOW}\r\n");
                self.reply_cached(now, peer, &head, &branch, 405, "Method Not Allowed", &extra);
            }
            _ => self.reply_cached(now, peer, &head, &branch, 501, "Not Implemented", ""),
        }
    }

    fn on_invite(
        &mut self,
        now: Instant,
        peer: Peer,
        local: SocketAddr,
        req: Request,
        branch: String,
    ) {
        let head = Head::of(&req);
        if let Some(d) = self.dialogs.get_mut(&req.call_id) {
            if d.invite_branch == branch {
                // Retransmission: repeat our latest answer (100 Trying when we have none yet).
                let data = if d.last_response.is_empty() {
                    build_response(
                        &head,
                        peer,
                        100,
                        "Trying",
                        None,
                        "",
                        b"",
                        &self.cfg.server_name,
                    )
                } else {
                    d.last_response.clone()
                };
                self.send(peer, data);
            } else if param(&req.to, "tag").as_deref() == Some(d.local_tag.as_str())
                && matches!(d.state, State::Confirmed)
                && req.cseq > d.invite.cseq
            {
                // Re-INVITE (session refresh, hold): the media session stays as it is.
                let contact = contact_header(d.local, peer.transport);
                let extra = format!("{contact}Allow: {ALLOW}\r\nContent-Type: application/sdp\r\n");
                let sdp = d.local_sdp.clone();
                let tag = d.local_tag.clone();
                let data = build_response(
                    &head,
                    peer,
                    200,
                    "OK",
                    Some(&tag),
                    &extra,
                    sdp.as_bytes(),
                    &self.cfg.server_name,
                );
                self.send(peer, data);
            } else {
                self.reply(peer, &head, 482, "Loop Detected", None, "", b"");
            }
            return;
        }
        if param(&req.to, "tag").is_some() {
            self.reply(
                peer,
                &head,
                481,
                "Call/Transaction Does Not Exist",
                None,
                "",
                b"",
            );
            return;
        }
        let sdp_ok = req
            .content_type
            .as_deref()
            .map(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
            .unwrap_or(false);
        if !sdp_ok || req.body.is_empty() {
            // Offerless INVITEs (RFC 3264 late offer) are not supported: say so plainly.
            let extra = "Warning: 399 switchboard \"an SDP offer is required in the INVITE\"\r\nAccept: application/sdp\r\n";
            self.reply(
                peer,
                &head,
                488,
                "Not Acceptable Here",
                Some(&new_tag()),
                extra,
                b"",
            );
            return;
        }
        let local_tag = new_tag();
        let trying = build_response(
            &head,
            peer,
            100,
            "Trying",
            None,
            "",
            b"",
            &self.cfg.server_name,
        );
        self.send(peer, trying);
        let mut route_set = req.record_routes.clone();
        route_set.retain(|r| !r.trim().is_empty());
        let remote_target = req
            .contact
            .as_deref()
            .map(|c| uri_of(c).to_string())
            .unwrap_or_else(|| uri_of(&req.from).to_string());
        let invite = IncomingInvite {
            call_id: req.call_id.clone(),
            from: req.from.clone(),
            to: req.to.clone(),
            request_uri: req.uri.clone(),
            caller: user_of(uri_of(&req.from)).to_string(),
            called: user_of(&req.uri).to_string(),
            peer,
            local,
            sdp: req.body,
        };
        self.dialogs.insert(
            req.call_id.clone(),
            Dialog {
                peer,
                local,
                state: State::Proceeding,
                invite: head,
                invite_branch: branch,
                local_tag,
                remote_target,
                route_set,
                last_response: Vec::new(),
                local_sdp: String::new(),
                retransmit_interval: T1,
                local_cseq: 0,
                bye: None,
                bye_deadline: None,
            },
        );
        let _ = now;
        self.out
            .push_back(Output::Event(Event::Invite(Box::new(invite))));
    }

    fn on_ack(&mut self, req: &Request, branch: &str) {
        let Some(d) = self.dialogs.get_mut(&req.call_id) else {
            return;
        };
        match d.state {
            State::Answered => {
                d.state = State::Confirmed;
                self.out.push_back(Output::Event(Event::Acked {
                    call_id: req.call_id.clone(),
                }));
            }
            State::Rejected if d.invite_branch == branch || !branch.is_empty() => {
                self.dialogs.remove(&req.call_id);
            }
            _ => {}
        }
    }

    fn on_cancel(&mut self, now: Instant, peer: Peer, req: &Request, branch: &str) {
        let head = Head::of(req);
        let matches = self
            .dialogs
            .get(&req.call_id)
            .is_some_and(|d| d.invite_branch == branch && d.state == State::Proceeding);
        if !matches {
            self.reply_481(now, peer, &head, branch);
            return;
        }
        self.reply_cached(now, peer, &head, branch, 200, "OK", "");
        self.final_response(now, &req.call_id, 487, "Request Terminated", "", "");
        self.out.push_back(Output::Event(Event::Cancelled {
            call_id: req.call_id.clone(),
        }));
    }

    /// 481: the request names a dialog or transaction we do not have.
    fn reply_481(&mut self, now: Instant, peer: Peer, head: &Head, branch: &str) {
        self.reply_cached(
            now,
            peer,
            head,
            branch,
            481,
            "Call/Transaction Does Not Exist",
            "",
        );
    }

    fn on_bye(&mut self, now: Instant, peer: Peer, req: &Request, branch: &str) {
        let head = Head::of(req);
        let known = self.dialogs.get(&req.call_id).is_some_and(|d| {
            param(&req.to, "tag").as_deref() == Some(d.local_tag.as_str())
                || param(&req.from, "tag").as_deref() == Some(d.local_tag.as_str())
        });
        if !known {
            self.reply_481(now, peer, &head, branch);
            return;
        }
        self.reply_cached(now, peer, &head, branch, 200, "OK", "");
        if let Some(d) = self.dialogs.get(&req.call_id) {
            if d.state == State::Proceeding {
                // BYE on an early dialog: the INVITE still needs its final answer.
                self.final_response(now, &req.call_id, 487, "Request Terminated", "", "");
            }
        }
        self.dialogs.remove(&req.call_id);
        self.out.push_back(Output::Event(Event::Bye {
            call_id: req.call_id.clone(),
        }));
    }

    fn on_message(&mut self, now: Instant, peer: Peer, req: &Request, branch: &str) {
        let head = Head::of(req);
        if !self.cfg.message_sources.allows(peer.addr.ip()) {
            self.reply_cached(
                now,
                peer,
                &head,
                branch,
                403,
                "Forbidden",
                "Warning: 399 switchboard \"MESSAGE is accepted only from SMS trunks\"\r\n",
            );
            return;
        }
        let ct = req
            .content_type
            .as_deref()
            .unwrap_or("text/plain")
            .to_ascii_lowercase();
        if !ct.starts_with("text/plain") {
            let extra = "Accept: text/plain\r\n";
            self.reply_cached(
                now,
                peer,
                &head,
                branch,
                415,
                "Unsupported Media Type",
                extra,
            );
            return;
        }
        let Ok(body) = String::from_utf8(req.body.clone()) else {
            self.reply_cached(
                now,
                peer,
                &head,
                branch,
                400,
                "Bad Request",
                "Warning: 399 switchboard \"body is not UTF-8\"\r\n",
            );
            return;
        };
        self.reply_cached(now, peer, &head, branch, 200, "OK", "");
        self.out.push_back(Output::Event(Event::Message {
            from: user_of(uri_of(&req.from)).to_string(),
            to: user_of(&req.uri).to_string(),
            body,
            call_id: req.call_id.clone(),
            peer,
        }));
    }

    fn on_response(&mut self, resp: Response) {
        if resp.cseq_method == "MESSAGE" && resp.status >= 200 {
            let branch = resp.branch.clone().unwrap_or_default();
            if let Some(tx) = self.messages.remove(&branch) {
                self.out.push_back(Output::Event(Event::MessageResult {
                    id: tx.id,
                    status: resp.status,
                    reason: String::new(),
                }));
            }
            return;
        }
        if resp.cseq_method != "BYE" || resp.status < 200 {
            return;
        }
        let ours = self
            .dialogs
            .get(&resp.call_id)
            .is_some_and(|d| d.state == State::Ending && d.local_cseq == resp.cseq);
        if ours {
            self.dialogs.remove(&resp.call_id);
            self.out.push_back(Output::Event(Event::Ended {
                call_id: resp.call_id,
                reason: EndReason::HungUp,
            }));
        }
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::SendMessage {
                id,
                peer,
                local,
                request_uri,
                from_user,
                body,
            } => {
                let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
                let data = format!(
                    "MESSAGE {request_uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                     From: <sip:{from_user}@{}>;tag={}\r\nTo: <{request_uri}>\r\nCall-ID: {:016x}@switchboard\r\nCSeq: 1 MESSAGE\r\n\
                     User-Agent: {}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
                    peer.transport.as_str(),
                    host_port(local),
                    host_port(local),
                    new_tag(),
                    rand::random::<u64>(),
                    self.cfg.server_name,
                    body.len()
                )
                .into_bytes();
                self.send(peer, data.clone());
                if peer.transport == Transport::Udp {
                    self.schedule(now + T1, &branch, TimerKind::MessageRetransmit);
                }
                self.schedule(now + TIMER_64T1, &branch, TimerKind::MessageTimeout);
                self.messages.insert(
                    branch,
                    MessageTx {
                        id,
                        peer,
                        data,
                        interval: T1,
                    },
                );
            }
            Command::Answer { call_id, sdp } => {
                let Some(d) = self.dialogs.get_mut(&call_id) else {
                    return;
                };
                if d.state != State::Proceeding {
                    return;
                }
                d.local_sdp = sdp.clone();
                let extra = format!(
                    "{}Allow: {ALLOW}\r\nContent-Type: application/sdp\r\n",
                    contact_header(d.local, d.peer.transport)
                );
                self.final_response(now, &call_id, 200, "OK", &extra, &sdp);
            }
            Command::Reject {
                call_id,
                status,
                reason,
                retry_after,
            } => {
                let extra = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                let is_proceeding = self
                    .dialogs
                    .get(&call_id)
                    .is_some_and(|d| d.state == State::Proceeding);
                if is_proceeding {
                    self.final_response(now, &call_id, status.clamp(300, 699), &reason, &extra, "");
                }
            }
            Command::Hangup { call_id } => self.hangup(now, &call_id),
        }
    }

    fn hangup(&mut self, now: Instant, call_id: &str) {
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return;
        };
        match d.state {
            State::Proceeding => {
                self.final_response(now, call_id, 480, "Temporarily Unavailable", "", "");
            }
            State::Answered | State::Confirmed => {
                d.local_cseq += 1;
                d.state = State::Ending;
                let bye = build_bye(d, &self.cfg.server_name);
                d.bye = Some(bye.clone());
                let peer = d.peer;
                d.bye_deadline = Some(now + TIMER_64T1);
                d.retransmit_interval = T1;
                self.send(peer, bye);
                if peer.transport == Transport::Udp {
                    self.schedule(now + T1, call_id, TimerKind::ByeRetransmit);
                }
                self.schedule(now + TIMER_64T1, call_id, TimerKind::ByeTimeout);
            }
            State::Rejected | State::Ending => {}
        }
    }

    /// Send a final response to the INVITE and arm its retransmission (UDP) and ACK timeout.
    fn final_response(
        &mut self,
        now: Instant,
        call_id: &str,
        status: u16,
        reason: &str,
        extra: &str,
        body: &str,
    ) {
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return;
        };
        let tag = d.local_tag.clone();
        let data = build_response(
            &d.invite,
            d.peer,
            status,
            reason,
            Some(&tag),
            extra,
            body.as_bytes(),
            &self.cfg.server_name,
        );
        d.last_response = data.clone();
        d.state = if status < 300 {
            State::Answered
        } else {
            State::Rejected
        };
        d.retransmit_interval = T1;
        let peer = d.peer;
        self.send(peer, data);
        if peer.transport == Transport::Udp {
            self.schedule(now + T1, call_id, TimerKind::Retransmit);
        }
        self.schedule(now + TIMER_64T1, call_id, TimerKind::AckTimeout);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_purge.is_some_and(|t| t <= now) {
            self.answered.retain(|_, (_, expiry)| *expiry > now);
            self.next_purge = (!self.answered.is_empty()).then(|| now + Duration::from_secs(5));
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (call_id, kind) = entry.remove();
            self.fire(now, &call_id, kind);
        }
    }

    fn fire(&mut self, now: Instant, call_id: &str, kind: TimerKind) {
        match kind {
            TimerKind::MessageRetransmit => {
                if let Some(tx) = self.messages.get_mut(call_id) {
                    tx.interval = (tx.interval * 2).min(T2);
                    let (peer, data, next) = (tx.peer, tx.data.clone(), now + tx.interval);
                    self.send(peer, data);
                    self.schedule(next, call_id, TimerKind::MessageRetransmit);
                }
                return;
            }
            TimerKind::MessageTimeout => {
                if let Some(tx) = self.messages.remove(call_id) {
                    self.out.push_back(Output::Event(Event::MessageResult {
                        id: tx.id,
                        status: 408,
                        reason: "no answer from the trunk".into(),
                    }));
                }
                return;
            }
            _ => {}
        }
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return;
        };
        match kind {
            TimerKind::Retransmit if matches!(d.state, State::Answered | State::Rejected) => {
                let (peer, data) = (d.peer, d.last_response.clone());
                d.retransmit_interval = (d.retransmit_interval * 2).min(T2);
                let next = now + d.retransmit_interval;
                self.send(peer, data);
                self.schedule(next, call_id, TimerKind::Retransmit);
            }
            TimerKind::AckTimeout if d.state == State::Answered => {
                // RFC 3261 §13.3.1.4: no ACK for our 2xx, so end the dialog with a BYE.
                d.state = State::Confirmed;
                self.hangup(now, call_id);
                self.out.push_back(Output::Event(Event::Ended {
                    call_id: call_id.to_string(),
                    reason: EndReason::AckTimeout,
                }));
            }
            TimerKind::AckTimeout if d.state == State::Rejected => {
                self.dialogs.remove(call_id);
            }
            TimerKind::ByeRetransmit if d.state == State::Ending => {
                if let Some(data) = d.bye.clone() {
                    let peer = d.peer;
                    d.retransmit_interval = (d.retransmit_interval * 2).min(T2);
                    let next = now + d.retransmit_interval;
                    self.send(peer, data);
                    self.schedule(next, call_id, TimerKind::ByeRetransmit);
                }
            }
            TimerKind::ByeTimeout if d.state == State::Ending => {
                self.dialogs.remove(call_id);
                self.out.push_back(Output::Event(Event::Ended {
                    call_id: call_id.to_string(),
                    reason: EndReason::HungUp,
                }));
            }
            _ => {}
        }
    }

    fn schedule(&mut self, at: Instant, call_id: &str, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers
            .insert((at, self.timer_seq), (call_id.to_string(), kind));
    }

    fn send(&mut self, to: Peer, data: Vec<u8>) {
        self.out.push_back(Output::Transmit(Transmit { to, data }));
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        peer: Peer,
        head: &Head,
        status: u16,
        reason: &str,
        tag: Option<&str>,
        extra: &str,
        body: &[u8],
    ) {
        let data = build_response(
            head,
            peer,
            status,
            reason,
            tag,
            extra,
            body,
            &self.cfg.server_name,
        );
        self.send(peer, data);
    }

    /// Reply to a non-INVITE request and remember the answer for its retransmissions.
    #[allow(clippy::too_many_arguments)]
    fn reply_cached(
        &mut self,
        now: Instant,
        peer: Peer,
        head: &Head,
        branch: &str,
        status: u16,
        reason: &str,
        extra: &str,
    ) {
        let tag = if param(&head.to, "tag").is_none() {
            Some(new_tag())
        } else {
            None
        };
        let data = build_response(
            head,
            peer,
            status,
            reason,
            tag.as_deref(),
            extra,
            b"",
            &self.cfg.server_name,
        );
        if !branch.is_empty() && peer.transport == Transport::Udp {
            self.answered.insert(
                (branch.to_string(), head.cseq_method.clone()),
                (data.clone(), now + TIMER_64T1),
            );
            self.next_purge.get_or_insert(now + Duration::from_secs(5));
        }
        self.send(peer, data);
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(120)
        .collect()
}

pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn contact_header(local: SocketAddr, transport: Transport) -> String {
    let t = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
    };
    format!("Contact: <sip:switchboard@{}{t}>\r\n", host_port(local))
}

fn host_port(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// RFC 3581: record where the request really came from in the top Via.
fn stamp_via(via: &str, peer: Peer) -> String {
    let mut v = String::with_capacity(via.len() + 32);
    for (i, p) in via.split(';').enumerate() {
        if i > 0 {
            v.push(';');
        }
        let key = p.split('=').next().unwrap_or("").trim();
        if i > 0 && key.eq_ignore_ascii_case("rport") {
            v.push_str(&format!("rport={}", peer.addr.port()));
        } else if i > 0 && key.eq_ignore_ascii_case("received") {
            v.push_str(&format!("received={}", peer.addr.ip()));
        } else {
            v.push_str(p);
        }
    }
    if !has_param(via, "received") {
        v.push_str(&format!(";received={}", peer.addr.ip()));
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn build_response(
    head: &Head,
    peer: Peer,
    status: u16,
    reason: &str,
    tag: Option<&str>,
    extra: &str,
    body: &[u8],
    server: &str,
) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {status} {reason}\r\n");
    for (i, via) in head.vias.iter().enumerate() {
        if i == 0 {
            s.push_str(&format!("Via: {}\r\n", stamp_via(via, peer)));
        } else {
            s.push_str(&format!("Via: {via}\r\n"));
        }
    }
    s.push_str(&format!("From: {}\r\n", head.from));
    match tag {
        Some(t) if status > 100 && param(&head.to, "tag").is_none() => {
            s.push_str(&format!("To: {};tag={t}\r\n", head.to))
        }
        _ => s.push_str(&format!("To: {}\r\n", head.to)),
    }
    s.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {} {}\r\nServer: {server}\r\n{extra}Content-Length: {}\r\n\r\n",
        head.call_id,
        head.cseq,
        head.cseq_method,
        body.len()
    ));
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

fn build_bye(d: &Dialog, server: &str) -> Vec<u8> {
    let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
    let mut s = format!(
        "BYE {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n",
        d.remote_target,
        d.peer.transport.as_str(),
        host_port(d.local)
    );
    // The UAS sees the route set in Record-Route order (RFC 3261 §12.1.1).
    for r in &d.route_set {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    let to_with_tag = if param(&d.invite.to, "tag").is_some() {
        d.invite.to.clone()
    } else {
        format!("{};tag={}", d.invite.to, d.local_tag)
    };
    s.push_str(&format!(
        "From: {to_with_tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nUser-Agent: {server}\r\nContent-Length: 0\r\n\r\n",
        d.invite.from, d.invite.call_id, d.local_cseq
    ));
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> SipCore {
        SipCore::new(CoreConfig {
            max_message_bytes: 65535,
            server_name: "switchboard-test".into(),
            acl: Acl::parse(&["127.0.0.0/8".to_string()]).unwrap(),
            message_sources: Acl::parse(&["127.0.0.1".to_string()]).unwrap(),
        })
    }

    fn peer() -> Peer {
        Peer {
            addr: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    fn invite(call_id: &str, branch: &str) -> String {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n\
             From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:+1555@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    fn drain(c: &mut SipCore) -> (Vec<String>, Vec<Event>) {
        let (mut tx, mut ev) = (Vec::new(), Vec::new());
        while let Some(o) = c.poll_output() {
            match o {
                Output::Transmit(t) => tx.push(String::from_utf8(t.data).unwrap()),
                Output::Event(e) => ev.push(e),
            }
        }
        (tx, ev)
    }

    fn to_tag(resp: &str) -> String {
        let to = resp.lines().find(|l| l.starts_with("To:")).unwrap();
        param(to, "tag").unwrap()
    }

    #[test]
    fn invite_answer_ack_bye_from_caller() {
        let mut c = core();
        let t0 = Instant::now();
        c.handle_message(t0, peer(), local(), invite("c1", "z9hG4bK1").as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 100 Trying"));
        assert!(tx[0].contains("rport=5070;received=127.0.0.1"), "{}", tx[0]);
        let Event::Invite(inv) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(inv.caller, "+1555");
        assert_eq!(inv.called, "ivr");

        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c1".into(),
                sdp: "v=0\r\n".into(),
            },
        );
        let (tx, _) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200 OK"));
        assert!(tx[0].contains("Contact: <sip:switchboard@127.0.0.1:5060>"));
        let tag = to_tag(&tx[0]);

        // 2xx is retransmitted until the ACK arrives.
        c.handle_timeout(t0 + T1);
        let (tx, _) = drain(&mut c);
        assert_eq!(tx.len(), 1);
        assert!(tx[0].starts_with("SIP/2.0 200 OK"));

        let ack = format!("ACK sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2\r\n\
            From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
        c.handle_message(t0 + T1, peer(), local(), ack.as_bytes());
        let (_, ev) = drain(&mut c);
        assert_eq!(
            ev,
            vec![Event::Acked {
                call_id: "c1".into()
            }]
        );
        c.handle_timeout(t0 + T1 * 3);
        assert!(drain(&mut c).0.is_empty(), "no retransmission after ACK");

        let bye = format!("BYE sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK3\r\n\
            From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
        c.handle_message(t0 + T1, peer(), local(), bye.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200 OK"));
        assert_eq!(
            ev,
            vec![Event::Bye {
                call_id: "c1".into()
            }]
        );
        assert_eq!(c.dialog_count(), 0);
        // A retransmitted BYE gets the same 200, not a 481.
        c.handle_message(t0 + T1 * 2, peer(), local(), bye.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200 OK"));
        assert!(ev.is_empty());
    }

    #[test]
    fn our_bye_is_retransmitted_until_answered() {
        let mut c = core();
        let t0 = Instant::now();
        c.handle_message(t0, peer(), local(), invite("c2", "z9hG4bKa").as_bytes());
        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c2".into(),
                sdp: String::new(),
            },
        );
        drain(&mut c);
        c.handle_command(
            t0,
            Command::Hangup {
                call_id: "c2".into(),
            },
        );
        let (tx, _) = drain(&mut c);
        assert!(
            tx[0].starts_with("BYE sip:+1555@127.0.0.1:5070 SIP/2.0"),
            "{}",
            tx[0]
        );
        assert!(tx[0].contains("To: <sip:+1555@127.0.0.1>;tag=a1"));
        c.handle_timeout(t0 + T1);
        let (tx, _) = drain(&mut c);
        assert!(tx.iter().any(|t| t.starts_with("BYE ")), "{tx:?}");
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nFrom: <sip:ivr@127.0.0.1>;tag=x\r\n\
                  To: <sip:+1555@127.0.0.1>;tag=a1\r\nCall-ID: c2\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        c.handle_message(t0 + T1, peer(), local(), ok.as_bytes());
        let (_, ev) = drain(&mut c);
        assert_eq!(
            ev,
            vec![Event::Ended {
                call_id: "c2".into(),
                reason: EndReason::HungUp
            }]
        );
        assert_eq!(c.dialog_count(), 0);
    }

    #[test]
    fn cancel_before_answer_gets_487() {
        let mut c = core();
        let t0 = Instant::now();
        c.handle_message(t0, peer(), local(), invite("c3", "z9hG4bKc").as_bytes());
        drain(&mut c);
        let cancel = "CANCEL sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc\r\n\
            From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: c3\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
        c.handle_message(t0, peer(), local(), cancel.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200 OK") && tx[0].contains("CSeq: 1 CANCEL"));
        assert!(
            tx[1].starts_with("SIP/2.0 487 Request Terminated") && tx[1].contains("CSeq: 1 INVITE")
        );
        assert_eq!(
            ev,
            vec![Event::Cancelled {
                call_id: "c3".into()
            }]
        );
        // Answering now is too late and sends nothing.
        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c3".into(),
                sdp: String::new(),
            },
        );
        assert!(drain(&mut c).0.is_empty());
    }

    #[test]
    fn retransmitted_invite_is_absorbed() {
        let mut c = core();
        let t0 = Instant::now();
        let inv = invite("c4", "z9hG4bKd");
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert_eq!(ev.len(), 1, "one call, not two");
        assert_eq!(tx.len(), 2);
        assert!(tx[1].starts_with("SIP/2.0 100 Trying"));
    }

    #[test]
    fn garbage_gets_400_or_is_dropped_and_acl_refuses() {
        let mut c = core();
        let t0 = Instant::now();
        let bad = "INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKq\r\nFrom: <sip:a@b>;tag=1\r\n\
                   To: <sip:x@y>\r\nCall-ID: q\r\nCSeq: banana\r\nContent-Length: 0\r\n\r\n";
        c.handle_message(t0, peer(), local(), bad.as_bytes());
        let (tx, _) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 400 Bad Request"), "{tx:?}");
        c.handle_message(t0, peer(), local(), b"\xff\xfe not sip at all");
        let (tx, ev) = drain(&mut c);
        assert!(tx.is_empty());
        assert!(matches!(ev[0], Event::Refused { status: 0, .. }));

        let stranger = Peer {
            addr: "192.0.2.9:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        c.handle_message(t0, stranger, local(), invite("c5", "z9hG4bKe").as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 403 Forbidden"));
        assert!(matches!(ev[0], Event::Refused { status: 403, .. }));
        assert_eq!(c.dialog_count(), 0);
    }

    #[test]
    fn unanswered_2xx_times_out_with_bye() {
        let mut c = core();
        let t0 = Instant::now();
        c.handle_message(t0, peer(), local(), invite("c6", "z9hG4bKf").as_bytes());
        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c6".into(),
                sdp: String::new(),
            },
        );
        drain(&mut c);
        let mut now = t0;
        let mut retransmits = 0;
        while now < t0 + TIMER_64T1 + Duration::from_secs(1) {
            now += Duration::from_millis(250);
            c.handle_timeout(now);
            let (tx, ev) = drain(&mut c);
            retransmits += tx.iter().filter(|t| t.starts_with("SIP/2.0 200")).count();
            if ev.contains(&Event::Ended {
                call_id: "c6".into(),
                reason: EndReason::AckTimeout,
            }) {
                assert!(tx.iter().any(|t| t.starts_with("BYE ")));
                assert!((7..=12).contains(&retransmits), "{retransmits}");
                return;
            }
        }
        panic!("no ACK timeout");
    }

    #[test]
    fn inbound_message_is_answered_and_reported() {
        let mut c = core();
        let t0 = Instant::now();
        let msg = |ct: &str, branch: &str| {
            format!(
                "MESSAGE sip:+15550199999@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
                 From: <sip:+15550100000@127.0.0.1>;tag=m1\r\nTo: <sip:+15550199999@127.0.0.1>\r\nCall-ID: msg-{branch}\r\n\
                 CSeq: 1 MESSAGE\r\nContent-Type: {ct}\r\nContent-Length: 5\r\n\r\nhello"
            )
        };
        c.handle_message(
            t0,
            peer(),
            local(),
            msg("text/plain", "z9hG4bKm1").as_bytes(),
        );
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200 OK"), "{tx:?}");
        assert!(
            matches!(&ev[0], Event::Message { from, to, body, .. } if from == "+15550100000" && to == "+15550199999" && body == "hello")
        );
        c.handle_message(
            t0,
            peer(),
            local(),
            msg("application/im-iscomposing+xml", "z9hG4bKm2").as_bytes(),
        );
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 415"), "{tx:?}");
        assert!(ev.is_empty());
        // An admitted source that is not an SMS trunk cannot make us send paid replies.
        let other = Peer {
            addr: "127.0.0.2:5070".parse().unwrap(),
            transport: Transport::Udp,
        };
        c.handle_message(
            t0,
            other,
            local(),
            msg("text/plain", "z9hG4bKm3").as_bytes(),
        );
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 403"), "{tx:?}");
        assert!(tx[0].contains("only from SMS trunks"), "{tx:?}");
        assert!(ev.is_empty());
    }

    #[test]
    fn outbound_message_retransmits_until_answered_or_times_out() {
        let mut c = core();
        let t0 = Instant::now();
        let trunk = Peer {
            addr: "127.0.0.1:5080".parse().unwrap(),
            transport: Transport::Udp,
        };
        let send = |id| Command::SendMessage {
            id,
            peer: trunk,
            local: local(),
            request_uri: "sip:+15550100000@127.0.0.1:5080".into(),
            from_user: "+15550199999".into(),
            body: "Your code is 1234".into(),
        };
        c.handle_command(t0, send(7));
        let (tx, _) = drain(&mut c);
        assert!(tx[0].starts_with("MESSAGE sip:+15550100000@127.0.0.1:5080 SIP/2.0"));
        assert!(tx[0].ends_with("\r\n\r\nYour code is 1234"));
        let branch = param(
            tx[0].lines().find(|l| l.starts_with("Via:")).unwrap(),
            "branch",
        )
        .unwrap();
        c.handle_timeout(t0 + T1);
        assert_eq!(drain(&mut c).0.len(), 1, "retransmitted");
        let ok = format!(
            "SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        c.handle_message(t0 + T1, trunk, local(), ok.as_bytes());
        let (_, ev) = drain(&mut c);
        assert_eq!(
            ev,
            vec![Event::MessageResult {
                id: 7,
                status: 202,
                reason: String::new()
            }]
        );

        c.handle_command(t0, send(8));
        drain(&mut c);
        c.handle_timeout(t0 + TIMER_64T1);
        let (_, ev) = drain(&mut c);
        assert!(
            ev.contains(&Event::MessageResult {
                id: 8,
                status: 408,
                reason: "no answer from the trunk".into()
            }),
            "{ev:?}"
        );
    }
}

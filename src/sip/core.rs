//! Sans-IO SIP user-agent server: the transactions and dialogs that an IVR gateway needs
//! (RFC 3261 §13, §15, §17 for the server side of INVITE and the client side of our own BYE).
//!
//! It is fed datagrams/stream messages, commands from calls and the clock, and it returns
//! messages to send and events for the call layer. No sockets, no tokio: the driver in
//! `endpoint.rs` owns the I/O, and the tests here drive it directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::acl::{Acl, AclError};
use super::defence::{Ban, Defence, DefenceConfig, Verdict};
use super::message::{
    self, has_param, param, uri_of, user_of, MessageError, Request, Response, Salvage, SipMessage,
};

/// RFC 3261 timer base values.
pub(crate) const T1: Duration = Duration::from_millis(500);
pub(crate) const T2: Duration = Duration::from_secs(4);
const TIMER_64T1: Duration = Duration::from_secs(32);

/// How a SIP message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A TCP connection (messages framed by Content-Length).
    Tcp,
}

impl Transport {
    /// The transport's name in a Via header (`UDP`, `TCP`).
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
    /// The peer's address.
    pub addr: SocketAddr,
    /// How we reached each other.
    pub transport: Transport,
}

/// What the core needs to know (from `[sip]`, see [`CoreConfig::from_sip`]).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Largest message accepted (`sip.max_message_bytes`); larger ones are refused.
    pub max_message_bytes: usize,
    /// Our `Server`/`User-Agent` header value.
    pub server_name: String,
    /// Sources admitted at all (`sip.acl`); others are refused before parsing.
    pub acl: Acl,
    /// Sources whose MESSAGE requests are taken as inbound SMS (the SMS trunks). A MESSAGE
    /// turns into paid outbound replies, so any other admitted source gets 403.
    pub message_sources: Acl,
    /// Per-source rate limits, bans and scanner filter (`[sip.defence]`).
    pub defence: DefenceConfig,
    /// Connection limits the driver applies to SIP over TCP.
    pub tcp: TcpLimits,
}

/// `[sip]` settings for TCP connections (applied by the endpoint, which owns the sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// A message must be complete this long after its first byte arrived.
    pub header_timeout: Duration,
    /// A connection that carries nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections per source IP; more are closed at once.
    pub max_per_ip: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_per_ip: 32,
        }
    }
}

impl CoreConfig {
    /// The SIP stack's settings from `[sip]`; fails on an ACL entry that is not an address.
    /// `message_sources` are the SMS trunks' addresses (resolved by the caller).
    pub fn from_sip(
        sip: &crate::config::SipConfig,
        server_name: String,
        message_sources: Acl,
    ) -> Result<Self, AclError> {
        // The exempt list is checked here so that the core can take it as valid.
        Defence::new(sip.defence.clone())?;
        Ok(CoreConfig {
            max_message_bytes: sip.max_message_bytes,
            server_name,
            acl: Acl::parse(&sip.acl)?,
            message_sources,
            defence: sip.defence.clone(),
            tcp: TcpLimits {
                header_timeout: Duration::from_secs(sip.tcp_header_timeout_secs.max(1)),
                idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_secs.max(1)),
                max_per_ip: sip.tcp_max_connections_per_ip,
            },
        })
    }
}

/// A new INVITE, already answered with 100 Trying; the application answers or rejects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingInvite {
    /// The dialog's Call-ID (the key of later commands and events).
    pub call_id: String,
    /// The From header as received.
    pub from: String,
    /// The To header as received.
    pub to: String,
    /// The Request-URI.
    pub request_uri: String,
    /// User part of the From URI: the caller's number.
    pub caller: String,
    /// User part of the Request-URI: the number that was dialled.
    pub called: String,
    /// Where the INVITE came from.
    pub peer: Peer,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// The SDP offer (empty when the INVITE had none).
    pub sdp: Vec<u8>,
}

/// Why a dialog ended without a BYE from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEnd {
    /// We sent BYE and it was answered (or timed out).
    HungUp,
    /// The 2xx we sent was never acknowledged.
    AckTimeout,
}

/// What the core reports to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new call (answer it with [`Command::Answer`] or [`Command::Reject`]).
    Invite(Box<IncomingInvite>),
    /// An instant message (RFC 3428) outside any dialog, already answered with 200.
    Message {
        /// The From URI's user part (the sender).
        from: String,
        /// The Request-URI's user part (our number).
        to: String,
        /// The text.
        body: String,
        /// The request's Call-ID.
        call_id: String,
        /// The trunk it came from.
        peer: Peer,
    },
    /// The final answer to a MESSAGE we sent (`status` 408 when nobody answered).
    MessageResult {
        /// The `id` of the [`Command::SendMessage`].
        id: u64,
        /// The final status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The caller cancelled the INVITE before it was answered.
    Cancelled {
        /// The dialog's Call-ID.
        call_id: String,
    },
    /// The ACK to our 2xx arrived: the dialog is confirmed.
    Acked {
        /// The dialog's Call-ID.
        call_id: String,
    },
    /// The caller hung up (BYE, already answered).
    Bye {
        /// The dialog's Call-ID.
        call_id: String,
    },
    /// An INFO in the dialog (e.g. DTMF as `application/dtmf-relay`), already answered.
    Info {
        /// The dialog's Call-ID.
        call_id: String,
        /// Its Content-Type.
        content_type: String,
        /// Its body.
        body: Vec<u8>,
    },
    /// The dialog ended on our side (see [`DialogEnd`]).
    Ended {
        /// The dialog's Call-ID.
        call_id: String,
        /// Why it ended.
        reason: DialogEnd,
    },
    /// A request we refused at the door (bad syntax, ACL): logged by the driver.
    Refused {
        /// Who sent it.
        peer: Peer,
        /// The status we answered with.
        status: u16,
        /// Why.
        reason: String,
    },
}

/// What the application asks the core to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a text/plain MESSAGE to `to` at `peer` (a configured trunk), from our `local` address.
    SendMessage {
        /// Chosen by the application; the [`Event::MessageResult`] carries it back.
        id: u64,
        /// The trunk to send to.
        peer: Peer,
        /// Our address to send from.
        local: SocketAddr,
        /// The Request-URI (`sip:user@trunk`).
        request_uri: String,
        /// The From URI's user part.
        from_user: String,
        /// The text.
        body: String,
    },
    /// Answer an INVITE with 200 OK and our SDP.
    Answer {
        /// The dialog's Call-ID.
        call_id: String,
        /// Our SDP answer.
        sdp: String,
    },
    /// Refuse an INVITE with a final error response.
    Reject {
        /// The dialog's Call-ID.
        call_id: String,
        /// The status code (e.g. 486, 503).
        status: u16,
        /// The reason phrase.
        reason: String,
        /// A `Retry-After` header, in seconds.
        retry_after: Option<u32>,
    },
    /// End the call: send BYE (or, before the answer, refuse the INVITE).
    Hangup {
        /// The dialog's Call-ID.
        call_id: String,
    },
}

/// Bytes to send to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send them.
    pub to: Peer,
    /// A whole SIP message.
    pub data: Vec<u8>,
}

/// What the driver must do next, from [`SipCore::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes.
    Transmit(Transmit),
    /// Hand an event to the application.
    Event(Event),
    /// A source has just been banned (the driver logs it; later traffic from it is dropped
    /// without a word).
    Banned(Ban),
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

/// The sans-IO SIP user agent server: fed datagrams, commands and time; returns what to send
/// and what happened. One instance holds every dialog.
pub struct SipCore {
    cfg: CoreConfig,
    defence: Defence,
    dialogs: HashMap<String, Dialog>,
    /// Responses to non-INVITE requests, kept for 64*T1 so retransmissions get the same answer.
    /// Keyed by branch, method and peer: branches are only unique per sender (RFC 3261
    /// §17.2.3 matches on sent-by too), and another sender's answer must never be replayed.
    answered: HashMap<(String, String, Peer), (Vec<u8>, Instant)>,
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
/// Methods we recognise: those in ALLOW, and those we answer 405 (RFC 3261 §8.2.1).
const KNOWN_METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "INFO",
    "MESSAGE",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "REFER",
    "UPDATE",
    "PRACK",
];

impl SipCore {
    /// A core with no dialogs.
    pub fn new(cfg: CoreConfig) -> Self {
        SipCore {
            defence: Defence::lenient(cfg.defence.clone()),
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

    /// Dialogs in progress.
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// Sources banned now: the driver refuses their TCP connections on accept too.
    pub fn banned_sources(&self, now: Instant) -> std::collections::HashSet<std::net::IpAddr> {
        self.defence.banned(now)
    }

    /// The TCP peers that dialogs run over (the driver keeps their connections open).
    pub fn tcp_dialog_peers(&self) -> std::collections::HashSet<SocketAddr> {
        self.dialogs
            .values()
            .filter(|d| d.peer.transport == Transport::Tcp)
            .map(|d| d.peer.addr)
            .collect()
    }

    /// The next thing to send or report, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`SipCore::handle_timeout`] must next be called.
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
        let ip = peer.addr.ip();
        // A banned source is dropped before anything else, without a log line.
        if self.defence.is_banned(now, ip) {
            return;
        }
        // The ACL comes next: a refused source costs no full parse (whose warnings could
        // flood the log) and gets at most a 403 built from a bounded header scan.
        if !self.cfg.acl.allows(ip) {
            let s = message::salvage(data);
            let what = s.method.clone().unwrap_or_else(|| "message".into());
            let status = if s.can_answer() {
                let head = head_of_salvage(&s);
                self.reply(peer, &head, 403, "Forbidden", None, "", b"");
                403
            } else {
                0
            };
            self.refused(
                peer,
                status,
                format!("{what} from {} not allowed by ACL", peer.addr),
            );
            self.failed(now, ip);
            return;
        }
        match message::parse_from(
            data,
            self.cfg.max_message_bytes,
            peer.transport == Transport::Tcp,
        ) {
            Ok(SipMessage::Request(req)) => {
                let ua = req.user_agent.as_deref();
                match self.defence.check_request(now, ip, &req.method, ua) {
                    Verdict::Pass => self.on_request(now, peer, local, req),
                    Verdict::Reject { retry_after } => {
                        if req.method != "ACK" {
                            let extra = format!("Retry-After: {retry_after}\r\n");
                            let head = Head::of(&req);
                            self.reply(peer, &head, 503, "Service Unavailable", None, &extra, b"");
                        }
                        self.refused(peer, 503, format!("{} over the request rate", req.method));
                    }
                    Verdict::DropOverRate => {
                        self.refused(
                            peer,
                            0,
                            format!("dropped {}: over the request rate", req.method),
                        );
                    }
                    Verdict::DropScanner => {
                        self.refused(
                            peer,
                            0,
                            format!("dropped {}: scanner User-Agent", req.method),
                        );
                        self.failed(now, ip);
                    }
                }
            }
            Ok(SipMessage::Response(resp)) => self.on_response(resp),
            Err(failure) => {
                let (err, salvage) = *failure;
                self.on_garbage(peer, local, &err, salvage)
            }
        }
    }

    /// A refusal that counts towards a ban.
    fn failed(&mut self, now: Instant, ip: std::net::IpAddr) {
        if let Some(ban) = self.defence.on_failure(now, ip) {
            self.out.push_back(Output::Banned(ban));
        }
    }

    fn refused(&mut self, peer: Peer, status: u16, reason: String) {
        self.out.push_back(Output::Event(Event::Refused {
            peer,
            status,
            reason,
        }));
    }

    fn on_garbage(&mut self, peer: Peer, local: SocketAddr, err: &MessageError, s: Salvage) {
        let reason = err.to_string();
        if s.can_answer() {
            let head = head_of_salvage(&s);
            // The parser refuses methods it does not know (RFC 4475 §3.1.1.2, §3.1.1.5), but
            // our own checks passed: it is an unknown method, and that is 501 (RFC 3261 §8.2.1).
            let unknown_method = matches!(err, MessageError::Unparseable(_))
                && s.method
                    .as_deref()
                    .is_some_and(|m| !KNOWN_METHODS.contains(&m));
            if unknown_method {
                let extra = format!("Allow: {ALLOW}\r\n");
                self.reply(peer, &head, 501, "Not Implemented", None, &extra, b"");
                self.refused(peer, 501, reason);
                return;
            }
            let (status, phrase) = err.status();
            let warning = warning(local, &reason);
            self.reply(peer, &head, status, phrase, None, &warning, b"");
            self.refused(peer, status, reason);
        } else {
            self.refused(peer, 0, format!("dropped: {reason}"));
        }
    }

    fn on_request(&mut self, now: Instant, peer: Peer, local: SocketAddr, req: Request) {
        let head = Head::of(&req);
        let branch = param(&req.vias[0], "branch").unwrap_or_default();
        // Retransmitted non-INVITE requests get the answer they got the first time.
        if req.method != "INVITE" && req.method != "ACK" {
            if let Some((bytes, _)) =
                self.answered
                    .get(&(branch.clone(), req.cseq_method.clone(), peer))
            {
                let data = bytes.clone();
                self.send(peer, data);
                return;
            }
        }
        let allow = format!("Allow: {ALLOW}\r\n");
        if !KNOWN_METHODS.contains(&req.method.as_str()) {
            // RFC 3261 §8.2.1: an unknown method is 501, even when the CSeq disagrees with it
            // (RFC 4475 §3.1.2.18 prefers 501).
            return self.refuse(now, peer, &req, &branch, 501, "Not Implemented", &allow);
        }
        if req.method != req.cseq_method && req.method != "ACK" && req.method != "CANCEL" {
            let warning = warning(local, "CSeq method mismatch");
            return self.refuse(now, peer, &req, &branch, 400, "Bad Request", &warning);
        }
        if req.method == "ACK" {
            self.on_ack(&req, &branch);
            return;
        }
        // RFC 3261 §8.2.2.1: a Request-URI scheme we do not serve is 416.
        let scheme = req
            .raw_uri
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
            return self.refuse(now, peer, &req, &branch, 416, "Unsupported URI Scheme", "");
        }
        // RFC 3261 §8.2.2.3: we implement no extension, so any Require tag is refused
        // (CANCEL carries none that apply).
        if !req.require.is_empty() && req.method != "CANCEL" {
            let extra = format!("Unsupported: {}\r\n", req.require.join(", "));
            return self.refuse(now, peer, &req, &branch, 420, "Bad Extension", &extra);
        }
        // Max-Forwards 0 matters to proxies only: an endpoint processes the request (RFC 4475 §3.3.11).
        match req.method.as_str() {
            "INVITE" => self.on_invite(now, peer, local, req, branch),
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
            _ => {
                let extra = format!("Allow: {ALLOW}\r\n");
                self.reply_cached(now, peer, &head, &branch, 501, "Not Implemented", &extra)
            }
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
        if let Some((status, phrase, extra)) = invite_refusal(&req, local) {
            self.reply(peer, &head, status, phrase, Some(&new_tag()), &extra, b"");
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

    /// Refuse a request before any method-specific handling: non-INVITE answers are kept for
    /// retransmissions like any other; an INVITE gets a plain answer (it made no dialog).
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        now: Instant,
        peer: Peer,
        req: &Request,
        branch: &str,
        status: u16,
        reason: &str,
        extra: &str,
    ) {
        let head = Head::of(req);
        if req.method == "INVITE" {
            self.reply(peer, &head, status, reason, None, extra, b"");
        } else {
            self.reply_cached(now, peer, &head, branch, status, reason, extra);
        }
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
                reason: DialogEnd::HungUp,
            }));
        }
    }

    /// Do what the application asks (answer, reject, hang up, send a MESSAGE).
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

    /// Run the timers due by `now` (retransmissions, transaction timeouts).
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
                    reason: DialogEnd::AckTimeout,
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
                    reason: DialogEnd::HungUp,
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
        // RFC 3261 §8.2.6.2: a final response carries a To tag.
        let fresh = (tag.is_none() && status > 100).then(new_tag);
        let data = build_response(
            head,
            peer,
            status,
            reason,
            tag.or(fresh.as_deref()),
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
                (branch.to_string(), head.cseq_method.clone(), peer),
                (data.clone(), now + TIMER_64T1),
            );
            self.next_purge.get_or_insert(now + Duration::from_secs(5));
        }
        self.send(peer, data);
    }
}

/// Why a new INVITE cannot be taken, as (status, reason phrase, extra headers).
fn invite_refusal(req: &Request, local: SocketAddr) -> Option<(u16, &'static str, String)> {
    let ct = req.content_type.as_deref().map(str::to_ascii_lowercase);
    let is_sdp = ct
        .as_deref()
        .is_some_and(|c| c.starts_with("application/sdp"));
    if ct.is_some() && !is_sdp && !req.body.is_empty() {
        // RFC 3261 §21.4.13: a body type we do not understand.
        return Some((
            415,
            "Unsupported Media Type",
            "Accept: application/sdp\r\n".into(),
        ));
    }
    if !is_sdp || req.body.is_empty() {
        // Offerless INVITEs (RFC 3264 late offer) are not supported: say so plainly.
        let extra = format!(
            "{}Accept: application/sdp\r\n",
            warning(local, "an SDP offer is required in the INVITE")
        );
        return Some((488, "Not Acceptable Here", extra));
    }
    if let Some(accept) = &req.accept {
        // Our answer carries SDP: a caller that accepts no SDP cannot take it (RFC 4475 §3.3.15).
        let takes_sdp = accept.split(',').any(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(t.as_str(), "application/sdp" | "application/*" | "*/*")
        });
        if !accept.trim().is_empty() && !takes_sdp {
            let extra = warning(
                local,
                "our answer is application/sdp, which Accept excludes",
            );
            return Some((406, "Not Acceptable", extra));
        }
    }
    let sdp = String::from_utf8_lossy(&req.body);
    if let Some(why) = super::sdp::offer_refusal(&sdp) {
        return Some((488, "Not Acceptable Here", warning(local, why)));
    }
    None
}

/// `Warning: 399 <our host> "text"` (RFC 3261 §20.43), with the text made safe to quote.
fn warning(local: SocketAddr, text: &str) -> String {
    let host = match local.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    format!("Warning: 399 {host} \"{}\"\r\n", sanitize(text))
}

/// The headers a response echoes, from what a refused message still told us.
fn head_of_salvage(s: &Salvage) -> Head {
    let cseq = s.cseq.clone().unwrap_or_default();
    let mut parts = cseq.split_whitespace();
    Head {
        vias: s.vias.clone(),
        from: s.from.clone().unwrap_or_default(),
        to: s.to.clone().unwrap_or_default(),
        call_id: s.call_id.clone().unwrap_or_default(),
        // A CSeq number that does not fit is echoed as 0 rather than not at all.
        cseq: parts.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        cseq_method: parts
            .next()
            .map(str::to_string)
            .or_else(|| s.method.clone())
            .unwrap_or_default(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(120)
        .collect()
}

pub(crate) fn new_tag() -> String {
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
    // From, To and Call-ID are empty only in answers to requests that lacked them.
    if !head.from.is_empty() {
        s.push_str(&format!("From: {}\r\n", head.from));
    }
    match tag {
        _ if head.to.is_empty() => {}
        Some(t) if status > 100 && param(&head.to, "tag").is_none() => {
            s.push_str(&format!("To: {};tag={t}\r\n", head.to))
        }
        _ => s.push_str(&format!("To: {}\r\n", head.to)),
    }
    if !head.call_id.is_empty() {
        s.push_str(&format!("Call-ID: {}\r\n", head.call_id));
    }
    s.push_str(&format!(
        "CSeq: {} {}\r\nServer: {server}\r\n{extra}Content-Length: {}\r\n\r\n",
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
            defence: DefenceConfig::default(),
            tcp: TcpLimits::default(),
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
        invite_with_sdp(call_id, branch, sdp)
    }

    fn invite_with_sdp(call_id: &str, branch: &str, sdp: &str) -> String {
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
                Output::Banned(_) => {}
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
                reason: DialogEnd::HungUp
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
                reason: DialogEnd::AckTimeout,
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

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/sip-torture/rfc4475/{name}.sip",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap()
    }

    fn first_final(tx: &[String]) -> Option<u16> {
        tx.iter()
            .filter_map(|t| t.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok())
            .find(|s: &u16| *s >= 200)
    }

    #[test]
    fn torture_messages_that_were_answered_wrongly() {
        // Each of these got 200, 503 (via the call layer) or nothing before (issue #10).
        for (name, want) in [
            ("badinv01", 400),
            ("badvers", 505),
            ("mcl01", 400),
            ("clerr", 400),
            ("ncl", 400),
            ("unkscm", 416),
            ("novelsc", 416),
            ("intmeth", 501),
            ("esc02", 501),
            ("mismatch02", 501),
            ("mismatch01", 400),
            ("multi01", 400),
            ("ltgtruri", 400),
            ("lwsruri", 400),
            ("insuf", 400),
            ("bext01", 420),
            ("invut", 415),
            ("sdp01", 406),
            ("zeromf", 200),
            ("scalar02", 400),
        ] {
            let mut c = core();
            c.handle_message(Instant::now(), peer(), local(), &fixture(name));
            let (tx, ev) = drain(&mut c);
            assert_eq!(first_final(&tx), Some(want), "{name}: {tx:?}");
            assert!(
                !ev.iter().any(|e| matches!(e, Event::Invite(_))),
                "{name} must not start a call"
            );
            if want == 501 {
                assert!(tx[0].contains("\r\nAllow: INVITE"), "{name}: {}", tx[0]);
            }
        }
        // Valid messages still start calls: RFC 2543 INVITE without Content-Length, whose
        // body is the rest of the datagram.
        let mut c = core();
        c.handle_message(Instant::now(), peer(), local(), &fixture("inv2543"));
        let (_, ev) = drain(&mut c);
        assert!(
            matches!(&ev[..], [Event::Invite(i)] if i.sdp.starts_with(b"v=0")),
            "{ev:?}"
        );
        // Trailing octets after a datagram's body are ignored: one answer, not two.
        let mut c = core();
        c.handle_message(Instant::now(), peer(), local(), &fixture("dblreq"));
        let (tx, _) = drain(&mut c);
        assert_eq!(tx.len(), 1, "{tx:?}");
    }

    #[test]
    fn srtp_only_offer_gets_488_with_warning() {
        let mut c = core();
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
                   a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let inv = invite_with_sdp("srtp", "z9hG4bKs", sdp);
        c.handle_message(Instant::now(), peer(), local(), inv.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(ev.is_empty(), "no call is started: {ev:?}");
        assert!(tx[0].starts_with("SIP/2.0 488 "), "{tx:?}");
        let warning = tx[0]
            .lines()
            .find(|l| l.starts_with("Warning:"))
            .unwrap_or_default();
        assert!(
            warning.starts_with("Warning: 399 127.0.0.1 \"") && warning.contains("SRTP"),
            "{warning}"
        );
    }

    #[test]
    fn refused_source_gets_403_and_enough_failures_ban_it() {
        let mut c = SipCore::new(CoreConfig {
            defence: DefenceConfig {
                exempt: vec![],
                ban_after_failures: 3,
                ..DefenceConfig::default()
            },
            ..core().cfg
        });
        let t0 = Instant::now();
        let stranger = Peer {
            addr: "192.0.2.9:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        let mut banned = 0;
        for i in 0..3 {
            let inv = invite(&format!("b{i}"), &format!("z9hG4bKb{i}"));
            c.handle_message(t0, stranger, local(), inv.as_bytes());
            while let Some(o) = c.poll_output() {
                if let Output::Banned(b) = o {
                    assert_eq!(b.ip, stranger.addr.ip());
                    banned += 1;
                }
            }
        }
        assert_eq!(banned, 1);
        // Banned: silence, not even a 403 or an event.
        c.handle_message(t0, stranger, local(), invite("b9", "z9hG4bKb9").as_bytes());
        assert!(c.poll_output().is_none());
        // Another source is unaffected.
        c.handle_message(t0, peer(), local(), invite("ok", "z9hG4bKok").as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 100"));
        assert!(matches!(ev[0], Event::Invite(_)));
    }

    #[test]
    fn scanner_user_agents_are_dropped_and_rates_limited() {
        let mut c = SipCore::new(CoreConfig {
            defence: DefenceConfig {
                exempt: vec![],
                rate_options: 1,
                ..DefenceConfig::default()
            },
            ..core().cfg
        });
        let t0 = Instant::now();
        let options = |b: &str, ua: &str| {
            format!(
                "OPTIONS sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{b}\r\n\
                 From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: {b}\r\nCSeq: 1 OPTIONS\r\n\
                 User-Agent: {ua}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        c.handle_message(
            t0,
            peer(),
            local(),
            options("s1", "friendly-scanner").as_bytes(),
        );
        let (tx, _) = drain(&mut c);
        assert!(tx.is_empty(), "{tx:?}");
        // Burst of 2 at 1/s, then 503 with Retry-After.
        let mut codes = Vec::new();
        for i in 0..3 {
            c.handle_message(
                t0,
                peer(),
                local(),
                options(&format!("r{i}"), "softphone").as_bytes(),
            );
            codes.push(first_final(&drain(&mut c).0));
        }
        assert_eq!(codes, vec![Some(200), Some(200), Some(503)]);
        c.handle_message(
            t0 + Duration::from_secs(1),
            peer(),
            local(),
            options("r9", "softphone").as_bytes(),
        );
        assert_eq!(first_final(&drain(&mut c).0), Some(200), "refilled");
    }

    #[test]
    fn tcp_peers_with_dialogs_are_reported_for_the_idle_timeout() {
        let mut c = core();
        let tcp = Peer {
            addr: "127.0.0.1:5071".parse().unwrap(),
            transport: Transport::Tcp,
        };
        c.handle_message(
            Instant::now(),
            peer(),
            local(),
            invite("u1", "z9hG4bKu1").as_bytes(),
        );
        assert!(c.tcp_dialog_peers().is_empty(), "UDP dialogs pin nothing");
        let inv = invite("t1", "z9hG4bKt1").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        c.handle_message(Instant::now(), tcp, local(), inv.as_bytes());
        assert_eq!(
            c.tcp_dialog_peers().into_iter().collect::<Vec<_>>(),
            vec![tcp.addr]
        );
    }

    #[test]
    fn cached_answers_are_per_sender() {
        // Two senders reuse one branch (RFC 4475's messages all do): each gets its own answer.
        let mut c = core();
        let t0 = Instant::now();
        let opts = |require: &str| {
            format!(
                "OPTIONS sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKsame\r\n\
                 From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: same\r\nCSeq: 1 OPTIONS\r\n\
                 {require}Content-Length: 0\r\n\r\n"
            )
        };
        c.handle_message(t0, peer(), local(), opts("").as_bytes());
        assert_eq!(first_final(&drain(&mut c).0), Some(200));
        let other = Peer {
            addr: "127.0.0.2:5070".parse().unwrap(),
            transport: Transport::Udp,
        };
        c.handle_message(t0, other, local(), opts("Require: foo\r\n").as_bytes());
        assert_eq!(first_final(&drain(&mut c).0), Some(420));
        // A real retransmission from the first sender still gets the cached 200.
        c.handle_message(t0, peer(), local(), opts("").as_bytes());
        assert_eq!(first_final(&drain(&mut c).0), Some(200));
    }
}

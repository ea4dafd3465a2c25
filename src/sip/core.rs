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
use super::client_tx::{ClientTx, TxTimer};
use super::defence::{Ban, Defence, DefenceConfig, Verdict};
use super::dial::{Dial, DialEvent, DialSpec};
use super::keepalive::{Keepalive, KeepaliveSpec, Reachability};
use super::message::{
    self, has_param, param, uri_of, user_of, MessageError, Request, Response, Salvage, SipMessage,
};
use super::register::{Registration, RegistrationSpec, RegistrationState};
use super::registrar::{Binding, Outcome, Registrar, MIN_EXPIRES};
use super::session_timer::{SessionTimer, MIN_SE};
use super::trust::{Admit, Trust, TrustConfig};
use crate::config::SrtpPolicy;

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
    /// SIP over TLS on TCP: a stream like TCP.
    Tls,
}

impl Transport {
    /// Messages arrive framed in a byte stream (TCP, TLS), not as datagrams.
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The transport's name in a Via header (`UDP`, `TCP`, `TLS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Its URI parameter in our Contact (`;transport=tcp`; none for UDP, the default).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
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
    /// Trunks and users: with them, a new dialog or registration needs a trunk's source
    /// address or digest credentials (see `sip::trust`); without, the ACL admits.
    pub trust: Option<TrustConfig>,
    /// `[sip] digest_algorithms`, parsed.
    pub digest_algorithms: Vec<super::digest::Algorithm>,
    /// `[sip] public_addr`: the address our Contact and Via name (the driver uses it as our
    /// local address for every message).
    pub advertise: Option<SocketAddr>,
    /// `[sip] srtp`: SRTP for calls from no trunk (users' phones, the ACL).
    pub srtp: SrtpPolicy,
    /// Each trunk's `srtp`, by trunk name, for calls that come from its `inbound_from`.
    pub trunk_srtp: HashMap<String, SrtpPolicy>,
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

/// `[sip]`, `[[trunks]]` or `[[users]]` settings the SIP stack cannot take.
#[derive(Debug, thiserror::Error)]
pub enum SipConfigError {
    /// An ACL or `inbound_from` entry that is not an address.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// A digest algorithm we do not know.
    #[error("[sip] digest_algorithms: {0:?} is not MD5 or SHA-256")]
    Algorithm(String),
}

impl CoreConfig {
    /// The SIP stack's settings from `[sip]`; fails on an ACL entry that is not an address.
    /// `message_sources` are the SMS trunks' addresses (resolved by the caller).
    pub fn from_sip(
        sip: &crate::config::SipConfig,
        server_name: String,
        message_sources: Acl,
    ) -> Result<Self, SipConfigError> {
        // The exempt list is checked here so that the core can take it as valid.
        Defence::new(sip.defence.clone())?;
        let mut digest_algorithms = Vec::new();
        for a in &sip.digest_algorithms {
            digest_algorithms.push(
                super::digest::Algorithm::parse(a)
                    .map_err(|_| SipConfigError::Algorithm(a.clone()))?,
            );
        }
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
            trust: None,
            digest_algorithms,
            advertise: sip.public_addr,
            srtp: sip.srtp,
            trunk_srtp: HashMap::new(),
        })
    }

    /// Take `[[trunks]]` and `[[users]]`: trust by trunk address or digest, and the trunks'
    /// sources pass the network ACL too (a trunk is configured to be let in).
    pub fn with_trunks(
        mut self,
        trunks: &[crate::config::TrunkConfig],
        users: &[crate::config::UserConfig],
    ) -> Result<Self, SipConfigError> {
        let realm = self.server_name.split('/').next().unwrap_or("switchboard");
        let realm = if realm.is_empty() {
            "switchboard"
        } else {
            realm
        };
        self.trust = TrustConfig::from_config(
            trunks,
            users,
            &realm.to_ascii_lowercase(),
            &self.digest_algorithms,
        )?;
        if let Some(t) = &self.trust {
            for (_, acl) in &t.trunks {
                self.acl = self.acl.union(acl);
            }
        }
        self.trunk_srtp = trunks.iter().map(|t| (t.name.clone(), t.srtp)).collect();
        Ok(self)
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
    /// Who was trusted to place it, when trunks or users are configured.
    pub admitted: Option<Admitted>,
    /// The SRTP policy its offer was checked against (its trunk's, else `[sip] srtp`): the
    /// answer must be negotiated with the same one.
    pub srtp: SrtpPolicy,
}

/// Why a request that opens a dialog was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// It came from this trunk's `inbound_from`.
    Trunk(String),
    /// It carried this user's digest credentials.
    User(String),
}

/// Why a dialog ended without a BYE from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEnd {
    /// We sent BYE and it was answered (or timed out).
    HungUp,
    /// The 2xx we sent was never acknowledged.
    AckTimeout,
    /// The session timer ran out without a refresh (RFC 4028 §10), or our refresh failed;
    /// we sent BYE.
    SessionExpired,
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
    /// A re-INVITE or UPDATE changed the media: send RTP to `remote`, or stop sending (hold).
    MediaUpdate {
        /// The dialog's Call-ID.
        call_id: String,
        /// Where the peer now wants our RTP.
        remote: SocketAddr,
        /// False while the peer holds the call.
        sending: bool,
        /// An encrypted session's keys from now on (the peer may have sent a new key).
        srtp: Option<crate::media::srtp::SrtpKeys>,
        /// The codec and payload types from now on (a re-offer may switch codec).
        format: crate::media::codec::Format,
    },
    /// Our registration with a trunk changed state (logged and kept by the driver).
    TrunkRegistration {
        /// The trunk's name.
        trunk: String,
        /// Where the registration stands now.
        state: RegistrationState,
    },
    /// Our outbound call got a provisional answer (ringing, early media).
    DialProgress {
        /// The call's Call-ID.
        call_id: String,
        /// 180, 183...
        status: u16,
        /// The far end's early media session, when it sent one.
        early_sdp: Option<String>,
    },
    /// Our outbound call was answered: it is a dialog like any other from here (BYE by
    /// [`Command::Hangup`], the far end's BYE as [`Event::Bye`]).
    DialAnswered {
        /// The call's Call-ID.
        call_id: String,
        /// The far end's SDP answer.
        sdp: String,
    },
    /// Our outbound call ended without an answer.
    DialFailed {
        /// The call's Call-ID.
        call_id: String,
        /// The far end's final status (408: no answer at all, 487: we cancelled).
        status: u16,
        /// Its reason phrase, or ours.
        reason: String,
    },
    /// How our transfer (REFER, RFC 3515) goes: the peer's answer to the REFER (202: accepted,
    /// NOTIFYs follow; 4xx–6xx, or 408 without an answer: refused, `done`), then the status
    /// line of each NOTIFY's `message/sipfrag` (`done` once it is final).
    Transfer {
        /// The dialog's Call-ID.
        call_id: String,
        /// The status: of the REFER's answer, or the one the NOTIFY reports.
        status: u16,
        /// Nothing more will come.
        done: bool,
    },
    /// A trunk started or stopped answering our OPTIONS keep-alives.
    TrunkReachability {
        /// The trunk's name.
        trunk: String,
        /// Whether it answers now.
        reach: Reachability,
    },
    /// A user's registration changed (logged by the driver): its bindings now.
    Registered {
        /// The `[[users]]` username.
        user: String,
        /// Its Contact URIs with their remaining seconds (empty: unregistered).
        contacts: Vec<(String, u32)>,
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
    /// Keep a registration with a trunk, from our `local` address (filled in by the driver).
    Register {
        /// The trunk, its registrar and credentials.
        spec: Box<RegistrationSpec>,
        /// Our address as the registrar sees it.
        local: SocketAddr,
    },
    /// Shutdown: remove every registration we hold (Expires: 0).
    UnregisterAll,
    /// Place a call: INVITE `spec.request_uri` at `spec.peer` from our `local` address
    /// (filled in by the driver). [`Command::Hangup`] with its Call-ID cancels it.
    Dial {
        /// Whom, through which trunk, with which offer and credentials.
        spec: Box<DialSpec>,
        /// Our address as the trunk sees it.
        local: SocketAddr,
    },
    /// Blind transfer (RFC 3515): ask the peer of a confirmed dialog to call `target` instead
    /// (REFER with Refer-To); progress comes as [`Event::Transfer`].
    Refer {
        /// The dialog's Call-ID.
        call_id: String,
        /// The URI the peer is to call (`sip:…` or `tel:…`).
        target: String,
    },
    /// The driver could not open a connection to `addr` (TCP or TLS): calls still waiting for
    /// an answer from it fail at once (503) instead of at timer B.
    TransportFailed {
        /// The trunk address that refused or timed out.
        addr: SocketAddr,
    },
    /// Send OPTIONS keep-alives to a trunk, from our `local` address (filled in by the driver).
    Keepalive {
        /// The trunk, where and how often.
        spec: Box<KeepaliveSpec>,
        /// Our address as the trunk sees it.
        local: SocketAddr,
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
    /// RFC 4028 session timer, when the INVITE asked for one.
    session: Option<SessionTimer>,
    /// Our session refresh in flight: its method, bytes and retransmit interval.
    refresh: Option<OutRefresh>,
    /// Our REFER in flight (a blind transfer), until its final answer.
    refer: Option<ClientTx>,
}

#[derive(Debug)]
struct OutRefresh {
    method: &'static str,
    data: Vec<u8>,
    interval: Duration,
    give_up_at: Instant,
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
    /// A registration's own timers (retransmit, give up, refresh, retry; keyed by Call-ID).
    Registration,
    /// The session timer's deadline: BYE unless refreshed since (RFC 4028 §10).
    SessionCheck,
    /// Our turn to refresh the session.
    SessionRefresh,
    /// A keep-alive's own timers (keyed by its Call-ID).
    Keepalive,
    /// An outbound call's INVITE timers (A, B, ring time, CANCEL).
    Dial,
    /// Forget a finished outbound INVITE (kept 64·T1 to acknowledge retransmitted answers).
    DialForget,
    /// Resend our REFER, or give up on it.
    ReferRetransmit,
    /// Resend our refresh, or give up on it.
    RefreshRetransmit,
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
    /// Trunk addresses and digest users, when configured.
    trust: Option<Trust>,
    registrar: Registrar,
    /// Our registrations with trunks, by Call-ID.
    registrations: HashMap<String, Registration>,
    /// Our OPTIONS keep-alives to trunks, by Call-ID.
    keepalives: HashMap<String, Keepalive>,
    /// Our outbound INVITEs, by Call-ID.
    dials: HashMap<String, Dial>,
    out: VecDeque<Output>,
}

#[derive(Debug)]
struct MessageTx {
    id: u64,
    peer: Peer,
    data: Vec<u8>,
    interval: Duration,
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, UPDATE";
/// With users configured we are their registrar too.
const ALLOW_REGISTRAR: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, UPDATE, REGISTER";
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
        let trust = cfg.trust.clone().map(Trust::new);
        SipCore {
            defence: Defence::lenient(cfg.defence.clone()),
            cfg,
            dialogs: HashMap::new(),
            answered: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_purge: None,
            messages: HashMap::new(),
            trust,
            registrar: Registrar::default(),
            registrations: HashMap::new(),
            keepalives: HashMap::new(),
            dials: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The methods we serve (REGISTER when we are a registrar).
    fn allow(&self) -> &'static str {
        if self.trust.is_some() {
            ALLOW_REGISTRAR
        } else {
            ALLOW
        }
    }

    /// A registration's output: what to send, the state change, and its next timer.
    fn registration_step(&mut self, call_id: &str, data: Option<Vec<u8>>, changed: bool) {
        let Some(reg) = self.registrations.get(call_id) else {
            return;
        };
        let (peer, next) = (reg.peer(), reg.next_timer());
        let event = changed.then(|| Event::TrunkRegistration {
            trunk: reg.trunk().to_string(),
            state: reg.state().clone(),
        });
        if let Some(d) = data {
            self.send(peer, d);
        }
        if let Some(e) = event {
            self.out.push_back(Output::Event(e));
        }
        if let Some(at) = next {
            self.schedule(at, call_id, TimerKind::Registration);
        }
    }

    /// An outbound call's output: what to send, what happened, its next timer.
    fn dial_step(
        &mut self,
        now: Instant,
        call_id: &str,
        send: Vec<Vec<u8>>,
        ev: Option<DialEvent>,
    ) {
        let Some(d) = self.dials.get(call_id) else {
            return;
        };
        let (peer, local, next, cancelled) = (d.peer(), d.local(), d.next_timer(), d.cancelled());
        for data in send {
            self.send(peer, data);
        }
        if let Some(at) = next {
            self.schedule(at, call_id, TimerKind::Dial);
        }
        let Some(ev) = ev else {
            return;
        };
        let event = match ev {
            DialEvent::Progress { status, early_sdp } => Event::DialProgress {
                call_id: call_id.to_string(),
                status,
                early_sdp,
            },
            DialEvent::Answered(a) => {
                self.schedule(now + TIMER_64T1, call_id, TimerKind::DialForget);
                // Offers the far end makes later in the dialog are answered against this.
                let local_sdp = self
                    .dials
                    .get(call_id)
                    .and_then(|d| super::sdp::settled(d.offer(), &a.sdp).ok())
                    .unwrap_or_default();
                self.dialogs.insert(
                    call_id.to_string(),
                    Dialog {
                        peer,
                        local,
                        state: State::Confirmed,
                        // As the far end's requests will carry them: From is theirs, To ours.
                        invite: Head {
                            vias: Vec::new(),
                            from: a.to.clone(),
                            to: a.from.clone(),
                            call_id: call_id.to_string(),
                            cseq: 0,
                            cseq_method: "INVITE".into(),
                        },
                        invite_branch: String::new(),
                        local_tag: param(&a.from, "tag").unwrap_or_default(),
                        remote_target: a.remote_target.clone(),
                        route_set: a.route_set.clone(),
                        last_response: Vec::new(),
                        local_sdp,
                        retransmit_interval: T1,
                        local_cseq: a.local_cseq,
                        bye: None,
                        bye_deadline: None,
                        session: None,
                        refresh: None,
                        refer: None,
                    },
                );
                if cancelled {
                    // Answered as our CANCEL crossed it: the call is up, and we end it.
                    self.hangup(now, call_id);
                    Event::DialFailed {
                        call_id: call_id.to_string(),
                        status: 487,
                        reason: "answered after it was cancelled; hung up".into(),
                    }
                } else {
                    Event::DialAnswered {
                        call_id: call_id.to_string(),
                        sdp: a.sdp,
                    }
                }
            }
            DialEvent::Failed { status, reason } => {
                self.schedule(now + TIMER_64T1, call_id, TimerKind::DialForget);
                Event::DialFailed {
                    call_id: call_id.to_string(),
                    status,
                    reason,
                }
            }
        };
        self.out.push_back(Output::Event(event));
    }

    /// A keep-alive's output: what to send, a reachability change, and its next timer.
    fn keepalive_step(
        &mut self,
        call_id: &str,
        data: Option<Vec<u8>>,
        change: Option<Reachability>,
    ) {
        let Some(k) = self.keepalives.get(call_id) else {
            return;
        };
        let (peer, next, trunk) = (k.peer(), k.next_timer(), k.trunk().to_string());
        if let Some(d) = data {
            self.send(peer, d);
        }
        if let Some(reach) = change {
            self.out
                .push_back(Output::Event(Event::TrunkReachability { trunk, reach }));
        }
        if let Some(at) = next {
            self.schedule(at, call_id, TimerKind::Keepalive);
        }
    }

    /// Where a registered user can be reached now, the latest registration first.
    pub fn bindings(&self, now: Instant, user: &str) -> Vec<&Binding> {
        self.registrar.lookup(now, user)
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
            .filter(|d| d.peer.transport.is_stream())
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
        match message::parse_from(data, self.cfg.max_message_bytes, peer.transport.is_stream()) {
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
            Ok(SipMessage::Response(resp)) => self.on_response(now, resp),
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
        let unsupported: Vec<&str> = req
            .require
            .iter()
            .map(String::as_str)
            // 100rel (RFC 3262) binds us to send 101-199 reliably; we answer with 100 and a
            // final response only, so there is nothing to send reliably and the tag can be
            // honoured. Sending 18x (ringback, early media) must add PRACK first.
            .filter(|t| !t.eq_ignore_ascii_case("timer") && !t.eq_ignore_ascii_case("100rel"))
            .collect();
        if !unsupported.is_empty() && req.method != "CANCEL" {
            let extra = format!("Unsupported: {}\r\n", unsupported.join(", "));
            return self.refuse(now, peer, &req, &branch, 420, "Bad Extension", &extra);
        }
        let opens = match req.method.as_str() {
            "INVITE" => param(&req.to, "tag").is_none() && !self.dialogs.contains_key(&req.call_id),
            "REGISTER" => true,
            _ => false,
        };
        let mut admitted = None;
        if let (true, Some(trust)) = (opens, self.trust.as_mut()) {
            match trust.admit(now, peer.addr.ip(), &req) {
                Admit::Trunk(name) => admitted = Some(Admitted::Trunk(name)),
                Admit::User(user) => admitted = Some(Admitted::User(user)),
                Admit::Challenge(values) => {
                    let extra: String = values
                        .iter()
                        .map(|v| format!("WWW-Authenticate: {v}\r\n"))
                        .collect();
                    return self.refuse(now, peer, &req, &branch, 401, "Unauthorized", &extra);
                }
                Admit::Refuse(why) => {
                    crate::metrics::get().sip_auth_failures.inc();
                    self.refused(
                        peer,
                        403,
                        format!("{} from {}: {why}", req.method, peer.addr),
                    );
                    self.failed(now, peer.addr.ip());
                    return self.refuse(now, peer, &req, &branch, 403, "Forbidden", "");
                }
            }
        }
        // Max-Forwards 0 matters to proxies only: an endpoint processes the request (RFC 4475 §3.3.11).
        match req.method.as_str() {
            "INVITE" => self.on_invite(now, peer, local, req, branch, admitted),
            "REGISTER" if self.trust.is_some() => {
                self.on_register(now, peer, &req, &branch, admitted)
            }
            "CANCEL" => self.on_cancel(now, peer, &req, &branch),
            "BYE" => self.on_bye(now, peer, &req, &branch),
            "OPTIONS" => {
                let extra = format!("Allow: {}\r\nAccept: application/sdp\r\n", self.allow());
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
            "UPDATE" => self.on_update(now, peer, &req, &branch),
            "NOTIFY" => self.on_notify(now, peer, &req, &branch),
            "REGISTER" | "SUBSCRIBE" | "PUBLISH" | "REFER" | "PRACK" => {
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
        admitted: Option<Admitted>,
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
                // Re-INVITE: a new offer (hold, resume, a new address) is negotiated against
                // the session we have; without an offer (a refresh) we offer it again.
                let (status, reason, sdp, update) = reoffer(d, &req.body);
                let contact = contact_header(d.local, peer.transport);
                let timer = refreshed(d, &req, status);
                let extra = if status == 200 {
                    format!("{contact}Allow: {ALLOW}\r\n{timer}Content-Type: application/sdp\r\n")
                } else {
                    String::new()
                };
                let tag = d.local_tag.clone();
                let data = build_response(
                    &head,
                    peer,
                    status,
                    reason,
                    Some(&tag),
                    &extra,
                    sdp.as_bytes(),
                    &self.cfg.server_name,
                );
                self.media_update(&req.call_id, update);
                if status == 200 {
                    self.restart_session(now, &req.call_id);
                }
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
        let srtp = match &admitted {
            Some(Admitted::Trunk(name)) => self.cfg.trunk_srtp.get(name).copied(),
            _ => None,
        }
        .unwrap_or(self.cfg.srtp);
        if let Some((status, phrase, extra)) = invite_refusal(&req, local, srtp) {
            self.reply(peer, &head, status, phrase, Some(&new_tag()), &extra, b"");
            return;
        }
        let Ok(session) = SessionTimer::negotiate(&req) else {
            let extra = format!("Min-SE: {MIN_SE}\r\n");
            let tag = new_tag();
            self.reply(
                peer,
                &head,
                422,
                "Session Interval Too Small",
                Some(&tag),
                &extra,
                b"",
            );
            return;
        };
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
            admitted,
            srtp,
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
                session,
                refresh: None,
                refer: None,
            },
        );
        let _ = now;
        self.out
            .push_back(Output::Event(Event::Invite(Box::new(invite))));
    }

    fn media_update(&mut self, call_id: &str, update: Option<super::sdp::Reanswer>) {
        if let Some(r) = update {
            self.out.push_back(Output::Event(Event::MediaUpdate {
                call_id: call_id.to_string(),
                remote: r.remote_rtp,
                sending: r.sending,
                srtp: r.srtp,
                format: r.format,
            }));
        }
    }

    /// UPDATE inside a dialog (RFC 3311): a new offer, or none (a session refresh).
    fn on_update(&mut self, now: Instant, peer: Peer, req: &Request, branch: &str) {
        let head = Head::of(req);
        let to_tag = param(&req.to, "tag");
        let Some(d) = self.dialogs.get_mut(&req.call_id).filter(|d| {
            to_tag.as_deref() == Some(d.local_tag.as_str())
                && matches!(d.state, State::Answered | State::Confirmed)
        }) else {
            return self.reply_481(now, peer, &head, branch);
        };
        let (status, reason, sdp, update) = if req.body.is_empty() {
            (200, "OK", String::new(), None)
        } else {
            reoffer(d, &req.body)
        };
        let timer = refreshed(d, req, status);
        let extra = if sdp.is_empty() {
            timer
        } else {
            format!("{timer}Content-Type: application/sdp\r\n")
        };
        let data = build_response(
            &head,
            peer,
            status,
            reason,
            None,
            &extra,
            sdp.as_bytes(),
            &self.cfg.server_name,
        );
        self.send(peer, data);
        self.media_update(&req.call_id, update);
        if status == 200 {
            self.restart_session(now, &req.call_id);
        }
    }

    /// The session was set up or refreshed now: arm its check and, when ours, its refresh.
    fn restart_session(&mut self, now: Instant, call_id: &str) {
        let Some(t) = self
            .dialogs
            .get_mut(call_id)
            .and_then(|d| d.session.as_mut())
        else {
            return;
        };
        t.restart(now);
        let (check, refresh) = (t.check_at, t.refresh_at);
        if let Some(at) = check {
            self.schedule(at, call_id, TimerKind::SessionCheck);
        }
        if let Some(at) = refresh {
            self.schedule(at, call_id, TimerKind::SessionRefresh);
        }
    }

    /// Send REFER in a confirmed dialog; a transfer already in flight, or no such dialog, is
    /// reported as failed at once.
    fn send_refer(&mut self, now: Instant, call_id: &str, target: &str) {
        let server = self.cfg.server_name.clone();
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return self.transfer(call_id, 481, true);
        };
        if d.refer.is_some() || d.state != State::Confirmed {
            return self.transfer(call_id, 491, true);
        }
        d.local_cseq += 1;
        let us = format!("<sip:switchboard@{}>", host_port(d.local));
        let extra = format!(
            "Refer-To: <{target}>\r\nReferred-By: {us}\r\n{}",
            contact_header(d.local, d.peer.transport)
        );
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let data = build_in_dialog_on(d, "REFER", &extra, "", &server, &branch);
        let tx = ClientTx::new(
            now,
            branch,
            d.local_cseq,
            data.clone(),
            d.peer.transport == Transport::Udp,
        );
        let (peer, next) = (d.peer, tx.next_timer());
        d.refer = Some(tx);
        self.send(peer, data);
        self.schedule(next, call_id, TimerKind::ReferRetransmit);
    }

    fn on_refer_response(&mut self, now: Instant, resp: &Response) {
        let Some(d) = self.dialogs.get_mut(&resp.call_id) else {
            return;
        };
        let Some(tx) = d.refer.as_mut().filter(|t| t.matches(resp)) else {
            return;
        };
        if resp.status < 200 {
            tx.provisional(now);
            return;
        }
        d.refer = None;
        self.transfer(&resp.call_id, resp.status, resp.status >= 300);
    }

    fn transfer(&mut self, call_id: &str, status: u16, done: bool) {
        self.out.push_back(Output::Event(Event::Transfer {
            call_id: call_id.to_string(),
            status,
            done,
        }));
    }

    /// NOTIFY inside a dialog: the progress of our transfer, as `message/sipfrag` (RFC 3515
    /// §2.4.5). Outside a dialog there is no subscription of ours: 481.
    fn on_notify(&mut self, now: Instant, peer: Peer, req: &Request, branch: &str) {
        let head = Head::of(req);
        if param(&req.to, "tag").is_none() || !self.dialogs.contains_key(&req.call_id) {
            return self.reply_481(now, peer, &head, branch);
        }
        self.reply_cached(now, peer, &head, branch, 200, "OK", "");
        let frag = String::from_utf8_lossy(&req.body);
        let status = frag
            .lines()
            .next()
            .and_then(|l| l.trim().strip_prefix("SIP/2.0 "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (100..700).contains(c));
        if let Some(status) = status {
            self.transfer(&req.call_id, status, status >= 200);
        }
    }

    /// Our turn to refresh: UPDATE without a body when the peer allows it, else a re-INVITE
    /// offering the session as it is.
    fn send_refresh(&mut self, now: Instant, call_id: &str) {
        let server = self.cfg.server_name.clone();
        let Some(d) = self.dialogs.get_mut(call_id) else {
            return;
        };
        let Some(t) = d.session.as_ref() else {
            return;
        };
        if d.refresh.is_some() || !matches!(d.state, State::Confirmed) {
            return;
        }
        let (method, body) = if t.peer_allows_update {
            ("UPDATE", String::new())
        } else {
            ("INVITE", d.local_sdp.clone())
        };
        let mut extra = t.headers();
        if !body.is_empty() {
            extra.push_str("Content-Type: application/sdp\r\n");
        }
        extra.push_str(&contact_header(d.local, d.peer.transport));
        d.local_cseq += 1;
        let data = build_in_dialog(d, method, &extra, &body, &server);
        d.refresh = Some(OutRefresh {
            method,
            data: data.clone(),
            interval: T1,
            give_up_at: now + TIMER_64T1,
        });
        let peer = d.peer;
        self.send(peer, data);
        let next = if peer.transport == Transport::Udp {
            now + T1
        } else {
            now + TIMER_64T1
        };
        self.schedule(next, call_id, TimerKind::RefreshRetransmit);
    }

    /// The session is over: say so, and hang up.
    fn session_expired(&mut self, now: Instant, call_id: &str) {
        self.out.push_back(Output::Event(Event::Ended {
            call_id: call_id.to_string(),
            reason: DialogEnd::SessionExpired,
        }));
        self.hangup(now, call_id);
    }

    /// The answer to our refresh.
    fn on_refresh_response(&mut self, now: Instant, resp: &Response) -> bool {
        let server = self.cfg.server_name.clone();
        let Some(d) = self.dialogs.get_mut(&resp.call_id) else {
            return false;
        };
        let ours = d
            .refresh
            .as_ref()
            .is_some_and(|r| r.method == resp.cseq_method && d.local_cseq == resp.cseq);
        if !ours || resp.status < 200 {
            return ours;
        }
        d.refresh = None;
        if resp.cseq_method == "INVITE" && resp.status < 300 {
            // A 2xx to our re-INVITE is acknowledged from the dialog (RFC 3261 §13.2.2.4).
            let ack = build_in_dialog(d, "ACK", "", "", &server);
            let peer = d.peer;
            self.send(peer, ack);
        }
        match resp.status {
            200..=299 => self.restart_session(now, &resp.call_id),
            // RFC 4028 §10: a refresh answered 408 or 481 ends the session.
            408 | 481 => self.session_expired(now, &resp.call_id),
            // 491 (glare) and the like: try again shortly; the check still ends a dead call.
            _ => {
                let retry = now + Duration::from_secs(2);
                if let Some(t) = self
                    .dialogs
                    .get_mut(&resp.call_id)
                    .and_then(|d| d.session.as_mut())
                {
                    t.refresh_at = Some(retry);
                }
                self.schedule(retry, &resp.call_id, TimerKind::SessionRefresh);
            }
        }
        true
    }

    /// A user's REGISTER, already authenticated (RFC 3261 §10.3).
    fn on_register(
        &mut self,
        now: Instant,
        peer: Peer,
        req: &Request,
        branch: &str,
        admitted: Option<Admitted>,
    ) {
        let head = Head::of(req);
        let Some(Admitted::User(user)) = admitted else {
            return self.reply_cached(now, peer, &head, branch, 403, "Forbidden", "");
        };
        match self.registrar.register(now, &user, peer, req) {
            Outcome::Bound(contacts) => {
                let extra: String = contacts
                    .iter()
                    .map(|(c, secs)| format!("Contact: <{c}>;expires={secs}\r\n"))
                    .collect();
                self.reply_cached(now, peer, &head, branch, 200, "OK", &extra);
                self.out
                    .push_back(Output::Event(Event::Registered { user, contacts }));
            }
            Outcome::TooBrief => {
                let extra = format!("Min-Expires: {MIN_EXPIRES}\r\n");
                self.reply_cached(now, peer, &head, branch, 423, "Interval Too Brief", &extra);
            }
            Outcome::NotYours => {
                self.refused(
                    peer,
                    403,
                    format!("REGISTER by {user} for another address of record"),
                );
                self.reply_cached(now, peer, &head, branch, 403, "Forbidden", "");
            }
            Outcome::BadContact => {
                self.reply_cached(now, peer, &head, branch, 400, "Bad Request", "");
            }
        }
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

    fn on_response(&mut self, now: Instant, resp: Response) {
        if matches!(resp.cseq_method.as_str(), "INVITE" | "CANCEL") {
            if let Some(d) = self.dials.get_mut(&resp.call_id).filter(|d| d.owns(&resp)) {
                let (send, ev) = d.on_response(now, &resp);
                self.dial_step(now, &resp.call_id, send, ev);
                return;
            }
        }
        if resp.cseq_method == "OPTIONS" {
            if let Some(k) = self.keepalives.get_mut(&resp.call_id) {
                let change = k.on_response(now, &resp);
                self.keepalive_step(&resp.call_id, None, change);
            }
            return;
        }
        if resp.cseq_method == "REGISTER" {
            if let Some(reg) = self.registrations.get_mut(&resp.call_id) {
                let (data, changed) = reg.on_response(now, &resp);
                self.registration_step(&resp.call_id, data, changed);
            }
            return;
        }
        if matches!(resp.cseq_method.as_str(), "UPDATE" | "INVITE")
            && self.on_refresh_response(now, &resp)
        {
            return;
        }
        if resp.cseq_method == "REFER" {
            self.on_refer_response(now, &resp);
            return;
        }
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
                let timer = d
                    .session
                    .as_ref()
                    .map(SessionTimer::headers)
                    .unwrap_or_default();
                let extra = format!(
                    "{}Allow: {ALLOW}\r\n{timer}Content-Type: application/sdp\r\n",
                    contact_header(d.local, d.peer.transport)
                );
                self.final_response(now, &call_id, 200, "OK", &extra, &sdp);
                self.restart_session(now, &call_id);
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
            Command::Register { spec, local } => {
                let mut reg = Registration::new(*spec, local);
                let first = reg.start(now);
                let call_id = reg.call_id().to_string();
                self.registrations.insert(call_id.clone(), reg);
                self.registration_step(&call_id, Some(first), true);
            }
            Command::Dial { spec, local } => {
                let call_id = spec.call_id.clone();
                if self.dials.contains_key(&call_id) || self.dialogs.contains_key(&call_id) {
                    return;
                }
                let mut d = Dial::new(*spec, local);
                let first = d.start(now);
                self.dials.insert(call_id.clone(), d);
                self.dial_step(now, &call_id, vec![first], None);
            }
            Command::Keepalive { spec, local } => {
                let mut k = Keepalive::new(*spec, local);
                let first = k.send(now);
                let call_id = k.call_id().to_string();
                self.keepalives.insert(call_id.clone(), k);
                self.keepalive_step(&call_id, Some(first), None);
            }
            Command::Refer { call_id, target } => self.send_refer(now, &call_id, &target),
            Command::TransportFailed { addr } => {
                let failed: Vec<(String, DialEvent)> = self
                    .dials
                    .iter_mut()
                    .filter(|(_, d)| d.peer().addr == addr)
                    .filter_map(|(id, d)| Some((id.clone(), d.transport_failed()?)))
                    .collect();
                for (id, ev) in failed {
                    self.dial_step(now, &id, Vec::new(), Some(ev));
                }
            }
            Command::UnregisterAll => {
                let ids: Vec<String> = self.registrations.keys().cloned().collect();
                for id in ids {
                    if let Some(reg) = self.registrations.get_mut(&id) {
                        let data = reg.unregister(now);
                        let changed = data.is_none();
                        self.registration_step(&id, data, changed);
                    }
                }
            }
        }
    }

    fn hangup(&mut self, now: Instant, call_id: &str) {
        let Some(d) = self.dialogs.get_mut(call_id) else {
            // Still ringing out: cancel it.
            if let Some(dial) = self.dials.get_mut(call_id) {
                let send = dial.cancel(now, "hung up before the answer");
                self.dial_step(now, call_id, send, None);
            }
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
            self.registrar.purge(now);
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
            // The client machines (outbound INVITE, keep-alive, registration) are driven alike:
            // their timers are filed by Call-ID, and an entry left from before a change finds
            // its machine not yet due. Their outputs differ, so each has its own step function.
            TimerKind::Dial => {
                if let Some(d) = self.dials.get_mut(call_id) {
                    if d.next_timer().is_some_and(|t| t <= now) {
                        let (send, ev) = d.on_timer(now);
                        self.dial_step(now, call_id, send, ev);
                    }
                }
                return;
            }
            TimerKind::DialForget => {
                self.dials.remove(call_id);
                return;
            }
            TimerKind::Keepalive => {
                if let Some(k) = self.keepalives.get_mut(call_id) {
                    if k.next_timer().is_some_and(|t| t <= now) {
                        let (data, change) = k.on_timer(now);
                        self.keepalive_step(call_id, data, change);
                    }
                }
                return;
            }
            TimerKind::Registration => {
                if let Some(reg) = self.registrations.get_mut(call_id) {
                    if reg.next_timer().is_some_and(|t| t <= now) {
                        let (data, changed) = reg.on_timer(now);
                        self.registration_step(call_id, data, changed);
                    }
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
            TimerKind::SessionCheck if matches!(d.state, State::Answered | State::Confirmed) => {
                let due = d
                    .session
                    .as_ref()
                    .and_then(|t| t.check_at)
                    .is_some_and(|at| at <= now);
                if due {
                    self.session_expired(now, call_id);
                }
            }
            TimerKind::SessionRefresh if d.state == State::Confirmed => {
                let due = d
                    .session
                    .as_ref()
                    .and_then(|t| t.refresh_at)
                    .is_some_and(|at| at <= now);
                if due {
                    self.send_refresh(now, call_id);
                }
            }
            TimerKind::ReferRetransmit => {
                let Some(tx) = d.refer.as_mut() else {
                    return;
                };
                match tx.on_timer(now) {
                    TxTimer::Resend(data) => {
                        let (peer, next) = (d.peer, tx.next_timer());
                        self.send(peer, data);
                        self.schedule(next, call_id, TimerKind::ReferRetransmit);
                    }
                    TxTimer::TimedOut => {
                        d.refer = None;
                        self.transfer(call_id, 408, true);
                    }
                    TxTimer::Nothing => {
                        let next = tx.next_timer();
                        self.schedule(next, call_id, TimerKind::ReferRetransmit);
                    }
                }
            }
            TimerKind::RefreshRetransmit => {
                let Some(r) = d.refresh.as_mut() else {
                    return;
                };
                if now >= r.give_up_at {
                    d.refresh = None;
                    self.session_expired(now, call_id);
                } else if d.peer.transport == Transport::Udp {
                    r.interval = (r.interval * 2).min(T2);
                    let (peer, data, next) =
                        (d.peer, r.data.clone(), (now + r.interval).min(r.give_up_at));
                    self.send(peer, data);
                    self.schedule(next, call_id, TimerKind::RefreshRetransmit);
                } else {
                    let at = r.give_up_at;
                    self.schedule(at, call_id, TimerKind::RefreshRetransmit);
                }
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

/// A refresh of `d`'s session by the peer's re-INVITE or UPDATE: take what it asks for and
/// return the headers our 2xx carries.
fn refreshed(d: &mut Dialog, req: &Request, status: u16) -> String {
    match d.session.as_mut() {
        Some(t) if status == 200 => {
            t.refreshed_by(req);
            t.headers()
        }
        _ => String::new(),
    }
}

/// The answer to an offer inside dialog `d` (status, reason, SDP) and the media change it
/// makes; an offer we cannot take is 488 and leaves the session as it was.
fn reoffer(
    d: &mut Dialog,
    body: &[u8],
) -> (u16, &'static str, String, Option<super::sdp::Reanswer>) {
    if body.is_empty() {
        return (200, "OK", d.local_sdp.clone(), None);
    }
    match super::sdp::reanswer(&String::from_utf8_lossy(body), &d.local_sdp) {
        Ok(r) => {
            d.local_sdp = r.sdp.clone();
            (200, "OK", r.sdp.clone(), Some(r))
        }
        Err(_) => (488, "Not Acceptable Here", String::new(), None),
    }
}

/// Why a new INVITE cannot be taken, as (status, reason phrase, extra headers).
fn invite_refusal(
    req: &Request,
    local: SocketAddr,
    srtp: SrtpPolicy,
) -> Option<(u16, &'static str, String)> {
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
    if let Some(why) = super::sdp::offer_refusal(&sdp, srtp) {
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
    format!(
        "Contact: <sip:switchboard@{}{}>\r\n",
        host_port(local),
        transport.uri_param()
    )
}

/// `ip:port` as SIP writes it (IPv6 in brackets).
pub(crate) fn host_port(a: SocketAddr) -> String {
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
    build_in_dialog(d, "BYE", "", "", server)
}

/// A request of ours inside dialog `d` at its current local CSeq, with `extra` header lines.
fn build_in_dialog(d: &Dialog, method: &str, extra: &str, body: &str, server: &str) -> Vec<u8> {
    let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
    build_in_dialog_on(d, method, extra, body, server, &branch)
}

/// A request inside `d` on the given Via branch (a transaction we follow by it).
fn build_in_dialog_on(
    d: &Dialog,
    method: &str,
    extra: &str,
    body: &str,
    server: &str,
    branch: &str,
) -> Vec<u8> {
    let mut s = format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n",
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
        "From: {to_with_tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n{extra}User-Agent: {server}\r\nContent-Length: {}\r\n\r\n{body}",
        d.invite.from,
        d.invite.call_id,
        d.local_cseq,
        body.len()
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
            trust: None,
            digest_algorithms: vec![
                super::super::digest::Algorithm::Sha256,
                super::super::digest::Algorithm::Md5,
            ],
            advertise: None,
            srtp: SrtpPolicy::Off,
            trunk_srtp: HashMap::new(),
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

    /// An answered, acknowledged call "c1" from the caller at [`peer`]; our To tag.
    fn confirmed(c: &mut SipCore, t0: Instant) -> String {
        c.handle_message(t0, peer(), local(), invite("c1", "z9hG4bK1").as_bytes());
        drain(c);
        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c1".into(),
                sdp: "v=0\r\n".into(),
            },
        );
        let (tx, _) = drain(c);
        let tag = to_tag(&tx[0]);
        let ack = format!("ACK sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2\r\n\
            From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
        c.handle_message(t0, peer(), local(), ack.as_bytes());
        drain(c);
        tag
    }

    fn response_to(req: &str, status: &str) -> String {
        let h = |n: &str| req.lines().find(|l| l.starts_with(n)).unwrap().to_string();
        format!(
            "SIP/2.0 {status}\r\n{}\r\n{}\r\n{}\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            h("Via:"),
            h("From:"),
            h("To:"),
            h("Call-ID:"),
            h("CSeq:")
        )
    }

    #[test]
    fn a_transfer_sends_refer_and_reports_the_notify_progress() {
        let mut c = core();
        let t0 = Instant::now();
        let tag = confirmed(&mut c, t0);
        c.handle_command(
            t0,
            Command::Refer {
                call_id: "c1".into(),
                target: "sip:+15551230009@pbx.example".into(),
            },
        );
        let (tx, _) = drain(&mut c);
        let refer = &tx[0];
        assert!(
            refer.starts_with("REFER sip:+1555@127.0.0.1:5070 SIP/2.0"),
            "{refer}"
        );
        assert!(refer.contains("Refer-To: <sip:+15551230009@pbx.example>\r\n"));
        assert!(
            refer.contains("CSeq: 1 REFER"),
            "our first request in the dialog"
        );
        // Unanswered on UDP: resent at T1.
        c.handle_timeout(t0 + T1);
        assert!(drain(&mut c).0[0].starts_with("REFER "));
        c.handle_message(
            t0 + T1,
            peer(),
            local(),
            response_to(refer, "202 Accepted").as_bytes(),
        );
        let (_, ev) = drain(&mut c);
        assert_eq!(
            ev,
            vec![Event::Transfer {
                call_id: "c1".into(),
                status: 202,
                done: false
            }]
        );
        c.handle_timeout(t0 + T1 * 4);
        assert!(drain(&mut c).0.is_empty(), "answered: no more REFERs");
        for (cseq, frag, done) in [
            (2, "SIP/2.0 100 Trying", false),
            (3, "SIP/2.0 200 OK", true),
        ] {
            let notify = format!(
                "NOTIFY sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKn{cseq}\r\n\
                 From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: {cseq} NOTIFY\r\n\
                 Event: refer\r\nContent-Type: message/sipfrag\r\nContent-Length: {}\r\n\r\n{frag}",
                frag.len()
            );
            c.handle_message(t0 + T1 * 5, peer(), local(), notify.as_bytes());
            let (tx, ev) = drain(&mut c);
            assert!(tx[0].starts_with("SIP/2.0 200 OK"), "{}", tx[0]);
            let status = frag[8..11].parse().unwrap();
            assert_eq!(
                ev,
                vec![Event::Transfer {
                    call_id: "c1".into(),
                    status,
                    done
                }]
            );
        }
        // A NOTIFY for no dialog of ours is 481.
        let stray = "NOTIFY sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKs\r\n\
             From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag=zz\r\nCall-ID: other\r\nCSeq: 1 NOTIFY\r\n\
             Event: refer\r\nContent-Length: 0\r\n\r\n";
        c.handle_message(t0, peer(), local(), stray.as_bytes());
        assert!(drain(&mut c).0[0].starts_with("SIP/2.0 481"));
        // A transfer of a call that does not exist fails at once.
        c.handle_command(
            t0,
            Command::Refer {
                call_id: "nope".into(),
                target: "sip:x@y".into(),
            },
        );
        assert_eq!(
            drain(&mut c).1,
            vec![Event::Transfer {
                call_id: "nope".into(),
                status: 481,
                done: true
            }]
        );
    }

    #[test]
    fn a_refused_connection_fails_a_ringing_dial_at_once() {
        let mut c = core();
        let t0 = Instant::now();
        let trunk = Peer {
            addr: "127.0.0.1:5090".parse().unwrap(),
            transport: Transport::Tcp,
        };
        c.handle_command(
            t0,
            Command::Dial {
                spec: Box::new(DialSpec {
                    call_id: "out1".into(),
                    peer: trunk,
                    request_uri: "sip:+15551230001@127.0.0.1:5090".into(),
                    from_user: "+15550100".into(),
                    sdp: "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n".into(),
                    credentials: None,
                    ring_timeout: Duration::from_secs(30),
                    redirect_hosts: vec![],
                    headers: vec![],
                }),
                local: local(),
            },
        );
        assert!(drain(&mut c).0[0].starts_with("INVITE "));
        c.handle_command(t0, Command::TransportFailed { addr: trunk.addr });
        let (_, ev) = drain(&mut c);
        assert!(
            matches!(&ev[..], [Event::DialFailed { status: 503, .. }]),
            "{ev:?}"
        );
        // Another address's failure touches nothing.
        c.handle_command(
            t0,
            Command::TransportFailed {
                addr: "127.0.0.1:5091".parse().unwrap(),
            },
        );
        assert!(drain(&mut c).1.is_empty());
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
    fn srtp_offers_follow_the_policy_of_whoever_sent_them() {
        let savp = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
                    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let warning_of = |tx: &[String]| {
            tx[0]
                .lines()
                .find(|l| l.starts_with("Warning:"))
                .unwrap_or_default()
                .to_string()
        };
        // `[sip] srtp = "optional"`: the SAVP offer reaches the application, with its policy.
        let mut c = core();
        c.cfg.srtp = SrtpPolicy::Optional;
        let inv = invite_with_sdp("savp-ok", "z9hG4bKs1", savp);
        c.handle_message(Instant::now(), peer(), local(), inv.as_bytes());
        let (_, ev) = drain(&mut c);
        assert!(
            matches!(&ev[..], [Event::Invite(i)] if i.srtp == SrtpPolicy::Optional),
            "{ev:?}"
        );
        // `required`: a plain offer is refused with a Warning saying what to offer.
        c.cfg.srtp = SrtpPolicy::Required;
        let inv = invite_with_sdp("plain-no", "z9hG4bKs2", plain);
        c.handle_message(Instant::now(), peer(), local(), inv.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(tx[0].starts_with("SIP/2.0 488 "), "{tx:?}");
        assert!(warning_of(&tx).contains("SRTP is required"), "{tx:?}");
        // DTLS-SRTP is not SDES: refused whatever the policy.
        let dtls = plain.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
        let inv = invite_with_sdp("dtls-no", "z9hG4bKs3", &dtls);
        c.handle_message(Instant::now(), peer(), local(), inv.as_bytes());
        let (tx, _) = drain(&mut c);
        assert!(warning_of(&tx).contains("DTLS-SRTP"), "{tx:?}");
    }

    #[test]
    fn srtp_only_offer_gets_488_with_warning_when_srtp_is_off() {
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

    /// A core with one trunk (192.0.2.0/24) and one user, alice/wonderland.
    fn trusting_core(ban_after_failures: u32) -> SipCore {
        let trunk = crate::config::TrunkConfig {
            name: "carrier".into(),
            uri: "sip:192.0.2.1".into(),
            inbound_from: vec!["192.0.2.0/24".into()],
            username: None,
            password: None,
            register: false,
            register_expires: 600,
            caller_id: None,
            dial_allow: vec![],
            max_outbound: 10,
            calls_per_second: 10,
            keepalive_secs: 0,
            tls_ca: None,
            srtp: crate::config::SrtpPolicy::Off,
        };
        let user = crate::config::UserConfig {
            username: "alice".into(),
            password: "wonderland".into(),
        };
        let cfg = CoreConfig {
            defence: DefenceConfig {
                exempt: vec![],
                ban_after_failures,
                ..DefenceConfig::default()
            },
            ..core().cfg
        }
        .with_trunks(&[trunk], &[user])
        .unwrap();
        SipCore::new(cfg)
    }

    /// `req` with an Authorization header answering the first challenge of `resp`.
    fn authorize(req: &str, resp: &str, password: &str, nc: u32) -> String {
        let challenges: Vec<String> = resp
            .lines()
            .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
            .map(str::to_string)
            .collect();
        let ch = super::super::digest::Challenge::parse(&challenges[0]).unwrap();
        let method = req.split_whitespace().next().unwrap();
        let uri = req.split_whitespace().nth(1).unwrap();
        let auth = ch.answer("alice", password, method, uri, "c0ffee", nc);
        req.replacen("\r\n", &format!("\r\nAuthorization: {auth}\r\n"), 1)
    }

    fn final_status(tx: &[String]) -> Option<u16> {
        tx.iter()
            .filter_map(|t| t.split_whitespace().nth(1)?.parse().ok())
            .find(|s| *s >= 200)
    }

    #[test]
    fn with_trunks_and_users_a_stranger_is_challenged_and_a_user_admitted() {
        let mut c = trusting_core(5);
        let t0 = Instant::now();
        // Loopback is in the network ACL but is no trunk: challenged, SHA-256 first then MD5.
        c.handle_message(t0, peer(), local(), invite("a1", "z9hG4bKa1").as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(tx[0].starts_with("SIP/2.0 401 Unauthorized"), "{}", tx[0]);
        let www: Vec<&str> = tx[0]
            .lines()
            .filter(|l| l.starts_with("WWW-Authenticate:"))
            .collect();
        assert_eq!(www.len(), 2, "{}", tx[0]);
        assert!(www[0].contains("algorithm=SHA-256") && www[1].contains("algorithm=MD5"));
        assert!(www[0].contains("realm=\"switchboard-test\"") && www[0].contains("qop=\"auth\""));
        // The ACK of the 401 is absorbed (no dialog was made).
        c.handle_message(
            t0,
            peer(),
            local(),
            b"ACK sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1\r\nFrom: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag=x\r\nCall-ID: a1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(drain(&mut c).0.is_empty());

        // The same INVITE with the right credentials (a new branch, CSeq 2) is a call by alice.
        let again = invite("a1", "z9hG4bKa2").replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
        c.handle_message(
            t0,
            peer(),
            local(),
            authorize(&again, &tx[0], "wonderland", 1).as_bytes(),
        );
        let (tx2, ev) = drain(&mut c);
        assert!(tx2[0].starts_with("SIP/2.0 100"), "{}", tx2[0]);
        let Event::Invite(inv) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(inv.admitted, Some(Admitted::User("alice".into())));

        // Replaying the same credentials on another call is refused.
        let replay = invite("a2", "z9hG4bKa3").replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
        c.handle_message(
            t0,
            peer(),
            local(),
            authorize(&replay, &tx[0], "wonderland", 1).as_bytes(),
        );
        let (tx3, ev) = drain(&mut c);
        assert_eq!(final_status(&tx3), Some(403), "{tx3:?}");
        assert!(
            matches!(&ev[0], Event::Refused { status: 403, reason, .. } if reason.contains("replayed")),
            "{ev:?}"
        );

        // A trunk's source needs no credentials, and the ACL lets it in although it is not loopback.
        let carrier = Peer {
            addr: "192.0.2.7:5060".parse().unwrap(),
            transport: Transport::Udp,
        };
        c.handle_message(t0, carrier, local(), invite("t1", "z9hG4bKt1").as_bytes());
        let (_, ev) = drain(&mut c);
        let Event::Invite(inv) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(inv.admitted, Some(Admitted::Trunk("carrier".into())));
    }

    #[test]
    fn wrong_passwords_are_refused_and_enough_of_them_ban_the_source() {
        let mut c = trusting_core(3);
        let t0 = Instant::now();
        let mut banned = 0;
        for i in 0..3 {
            let inv = invite(&format!("w{i}"), &format!("z9hG4bKw{i}"));
            c.handle_message(t0, peer(), local(), inv.as_bytes());
            let (tx, _) = drain(&mut c);
            assert_eq!(final_status(&tx), Some(401));
            let inv =
                invite(&format!("w{i}"), &format!("z9hG4bKx{i}")).replace("CSeq: 1", "CSeq: 2");
            c.handle_message(
                t0,
                peer(),
                local(),
                authorize(&inv, &tx[0], "guess", 1).as_bytes(),
            );
            while let Some(o) = c.poll_output() {
                match o {
                    Output::Transmit(t) => {
                        assert!(String::from_utf8_lossy(&t.data).starts_with("SIP/2.0 403"))
                    }
                    Output::Banned(_) => banned += 1,
                    Output::Event(Event::Refused { status, reason, .. }) => {
                        assert_eq!(status, 403);
                        assert!(reason.contains("wrong password"), "{reason}");
                    }
                    Output::Event(e) => panic!("{e:?}"),
                }
            }
        }
        assert_eq!(banned, 1, "the third wrong password bans the source");
        c.handle_message(t0, peer(), local(), invite("w9", "z9hG4bKw9").as_bytes());
        assert!(c.poll_output().is_none(), "banned: dropped in silence");
    }

    fn register(call_id: &str, cseq: u32, branch: &str, contact: &str, user: &str) -> String {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n\
             From: <sip:{user}@127.0.0.1>;tag=r1\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn users_register_with_digest_and_their_bindings_expire() {
        let mut c = trusting_core(5);
        let t0 = Instant::now();
        let contact = "<sip:alice@127.0.0.1:5070>;expires=120";
        c.handle_message(
            t0,
            peer(),
            local(),
            register("r", 1, "z9hG4bKr1", contact, "alice").as_bytes(),
        );
        let (tx, _) = drain(&mut c);
        assert_eq!(final_status(&tx), Some(401), "{tx:?}");
        let req = authorize(
            &register("r", 2, "z9hG4bKr2", contact, "alice"),
            &tx[0],
            "wonderland",
            1,
        );
        c.handle_message(t0, peer(), local(), req.as_bytes());
        let (tx2, ev) = drain(&mut c);
        assert_eq!(final_status(&tx2), Some(200), "{tx2:?}");
        assert!(
            tx2[0].contains("Contact: <sip:alice@127.0.0.1:5070>;expires=120"),
            "{}",
            tx2[0]
        );
        assert!(
            matches!(&ev[0], Event::Registered { user, contacts } if user == "alice" && contacts.len() == 1)
        );
        let b = c.bindings(t0, "alice");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].contact, "sip:alice@127.0.0.1:5070");
        assert_eq!(b[0].peer, peer());
        assert!(
            c.bindings(t0 + Duration::from_secs(121), "alice")
                .is_empty(),
            "expiry honoured"
        );

        // Too brief: 423 with Min-Expires; alice registering bob: 403; expires=0 removes.
        let brief = "<sip:alice@127.0.0.1:5070>;expires=5";
        let req = authorize(
            &register("r", 3, "z9hG4bKr3", brief, "alice"),
            &tx[0],
            "wonderland",
            2,
        );
        c.handle_message(t0, peer(), local(), req.as_bytes());
        let (tx3, _) = drain(&mut c);
        assert_eq!(final_status(&tx3), Some(423));
        assert!(tx3[0].contains("Min-Expires: 60"));
        let req = authorize(
            &register("r", 4, "z9hG4bKr4", contact, "bob"),
            &tx[0],
            "wonderland",
            3,
        );
        c.handle_message(t0, peer(), local(), req.as_bytes());
        assert_eq!(final_status(&drain(&mut c).0), Some(403));
        let gone = "<sip:alice@127.0.0.1:5070>;expires=0";
        let req = authorize(
            &register("r", 5, "z9hG4bKr5", gone, "alice"),
            &tx[0],
            "wonderland",
            4,
        );
        c.handle_message(t0, peer(), local(), req.as_bytes());
        assert_eq!(final_status(&drain(&mut c).0), Some(200));
        assert!(c.bindings(t0, "alice").is_empty());

        // Without trunks or users there is no registrar: 405 as before.
        let mut open = core();
        open.handle_message(
            t0,
            peer(),
            local(),
            register("o", 1, "z9hG4bKo1", contact, "alice").as_bytes(),
        );
        assert_eq!(final_status(&drain(&mut open).0), Some(405));
    }

    /// A response from the peer to a request the core sent.
    fn respond(req: &str, status: u16) -> String {
        let pick = |name: &str| {
            req.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        format!(
            "SIP/2.0 {status} Whatever\r\n{}\r\n{}\r\n{}\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            pick("Via:"),
            pick("From:"),
            pick("To:"),
            pick("Call-ID:"),
            pick("CSeq:")
        )
    }

    /// Set up call `c1` with `extra` header lines in its INVITE; returns the 200 we sent.
    fn timed_call(c: &mut SipCore, t0: Instant, extra: &str) -> String {
        let inv = invite("c1", "z9hG4bKs1").replacen(
            "CSeq: 1 INVITE\r\n",
            &format!("CSeq: 1 INVITE\r\n{extra}"),
            1,
        );
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        drain(c);
        c.handle_command(
            t0,
            Command::Answer {
                call_id: "c1".into(),
                sdp: "v=0\r\no=switchboard 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\na=sendrecv\r\n".into(),
            },
        );
        let (tx, _) = drain(c);
        let ok = tx[0].clone();
        let tag = to_tag(&ok);
        let ack = format!(
            "ACK sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKs2\r\n\
             From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        c.handle_message(t0, peer(), local(), ack.as_bytes());
        drain(c);
        ok
    }

    fn at(c: &mut SipCore, t: Instant) -> (Vec<String>, Vec<Event>) {
        c.handle_timeout(t);
        drain(c)
    }

    #[test]
    fn an_unrefreshed_session_ends_and_a_refresh_keeps_it() {
        let mut c = core();
        let t0 = Instant::now();
        let ok = timed_call(&mut c, t0, "Supported: timer\r\nSession-Expires: 120\r\n");
        assert!(
            ok.contains("Session-Expires: 120;refresher=uac\r\n"),
            "{ok}"
        );
        assert!(ok.contains("Require: timer\r\n"), "{ok}");
        let tag = to_tag(&ok);
        assert!(at(&mut c, t0 + Duration::from_secs(60)).0.is_empty());
        // The caller refreshes with a re-INVITE without an offer at 60 s.
        let refresh = format!(
            "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKs3\r\n\
             From: <sip:+1555@127.0.0.1>;tag=a1\r\nTo: <sip:ivr@127.0.0.1>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 2 INVITE\r\n\
             Supported: timer\r\nSession-Expires: 120;refresher=uac\r\nContent-Length: 0\r\n\r\n"
        );
        c.handle_message(
            t0 + Duration::from_secs(60),
            peer(),
            local(),
            refresh.as_bytes(),
        );
        let (tx, _) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200"), "{}", tx[0]);
        assert!(
            tx[0].contains("Session-Expires: 120;refresher=uac"),
            "{}",
            tx[0]
        );
        // The first deadline (88 s) has passed harmlessly; the new one is 60 + 88.
        assert!(at(&mut c, t0 + Duration::from_secs(100)).0.is_empty());
        assert!(at(&mut c, t0 + Duration::from_secs(147)).0.is_empty());
        let (tx, ev) = at(&mut c, t0 + Duration::from_secs(148));
        assert!(tx[0].starts_with("BYE "), "{tx:?}");
        assert!(ev.contains(&Event::Ended {
            call_id: "c1".into(),
            reason: DialogEnd::SessionExpired
        }));
    }

    #[test]
    fn we_refresh_with_update_and_a_481_ends_the_call() {
        let mut c = core();
        let t0 = Instant::now();
        // A proxy asked for 90 s; the caller does not support timer but allows UPDATE.
        let ok = timed_call(
            &mut c,
            t0,
            "Session-Expires: 90\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n",
        );
        assert!(ok.contains("Session-Expires: 90;refresher=uas\r\n"), "{ok}");
        assert!(!ok.contains("Require: timer"), "{ok}");
        assert!(at(&mut c, t0 + Duration::from_secs(44)).0.is_empty());
        let (tx, _) = at(&mut c, t0 + Duration::from_secs(45));
        assert!(
            tx[0].starts_with("UPDATE sip:+1555@127.0.0.1:5070 SIP/2.0"),
            "{}",
            tx[0]
        );
        assert!(
            tx[0].contains("CSeq: 1 UPDATE") && tx[0].contains("Session-Expires: 90;refresher=uas")
        );
        // Unanswered for a moment: retransmitted; then answered 200.
        let (again, _) = at(&mut c, t0 + Duration::from_millis(45_500));
        assert_eq!(again, vec![tx[0].clone()]);
        c.handle_message(
            t0 + Duration::from_secs(46),
            peer(),
            local(),
            respond(&tx[0], 200).as_bytes(),
        );
        assert!(drain(&mut c).0.is_empty());
        assert!(
            at(&mut c, t0 + Duration::from_secs(90)).0.is_empty(),
            "refreshed at 46 s: next at 91 s"
        );
        let (tx, _) = at(&mut c, t0 + Duration::from_secs(91));
        assert!(
            tx[0].starts_with("UPDATE ") && tx[0].contains("CSeq: 2 UPDATE"),
            "{tx:?}"
        );
        c.handle_message(
            t0 + Duration::from_secs(91),
            peer(),
            local(),
            respond(&tx[0], 481).as_bytes(),
        );
        let (tx, ev) = drain(&mut c);
        assert!(
            tx[0].starts_with("BYE ") && tx[0].contains("CSeq: 3 BYE"),
            "{tx:?}"
        );
        assert!(ev.contains(&Event::Ended {
            call_id: "c1".into(),
            reason: DialogEnd::SessionExpired
        }));
    }

    #[test]
    fn without_update_we_refresh_by_reinvite_and_acknowledge_its_answer() {
        let mut c = core();
        let t0 = Instant::now();
        timed_call(
            &mut c,
            t0,
            "Session-Expires: 100;refresher=uas\r\nSupported: timer\r\n",
        );
        let (tx, _) = at(&mut c, t0 + Duration::from_secs(50));
        assert!(
            tx[0].starts_with("INVITE sip:+1555@127.0.0.1:5070"),
            "{}",
            tx[0]
        );
        assert!(
            tx[0].contains("m=audio 20000 RTP/AVP 0"),
            "our session offered again: {}",
            tx[0]
        );
        c.handle_message(
            t0 + Duration::from_secs(50),
            peer(),
            local(),
            respond(&tx[0], 200).as_bytes(),
        );
        let (tx, _) = drain(&mut c);
        assert!(
            tx[0].starts_with("ACK ") && tx[0].contains("CSeq: 1 ACK"),
            "{tx:?}"
        );
    }

    #[test]
    fn too_short_a_session_is_422_and_require_timer_is_understood() {
        let mut c = core();
        let t0 = Instant::now();
        let inv = invite("c9", "z9hG4bK9").replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nSession-Expires: 30\r\n",
            1,
        );
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(
            tx[0].starts_with("SIP/2.0 422") && tx[0].contains("Min-SE: 90"),
            "{tx:?}"
        );
        assert!(ev.is_empty());
        let inv = invite("c8", "z9hG4bK8").replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nRequire: timer\r\nSession-Expires: 1800\r\n",
            1,
        );
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 100"), "{tx:?}");
        assert!(matches!(ev[0], Event::Invite(_)));
        let inv = invite("c6", "z9hG4bK6").replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nRequire: 100rel\r\n",
            1,
        );
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        assert!(
            drain(&mut c).0[0].starts_with("SIP/2.0 100"),
            "100rel is honoured"
        );
        let inv = invite("c7", "z9hG4bK7").replacen(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nRequire: precondition\r\n",
            1,
        );
        c.handle_message(t0, peer(), local(), inv.as_bytes());
        assert!(drain(&mut c).0[0].starts_with("SIP/2.0 420"));
    }

    #[test]
    fn an_outbound_call_rings_is_answered_and_becomes_a_dialog_either_side_ends() {
        let mut c = core();
        let t0 = Instant::now();
        let spec = super::super::dial::DialSpec {
            call_id: "out1".into(),
            peer: peer(),
            request_uri: "sip:+15551234@127.0.0.1:5070".into(),
            from_user: "+15550100".into(),
            sdp: "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20000 RTP/AVP 0\r\n".into(),
            credentials: None,
            ring_timeout: Duration::from_secs(30),
            redirect_hosts: vec![],
            headers: vec![],
        };
        c.handle_command(
            t0,
            Command::Dial {
                spec: Box::new(spec),
                local: local(),
            },
        );
        let (tx, _) = drain(&mut c);
        let inv = tx[0].clone();
        assert!(inv.starts_with("INVITE sip:+15551234@127.0.0.1:5070 SIP/2.0"));
        c.handle_message(
            t0,
            peer(),
            local(),
            respond(&inv, 180)
                .replace(
                    "To: <sip:+15551234@127.0.0.1:5070>",
                    "To: <sip:+15551234@127.0.0.1:5070>;tag=far",
                )
                .as_bytes(),
        );
        let (_, ev) = drain(&mut c);
        assert_eq!(
            ev,
            vec![Event::DialProgress {
                call_id: "out1".into(),
                status: 180,
                early_sdp: None
            }]
        );
        let ok = respond(&inv, 200)
            .replace("To: <sip:+15551234@127.0.0.1:5070>", "To: <sip:+15551234@127.0.0.1:5070>;tag=far")
            .replace("Content-Length: 0\r\n\r\n", "Contact: <sip:far@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n");
        c.handle_message(t0, peer(), local(), ok.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(
            tx[0].starts_with("ACK sip:far@127.0.0.1:5070 SIP/2.0"),
            "{tx:?}"
        );
        assert_eq!(
            ev,
            vec![Event::DialAnswered {
                call_id: "out1".into(),
                sdp: "v=0\n".into()
            }]
        );
        assert_eq!(c.dialog_count(), 1);
        // We hang up: BYE from us (our From, their To with its tag), CSeq after the INVITE's.
        c.handle_command(
            t0,
            Command::Hangup {
                call_id: "out1".into(),
            },
        );
        let (tx, _) = drain(&mut c);
        let bye = &tx[0];
        assert!(
            bye.starts_with("BYE sip:far@127.0.0.1:5070 SIP/2.0"),
            "{bye}"
        );
        assert!(
            bye.contains("CSeq: 2 BYE")
                && bye.contains("To: <sip:+15551234@127.0.0.1:5070>;tag=far"),
            "{bye}"
        );
        assert!(
            bye.lines()
                .any(|l| l.starts_with("From: <sip:+15550100@127.0.0.1:5060>;tag=")),
            "{bye}"
        );
        c.handle_message(t0, peer(), local(), respond(bye, 200).as_bytes());
        let (_, ev) = drain(&mut c);
        assert!(
            matches!(&ev[0], Event::Ended { call_id, reason: DialogEnd::HungUp } if call_id == "out1")
        );

        // A second call that the far end hangs up, and one cancelled while ringing.
        let spec2 = |id: &str| super::super::dial::DialSpec {
            call_id: id.into(),
            peer: peer(),
            request_uri: "sip:+15551234@127.0.0.1:5070".into(),
            from_user: "+15550100".into(),
            sdp: "v=0\r\n".into(),
            credentials: None,
            ring_timeout: Duration::from_secs(30),
            redirect_hosts: vec![],
            headers: vec![],
        };
        c.handle_command(
            t0,
            Command::Dial {
                spec: Box::new(spec2("out2")),
                local: local(),
            },
        );
        let inv = drain(&mut c).0[0].clone();
        let ok = respond(&inv, 200)
            .replace(
                "To: <sip:+15551234@127.0.0.1:5070>",
                "To: <sip:+15551234@127.0.0.1:5070>;tag=far2",
            )
            .replace(
                "Content-Length: 0",
                "Contact: <sip:far@127.0.0.1:5070>\r\nContent-Length: 0",
            );
        c.handle_message(t0, peer(), local(), ok.as_bytes());
        let (tx, _) = drain(&mut c);
        let from = tx[0]
            .lines()
            .find(|l| l.starts_with("From:"))
            .unwrap()
            .trim_start_matches("From: ")
            .to_string();
        let their_bye = format!(
            "BYE sip:+15550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfb\r\n\
             From: <sip:+15551234@127.0.0.1:5070>;tag=far2\r\nTo: {from}\r\nCall-ID: out2\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        c.handle_message(t0, peer(), local(), their_bye.as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("SIP/2.0 200"), "{tx:?}");
        assert!(
            ev.contains(&Event::Bye {
                call_id: "out2".into()
            }),
            "{ev:?}"
        );
        c.handle_command(
            t0,
            Command::Dial {
                spec: Box::new(spec2("out3")),
                local: local(),
            },
        );
        let inv = drain(&mut c).0[0].clone();
        c.handle_message(t0, peer(), local(), respond(&inv, 180).as_bytes());
        drain(&mut c);
        c.handle_command(
            t0,
            Command::Hangup {
                call_id: "out3".into(),
            },
        );
        let (tx, _) = drain(&mut c);
        assert!(tx[0].starts_with("CANCEL "), "{tx:?}");
        c.handle_message(t0, peer(), local(), respond(&inv, 487).as_bytes());
        let (tx, ev) = drain(&mut c);
        assert!(tx[0].starts_with("ACK "));
        assert!(
            matches!(&ev[0], Event::DialFailed { status: 487, .. }),
            "{ev:?}"
        );
    }
}

//! Registration with a trunk (RFC 3261 §10.2) as a client: REGISTER, answered challenges
//! (401/407, digest), refreshes before the granted expiry, back-off after failures, and an
//! un-REGISTER (Expires: 0) on shutdown. A sans-IO state machine the core owns, one per
//! `register = true` trunk; the core routes its responses here by Call-ID and its timers by
//! `Registration::next_timer`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client_tx::{ClientTx, TxTimer};
use super::core::{host_port, Peer, Transport};
use super::digest::Challenge;
use super::message::{param, uri_of, Response};

/// Back-off after a failed registration: 5 s, doubling, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// What the trunk's configuration says about registering.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationSpec {
    /// The trunk's name.
    pub trunk: String,
    /// Where REGISTERs go.
    pub peer: Peer,
    /// The registrar's URI (Request-URI): `sip:host[:port]`.
    pub registrar: String,
    /// Our address of record's user and the digest username.
    pub username: String,
    /// The digest password (never logged).
    pub password: String,
    /// Seconds asked for.
    pub expires: u32,
}

impl std::fmt::Debug for RegistrationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationSpec")
            .field("trunk", &self.trunk)
            .field("peer", &self.peer)
            .field("registrar", &self.registrar)
            .field("username", &self.username)
            .field("password", &"***")
            .field("expires", &self.expires)
            .finish()
    }
}

/// Where a registration stands, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// A REGISTER is out (first one, refresh or retry).
    Registering,
    /// The registrar holds our binding.
    Registered {
        /// Seconds it granted.
        expires: u32,
    },
    /// The last attempt failed; retried after a back-off.
    Failed {
        /// The registrar's answer (408: none came).
        status: u16,
        /// Its reason phrase, or ours.
        reason: String,
    },
    /// Un-registered on shutdown (or the un-REGISTER went unanswered).
    Unregistered,
}

pub(crate) struct Registration {
    spec: RegistrationSpec,
    local: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The REGISTER in flight.
    tx: Option<ClientTx>,
    /// Next REGISTER: a refresh or a retry.
    next_attempt: Option<Instant>,
    state: RegistrationState,
    /// The registrar's latest challenge, reused for refreshes (with a growing `nc`).
    challenge: Option<(Challenge, bool)>,
    nc: u32,
    /// Challenges answered for the request in flight: a second challenge for the same
    /// nonce means the credentials are wrong.
    answered_nonce: Option<String>,
    expires: u32,
    backoff: Duration,
    unregistering: bool,
}

impl Registration {
    pub fn new(spec: RegistrationSpec, local: SocketAddr) -> Registration {
        let expires = spec.expires;
        Registration {
            spec,
            local,
            call_id: format!("{:016x}@switchboard", rand::random::<u64>()),
            from_tag: super::core::new_tag(),
            cseq: 0,
            tx: None,
            next_attempt: None,
            state: RegistrationState::Registering,
            challenge: None,
            nc: 0,
            answered_nonce: None,
            expires,
            backoff: FIRST_BACKOFF,
            unregistering: false,
        }
    }

    pub fn trunk(&self) -> &str {
        &self.spec.trunk
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn peer(&self) -> Peer {
        self.spec.peer
    }

    pub fn state(&self) -> &RegistrationState {
        &self.state
    }

    /// The first REGISTER.
    pub fn start(&mut self, now: Instant) -> Vec<u8> {
        self.send_register(now, self.expires)
    }

    /// Shutdown: remove our binding (Expires: 0). `None` when nothing is registered.
    pub fn unregister(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !matches!(self.state, RegistrationState::Registered { .. }) {
            self.state = RegistrationState::Unregistered;
            self.next_attempt = None;
            self.tx = None;
            return None;
        }
        self.unregistering = true;
        self.next_attempt = None;
        Some(self.send_register(now, 0))
    }

    pub fn next_timer(&self) -> Option<Instant> {
        [
            self.tx.as_ref().map(ClientTx::next_timer),
            self.next_attempt,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers due at `now`: what to send, and whether the state changed.
    pub fn on_timer(&mut self, now: Instant) -> (Option<Vec<u8>>, bool) {
        if let Some(tx) = self.tx.as_mut() {
            match tx.on_timer(now) {
                TxTimer::Resend(data) => return (Some(data), false),
                TxTimer::TimedOut => {
                    self.tx = None;
                    if self.unregistering {
                        self.state = RegistrationState::Unregistered;
                        return (None, true);
                    }
                    self.fail(now, 408, "no answer from the registrar".into());
                    return (None, true);
                }
                TxTimer::Nothing => {}
            }
        }
        if self.next_attempt.is_some_and(|t| t <= now) && self.tx.is_none() {
            self.next_attempt = None;
            let changed = !matches!(self.state, RegistrationState::Registered { .. });
            if changed {
                self.state = RegistrationState::Registering;
            }
            return (Some(self.send_register(now, self.expires)), changed);
        }
        (None, false)
    }

    /// A response to one of our REGISTERs: what to send next, and whether the state changed.
    pub fn on_response(&mut self, now: Instant, r: &Response) -> (Option<Vec<u8>>, bool) {
        let ours = self.tx.as_ref().is_some_and(|tx| tx.matches(r));
        if !ours || r.status < 200 {
            if let (true, Some(tx)) = (ours, self.tx.as_mut()) {
                tx.provisional(now);
            }
            return (None, false);
        }
        self.tx = None;
        let requested = if self.unregistering { 0 } else { self.expires };
        match r.status {
            200..=299 if self.unregistering => {
                self.state = RegistrationState::Unregistered;
                (None, true)
            }
            200..=299 => {
                let granted = self.granted(r).unwrap_or(requested).max(1);
                self.backoff = FIRST_BACKOFF;
                self.next_attempt = Some(now + refresh_after(granted));
                let was = self.state.clone();
                self.state = RegistrationState::Registered { expires: granted };
                (None, was != self.state)
            }
            401 | 407 => {
                let values = if r.status == 401 {
                    &r.www_authenticate
                } else {
                    &r.proxy_authenticate
                };
                let Some(ch) = Challenge::best(values) else {
                    return self.failed_now(now, r.status, "unusable challenge".into());
                };
                let repeated = self.answered_nonce.as_deref() == Some(ch.nonce.as_str());
                if repeated && !ch.stale {
                    self.challenge = None;
                    return self.failed_now(now, r.status, "credentials refused".into());
                }
                self.answered_nonce = Some(ch.nonce.clone());
                self.challenge = Some((ch, r.status == 407));
                self.nc = 0;
                (Some(self.send_register(now, requested)), false)
            }
            423 => match r.min_expires {
                Some(min) if min > self.expires && !self.unregistering => {
                    self.expires = min;
                    (Some(self.send_register(now, min)), false)
                }
                _ => self.failed_now(now, 423, "Interval Too Brief".into()),
            },
            status => {
                if self.unregistering {
                    self.state = RegistrationState::Unregistered;
                    return (None, true);
                }
                // Credentials may be stale on another node's restart: start afresh next time.
                self.challenge = None;
                self.failed_now(now, status, r.reason.clone())
            }
        }
    }

    fn failed_now(&mut self, now: Instant, status: u16, reason: String) -> (Option<Vec<u8>>, bool) {
        if self.unregistering {
            self.state = RegistrationState::Unregistered;
            return (None, true);
        }
        self.fail(now, status, reason);
        (None, true)
    }

    fn fail(&mut self, now: Instant, status: u16, reason: String) {
        self.state = RegistrationState::Failed { status, reason };
        self.next_attempt = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.answered_nonce = None;
    }

    /// The expiry the registrar granted our Contact (its `expires` parameter, else Expires).
    fn granted(&self, r: &Response) -> Option<u32> {
        let ours = self.contact_uri();
        r.contacts
            .iter()
            .find(|c| uri_of(c).eq_ignore_ascii_case(&ours))
            .and_then(|c| param(c, "expires"))
            .and_then(|e| e.trim().parse().ok())
            .or(r.expires)
    }

    /// Our binding; over TCP or TLS it says so, so the trunk calls us back on that transport.
    fn contact_uri(&self) -> String {
        format!(
            "sip:{}@{}{}",
            self.spec.username,
            host_port(self.local),
            self.spec.peer.transport.uri_param()
        )
    }

    fn send_register(&mut self, now: Instant, expires: u32) -> Vec<u8> {
        self.cseq += 1;
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let registrar = &self.spec.registrar;
        let host = registrar
            .strip_prefix("sip:")
            .unwrap_or(registrar)
            .split([';', '?'])
            .next()
            .unwrap_or("");
        let aor = format!("sip:{}@{host}", self.spec.username);
        let mut auth = String::new();
        if let Some((ch, proxy)) = &self.challenge {
            self.nc += 1;
            let cnonce = format!("{:016x}", rand::random::<u64>());
            let value = ch.answer(
                &self.spec.username,
                &self.spec.password,
                "REGISTER",
                registrar,
                &cnonce,
                self.nc,
            );
            let name = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            auth = format!("{name}: {value}\r\n");
        }
        let data = format!(
            "REGISTER {registrar} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <{aor}>;tag={}\r\nTo: <{aor}>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n\
             Contact: <{}>;expires={expires}\r\nExpires: {expires}\r\n{auth}User-Agent: switchboard\r\n\
             Content-Length: 0\r\n\r\n",
            self.spec.peer.transport.as_str(),
            host_port(self.local),
            self.from_tag,
            self.call_id,
            self.cseq,
            self.contact_uri(),
        )
        .into_bytes();
        let udp = self.spec.peer.transport == Transport::Udp;
        self.tx = Some(ClientTx::new(now, branch, self.cseq, data.clone(), udp));
        data
    }
}

/// When to refresh a registration granted for `granted` seconds: halfway for short ones,
/// a minute ahead for long ones (a lost refresh then still has time for retransmissions).
fn refresh_after(granted: u32) -> Duration {
    let g = u64::from(granted);
    Duration::from_secs(if g <= 120 { (g / 2).max(1) } else { g - 60 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::{Algorithm, Check, Credentials, NonceBook};
    use crate::sip::message::{self, SipMessage};

    fn spec() -> RegistrationSpec {
        RegistrationSpec {
            trunk: "carrier".into(),
            peer: Peer {
                addr: "127.0.0.1:5080".parse().unwrap(),
                transport: Transport::Udp,
            },
            registrar: "sip:127.0.0.1:5080".into(),
            username: "acct".into(),
            password: "secret".into(),
            expires: 600,
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    /// The registrar's answer to `req`: `status` with extra header lines.
    fn answer(req: &[u8], status: u16, extra: &str) -> Response {
        let text = String::from_utf8_lossy(req);
        let pick = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        let raw = format!(
            "SIP/2.0 {status} Whatever\r\n{}\r\n{}\r\n{};tag=reg\r\n{}\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
            pick("Via:"),
            pick("From:"),
            pick("To:"),
            pick("Call-ID:"),
            pick("CSeq:")
        );
        match message::parse(raw.as_bytes(), 65535) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn header(req: &[u8], name: &str) -> Option<String> {
        String::from_utf8_lossy(req)
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    }

    #[test]
    fn challenge_answered_registered_refreshed_and_unregistered() {
        let t0 = Instant::now();
        let mut book = NonceBook::new("carrier.test", Duration::from_secs(300), 10);
        let mut reg = Registration::new(spec(), local());
        let first = reg.start(t0);
        assert!(header(&first, "Authorization:").is_none());
        assert_eq!(header(&first, "Expires:").as_deref(), Some("600"));
        assert_eq!(
            header(&first, "Contact:").as_deref(),
            Some("<sip:acct@127.0.0.1:5060>;expires=600")
        );
        let ch = book.challenge(t0, Algorithm::Md5, false);
        let (again, changed) = reg.on_response(
            t0,
            &answer(&first, 401, &format!("WWW-Authenticate: {ch}\r\n")),
        );
        assert!(!changed);
        let again = again.expect("answered with credentials");
        assert!(header(&again, "CSeq:").unwrap().starts_with("2 "));
        let creds = Credentials::parse(&header(&again, "Authorization:").unwrap()).unwrap();
        assert_eq!(
            book.check(t0, &creds, "REGISTER", "sip:127.0.0.1:5080", |_| Some(
                "secret"
            )),
            Check::Accepted("acct".into())
        );
        // Granted a shorter expiry than asked: refreshed halfway through it.
        let ok = answer(
            &again,
            200,
            "Contact: <sip:acct@127.0.0.1:5060>;expires=20\r\n",
        );
        assert_eq!(reg.on_response(t0, &ok), (None, true));
        assert_eq!(reg.state(), &RegistrationState::Registered { expires: 20 });
        assert_eq!(reg.next_timer(), Some(t0 + Duration::from_secs(10)));
        let (refresh, changed) = reg.on_timer(t0 + Duration::from_secs(10));
        let refresh = refresh.expect("refresh");
        assert!(!changed, "still registered while refreshing");
        let creds = Credentials::parse(&header(&refresh, "Authorization:").unwrap()).unwrap();
        assert_eq!(
            creds.qop.as_ref().map(|q| q.0),
            Some(2),
            "the nonce reused with nc=2"
        );
        let ok = answer(&refresh, 200, "Expires: 20\r\n");
        reg.on_response(t0 + Duration::from_secs(10), &ok);
        // Shutdown.
        let bye = reg
            .unregister(t0 + Duration::from_secs(11))
            .expect("un-REGISTER");
        assert_eq!(header(&bye, "Expires:").as_deref(), Some("0"));
        let ok = answer(&bye, 200, "");
        assert_eq!(
            reg.on_response(t0 + Duration::from_secs(11), &ok),
            (None, true)
        );
        assert_eq!(reg.state(), &RegistrationState::Unregistered);
        assert_eq!(reg.next_timer(), None);
    }

    #[test]
    fn wrong_credentials_fail_and_are_retried_with_back_off() {
        let t0 = Instant::now();
        let mut reg = Registration::new(spec(), local());
        let first = reg.start(t0);
        let ch = "WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"\r\n";
        let (again, _) = reg.on_response(t0, &answer(&first, 401, ch));
        // The same nonce challenged again (not stale): the password is wrong.
        let (none, changed) = reg.on_response(t0, &answer(&again.unwrap(), 401, ch));
        assert!(none.is_none() && changed);
        assert!(matches!(
            reg.state(),
            RegistrationState::Failed { status: 401, .. }
        ));
        assert_eq!(reg.next_timer(), Some(t0 + Duration::from_secs(5)));
        let (retry, _) = reg.on_timer(t0 + Duration::from_secs(5));
        let retry = retry.expect("retried");
        assert!(header(&retry, "Authorization:").is_none(), "afresh");
        assert_eq!(reg.state(), &RegistrationState::Registering);
        // 503 next: failed again, the back-off doubled.
        let t1 = t0 + Duration::from_secs(5);
        reg.on_response(t1, &answer(&retry, 503, ""));
        assert_eq!(reg.next_timer(), Some(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn unanswered_registers_are_retransmitted_then_time_out() {
        let t0 = Instant::now();
        let mut reg = Registration::new(spec(), local());
        let first = reg.start(t0);
        let mut t = t0;
        let mut resent = 0;
        while let Some(next) = reg.next_timer() {
            t = next;
            let (data, changed) = reg.on_timer(t);
            if let Some(d) = data {
                assert_eq!(d, first);
                resent += 1;
            }
            if changed {
                break;
            }
        }
        assert_eq!(t, t0 + crate::sip::client_tx::TIMEOUT);
        assert!(resent >= 9, "{resent} retransmissions");
        assert!(matches!(
            reg.state(),
            RegistrationState::Failed { status: 408, .. }
        ));
        // A proxy's 407 is answered with Proxy-Authorization.
        let mut reg = Registration::new(spec(), local());
        let first = reg.start(t0);
        let ch = "Proxy-Authenticate: Digest realm=\"p\", nonce=\"n\", algorithm=SHA-256\r\n";
        let (again, _) = reg.on_response(t0, &answer(&first, 407, ch));
        let again = again.expect("answered");
        assert!(header(&again, "Authorization:").is_none());
        let creds = Credentials::parse(&header(&again, "Proxy-Authorization:").unwrap()).unwrap();
        assert_eq!(creds.algorithm, Algorithm::Sha256);
        assert_eq!(creds.qop, None, "no qop offered, none used");
        // 423 with Min-Expires: asked again with that expiry.
        let mut reg = Registration::new(spec(), local());
        let first = reg.start(t0);
        let (again, _) = reg.on_response(t0, &answer(&first, 423, "Min-Expires: 1200\r\n"));
        assert_eq!(header(&again.unwrap(), "Expires:").as_deref(), Some("1200"));
    }
}

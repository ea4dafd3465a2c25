//! The tokio driver around [`SipCore`]: UDP and TCP sockets in, commands from calls in,
//! transmissions and events out. All protocol decisions live in the core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::acl::Acl;
use super::core::{Command, CoreConfig, Event, Output, Peer, SipCore, TcpLimits, Transport};
use super::defence::LogLimiter;
use super::keepalive::{KeepaliveSpec, Reachability};
use super::register::{RegistrationSpec, RegistrationState};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The TLS certificate or key cannot be used.
    #[error("SIP TLS: {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(u16, String)>>>>;
/// The latest state of each trunk registration, by trunk name.
type TrunkStates = Arc<Mutex<std::collections::BTreeMap<String, RegistrationState>>>;
/// Whether each keep-alive trunk answers, by trunk name.
type TrunkReach = Arc<Mutex<std::collections::BTreeMap<String, Reachability>>>;
/// Each registered user's latest binding, for calls to it (`client:NAME`).
type Located = Arc<Mutex<HashMap<String, UserLocation>>>;

/// Where a registered `[[users]]` phone can be called now: its latest binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLocation {
    /// Where its REGISTER came from (INVITEs to it go there).
    pub peer: Peer,
    /// Its Contact URI (the Request-URI of an INVITE to it).
    pub contact: String,
    /// Our address as it sees us.
    pub local: SocketAddr,
    /// When the binding lapses.
    pub expires_at: Instant,
}

/// Handle the call layer uses to drive signalling.
#[derive(Clone)]
pub struct SipHandle {
    cmd: mpsc::UnboundedSender<Command>,
    pending: Pending,
    trunks: TrunkStates,
    reach: TrunkReach,
    located: Located,
    connector: SharedConnector,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendMessageError {
    #[error("invalid SIP URI {0:?}")]
    BadUri(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("the trunk answered {0} {1}")]
    Refused(u16, String),
    #[error("the SIP endpoint has stopped")]
    Stopped,
}

/// `host:port` of a trunk URI (`sip:[user@]host[:port][;params]`), port 5060 by default.
pub fn hostport_of(trunk: &str) -> Option<String> {
    let rest = trunk.trim().strip_prefix("sip:")?;
    let rest = rest.split([';', '?']).next()?;
    let host = rest.rsplit('@').next()?;
    if host.is_empty() {
        return None;
    }
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    };
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:5060")
    })
}

impl SipHandle {
    /// Let the endpoint open a connection to this trunk address itself (a TCP or TLS trunk).
    pub fn allow_outbound(&self, addr: SocketAddr, how: Outbound) {
        if let Ok(mut c) = self.connector.lock() {
            c.allowed.insert(addr, how);
        }
    }

    /// Keep a registration with a trunk (see `sip::register`).
    pub fn register(&self, spec: RegistrationSpec) {
        if let Ok(mut t) = self.trunks.lock() {
            t.insert(spec.trunk.clone(), RegistrationState::Registering);
        }
        self.send(Command::Register {
            local: spec.peer.addr, // replaced by the driver with our address as seen from it
            spec: Box::new(spec),
        });
    }

    /// Send OPTIONS keep-alives to a trunk (see `sip::keepalive`).
    pub fn keepalive(&self, spec: KeepaliveSpec) {
        self.send(Command::Keepalive {
            local: spec.peer.addr, // replaced by the driver
            spec: Box::new(spec),
        });
    }

    /// Where the registered user `user` can be called, when it has a live binding.
    pub fn locate_user(&self, user: &str) -> Option<UserLocation> {
        let l = self.located.lock().ok()?.get(user).cloned()?;
        (l.expires_at > Instant::now()).then_some(l)
    }

    /// Whether each keep-alive trunk answers (trunks not heard from yet are missing).
    pub fn trunk_reachability(&self) -> Vec<(String, Reachability)> {
        self.reach
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Each registered trunk's latest state, by name.
    pub fn trunk_registrations(&self) -> Vec<(String, RegistrationState)> {
        self.trunks
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Shutdown: un-REGISTER from every trunk, waiting up to `limit` for the answers.
    pub async fn unregister_all(&self, limit: std::time::Duration) {
        if self.trunk_registrations().is_empty() {
            return;
        }
        self.send(Command::UnregisterAll);
        let start = Instant::now();
        while start.elapsed() < limit {
            let done = self
                .trunk_registrations()
                .iter()
                .all(|(_, s)| matches!(s, RegistrationState::Unregistered));
            if done {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn send(&self, cmd: Command) {
        // The endpoint only stops when the process does; a closed channel is not an error then.
        let _ = self.cmd.send(cmd);
    }

    /// Send a text MESSAGE (RFC 3428) to `uri` (`sip:user@host[:port]`) and wait for the final
    /// answer. Only ever called with URIs of configured trunks: nothing else dials out.
    pub async fn send_message(
        &self,
        uri: &str,
        from_user: &str,
        body: &str,
    ) -> Result<(), SendMessageError> {
        let with_port =
            hostport_of(uri).ok_or_else(|| SendMessageError::BadUri(uri.to_string()))?;
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| SendMessageError::Resolve(with_port.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| SendMessageError::Resolve(with_port.clone(), "no address".into()))?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        self.send(Command::SendMessage {
            id,
            peer: Peer {
                addr,
                transport: Transport::Udp,
            },
            local: addr, // replaced by the driver with our address as seen from `addr`
            request_uri: uri.to_string(),
            from_user: from_user.to_string(),
            body: body.to_string(),
        });
        match rx.await {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, reason)) => Err(SendMessageError::Refused(status, reason)),
            Err(_) => Err(SendMessageError::Stopped),
        }
    }
}

pub struct Endpoint {
    pub handle: SipHandle,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    /// The SIP-over-TLS listener, when configured.
    pub tls_addr: Option<SocketAddr>,
}

/// SIP over TLS: where to listen and with which certificate.
pub struct TlsListen {
    /// The listen address.
    pub bind: SocketAddr,
    /// The server side of the handshake (our certificate and key).
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// A TLS server configuration from a PEM certificate chain and key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, EndpointError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &std::path::Path, reason: String| EndpointError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

type TcpWriters = Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>>;

/// How we may open a connection to a trunk ourselves (TCP or TLS `uri`); no other address is
/// ever connected to.
#[derive(Clone)]
pub enum Outbound {
    /// Plain TCP.
    Tcp,
    /// TLS, verifying the trunk's certificate for `name`.
    Tls {
        /// Our client configuration (the trunk's CA or the system roots).
        connector: tokio_rustls::TlsConnector,
        /// The name (or address) the certificate must carry.
        name: rustls::pki_types::ServerName<'static>,
    },
}

/// Trunks we may connect to, and the messages waiting while a connection is being made.
#[derive(Default)]
struct Connector {
    allowed: HashMap<SocketAddr, Outbound>,
    waiting: HashMap<SocketAddr, Vec<Vec<u8>>>,
}

type SharedConnector = Arc<Mutex<Connector>>;

/// A TLS client configuration for a trunk: its CA file, or the system's roots.
pub fn tls_connector(
    ca: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsConnector, EndpointError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let bad = |reason: String| EndpointError::Tls {
                path: path.display().to_string(),
                reason,
            };
            for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| EndpointError::Tls {
            path: "(client)".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The one crypto stack (ring), named per configuration rather than installed process-wide,
/// so SIP needs nothing from the HTTP side.
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Inbound {
    peer: Peer,
    local: SocketAddr,
    data: Vec<u8>,
    /// The stream cannot be framed any further: answer this, then close the connection.
    close: bool,
}

/// Concurrent TCP connections per source IP.
type ConnCount = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// TCP peers that carry a dialog: their connections are not closed for being idle, since a
/// call may be silent on SIP for longer than the idle timeout and our BYE must still go out.
/// The driver refreshes it every [`IN_DIALOG_REFRESH`].
type InDialog = Arc<Mutex<std::collections::HashSet<SocketAddr>>>;
/// Sources the core has banned, as of the last refresh: closed on accept without a log line.
type Banned = Arc<Mutex<std::collections::HashSet<IpAddr>>>;
const IN_DIALOG_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared by the accept loop and the driver so that all per-source lines share one budget.
type SharedLog = Arc<Mutex<LogLimiter>>;

/// Log a line about `ip` unless its budget is spent; a line that follows suppressed ones
/// says how many were suppressed.
macro_rules! limited {
    ($log:expr, $ip:expr, $level:ident, $($arg:tt)+) => {{
        let verdict = $log
            .lock()
            .ok()
            .and_then(|mut l| l.allow(Instant::now(), $ip));
        if let Some(suppressed) = verdict {
            if suppressed > 0 {
                tracing::$level!(suppressed, $($arg)+);
            } else {
                tracing::$level!($($arg)+);
            }
        }
    }};
}

/// UDP and TCP on the same port. With port 0 the kernel picks the UDP port, and that port may
/// be taken for TCP (by someone's outgoing connection): then try another, a few times.
async fn bind_pair(bind: SocketAddr) -> Result<(UdpSocket, TcpListener), EndpointError> {
    let tries = if bind.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(bind)
            .await
            .map_err(|source| EndpointError::Bind {
                transport: "UDP",
                addr: bind,
                source,
            })?;
        let port = udp
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                transport: "UDP",
                addr: bind,
                source,
            })?
            .port();
        let tcp_bind = SocketAddr::new(bind.ip(), port);
        match TcpListener::bind(tcp_bind).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(EndpointError::Bind {
                    transport: "TCP",
                    addr: tcp_bind,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(EndpointError::Bind {
        transport: "TCP",
        addr: bind,
        source: std::io::Error::other("no port free for both UDP and TCP"),
    }))
}

pub async fn start(
    bind: SocketAddr,
    cfg: CoreConfig,
    tls: Option<TlsListen>,
) -> Result<Endpoint, EndpointError> {
    let (udp, tcp) = bind_pair(bind).await?;
    let udp_addr = udp.local_addr().map_err(|source| EndpointError::Bind {
        transport: "UDP",
        addr: bind,
        source,
    })?;
    let tcp_addr = tcp.local_addr().map_err(|source| EndpointError::Bind {
        transport: "TCP",
        addr: bind,
        source,
    })?;

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(1024);
    let writers: TcpWriters = Arc::default();
    let log: SharedLog = Arc::new(Mutex::new(LogLimiter::new(Instant::now())));
    let in_dialog: InDialog = Arc::default();
    let banned: Banned = Arc::default();
    let shared = TcpShared {
        tx: in_tx,
        writers: writers.clone(),
        max: cfg.max_message_bytes,
        limits: cfg.tcp,
        acl: cfg.acl.clone(),
        conns: Arc::default(),
        log: log.clone(),
        in_dialog: in_dialog.clone(),
        banned: banned.clone(),
    };
    let tls_addr = match tls {
        Some(t) => {
            let listener =
                TcpListener::bind(t.bind)
                    .await
                    .map_err(|source| EndpointError::Bind {
                        transport: "TLS",
                        addr: t.bind,
                        source,
                    })?;
            let addr = listener
                .local_addr()
                .map_err(|source| EndpointError::Bind {
                    transport: "TLS",
                    addr: t.bind,
                    source,
                })?;
            // The per-source connection cap spans TCP and TLS.
            tokio::spawn(accept_tcp(listener, shared.clone(), Some(t.acceptor)));
            Some(addr)
        }
        None => None,
    };
    let shared_for_driver = shared.clone();
    tokio::spawn(accept_tcp(tcp, shared, None));
    let pending: Pending = Arc::default();
    let trunks: TrunkStates = Arc::default();
    let reach: TrunkReach = Arc::default();
    let located: Located = Arc::default();
    let connector: SharedConnector = Arc::default();
    let driver = Driver {
        connector: connector.clone(),
        shared: shared_for_driver,
        reach: reach.clone(),
        located: located.clone(),
        advertise: cfg.advertise,
        trunks: trunks.clone(),
        log,
        in_dialog,
        banned: banned.clone(),
        core: SipCore::new(cfg),
        udp: Arc::new(udp),
        udp_addr,
        writers,
        ev: ev_tx,
        routes: HashMap::new(),
        pending: pending.clone(),
        failed: cmd_tx.clone(),
    };
    tokio::spawn(driver.run(cmd_rx, in_rx));
    Ok(Endpoint {
        handle: SipHandle {
            cmd: cmd_tx,
            pending,
            trunks,
            reach,
            located,
            connector,
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        },
        events: ev_rx,
        udp_addr,
        tcp_addr,
        tls_addr,
    })
}

struct Driver {
    connector: SharedConnector,
    /// What connections we open share with those we accept (framing, limits, writers).
    shared: TcpShared,
    reach: TrunkReach,
    located: Located,
    /// `[sip] public_addr`: our address in every message, whatever the socket's.
    advertise: Option<SocketAddr>,
    trunks: TrunkStates,
    log: SharedLog,
    in_dialog: InDialog,
    banned: Banned,
    core: SipCore,
    udp: Arc<UdpSocket>,
    udp_addr: SocketAddr,
    writers: TcpWriters,
    ev: mpsc::UnboundedSender<Event>,
    routes: HashMap<IpAddr, IpAddr>,
    pending: Pending,
    /// Back into our own command queue: connections to trunks that could not be opened.
    failed: mpsc::UnboundedSender<Command>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut tcp_in: mpsc::Receiver<Inbound>,
    ) {
        let mut buf = vec![0u8; 65536];
        let mut refresh = tokio::time::interval(IN_DIALOG_REFRESH);
        loop {
            let deadline = self.core.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let local = self.local_for(from.ip());
                        let peer = Peer { addr: from, transport: Transport::Udp };
                        self.core.handle_message(Instant::now(), peer, local, &buf[..n]);
                    }
                    // ICMP port-unreachable surfaces here on some systems; keep serving.
                    Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
                },
                Some(m) = tcp_in.recv() => {
                    let local = self.advertise.unwrap_or(m.local);
                    self.core.handle_message(Instant::now(), m.peer, local, &m.data);
                    if m.close {
                        // Answer first, then drop the writer: its task ends once the
                        // answer is written, and the connection closes.
                        self.flush();
                        if let Ok(mut w) = self.writers.lock() {
                            w.remove(&m.peer.addr);
                        }
                    }
                }
                Some(mut cmd) = cmds.recv() => {
                    match &mut cmd {
                        Command::SendMessage { peer, local, .. } => {
                            *local = self.local_for(peer.addr.ip());
                        }
                        Command::Register { spec, local } => {
                            *local = self.local_for(spec.peer.addr.ip());
                        }
                        Command::Keepalive { spec, local } => {
                            *local = self.local_for(spec.peer.addr.ip());
                        }
                        Command::Dial { spec, local } => {
                            *local = self.local_for(spec.peer.addr.ip());
                        }
                        _ => {}
                    }
                    self.core.handle_command(Instant::now(), cmd)
                }
                _ = sleep => self.core.handle_timeout(Instant::now()),
                _ = refresh.tick() => {
                    let peers = self.core.tcp_dialog_peers();
                    if let Ok(mut d) = self.in_dialog.lock() {
                        *d = peers;
                    }
                    let banned = self.core.banned_sources(Instant::now());
                    if let Ok(mut b) = self.banned.lock() {
                        *b = banned;
                    }
                    // Account for suppressed lines even when their sources went quiet.
                    let summary = self.log.lock().ok().and_then(|mut l| l.take_summary());
                    if let Some(s) = summary {
                        let (top, top_lines) = s.top.map(|(ip, n)| (ip.to_string(), n)).unwrap_or_default();
                        tracing::info!(suppressed = s.lines, sources = s.sources, top, top_lines, "SIP log lines suppressed");
                    }
                }
            }
            self.flush();
        }
    }

    /// Our address as seen from `peer`: the bound address, or, when bound to a wildcard, the
    /// source address the kernel routes from (found by connecting a UDP socket; nothing is sent).
    fn local_for(&mut self, peer: IpAddr) -> SocketAddr {
        if let Some(public) = self.advertise {
            return public;
        }
        let port = self.udp_addr.port();
        if !self.udp_addr.ip().is_unspecified() {
            return self.udp_addr;
        }
        if let Some(ip) = self.routes.get(&peer) {
            return SocketAddr::new(*ip, port);
        }
        let ip = route_source(peer).unwrap_or(self.udp_addr.ip());
        if self.routes.len() > 4096 {
            self.routes.clear();
        }
        self.routes.insert(peer, ip);
        SocketAddr::new(ip, port)
    }

    /// A message for a trunk we have no connection to: open one (only to a trunk address
    /// allowed by [`SipHandle::allow_outbound`]) and send it once connected. False when the
    /// address is not a trunk's.
    fn connect_and_send(&mut self, addr: SocketAddr, data: Vec<u8>) -> bool {
        let Ok(mut c) = self.connector.lock() else {
            return false;
        };
        let Some(how) = c.allowed.get(&addr).cloned() else {
            return false;
        };
        if let Some(q) = c.waiting.get_mut(&addr) {
            q.push(data);
            return true;
        }
        c.waiting.insert(addr, vec![data]);
        drop(c);
        let (connector, shared) = (self.connector.clone(), self.shared.clone());
        let failed = self.failed.clone();
        tokio::spawn(async move {
            let limit = shared.limits.header_timeout;
            let opened = tokio::time::timeout(limit, open_stream(addr, how)).await;
            match opened {
                Ok(Ok((stream, local, transport))) => {
                    let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
                    // Queued messages go first, then whatever the driver sends from now on.
                    if let Ok(mut c) = connector.lock() {
                        for m in c.waiting.remove(&addr).unwrap_or_default() {
                            let _ = wtx.send(m);
                        }
                        if let Ok(mut w) = shared.writers.lock() {
                            w.insert(addr, wtx);
                        }
                    }
                    let served = match stream {
                        Opened::Tcp(s) => {
                            serve_stream(s, local, addr, transport, &shared, Some(wrx)).await
                        }
                        Opened::Tls(s) => {
                            serve_stream(*s, local, addr, transport, &shared, Some(wrx)).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(peer = %addr, error = %e, "SIP connection to trunk closed");
                    }
                    if let Ok(mut w) = shared.writers.lock() {
                        w.remove(&addr);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %addr, error = %e, "cannot connect to trunk");
                    if let Ok(mut c) = connector.lock() {
                        c.waiting.remove(&addr);
                    }
                    let _ = failed.send(Command::TransportFailed { addr });
                }
                Err(_) => {
                    tracing::warn!(peer = %addr, "connecting to trunk timed out");
                    if let Ok(mut c) = connector.lock() {
                        c.waiting.remove(&addr);
                    }
                    let _ = failed.send(Command::TransportFailed { addr });
                }
            }
        });
        true
    }

    fn flush(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Transmit(t) => match t.to.transport {
                    Transport::Udp => {
                        if let Err(e) = self.udp.try_send_to(&t.data, t.to.addr) {
                            limited!(self.log, t.to.addr.ip(), warn, to = %t.to.addr, error = %e, "SIP UDP send failed");
                        }
                    }
                    Transport::Tcp | Transport::Tls => {
                        let w = self
                            .writers
                            .lock()
                            .ok()
                            .and_then(|m| m.get(&t.to.addr).cloned());
                        match w {
                            Some(w) => {
                                let _ = w.send(t.data);
                            }
                            None => {
                                if !self.connect_and_send(t.to.addr, t.data) {
                                    limited!(self.log, t.to.addr.ip(), warn, to = %t.to.addr, "SIP TCP connection gone; message dropped")
                                }
                            }
                        }
                    }
                },
                Output::Event(Event::Refused {
                    peer,
                    status,
                    reason,
                }) => {
                    limited!(self.log, peer.addr.ip(), info, from = %peer.addr, status, %reason, "SIP request refused");
                }
                Output::Event(Event::TrunkReachability { trunk, reach }) => {
                    if reach.reachable {
                        tracing::info!(%trunk, status = reach.status, "trunk answers OPTIONS keep-alives");
                    } else {
                        tracing::warn!(%trunk, "trunk does not answer OPTIONS keep-alives");
                    }
                    crate::metrics::get()
                        .trunk_reachable
                        .get_or_create(&crate::metrics::TrunkLabel {
                            trunk: trunk.clone(),
                        })
                        .set(i64::from(reach.reachable));
                    if let Ok(mut r) = self.reach.lock() {
                        r.insert(trunk, reach);
                    }
                }
                Output::Event(Event::TrunkRegistration { trunk, state }) => {
                    match &state {
                        RegistrationState::Registered { expires } => {
                            tracing::info!(%trunk, expires, "registered with trunk")
                        }
                        RegistrationState::Failed { status, reason } => {
                            tracing::warn!(%trunk, status, %reason, "registration with trunk failed; retrying with back-off")
                        }
                        RegistrationState::Unregistered => {
                            tracing::info!(%trunk, "unregistered from trunk")
                        }
                        RegistrationState::Registering => {
                            tracing::debug!(%trunk, "registering with trunk")
                        }
                    }
                    crate::metrics::get()
                        .trunk_registered
                        .get_or_create(&crate::metrics::TrunkLabel {
                            trunk: trunk.clone(),
                        })
                        .set(i64::from(matches!(
                            state,
                            RegistrationState::Registered { .. }
                        )));
                    if let Ok(mut t) = self.trunks.lock() {
                        t.insert(trunk, state);
                    }
                }
                Output::Event(Event::Registered { user, contacts }) => {
                    match contacts.first() {
                        Some((contact, secs)) => {
                            tracing::info!(%user, %contact, expires = secs, bindings = contacts.len(), "user registered")
                        }
                        None => tracing::info!(%user, "user unregistered"),
                    }
                    let latest = self
                        .core
                        .bindings(Instant::now(), &user)
                        .first()
                        .map(|b| (b.peer, b.contact.clone(), b.expires_at));
                    let location = latest.map(|(peer, contact, expires_at)| UserLocation {
                        local: self.local_for(peer.addr.ip()),
                        peer,
                        contact,
                        expires_at,
                    });
                    if let Ok(mut l) = self.located.lock() {
                        match location {
                            Some(loc) => l.insert(user, loc),
                            None => l.remove(&user),
                        };
                    }
                }
                Output::Banned(ban) => {
                    // One line per ban: bans are long, so these cannot flood.
                    tracing::warn!(source = %ban.ip, failures = ban.failures, secs = ban.secs, "SIP source banned: its traffic is dropped");
                }
                Output::Event(Event::MessageResult { id, status, reason }) => {
                    if let Some(tx) = self.pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                        let _ = tx.send((status, reason));
                    }
                }
                Output::Event(e) => {
                    let _ = self.ev.send(e);
                }
            }
        }
    }
}

pub fn route_source(peer: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(SocketAddr::new(peer, 9)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// What every TCP connection task shares.
#[derive(Clone)]
struct TcpShared {
    tx: mpsc::Sender<Inbound>,
    writers: TcpWriters,
    max: usize,
    limits: TcpLimits,
    acl: Acl,
    conns: ConnCount,
    log: SharedLog,
    in_dialog: InDialog,
    banned: Banned,
}

/// Holds one slot of a source's connection count; gives it back when the connection ends.
struct ConnSlot {
    conns: ConnCount,
    ip: IpAddr,
}

impl ConnSlot {
    fn take(conns: &ConnCount, ip: IpAddr, max: usize) -> Option<ConnSlot> {
        let mut m = conns.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            conns: conns.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.conns.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    shared: TcpShared,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Refused sources and sources over their connection cap are closed at once
                // (dropping the stream), before a byte is read.
                if shared.banned.lock().is_ok_and(|b| b.contains(&peer.ip())) {
                    continue;
                }
                if !shared.acl.allows(peer.ip()) {
                    limited!(shared.log, peer.ip(), info, from = %peer, "SIP TCP connection refused by ACL");
                    continue;
                }
                let Some(slot) = ConnSlot::take(&shared.conns, peer.ip(), shared.limits.max_per_ip)
                else {
                    limited!(shared.log, peer.ip(), warn, from = %peer, max = shared.limits.max_per_ip, "SIP TCP connection refused: too many from this source");
                    continue;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let served = match (stream.local_addr(), tls) {
                        (Err(e), _) => Err(e),
                        (Ok(local), None) => {
                            serve_stream(stream, local, peer, Transport::Tcp, &shared, None).await
                        }
                        (Ok(local), Some(acceptor)) => {
                            // The handshake gets the header timeout: a client that stalls in
                            // it holds a descriptor no longer than a slow request would.
                            let limit = shared.limits.header_timeout;
                            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => {
                                    serve_stream(s, local, peer, Transport::Tls, &shared, None)
                                        .await
                                }
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "TLS handshake timed out",
                                )),
                            }
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "SIP TCP/TLS connection closed");
                    }
                    if let Ok(mut w) = shared.writers.lock() {
                        w.remove(&peer);
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIP TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

enum Opened {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Connect to a trunk (and shake hands for TLS).
async fn open_stream(
    addr: SocketAddr,
    how: Outbound,
) -> std::io::Result<(Opened, SocketAddr, Transport)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let local = tcp.local_addr()?;
    match how {
        Outbound::Tcp => Ok((Opened::Tcp(tcp), local, Transport::Tcp)),
        Outbound::Tls { connector, name } => {
            let s = connector.connect(name, tcp).await?;
            Ok((Opened::Tls(Box::new(s)), local, Transport::Tls))
        }
    }
}

/// Frame SIP messages out of one TCP or TLS connection and write what the core sends back.
/// `writer` is the queue the connection's messages come from when we opened it (else a new
/// one is made and registered).
async fn serve_stream<S>(
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    transport: Transport,
    shared: &TcpShared,
    writer: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut wrx = match writer {
        Some(w) => w,
        None => {
            let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
            if let Ok(mut w) = shared.writers.lock() {
                w.insert(peer, wtx);
            }
            wrx
        }
    };
    let writer = tokio::spawn(async move {
        while let Some(data) = wrx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    let limits = shared.limits;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut last_activity = Instant::now();
    // When the first byte of the message now in `buf` arrived.
    let mut partial_since: Option<Instant> = None;
    loop {
        let idle_deadline = last_activity + limits.idle_timeout;
        let deadline = match partial_since {
            Some(t) => idle_deadline.min(t + limits.header_timeout),
            None => idle_deadline,
        };
        let n = match tokio::time::timeout_at(deadline.into(), rd.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => {
                let pinned = partial_since.is_none()
                    && shared.in_dialog.lock().is_ok_and(|d| d.contains(&peer));
                if pinned {
                    last_activity = Instant::now();
                    continue;
                }
                let why = if partial_since.is_some() {
                    "incomplete message timed out"
                } else {
                    "idle connection timed out"
                };
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
            }
        };
        if n == 0 {
            return Ok(());
        }
        last_activity = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let tcp_peer = Peer {
                addr: peer,
                transport,
            };
            match frame(&buf, shared.max) {
                Frame::Complete(len) => {
                    let data: Vec<u8> = buf.drain(..len).collect();
                    let m = Inbound {
                        peer: tcp_peer,
                        local,
                        data,
                        close: false,
                    };
                    if shared.tx.send(m).await.is_err() {
                        return Ok(());
                    }
                }
                Frame::Skip(len) => {
                    buf.drain(..len);
                }
                Frame::Partial => break,
                Frame::Invalid(len) => {
                    // RFC 4475 §3.1.2.3, §3.3.9: the rest of the stream cannot be framed.
                    // The core answers the head (400); the driver then drops our writer.
                    let data: Vec<u8> = buf.drain(..len).collect();
                    let m = Inbound {
                        peer: tcp_peer,
                        local,
                        data,
                        close: true,
                    };
                    if shared.tx.send(m).await.is_ok() {
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
                    }
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "unframeable Content-Length",
                    ));
                }
                Frame::TooLarge => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "SIP message over the size limit",
                    ));
                }
            }
        }
        partial_since = if buf.is_empty() {
            None
        } else {
            partial_since.or(Some(last_activity))
        };
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Complete(usize),
    Skip(usize),
    Partial,
    TooLarge,
    /// Content-Length is not a number, or given twice with different values: the head
    /// (this many bytes) can still be answered, but the stream cannot be framed further.
    Invalid(usize),
}

/// RFC 3261 §18.3: on streams, Content-Length delimits the body.
fn frame(buf: &[u8], max: usize) -> Frame {
    let leading = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if leading > 0 {
        return Frame::Skip(leading);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > max {
            Frame::TooLarge
        } else {
            Frame::Partial
        };
    };
    let head_len = end + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut body_len: Option<u64> = None;
    for (k, v) in head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')) {
        let k = k.trim();
        if !(k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("l")) {
            continue;
        }
        // Parsed as u64 and compared with the limit before any arithmetic: a huge value
        // must not overflow (nor be taken as 0, nor wrap).
        match (v.trim().parse::<u64>(), body_len) {
            (Ok(n), None) => body_len = Some(n),
            (Ok(n), Some(m)) if n == m => {}
            _ => return Frame::Invalid(head_len),
        }
    }
    let body_len = body_len.unwrap_or(0);
    let total = usize::try_from(body_len)
        .ok()
        .and_then(|b| b.checked_add(head_len));
    match total {
        Some(total) if total <= max => {
            if buf.len() >= total {
                Frame::Complete(total)
            } else {
                Frame::Partial
            }
        }
        _ => Frame::TooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_host_and_port() {
        assert_eq!(
            hostport_of("sip:127.0.0.1:5070").as_deref(),
            Some("127.0.0.1:5070")
        );
        assert_eq!(
            hostport_of("sip:sms@gw.example.net;transport=udp").as_deref(),
            Some("gw.example.net:5060")
        );
        assert_eq!(hostport_of("sip:[::1]:5080").as_deref(), Some("[::1]:5080"));
        assert_eq!(hostport_of("sip:[::1]").as_deref(), Some("[::1]:5060"));
        assert_eq!(hostport_of("tel:+1555"), None);
        assert_eq!(hostport_of("sip:"), None);
    }

    #[test]
    fn stream_framing() {
        let m = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(frame(m, 1000), Frame::Complete(m.len() - 4));
        assert_eq!(
            frame(
                b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nabc",
                1000
            ),
            Frame::Partial
        );
        assert_eq!(frame(b"\r\n\r\nOPTIONS", 1000), Frame::Skip(4));
        assert_eq!(
            frame(b"X\r\nContent-Length: 5000\r\n\r\n", 1000),
            Frame::TooLarge
        );
    }

    #[test]
    fn huge_content_length_does_not_overflow() {
        // usize::MAX and beyond: in a debug build, `end + 4 + body_len` used to panic.
        for cl in [
            usize::MAX.to_string(),
            (usize::MAX - 3).to_string(),
            u64::MAX.to_string(),
            "18446744073709551616".to_string(),
            "99999999999999999999999999".to_string(),
        ] {
            let m = format!("OPTIONS sip:a SIP/2.0\r\nContent-Length: {cl}\r\n\r\nabc");
            let f = frame(m.as_bytes(), 65535);
            assert!(
                matches!(f, Frame::TooLarge | Frame::Invalid(_)),
                "{cl}: {f:?}"
            );
        }
    }

    #[test]
    fn unframeable_content_length_is_invalid() {
        let head = "OPTIONS sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n";
        assert_eq!(frame(head.as_bytes(), 1000), Frame::Invalid(head.len()));
        let two = "OPTIONS sip:a SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\nhello";
        assert_eq!(frame(two.as_bytes(), 1000), Frame::Invalid(two.len() - 5));
        let same = "OPTIONS sip:a SIP/2.0\r\nContent-Length: 5\r\nl: 5\r\n\r\nhello";
        assert_eq!(frame(same.as_bytes(), 1000), Frame::Complete(same.len()));
    }
}

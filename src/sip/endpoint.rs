//! The tokio driver around [`SipCore`]: UDP and TCP sockets in, commands from calls in,
//! transmissions and events out. All protocol decisions live in the core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::core::{Command, CoreConfig, Event, Output, Peer, SipCore, Transport};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot bind SIP {transport} on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(u16, String)>>>>;

/// Handle the call layer uses to drive signalling.
#[derive(Clone)]
pub struct SipHandle {
    cmd: mpsc::UnboundedSender<Command>,
    pending: Pending,
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

impl SipHandle {
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
        let hostport = uri
            .strip_prefix("sip:")
            .and_then(|r| r.split([';', '?']).next())
            .map(|r| r.rsplit('@').next().unwrap_or(r))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| SendMessageError::BadUri(uri.to_string()))?;
        let with_port = if hostport.starts_with('[')
            || hostport
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:5060")
        };
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
}

type TcpWriters = Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>>;

struct Inbound {
    peer: Peer,
    local: SocketAddr,
    data: Vec<u8>,
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

pub async fn start(bind: SocketAddr, cfg: CoreConfig) -> Result<Endpoint, EndpointError> {
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
    let max = cfg.max_message_bytes;
    tokio::spawn(accept_tcp(tcp, in_tx, writers.clone(), max));
    let pending: Pending = Arc::default();
    let driver = Driver {
        core: SipCore::new(cfg),
        udp: Arc::new(udp),
        udp_addr,
        writers,
        ev: ev_tx,
        routes: HashMap::new(),
        pending: pending.clone(),
    };
    tokio::spawn(driver.run(cmd_rx, in_rx));
    Ok(Endpoint {
        handle: SipHandle {
            cmd: cmd_tx,
            pending,
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        },
        events: ev_rx,
        udp_addr,
        tcp_addr,
    })
}

struct Driver {
    core: SipCore,
    udp: Arc<UdpSocket>,
    udp_addr: SocketAddr,
    writers: TcpWriters,
    ev: mpsc::UnboundedSender<Event>,
    routes: HashMap<IpAddr, IpAddr>,
    pending: Pending,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut tcp_in: mpsc::Receiver<Inbound>,
    ) {
        let mut buf = vec![0u8; 65536];
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
                Some(m) = tcp_in.recv() => self.core.handle_message(Instant::now(), m.peer, m.local, &m.data),
                Some(mut cmd) = cmds.recv() => {
                    if let Command::SendMessage { peer, local, .. } = &mut cmd {
                        *local = self.local_for(peer.addr.ip());
                    }
                    self.core.handle_command(Instant::now(), cmd)
                }
                _ = sleep => self.core.handle_timeout(Instant::now()),
            }
            self.flush();
        }
    }

    /// Our address as seen from `peer`: the bound address, or, when bound to a wildcard, the
    /// source address the kernel routes from (found by connecting a UDP socket; nothing is sent).
    fn local_for(&mut self, peer: IpAddr) -> SocketAddr {
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

    fn flush(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Transmit(t) => match t.to.transport {
                    Transport::Udp => {
                        if let Err(e) = self.udp.try_send_to(&t.data, t.to.addr) {
                            tracing::warn!(to = %t.to.addr, error = %e, "SIP UDP send failed");
                        }
                    }
                    Transport::Tcp => {
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
                                tracing::warn!(to = %t.to.addr, "SIP TCP connection gone; message dropped")
                            }
                        }
                    }
                },
                Output::Event(Event::Refused {
                    peer,
                    status,
                    reason,
                }) => {
                    tracing::info!(from = %peer.addr, status, %reason, "SIP request refused");
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

async fn accept_tcp(
    listener: TcpListener,
    tx: mpsc::Sender<Inbound>,
    writers: TcpWriters,
    max: usize,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (tx, writers) = (tx.clone(), writers.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_tcp(stream, peer, tx, writers.clone(), max).await {
                        tracing::debug!(%peer, error = %e, "SIP TCP connection closed");
                    }
                    if let Ok(mut w) = writers.lock() {
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

async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<Inbound>,
    writers: TcpWriters,
    max: usize,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
    if let Ok(mut w) = writers.lock() {
        w.insert(peer, wtx);
    }
    tokio::spawn(async move {
        while let Some(data) = wrx.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match frame(&buf, max) {
                Frame::Complete(len) => {
                    let data: Vec<u8> = buf.drain(..len).collect();
                    let peer = Peer {
                        addr: peer,
                        transport: Transport::Tcp,
                    };
                    if tx.send(Inbound { peer, local, data }).await.is_err() {
                        return Ok(());
                    }
                }
                Frame::Skip(len) => {
                    buf.drain(..len);
                }
                Frame::Partial => break,
                Frame::TooLarge => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "SIP message over the size limit",
                    ));
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Complete(usize),
    Skip(usize),
    Partial,
    TooLarge,
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
    let head = String::from_utf8_lossy(&buf[..end]);
    let body_len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| {
            let k = k.trim();
            k.eq_ignore_ascii_case("content-length") || k == "l"
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let total = end + 4 + body_len;
    if total > max {
        Frame::TooLarge
    } else if buf.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! OPTIONS keep-alives to a trunk: one OPTIONS every interval, and whether the trunk answers
//! (any final answer means its SIP stack is up; 64·T1 of silence means it is not). A sans-IO
//! state machine the core owns per trunk, like `register::Registration`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client_tx::{ClientTx, TxTimer};
use super::core::{host_port, Peer, Transport};
use super::message::Response;

/// Which trunk to keep alive, where and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepaliveSpec {
    /// The trunk's name.
    pub trunk: String,
    /// Where the OPTIONS go.
    pub peer: Peer,
    /// Request-URI of the OPTIONS: `sip:host[:port]`.
    pub uri: String,
    /// Time between one answer (or timeout) and the next OPTIONS.
    pub interval: Duration,
}

/// Whether the trunk answers, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachability {
    /// It answered (anything at all).
    pub reachable: bool,
    /// The status of its last answer (408: none came).
    pub status: u16,
}

pub(crate) struct Keepalive {
    spec: KeepaliveSpec,
    local: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    tx: Option<ClientTx>,
    next_at: Option<Instant>,
    last: Option<Reachability>,
}

impl Keepalive {
    pub fn new(spec: KeepaliveSpec, local: SocketAddr) -> Keepalive {
        Keepalive {
            spec,
            local,
            call_id: format!("{:016x}@switchboard", rand::random::<u64>()),
            from_tag: super::core::new_tag(),
            cseq: 0,
            tx: None,
            next_at: None,
            last: None,
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

    pub fn next_timer(&self) -> Option<Instant> {
        match &self.tx {
            Some(tx) => Some(tx.next_timer()),
            None => self.next_at,
        }
    }

    /// Send an OPTIONS now.
    pub fn send(&mut self, now: Instant) -> Vec<u8> {
        self.cseq += 1;
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let local = host_port(self.local);
        let data = format!(
            "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:switchboard@{local}>;tag={}\r\nTo: <{uri}>\r\nCall-ID: {}\r\nCSeq: {} OPTIONS\r\n\
             Accept: application/sdp\r\nUser-Agent: switchboard\r\nContent-Length: 0\r\n\r\n",
            self.spec.peer.transport.as_str(),
            self.from_tag,
            self.call_id,
            self.cseq,
            uri = self.spec.uri,
        )
        .into_bytes();
        let udp = self.spec.peer.transport == Transport::Udp;
        self.tx = Some(ClientTx::new(now, branch, self.cseq, data.clone(), udp));
        self.next_at = None;
        data
    }

    /// Timers due at `now`: what to send, and the reachability when it changed.
    pub fn on_timer(&mut self, now: Instant) -> (Option<Vec<u8>>, Option<Reachability>) {
        if let Some(tx) = self.tx.as_mut() {
            return match tx.on_timer(now) {
                TxTimer::Resend(d) => (Some(d), None),
                TxTimer::TimedOut => {
                    self.tx = None;
                    self.next_at = Some(now + self.spec.interval);
                    (
                        None,
                        self.settle(Reachability {
                            reachable: false,
                            status: 408,
                        }),
                    )
                }
                TxTimer::Nothing => (None, None),
            };
        }
        if self.next_at.is_some_and(|t| t <= now) {
            return (Some(self.send(now)), None);
        }
        (None, None)
    }

    /// An answer to one of our OPTIONS: the reachability when it changed.
    pub fn on_response(&mut self, now: Instant, r: &Response) -> Option<Reachability> {
        let tx = self.tx.as_mut().filter(|tx| tx.matches(r))?;
        if r.status < 200 {
            tx.provisional(now);
            return None;
        }
        self.tx = None;
        self.next_at = Some(now + self.spec.interval);
        self.settle(Reachability {
            reachable: true,
            status: r.status,
        })
    }

    fn settle(&mut self, now: Reachability) -> Option<Reachability> {
        let changed = self.last.map(|l| l.reachable) != Some(now.reachable);
        self.last = Some(now);
        changed.then_some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{self, SipMessage};

    fn answer(req: &[u8], status: u16) -> Response {
        let text = String::from_utf8_lossy(req);
        let pick = |n: &str| {
            text.lines()
                .find(|l| l.starts_with(n))
                .unwrap_or("")
                .to_string()
        };
        let raw = format!(
            "SIP/2.0 {status} X\r\n{}\r\n{}\r\n{};tag=t\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
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

    #[test]
    fn answered_unanswered_and_back() {
        let t0 = Instant::now();
        let spec = KeepaliveSpec {
            trunk: "carrier".into(),
            peer: Peer {
                addr: "127.0.0.1:5080".parse().unwrap(),
                transport: Transport::Udp,
            },
            uri: "sip:127.0.0.1:5080".into(),
            interval: Duration::from_secs(30),
        };
        let mut k = Keepalive::new(spec, "127.0.0.1:5060".parse().unwrap());
        let first = k.send(t0);
        assert!(String::from_utf8_lossy(&first).starts_with("OPTIONS sip:127.0.0.1:5080 SIP/2.0"));
        // Even a 404 means the trunk's SIP stack is up.
        let up = k.on_response(t0, &answer(&first, 404));
        assert_eq!(
            up,
            Some(Reachability {
                reachable: true,
                status: 404
            })
        );
        assert_eq!(k.next_timer(), Some(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        let (second, _) = k.on_timer(t1);
        let second = second.expect("the next OPTIONS");
        assert!(String::from_utf8_lossy(&second).contains("CSeq: 2 OPTIONS"));
        // Unanswered: retransmitted, then unreachable after 32 s, then tried again.
        let mut t = t1;
        let mut down = None;
        while down.is_none() {
            t = k.next_timer().unwrap();
            let (_, change) = k.on_timer(t);
            down = change;
        }
        assert_eq!(t, t1 + Duration::from_secs(32));
        assert_eq!(
            down,
            Some(Reachability {
                reachable: false,
                status: 408
            })
        );
        let (third, _) = k.on_timer(t + Duration::from_secs(30));
        let third = third.expect("tried again");
        assert_eq!(
            k.on_response(t, &answer(&third, 200)),
            Some(Reachability {
                reachable: true,
                status: 200
            })
        );
        // A stale answer (to the unanswered second one) changes nothing.
        assert_eq!(k.on_response(t, &answer(&second, 200)), None);
    }
}

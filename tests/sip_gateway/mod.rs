//! Harness for the SIP hardening tests: starts the real `switchboard` binary on loopback with a
//! given TOML configuration and keeps its log (stderr) in a file, so that tests can assert on
//! what the gateway logged. Kept apart from `tests/support` so those tests are untouched.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub struct SipGateway {
    child: Child,
    pub sip: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SipGateway {
    /// Start with `config` as the TOML file (SIP and HTTP binds are forced to loopback port 0).
    pub fn start(config: &str) -> SipGateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = tmp.path().join("switchboard.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = tmp.path().join("gateway.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "serve",
                "--sip-bind",
                "127.0.0.1:0",
                "--http-bind",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(tmp.path())
            .env("RUST_LOG", "info")
            .env(
                "SWITCHBOARD_API__ACCOUNT_SID",
                "AC0123456789abcdef0123456789abcdef",
            )
            .env(
                "SWITCHBOARD_API__AUTH_TOKEN",
                "feedc0de0123456789abcdef01234567",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        if !line.starts_with("switchboard ready") {
            let _ = child.kill();
            panic!(
                "gateway did not start: {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        SipGateway {
            sip: field("sip_udp"),
            sip_tcp: field("sip_tcp"),
            log,
            child,
            _tmp: tmp,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for SipGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Send one datagram from `from` and collect what comes back until a final response or `wait`.
pub async fn udp_exchange(from: &str, to: SocketAddr, data: &[u8], wait: Duration) -> Vec<String> {
    let sock = UdpSocket::bind(from).await.expect("bind udp");
    sock.send_to(data, to).await.expect("send udp");
    udp_collect(&sock, wait).await
}

pub async fn udp_collect(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout_at(deadline.into(), sock.recv_from(&mut buf)).await
    {
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        let fin = status_of(&msg).is_some_and(|s| s >= 200);
        got.push(msg);
        if fin {
            break;
        }
    }
    got
}

/// What a TCP exchange ended with.
#[derive(Debug, Default)]
pub struct TcpOutcome {
    pub responses: Vec<String>,
    /// The gateway closed the connection (EOF or reset) before `wait` ran out.
    pub closed: bool,
}

/// Connect, write `data`, read responses until the first final one, a close, or `wait`.
pub async fn tcp_exchange(
    to: SocketAddr,
    data: &[u8],
    wait: Duration,
    stop_at_final: bool,
) -> TcpOutcome {
    let mut s = TcpStream::connect(to).await.expect("connect tcp");
    s.write_all(data).await.expect("write tcp");
    tcp_read(&mut s, wait, stop_at_final).await
}

pub async fn tcp_read(s: &mut TcpStream, wait: Duration, stop_at_final: bool) -> TcpOutcome {
    let deadline = Instant::now() + wait;
    let mut out = TcpOutcome::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        // Responses we send carry Content-Length; split on it.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let cl: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + cl {
                break;
            }
            let msg: Vec<u8> = buf.drain(..end + 4 + cl).collect();
            out.responses
                .push(String::from_utf8_lossy(&msg).to_string());
        }
        if stop_at_final
            && out
                .responses
                .iter()
                .any(|r| status_of(r).is_some_and(|s| s >= 200))
        {
            break;
        }
    }
    out
}

pub fn final_status(responses: &[String]) -> Option<u16> {
    responses
        .iter()
        .filter_map(|r| status_of(r))
        .find(|s| *s >= 200)
}

pub fn options(branch: &str, from: SocketAddr, transport: &str) -> String {
    format!(
        "OPTIONS sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {from};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={branch}\r\nTo: <sip:ivr@127.0.0.1>\r\n\
         Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

pub fn invite_with_sdp(branch: &str, from: SocketAddr, sdp: &str) -> String {
    format!(
        "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:+15550100000@127.0.0.1>;tag={branch}\r\nTo: <sip:ivr@127.0.0.1>\r\n\
         Call-ID: {branch}@probe\r\nCSeq: 1 INVITE\r\nContact: <sip:+15550100000@{from}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn contact_uri(msg: &str) -> Option<String> {
    let c = header(msg, "Contact")?;
    let a = c.find('<')?;
    let b = c.find('>')?;
    Some(c[a + 1..b].to_string())
}

/// ACK or BYE inside the dialog a 200 to our INVITE set up.
pub fn in_dialog(ok: &str, method: &str, cseq: u32, me: SocketAddr) -> String {
    let to = header(ok, "To").unwrap_or("");
    let from = header(ok, "From").unwrap_or("");
    let cid = header(ok, "Call-ID").unwrap_or("");
    let uri = contact_uri(ok).unwrap_or_default();
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq}\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A TCP connection from a chosen loopback source address.
pub async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    sock.connect(to).await.expect("connect")
}

/// Wait until the gateway closes `s` (EOF or reset); None when it is still open after `wait`.
pub async fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + wait).into(), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

//! In-repo test harness: starts the real `switchboard` binary on ephemeral loopback ports and
//! places calls with a small SIP user agent that sends real RTP and records what it hears.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// REST API credentials every test gateway is started with (through the environment).
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "feedc0de0123456789abcdef01234567";

pub struct Gateway {
    child: Child,
    pub sip: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub http: SocketAddr,
    /// The metrics listener, when the configuration gives it one.
    pub metrics: Option<SocketAddr>,
    /// The SIP-over-TLS listener, when the configuration has one.
    pub sip_tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    pub fn start(flow: Option<&Path>) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut g = Self::start_in(&dir, flow, &[]);
        g._tmp = Some(tmp);
        g
    }

    /// Start on a given data directory (restarts keep their data).
    pub fn start_in(data_dir: &Path, flow: Option<&Path>, extra: &[&str]) -> Gateway {
        Self::start_with(data_dir, flow, extra, Some((ACCOUNT_SID, AUTH_TOKEN)))
    }

    /// Start with the given REST API credentials, or none (the gateway then generates them).
    pub fn start_with(
        data_dir: &Path,
        flow: Option<&Path>,
        extra: &[&str],
        api: Option<(&str, &str)>,
    ) -> Gateway {
        Self::start_logging(data_dir, flow, extra, api, None)
    }

    /// Start with the gateway's log (stderr) written to `log` at `RUST_LOG=trace`, or inherited.
    pub fn start_logging(
        data_dir: &Path,
        flow: Option<&Path>,
        extra: &[&str],
        api: Option<(&str, &str)>,
        log: Option<&Path>,
    ) -> Gateway {
        Self::spawn(&[], data_dir, flow, extra, api, log)
    }

    /// Start the gateway as the last argument of `wrapper` (a program and its arguments that
    /// ends by running its arguments, e.g. `unshare ... sh -c '... exec "$@"' sh`).
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        flow: Option<&Path>,
        extra: &[&str],
    ) -> Gateway {
        Self::spawn(
            wrapper,
            data_dir,
            flow,
            extra,
            Some((ACCOUNT_SID, AUTH_TOKEN)),
            None,
        )
    }

    fn spawn(
        wrapper: &[&str],
        data_dir: &Path,
        flow: Option<&Path>,
        extra: &[&str],
        api: Option<(&str, &str)>,
        log: Option<&Path>,
    ) -> Gateway {
        let bin = env!("CARGO_BIN_EXE_switchboard");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "serve",
            "--sip-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("SWITCHBOARD_API__ACCOUNT_SID")
        .env_remove("SWITCHBOARD_API__AUTH_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if let Some((sid, token)) = api {
            cmd.env("SWITCHBOARD_API__ACCOUNT_SID", sid)
                .env("SWITCHBOARD_API__AUTH_TOKEN", token);
        }
        if let Some(f) = flow {
            cmd.arg("--flow").arg(f);
        }
        if let Some(path) = log {
            let file = std::fs::File::create(path).expect("log file");
            cmd.stderr(file).env("RUST_LOG", "trace");
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        if !line.starts_with("switchboard ready") {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "gateway did not start: {line:?}, exit: {:?}",
                child.try_wait()
            );
        }
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        let metrics = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics="))
            .and_then(|v| v.parse().ok());
        let sip_tls = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sip_tls="))
            .and_then(|v| v.parse().ok());
        Gateway {
            metrics,
            sip_tls,
            sip: field("sip_udp"),
            sip_tcp: field("sip_tcp"),
            http: field("http"),
            child,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// Base URL of the HTTP server (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait up to `limit` for the gateway to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether an external peer (sipp, espeak-ng, ...) can be used. With
/// SWITCHBOARD_REQUIRE_PEERS=1 (CI) a missing peer fails the test instead of skipping it.
pub fn peer_available(bin: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{bin} is required (SWITCHBOARD_REQUIRE_PEERS=1) but not installed");
        }
        eprintln!("skipping: {bin} not installed");
    }
    found
}

/// Whether python3 with the official twilio library is there (required in CI).
pub fn twilio_library_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import twilio"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("the twilio Python library is required (SWITCHBOARD_REQUIRE_PEERS=1): python3 -m pip install 'twilio>=9,<10'");
        }
        eprintln!("skipping: python3 with the twilio library is not available (python3 -m pip install 'twilio>=9,<10')");
    }
    ok
}

/// A form POST a [`callback_sink`] received: its path, `X-Twilio-Signature` and parameters.
pub struct Posted {
    pub path: String,
    pub signature: String,
    pub form: Vec<(String, String)>,
}

impl Posted {
    pub fn get(&self, name: &str) -> String {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A loopback HTTP server that takes form POSTs on any path (status callbacks) and reports
/// each; its base URL (`http://127.0.0.1:PORT`).
pub async fn callback_sink() -> (String, tokio::sync::mpsc::UnboundedReceiver<Posted>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              axum::Form(form): axum::Form<Vec<(String, String)>>| {
            let tx = tx.clone();
            async move {
                let signature = headers
                    .get("x-twilio-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(Posted {
                    path: uri.path().to_string(),
                    signature,
                    form,
                });
                ""
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, rx)
}

pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

#[derive(Debug, Default)]
pub struct CallReport {
    pub final_status: u16,
    /// Decoded PCMU audio we received, in arrival order.
    pub audio: Vec<i16>,
    pub rtp_packets: usize,
    pub bye_received: bool,
    /// (sequence, timestamp, arrival) of each RTP packet.
    pub packets: Vec<(u16, u32, Instant)>,
}

pub struct CallOptions {
    pub from_user: String,
    pub to_user: String,
    pub call_id: String,
    pub max_duration: Duration,
    /// Hang up ourselves after this long (None: wait for the gateway's BYE).
    pub hangup_after: Option<Duration>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            from_user: "+15550100000".into(),
            to_user: "ivr".into(),
            call_id: format!("{:016x}@test", rand::random::<u64>()),
            max_duration: Duration::from_secs(30),
            hangup_after: None,
        }
    }
}

pub struct Ua {
    pub sip: UdpSocket,
    pub rtp: UdpSocket,
}

impl Ua {
    pub async fn new() -> Ua {
        Self::bound("127.0.0.1:0".parse().unwrap()).await
    }

    /// A user agent on another loopback address (127.0.0.2, say: a trunk's source).
    pub async fn bound(addr: SocketAddr) -> Ua {
        Ua {
            sip: UdpSocket::bind(addr).await.unwrap(),
            rtp: UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .unwrap(),
        }
    }

    pub fn invite(&self, target: SocketAddr, o: &CallOptions, branch: &str) -> String {
        let me = self.sip.local_addr().unwrap();
        let rtp = self.rtp.local_addr().unwrap();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n",
            rtp.port()
        );
        format!(
            "INVITE sip:{to}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             From: <sip:{from}@{me}>;tag=ua{tag}\r\nTo: <sip:{to}@{target}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{from}@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            to = o.to_user,
            from = o.from_user,
            tag = branch,
            cid = o.call_id,
            len = sdp.len(),
        )
    }

    /// Place a call and stay on it until the gateway hangs up (or our own limits).
    pub async fn call(&self, target: SocketAddr, o: CallOptions) -> CallReport {
        let branch = format!("z9hG4bK{:08x}", rand::random::<u32>());
        let invite = self.invite(target, &o, &branch);
        self.sip.send_to(invite.as_bytes(), target).await.unwrap();
        let mut report = CallReport::default();
        let mut buf = vec![0u8; 65536];
        let mut rbuf = [0u8; 2048];
        let start = Instant::now();
        let mut ok_200: Option<String> = None;
        let mut last_send = Instant::now();
        loop {
            if start.elapsed() > o.max_duration {
                break;
            }
            if let (Some(ok), Some(after)) = (&ok_200, o.hangup_after) {
                if start.elapsed() > after {
                    let bye = in_dialog(ok, "BYE", 2, &self.sip.local_addr().unwrap(), target);
                    self.sip.send_to(bye.as_bytes(), target).await.unwrap();
                    // wait briefly for the 200
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), self.sip.recv_from(&mut buf))
                            .await;
                    break;
                }
            }
            // Keep our side of the media flowing so the gateway can latch (symmetric RTP).
            if ok_200.is_some() && last_send.elapsed() > Duration::from_millis(20) {
                last_send = Instant::now();
                let pkt = silence_packet(report.rtp_packets as u16);
                let _ = self
                    .rtp
                    .send_to(
                        &pkt,
                        remote_rtp(ok_200.as_deref().unwrap_or("")).unwrap_or(target),
                    )
                    .await;
            }
            tokio::select! {
                r = self.sip.recv_from(&mut buf) => {
                    let (n, from) = r.unwrap();
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(code) = status_of(&msg) {
                        if header(&msg, "CSeq").is_some_and(|c| c.ends_with("INVITE")) && code >= 200 {
                            report.final_status = code;
                            let ack = ack_for(&msg, &self.sip.local_addr().unwrap(), target, &branch);
                            self.sip.send_to(ack.as_bytes(), from).await.unwrap();
                            if code == 200 {
                                ok_200 = Some(msg);
                            } else {
                                return report;
                            }
                        }
                    } else if msg.starts_with("BYE ") {
                        let ok = response_to(&msg, 200, "OK");
                        self.sip.send_to(ok.as_bytes(), from).await.unwrap();
                        report.bye_received = true;
                        // Drain RTP already in flight, then finish.
                        while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(50), self.rtp.recv_from(&mut rbuf)).await {
                            take_rtp(&rbuf[..n], &mut report);
                        }
                        return report;
                    }
                }
                r = self.rtp.recv_from(&mut rbuf) => {
                    let (n, _) = r.unwrap();
                    take_rtp(&rbuf[..n], &mut report);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        report
    }
}

fn silence_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 1, 2, 3, 4];
    let ts = (seq as u32) * 160;
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p.extend(std::iter::repeat_n(0xFFu8, 160));
    p
}

pub fn remote_rtp(ok: &str) -> Option<SocketAddr> {
    let body = ok.split("\r\n\r\n").nth(1)?;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

fn take_rtp(pkt: &[u8], report: &mut CallReport) {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 {
        return;
    }
    let pt = pkt[1] & 0x7F;
    let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
    let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    report.rtp_packets += 1;
    report.packets.push((seq, ts, Instant::now()));
    if pt == 0 {
        report.audio.extend(
            pkt[12..]
                .iter()
                .map(|&b| switchboard::media::codec::ulaw_to_linear(b)),
        );
    }
}

fn ack_for(resp: &str, me: &SocketAddr, target: SocketAddr, branch: &str) -> String {
    let to = header(resp, "To").unwrap_or("");
    let from = header(resp, "From").unwrap_or("");
    let cid = header(resp, "Call-ID").unwrap_or("");
    let (cseq_branch, uri) = if status_of(resp) == Some(200) {
        (
            format!("z9hG4bK{:08x}", rand::random::<u32>()),
            contact_uri(resp).unwrap_or(format!("sip:{target}")),
        )
    } else {
        (branch.to_string(), format!("sip:{target}"))
    };
    format!(
        "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={cseq_branch}\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {cid}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn contact_uri(msg: &str) -> Option<String> {
    let c = header(msg, "Contact")?;
    let a = c.find('<')?;
    let b = c.find('>')?;
    Some(c[a + 1..b].to_string())
}

pub fn in_dialog(ok: &str, method: &str, cseq: u32, me: &SocketAddr, target: SocketAddr) -> String {
    let to = header(ok, "To").unwrap_or("");
    let from = header(ok, "From").unwrap_or("");
    let cid = header(ok, "Call-ID").unwrap_or("");
    let uri = contact_uri(ok).unwrap_or(format!("sip:{target}"));
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{:08x}\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        rand::random::<u32>()
    )
}

pub fn response_to(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.split("\r\n").skip(1) {
        if l.is_empty() {
            break;
        }
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"].contains(&name.as_str()) {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Duration of the span between the first and last 20 ms frame louder than `threshold` RMS.
pub fn active_span(audio: &[i16], threshold: f64) -> Duration {
    let frames: Vec<f64> = audio
        .chunks(160)
        .map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect();
    let first = frames.iter().position(|&r| r > threshold);
    let last = frames.iter().rposition(|&r| r > threshold);
    match (first, last) {
        (Some(a), Some(b)) => Duration::from_millis(((b - a + 1) * 20) as u64),
        _ => Duration::ZERO,
    }
}

pub fn rms(audio: &[i16]) -> f64 {
    if audio.is_empty() {
        return 0.0;
    }
    (audio.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / audio.len() as f64).sqrt()
}

/// A phone on a call: established with [`Phone::dial`], it keeps receiving RTP and answering
/// BYE in the background while the test sends digits, INFO and audio.
pub struct Phone {
    pub sip: std::sync::Arc<UdpSocket>,
    pub rtp: std::sync::Arc<UdpSocket>,
    pub target: SocketAddr,
    pub remote_rtp: SocketAddr,
    pub ok: String,
    pub heard: std::sync::Arc<std::sync::Mutex<Heard>>,
    cseq: u32,
    seq: u16,
    ts: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
pub struct Heard {
    /// (arrival, payload type, timestamp, payload) of every RTP packet.
    pub packets: Vec<(Instant, u8, u32, Vec<u8>)>,
    /// RTCP datagrams received on the RTP port + 1.
    pub rtcp: Vec<Vec<u8>>,
    pub bye_at: Option<Instant>,
    /// Responses to the requests the phone sent after the call was set up.
    pub responses: Vec<String>,
}

impl Heard {
    /// Decoded PCMU audio with the arrival time of each 20 ms frame.
    pub fn audio_frames(&self) -> Vec<(Instant, Vec<i16>)> {
        self.packets
            .iter()
            .filter(|p| p.1 == 0)
            .map(|(t, _, _, p)| {
                (
                    *t,
                    p.iter()
                        .map(|&b| switchboard::media::codec::ulaw_to_linear(b))
                        .collect(),
                )
            })
            .collect()
    }

    /// Arrival time of the last frame louder than `threshold` RMS.
    pub fn last_loud(&self, threshold: f64) -> Option<Instant> {
        self.audio_frames()
            .into_iter()
            .rev()
            .find(|(_, f)| rms(f) > threshold)
            .map(|(t, _)| t)
    }

    /// RFC 4733 digits received (one per event, by timestamp) on payload type `pt`.
    pub fn events(&self, pt: u8) -> String {
        let mut rx = switchboard::media::dtmf::Rfc4733Receiver::default();
        self.packets
            .iter()
            .filter(|p| p.1 == pt)
            .filter_map(|(_, _, ts, payload)| rx.on_packet(*ts, payload))
            .collect()
    }
}

pub enum Offer {
    /// PCMU with telephone-event 101.
    Rfc4733,
    /// PCMU only: DTMF must travel in-band.
    PcmuOnly,
}

impl Phone {
    pub async fn dial(target: SocketAddr, from: &str, offer: Offer) -> Phone {
        Phone::dial_number(target, from, "ivr", offer).await
    }

    /// Call `to` (the Request-URI user) from `from`; panics unless answered.
    pub async fn dial_number(target: SocketAddr, from: &str, to: &str, offer: Offer) -> Phone {
        let sip = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // RTP on an even port with RTCP on the next one, as RFC 3550 pairs them.
        let (rtp, rtcp) = loop {
            let r = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = r.local_addr().unwrap().port();
            if port % 2 == 0 {
                if let Ok(c) = UdpSocket::bind(("127.0.0.1", port + 1)).await {
                    break (r, c);
                }
            }
        };
        let me = sip.local_addr().unwrap();
        let fmt = match offer {
            Offer::Rfc4733 => "0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16",
            Offer::PcmuOnly => "0\r\na=rtpmap:0 PCMU/8000",
        };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP {fmt}\r\na=ptime:20\r\n",
            rtp.local_addr().unwrap().port()
        );
        let branch = format!("z9hG4bK{:08x}", rand::random::<u32>());
        let invite = format!(
            "INVITE sip:{to}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             From: <sip:{from}@{me}>;tag=ph{branch}\r\nTo: <sip:{to}@{target}>\r\nCall-ID: {branch}@phone\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{from}@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip.send_to(invite.as_bytes(), target).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let ok = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(10), sip.recv_from(&mut buf))
                .await
                .expect("answer")
                .unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            match status_of(&msg) {
                Some(200) => break msg,
                Some(c) if c >= 300 => panic!("call refused: {msg}"),
                _ => {}
            }
        };
        let ack = ack_for(&ok, &me, target, &branch);
        sip.send_to(ack.as_bytes(), target).await.unwrap();
        let remote_rtp = remote_rtp(&ok).expect("SDP answer");
        let sip = std::sync::Arc::new(sip);
        let rtp = std::sync::Arc::new(rtp);
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Heard::default()));
        let mut tasks = Vec::new();
        {
            let (rtp, heard) = (rtp.clone(), heard.clone());
            tasks.push(tokio::spawn(async move {
                let mut b = [0u8; 2048];
                while let Ok((n, _)) = rtp.recv_from(&mut b).await {
                    if n >= 12 {
                        let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        heard.lock().unwrap().packets.push((
                            Instant::now(),
                            b[1] & 0x7F,
                            ts,
                            b[12..n].to_vec(),
                        ));
                    }
                }
            }));
        }
        {
            let heard = heard.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = [0u8; 2048];
                while let Ok((n, _)) = rtcp.recv_from(&mut b).await {
                    heard.lock().unwrap().rtcp.push(b[..n].to_vec());
                }
            }));
        }
        {
            let (sip, heard) = (sip.clone(), heard.clone());
            tasks.push(tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while let Ok((n, from)) = sip.recv_from(&mut b).await {
                    let msg = String::from_utf8_lossy(&b[..n]).to_string();
                    if msg.starts_with("BYE ") {
                        let _ = sip
                            .send_to(response_to(&msg, 200, "OK").as_bytes(), from)
                            .await;
                        heard.lock().unwrap().bye_at.get_or_insert(Instant::now());
                    } else if msg.starts_with("SIP/2.0 ") {
                        heard.lock().unwrap().responses.push(msg);
                    }
                }
            }));
        }
        Phone {
            sip,
            rtp,
            target,
            remote_rtp,
            ok,
            heard,
            cseq: 1,
            seq: 0,
            ts: 0,
            tasks,
        }
    }

    fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// Send 8 kHz audio as PCMU, paced in real time.
    pub async fn send_audio(&mut self, pcm: &[i16]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for chunk in pcm.chunks(160) {
            tick.tick().await;
            let payload: Vec<u8> = chunk
                .iter()
                .map(|&s| switchboard::media::codec::linear_to_ulaw(s))
                .collect();
            let ts = self.ts;
            self.ts = self.ts.wrapping_add(160);
            let p = self.packet(0, false, ts, &payload);
            self.rtp.send_to(&p, self.remote_rtp).await.unwrap();
        }
    }

    /// One RFC 4733 event (100 ms, with the three end packets), paced in real time.
    pub async fn send_rfc4733(&mut self, digit: char) {
        let sender =
            switchboard::media::tones::Rfc4733Sender::new(digit, 100, 20, 8000).expect("digit");
        let start = self.ts;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for ev in sender {
            tick.tick().await;
            let p = self.packet(101, ev.marker, start, &ev.payload);
            self.rtp.send_to(&p, self.remote_rtp).await.unwrap();
        }
        self.ts = self.ts.wrapping_add(800);
    }

    /// DTMF in-band: the two tones as audio.
    pub async fn send_inband(&mut self, digit: char) {
        let mut pcm = switchboard::media::tones::dtmf_tone(digit, 8000, 120, -8.0).expect("digit");
        pcm.extend(switchboard::media::tones::silence(100, 8000));
        self.send_audio(&pcm).await;
    }

    /// DTMF by SIP INFO (application/dtmf-relay).
    pub async fn send_info(&mut self, digit: char) {
        self.cseq += 1;
        let me = self.sip.local_addr().unwrap();
        let body = format!("Signal={digit}\r\nDuration=160\r\n");
        let req = in_dialog(&self.ok, "INFO", self.cseq, &me, self.target).replace(
            "Content-Length: 0\r\n",
            &format!(
                "Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n",
                body.len()
            ),
        ) + &body;
        self.sip.send_to(req.as_bytes(), self.target).await.unwrap();
    }

    /// A new offer inside the call: `method` INVITE (acknowledged when answered 2xx) or
    /// UPDATE, with our RTP at `rtp` (default: the phone's own port) and `direction`
    /// (`sendrecv`, `sendonly`, `inactive`...). Returns the final response.
    pub async fn reoffer(
        &mut self,
        method: &str,
        direction: &str,
        rtp: Option<SocketAddr>,
    ) -> String {
        self.cseq += 1;
        let cseq = self.cseq;
        let me = self.sip.local_addr().unwrap();
        let rtp = rtp.unwrap_or_else(|| self.rtp.local_addr().unwrap());
        let sdp = format!(
            "v=0\r\no=- 1 {cseq} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\na=ptime:20\r\na={direction}\r\n",
            ip = rtp.ip(),
            port = rtp.port()
        );
        let req = in_dialog(&self.ok, method, cseq, &me, self.target).replace(
            "Content-Length: 0\r\n",
            &format!(
                "Contact: <sip:phone@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n",
                sdp.len()
            ),
        ) + &sdp;
        self.sip.send_to(req.as_bytes(), self.target).await.unwrap();
        let start = Instant::now();
        let fin = loop {
            let got = self
                .heard
                .lock()
                .unwrap()
                .responses
                .iter()
                .find(|r| {
                    header(r, "CSeq").is_some_and(|c| c.starts_with(&format!("{cseq} ")))
                        && status_of(r).is_some_and(|s| s >= 200)
                })
                .cloned();
            if let Some(r) = got {
                break r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no answer to the {method}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if method == "INVITE" && status_of(&fin).is_some_and(|s| s < 300) {
            let ack = in_dialog(&self.ok, "ACK", cseq, &me, self.target);
            self.sip.send_to(ack.as_bytes(), self.target).await.unwrap();
        }
        fin
    }

    pub async fn hangup(&mut self) {
        self.cseq += 1;
        let me = self.sip.local_addr().unwrap();
        let bye = in_dialog(&self.ok, "BYE", self.cseq, &me, self.target);
        self.sip.send_to(bye.as_bytes(), self.target).await.unwrap();
    }

    /// Wait until the gateway hangs up (or panic after `limit`).
    pub async fn wait_bye(&self, limit: Duration) -> Instant {
        let start = Instant::now();
        loop {
            if let Some(t) = self.heard.lock().unwrap().bye_at {
                return t;
            }
            assert!(start.elapsed() < limit, "no BYE within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn call_id(&self) -> String {
        header(&self.ok, "Call-ID").unwrap_or("").to_string()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A call to `target` that hangs up after 300 ms (or gives up after `max`): its final status.
pub async fn short_call(target: SocketAddr, max: Duration) -> u16 {
    Ua::new()
        .await
        .call(
            target,
            CallOptions {
                max_duration: max,
                hangup_after: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .final_status
}

/// Executions of the flow in `path` with their steps, from the gateway's database.
pub async fn executions(
    gw: &Gateway,
    flow_path: &Path,
) -> Vec<(
    switchboard::store::ExecutionRecord,
    Vec<switchboard::store::StepRecord>,
)> {
    let url = format!(
        "sqlite://{}?mode=rw",
        gw.data_dir.join("switchboard.db").display()
    );
    let store = switchboard::store::Store::open(&url).await.unwrap();
    let flow = switchboard::routing::LoadedFlow::from_file(flow_path).unwrap();
    let mut out = Vec::new();
    for e in store.executions_for_flow(&flow.sid).await.unwrap() {
        let steps = store.steps(&e.sid).await.unwrap();
        out.push((e, steps));
    }
    out
}

/// GET a REST API path (Basic auth with the test credentials) as JSON.
pub async fn api_get(gw: &Gateway, path: &str) -> serde_json::Value {
    switchboard::web::plain_client()
        .get(format!("{}{path}", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The gateway's log without its ANSI colour codes (tracing colours field names).
pub fn plain_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` on a plain log line (quotes removed).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?,
        None => rest.split(' ').next()?,
    };
    Some(value)
}

/// tshark on loopback printing `fields` of each datagram sent to `port`, for at most `secs`;
/// returns once it captures.
pub fn capture_to(port: u16, fields: &[&str], secs: u32) -> std::process::Child {
    let mut capture = std::process::Command::new("tshark")
        .args(["-i", "lo", "-l", "-n", "-a", &format!("duration:{secs}")])
        .args([
            "-f",
            &format!("udp and dst host 127.0.0.1 and dst port {port}"),
        ])
        .args(["-T", "fields"])
        .args(fields.iter().flat_map(|f| ["-e", f]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tshark");
    let mut err = std::io::BufReader::new(capture.stderr.take().expect("tshark's stderr"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
        if line.contains("Capturing on") {
            break;
        }
        line.clear();
    }
    capture
}

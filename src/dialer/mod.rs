//! `switchboard call`: a SIP test caller and load generator.
//!
//! One tokio task drives every call of a run over one shared UDP socket for SIP (a Call-ID →
//! call map of sans-IO `uac::Uac` dialogs and one timer heap), while a few pacing threads
//! (`media::MediaPool`) send and receive RTP for all calls, one small socket per call.
//! `load::Scheduler` decides when calls start; [`report::Summary`] is what a run prints.

pub mod cli;
pub(crate) mod load;
pub(crate) mod media;
pub mod report;
pub(crate) mod uac;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;

use self::cli::{caller_id, Options};
use self::load::{CallResult, Scheduler, Stats};
use self::media::{MediaPool, MediaReport, StreamSpec};
use self::report::Summary;
use self::uac::{Action, End, Params, ResponseView, State, Uac};
use crate::media::{player, Clip, Codec};
use crate::sip::message::{self, SipMessage};
use crate::sip::sdp;

pub use cli::CallArgs;

/// Why `switchboard call` could not run.
#[derive(Debug, Error)]
pub enum CallerError {
    /// An option is invalid.
    #[error("{0}")]
    Option(#[from] cli::OptionError),
    /// The target's host has no address.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// A local socket could not be opened.
    #[error("cannot open a local socket: {0}")]
    Socket(std::io::Error),
    /// The `--play` file could not be read or decoded.
    #[error("cannot read --play file {path}: {reason}")]
    Play {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The `--record` file could not be written.
    #[error("cannot write recording {path}: {reason}")]
    Record {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Grace period for BYEs to be answered after `--max-duration`.
const DRAIN: Duration = Duration::from_secs(2);
const MAX_SIP: usize = 65535;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Sip,
    Hangup,
}

struct Call {
    uac: Uac,
    /// Our SDP offer: an encrypted answer is keyed against it.
    offer: String,
    rtp: Option<StdUdpSocket>,
    worker: Option<usize>,
    end: Option<End>,
    media: Option<MediaReport>,
    timer_pushed: Option<Instant>,
}

struct Run {
    opts: Options,
    verbose: bool,
    run_id: String,
    target: SocketAddr,
    local_ip: IpAddr,
    sip: UdpSocket,
    pool: MediaPool,
    play: Option<Arc<Clip>>,
    dtmf: Arc<[cli::DtmfStep]>,
    calls: HashMap<u64, Call>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    stats: Stats,
    active: u64,
    max_active: u64,
    started: Instant,
    recorded: Option<Result<f64, CallerError>>,
    first_start: Option<Instant>,
    last_answer: Option<Instant>,
}

/// Place the calls `opts` asks for and summarise them.
pub async fn run(opts: Options) -> Result<Summary, CallerError> {
    let target = resolve(&opts.target.host, opts.target.port).await?;
    let local_ip = match opts.bind {
        Some(ip) => ip,
        None => route_source(target).map_err(CallerError::Socket)?,
    };
    let sip = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .map_err(CallerError::Socket)?;
    let play = match &opts.play {
        Some(path) => Some(load_clip(path)?),
        None => None,
    };
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let pool = MediaPool::new(opts.media_threads, tx).map_err(CallerError::Socket)?;
    let verbose = opts.calls == 1;
    let progress = opts.calls > 1 && std::io::stderr().is_terminal();
    let now = Instant::now();
    let mut run = Run {
        dtmf: opts.dtmf.clone().into(),
        run_id: format!("{:08x}", rand::random::<u32>()),
        verbose,
        target,
        local_ip,
        sip,
        pool,
        play,
        calls: HashMap::new(),
        timers: BinaryHeap::new(),
        stats: Stats::default(),
        active: 0,
        max_active: 0,
        started: now,
        recorded: None,
        first_start: None,
        last_answer: None,
        opts,
    };
    if verbose {
        eprintln!(
            "calling {} ({}) from {}",
            run.opts.target.request_uri(target),
            target,
            run.sip.local_addr().map_err(CallerError::Socket)?
        );
    }
    let mut sched = Scheduler::new(run.opts.calls, run.opts.concurrency, run.opts.rate, now);
    let deadline = now + run.opts.max_duration;
    let mut aborted_at: Option<Instant> = None;
    let mut next_progress = now;
    let mut buf = vec![0u8; MAX_SIP + 1];
    loop {
        let now = Instant::now();
        // Start every call that is due.
        if aborted_at.is_none() {
            while sched.try_start(now, run.active) {
                let n = sched.started - 1;
                run.start_call(n, now).await;
            }
        }
        // Due timers.
        while let Some(&Reverse((t, n, kind))) = run.timers.peek() {
            if t > now {
                break;
            }
            run.timers.pop();
            run.on_timer(n, kind, now).await;
        }
        if sched.done() && run.active == 0 {
            break;
        }
        if aborted_at.is_none() && now >= deadline {
            aborted_at = Some(now);
            run.abort_all(now).await;
            continue;
        }
        if aborted_at.is_some_and(|t| now >= t + DRAIN) {
            run.give_up_all();
            break;
        }
        if progress && now >= next_progress {
            run.progress_line(&sched);
            next_progress = now + Duration::from_millis(500);
        }
        let mut wake = run.timers.peek().map(|Reverse((t, _, _))| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        if aborted_at.is_none() {
            consider(sched.next_start(run.active));
            consider(Some(deadline));
        } else {
            consider(aborted_at.map(|t| t + DRAIN));
        }
        if progress {
            consider(Some(next_progress));
        }
        let wake = wake.unwrap_or(now + Duration::from_millis(100));
        tokio::select! {
            r = run.sip.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    run.on_datagram(&buf[..n], from).await;
                }
            }
            Some(report) = reports.recv() => run.on_media(report),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    if progress {
        eprintln!();
    }
    let mut summary = Summary::new(
        run.opts.target.request_uri(target),
        &run.stats,
        run.started.elapsed(),
        run.max_active,
    );
    if let (Some(a), Some(b)) = (run.first_start, run.last_answer) {
        let span = (b - a).as_secs_f64();
        if span > 0.0 && run.stats.answered > 1 {
            summary.setup_rate_cps =
                Some(((run.stats.answered as f64 / span) * 100.0).round() / 100.0);
        }
    }
    if let Some(Err(e)) = run.recorded.take() {
        return Err(e);
    }
    Ok(summary)
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, CallerError> {
    let err = |reason: String| CallerError::Resolve {
        host: host.to_string(),
        reason,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .first()
        .copied()
        .ok_or_else(|| err("no address".into()))
}

/// The local address the kernel would send from to reach `target`.
fn route_source(target: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = StdUdpSocket::bind(any)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

fn load_clip(path: &Path) -> Result<Arc<Clip>, CallerError> {
    let fail = |reason: String| CallerError::Play {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let ext = path.extension().and_then(|e| e.to_str());
    player::decode(&bytes, ext).map_err(|e| fail(e.to_string()))
}

fn sdp_offer(ip: IpAddr, port: u16, codecs: &[Codec], srtp: sdp::SrtpPolicy) -> String {
    sdp::offer(
        codecs,
        SocketAddr::new(ip, port),
        rand::random::<u32>() as u64,
        srtp,
    )
}

impl Run {
    fn call_id(&self, n: u64) -> String {
        format!("{n}-{}@{}", self.run_id, self.local_ip)
    }

    /// The call a Call-ID names, if it is one of ours still in progress.
    fn lookup(&self, call_id: &str) -> Option<u64> {
        let (n, rest) = call_id.split_once('-')?;
        let n: u64 = n.parse().ok()?;
        rest.strip_prefix(&self.run_id)?;
        self.calls
            .get(&n)
            .filter(|c| c.uac.call_id() == call_id)
            .map(|_| n)
    }

    fn ours(&self, call_id: &str) -> bool {
        call_id
            .split_once('-')
            .is_some_and(|(_, rest)| rest.starts_with(&self.run_id))
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        // Send errors (e.g. ICMP unreachable reported on the socket) are left to the timers.
        let _ = self.sip.send_to(bytes, to).await;
    }

    async fn start_call(&mut self, n: u64, now: Instant) {
        self.first_start.get_or_insert(now);
        self.active += 1;
        self.max_active = self.max_active.max(self.active);
        let rtp = StdUdpSocket::bind(SocketAddr::new(self.local_ip, 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let (rtp, port) = match rtp.and_then(|s| s.local_addr().map(|a| (s, a.port()))) {
            Ok(v) => v,
            Err(e) => {
                self.active -= 1;
                self.stats.record(
                    &CallResult {
                        end: End::Aborted,
                        local_error: Some(format!("cannot bind an RTP socket: {e}")),
                        setup: None,
                        heard_audio: false,
                        dtmf_latency: None,
                        answered: false,
                    },
                    self.opts.require_audio,
                );
                return;
            }
        };
        let local = match self.sip.local_addr() {
            Ok(a) => a,
            Err(_) => SocketAddr::new(self.local_ip, 0),
        };
        let offer = sdp_offer(self.local_ip, port, &self.opts.codecs, self.opts.srtp);
        let params = Params {
            call_id: self.call_id(n),
            from_user: caller_id(&self.opts.from, self.opts.from_range, n),
            request_uri: self.opts.target.request_uri(self.target),
            local,
            sdp_offer: offer.clone(),
            setup_timeout: self.opts.setup_timeout,
        };
        let mut uac = Uac::new(params, now);
        let actions = uac.start(now);
        self.calls.insert(
            n,
            Call {
                uac,
                offer,
                rtp: Some(rtp),
                worker: None,
                end: None,
                media: None,
                timer_pushed: None,
            },
        );
        self.apply(n, actions, now).await;
    }

    async fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive
        }
        let now = Instant::now();
        let msg = match message::parse(data, MAX_SIP) {
            Ok(m) => m,
            Err(_) => return,
        };
        match msg {
            SipMessage::Response(r) => {
                let Some(n) = self.lookup(&r.call_id) else {
                    return;
                };
                let raw = String::from_utf8_lossy(data);
                let view = ResponseView::from_raw(&raw, r.status, &r.cseq_method);
                let actions = match self.calls.get_mut(&n) {
                    Some(c) => c.uac.on_response(now, &view),
                    None => return,
                };
                self.apply(n, actions, now).await;
            }
            SipMessage::Request(req) => {
                if let Some(n) = self.lookup(&req.call_id) {
                    let actions = match self.calls.get_mut(&n) {
                        Some(c) => c.uac.on_request(now, &req, from),
                        None => return,
                    };
                    self.apply(n, actions, now).await;
                } else if req.method == "ACK" {
                } else if req.method == "BYE" && self.ours(&req.call_id) {
                    // A retransmitted BYE for a call we already ended: our 200 was lost.
                    self.send(&uac::response(&req, 200, "OK"), from).await;
                } else {
                    let resp = uac::response(&req, 481, "Call/Transaction Does Not Exist");
                    self.send(&resp, from).await;
                }
            }
        }
    }

    async fn on_timer(&mut self, n: u64, kind: Timer, now: Instant) {
        let actions = match self.calls.get_mut(&n) {
            Some(c) => {
                if kind == Timer::Sip {
                    c.timer_pushed = None;
                    c.uac.on_timer(now)
                } else if c.uac.state == State::Confirmed {
                    if self.verbose {
                        eprintln!("hanging up");
                    }
                    c.uac.hangup(now)
                } else {
                    Vec::new()
                }
            }
            None => return,
        };
        self.apply(n, actions, now).await;
    }

    async fn apply(&mut self, n: u64, actions: Vec<Action>, now: Instant) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(bytes) => self.send(&bytes, self.target).await,
                Action::Reply(bytes, to) => self.send(&bytes, to).await,
                Action::Answered { sdp } => queue.extend(self.answered(n, &sdp, now)),
                Action::Ended(end) => self.ended(n, end),
            }
        }
        // Keep one heap entry for the call's next SIP timer.
        if let Some(c) = self.calls.get_mut(&n) {
            if let Some(t) = c.uac.next_timer() {
                if c.timer_pushed.is_none_or(|p| t < p) {
                    c.timer_pushed = Some(t);
                    self.timers.push(Reverse((t, n, Timer::Sip)));
                }
            }
        }
        self.maybe_finish(n);
    }

    /// Start the call's media for its SDP answer; returns more actions (a BYE when the answer
    /// is unusable).
    fn answered(&mut self, n: u64, sdp_answer: &str, now: Instant) -> Vec<Action> {
        let Some(c) = self.calls.get_mut(&n) else {
            return Vec::new();
        };
        let setup = now - c.uac.started();
        self.last_answer = Some(now);
        let neg = match sdp::negotiate_answer(&c.offer, sdp_answer, &self.opts.codecs) {
            Ok(neg) => neg,
            Err(e) => return c.uac.reject_answer(now, e.to_string()),
        };
        let srtp = match neg
            .srtp
            .as_ref()
            .map(|s| crate::media::srtp::Srtp::new(&s.keys))
        {
            None => None,
            Some(Ok(s)) => Some(Box::new(s)),
            Some(Err(e)) => return c.uac.reject_answer(now, e.to_string()),
        };
        if self.verbose {
            let te = neg
                .telephone_event
                .map_or("no telephone-event (DTMF in-band)".to_string(), |pt| {
                    format!("telephone-event {pt}")
                });
            let srtp = neg
                .srtp
                .as_ref()
                .map_or(String::new(), |s| format!(", SRTP {}", s.keys.suite.name()));
            eprintln!(
                "answered in {} ms: {} to {}, {te}{srtp}",
                setup.as_millis(),
                neg.codec.rtpmap_name(),
                neg.remote_rtp
            );
        }
        let Some(socket) = c.rtp.take() else {
            return Vec::new();
        };
        let spec = StreamSpec {
            n,
            socket,
            remote: neg.remote_rtp,
            codec: neg.codec,
            payload_type: neg.payload_type,
            telephone_event: neg.telephone_event,
            ptime_ms: neg.ptime_ms,
            play: self.play.as_ref().map(|clip| clip.encoded(neg.codec)),
            dtmf: self.dtmf.clone(),
            dtmf_after: self.opts.dtmf_after,
            record: self.opts.record.is_some(),
            srtp,
        };
        c.worker = Some(self.pool.add(spec));
        if let Some(after) = self.opts.hangup_after {
            self.timers.push(Reverse((now + after, n, Timer::Hangup)));
        }
        Vec::new()
    }

    fn ended(&mut self, n: u64, end: End) {
        let Some(c) = self.calls.get_mut(&n) else {
            return;
        };
        if self.verbose {
            match &end {
                End::Completed { by_remote: true } => eprintln!(
                    "the far end hung up after {:.1} s",
                    c.uac.answered_at.map_or(0.0, |t| t.elapsed().as_secs_f64())
                ),
                End::Completed { by_remote: false } => eprintln!("hung up"),
                _ => {}
            }
        }
        c.end = Some(end);
        c.rtp = None;
        if let Some(w) = c.worker {
            self.pool.stop(w, n);
        }
    }

    fn on_media(&mut self, report: MediaReport) {
        let n = report.n;
        if let Some(c) = self.calls.get_mut(&n) {
            c.media = Some(report);
        }
        self.maybe_finish(n);
    }

    /// A call is finished when its dialog ended and its media (if any) reported.
    fn maybe_finish(&mut self, n: u64) {
        let done = self
            .calls
            .get(&n)
            .is_some_and(|c| c.end.is_some() && (c.worker.is_none() || c.media.is_some()));
        if !done {
            return;
        }
        let Some(c) = self.calls.remove(&n) else {
            return;
        };
        self.active = self.active.saturating_sub(1);
        self.finish(c);
    }

    fn finish(&mut self, c: Call) {
        let media = c.media.unwrap_or_default();
        let result = CallResult {
            end: c.end.unwrap_or(End::Aborted),
            local_error: None,
            setup: c.uac.answered_at.map(|t| t - c.uac.started()),
            heard_audio: media.loud_frames > 0,
            dtmf_latency: media.dtmf_latency,
            answered: c.uac.answered_at.is_some(),
        };
        if self.verbose && result.answered {
            eprintln!(
                "heard {:.1} s of non-silent audio in {} packets; sent {} digit(s){}{}",
                media.loud_frames as f64 * 0.02,
                media.packets_received,
                media.digits_sent,
                if media.digits_heard.is_empty() {
                    String::new()
                } else {
                    format!("; digits heard: {}", media.digits_heard)
                },
                media.dtmf_latency.map_or(String::new(), |l| format!(
                    "; DTMF→prompt {} ms",
                    l.as_millis()
                ))
            );
        }
        if let (Some(path), Some((pcm, rate))) = (&self.opts.record, media.recording) {
            let r = write_wav(path, &pcm, rate);
            if self.verbose {
                if let Ok(secs) = &r {
                    eprintln!("recorded {secs:.1} s to {}", path.display());
                }
            }
            self.recorded = Some(r);
        }
        self.stats.record(&result, self.opts.require_audio);
    }

    async fn abort_all(&mut self, now: Instant) {
        if self.verbose {
            eprintln!("--max-duration reached: hanging up");
        }
        let ns: Vec<u64> = self.calls.keys().copied().collect();
        for n in ns {
            let actions = match self.calls.get_mut(&n) {
                Some(c) if c.end.is_none() => match c.uac.state {
                    State::Confirmed | State::Calling | State::Proceeding => {
                        // Answered calls end cleanly if the BYE is answered in time; the run
                        // still counts them as aborted so a stuck flow shows up.
                        let mut a = c.uac.hangup(now);
                        if c.uac.state == State::Terminating {
                            a.push(Action::Ended(End::Aborted));
                        }
                        a
                    }
                    _ => vec![Action::Ended(End::Aborted)],
                },
                _ => Vec::new(),
            };
            self.apply(n, actions, now).await;
        }
    }

    fn give_up_all(&mut self) {
        let ns: Vec<u64> = self.calls.keys().copied().collect();
        for n in ns {
            if let Some(mut c) = self.calls.remove(&n) {
                c.end.get_or_insert(End::Aborted);
                self.active = self.active.saturating_sub(1);
                self.finish(c);
            }
        }
    }

    fn progress_line(&self, sched: &Scheduler) {
        const WIDTH: usize = 24;
        let total = self.opts.calls.max(1);
        let done = self.stats.attempted;
        let filled = (done as usize * WIDTH / total as usize).min(WIDTH);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r\x1b[2K[{}{}] {done}/{total} done, {} active, {} started, {} ok, {} failed, {:.1} calls/s",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.active,
            sched.started,
            self.stats.completed,
            self.stats.failed_total(),
            sched.started as f64 / secs
        );
    }
}

/// Write PCM16 mono 8 kHz WAV atomically (a temp file in the same folder, then a rename).
fn write_wav(path: &Path, pcm: &[i16], rate: u32) -> Result<f64, CallerError> {
    let fail = |reason: String| CallerError::Record {
        path: path.display().to_string(),
        reason,
    };
    let pcm8k = crate::media::resample::resample(pcm, rate, 8000);
    let clip = Clip::from_pcm(pcm8k);
    let wav = clip.to_wav().map_err(|e| fail(e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(e.to_string()))?;
    std::io::Write::write_all(&mut tmp, &wav).map_err(|e| fail(e.to_string()))?;
    tmp.persist(path).map_err(|e| fail(e.error.to_string()))?;
    Ok(clip.duration().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_lists_codecs_then_telephone_event_and_negotiates_with_our_own_parser() {
        let sdp = sdp_offer(
            "127.0.0.1".parse().unwrap(),
            4000,
            &[Codec::Pcmu, Codec::Pcma],
            sdp::SrtpPolicy::Off,
        );
        assert!(sdp.contains("m=audio 4000 RTP/AVP 0 8 101\r\n"), "{sdp}");
        let n = sdp::negotiate(&sdp, &[Codec::Pcma, Codec::Pcmu], sdp::SrtpPolicy::Off).unwrap();
        assert_eq!((n.codec, n.telephone_event), (Codec::Pcmu, Some(101)));
        assert_eq!(n.remote_rtp, "127.0.0.1:4000".parse().unwrap());
    }

    #[test]
    fn recordings_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heard.wav");
        let secs = write_wav(&path, &vec![1000; 16000], 16000).unwrap();
        assert!((secs - 1.0).abs() < 0.01);
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(
            (r.spec().sample_rate, r.spec().channels, r.len()),
            (8000, 1, 8000)
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(write_wav(&dir.path().join("no/such/dir.wav"), &[0; 10], 8000).is_err());
    }
}

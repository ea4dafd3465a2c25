//! RTP for every call of a run, on a few pacing threads instead of a task per call.
//!
//! Each thread owns its streams (one non-blocking UDP socket each) and wakes on a 10 ms grid.
//! A stream sends a packet when its frame is due (silence, `--play` audio, or an RFC 4733 event
//! packet), and drains its socket at the same moment: one `sendto`, and `recvfrom` until the
//! socket is empty. A late wake-up skips frames by timestamp instead of bursting (as the
//! gateway's own engine does). While a stream waits for the prompt that answers its last digit,
//! it is read on every 10 ms tick so that the latency it measures has 10 ms resolution.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cli::DtmfStep;
use crate::media::codec::Decoder;
use crate::media::dtmf::Rfc4733Receiver;
use crate::media::rtp::{self, RtpSender, HEADER_LEN};
use crate::media::srtp;
use crate::media::tones::{dtmf_tone, Rfc4733Sender};
use crate::media::Codec;

const TICK: Duration = Duration::from_millis(10);
/// A 20 ms frame whose RMS exceeds this (about -44 dBFS) counts as "non-silent".
pub const LOUD_RMS: f64 = 200.0;
const DIGIT_MS: u32 = 100;
const INTER_DIGIT: Duration = Duration::from_millis(80);
const PAUSE: Duration = Duration::from_millis(500);
/// Longest recording kept (one hour at 8 kHz).
const MAX_RECORD_SAMPLES: usize = 8000 * 3600;
const MAX_FRAME: usize = 480;

/// What a stream needs: the negotiated media and the call's plan.
pub struct StreamSpec {
    pub n: u64,
    pub socket: UdpSocket,
    pub remote: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    pub ptime_ms: u32,
    /// `--play` audio, already encoded for `codec`.
    pub play: Option<Arc<[u8]>>,
    pub dtmf: Arc<[DtmfStep]>,
    pub dtmf_after: Duration,
    pub record: bool,
    /// SRTP contexts when the answer keyed the stream (`--srtp`).
    pub srtp: Option<Box<crate::media::srtp::Srtp>>,
}

/// What a stream saw, sent back when it is stopped.
#[derive(Debug, Default, Clone)]
pub struct MediaReport {
    pub n: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub audio_frames: u64,
    pub loud_frames: u64,
    pub digits_sent: u32,
    pub digits_heard: String,
    /// From the first packet of the last digit sent to the first non-silent frame that
    /// followed it (after a quiet frame, so a prompt still playing does not count).
    pub dtmf_latency: Option<Duration>,
    /// Decoded audio heard, in arrival order, at the codec's rate (with `record`).
    pub recording: Option<(Vec<i16>, u32)>,
}

enum Command {
    Add(Box<StreamSpec>),
    Stop(u64),
}

/// The pacing threads of a run.
pub struct MediaPool {
    workers: Vec<std_mpsc::Sender<Command>>,
    next: usize,
}

impl MediaPool {
    pub fn new(
        threads: usize,
        reports: tokio::sync::mpsc::UnboundedSender<MediaReport>,
    ) -> std::io::Result<MediaPool> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = std_mpsc::channel();
            let reports = reports.clone();
            std::thread::Builder::new()
                .name(format!("call-media-{i}"))
                .spawn(move || worker(rx, reports))?;
            workers.push(tx);
        }
        Ok(MediaPool { workers, next: 0 })
    }

    /// Start a stream; returns the worker that owns it.
    pub fn add(&mut self, spec: StreamSpec) -> usize {
        let i = self.next % self.workers.len();
        self.next = self.next.wrapping_add(1);
        let _ = self.workers[i].send(Command::Add(Box::new(spec)));
        i
    }

    /// Stop a stream; its [`MediaReport`] arrives on the reports channel.
    pub fn stop(&self, worker: usize, n: u64) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w.send(Command::Stop(n));
        }
    }
}

enum Sending {
    Idle,
    Event {
        sender: Rfc4733Sender,
        timestamp: u32,
    },
    Tone {
        audio: Vec<u8>,
        pos: usize,
    },
}

struct Stream {
    spec: StreamSpec,
    frame: usize,
    frame_dur: Duration,
    rtp: RtpSender,
    next_due: Instant,
    play_pos: usize,
    dtmf_idx: usize,
    dtmf_next_at: Instant,
    last_digit_idx: Option<usize>,
    sending: Sending,
    decoder: Decoder,
    rx_events: Rfc4733Receiver,
    /// Waiting for the answer to the last digit: (sent at, a quiet frame seen since).
    armed: Option<(Instant, bool)>,
    last_loud: bool,
    report: MediaReport,
}

impl Stream {
    fn new(spec: StreamSpec, now: Instant) -> Stream {
        let ptime = spec.ptime_ms.clamp(10, 60);
        let frame = (ptime as usize) * 8;
        let last_digit_idx = spec
            .dtmf
            .iter()
            .rposition(|s| matches!(s, DtmfStep::Digit(_)));
        Stream {
            frame,
            frame_dur: Duration::from_millis(ptime as u64),
            rtp: RtpSender::new(spec.payload_type),
            next_due: now,
            play_pos: 0,
            dtmf_idx: 0,
            dtmf_next_at: now + spec.dtmf_after,
            last_digit_idx,
            sending: Sending::Idle,
            decoder: Decoder::new(spec.codec),
            rx_events: Rfc4733Receiver::default(),
            armed: None,
            last_loud: false,
            report: MediaReport {
                n: spec.n,
                recording: spec.record.then(|| (Vec::new(), spec.codec.sample_rate())),
                ..MediaReport::default()
            },
            spec,
        }
    }

    /// Start the next DTMF step if one is due and nothing else is being sent.
    fn next_digit(&mut self, now: Instant) {
        if !matches!(self.sending, Sending::Idle) || now < self.dtmf_next_at {
            return;
        }
        let Some(step) = self.spec.dtmf.get(self.dtmf_idx).copied() else {
            return;
        };
        let idx = self.dtmf_idx;
        self.dtmf_idx += 1;
        match step {
            DtmfStep::Pause => self.dtmf_next_at = now + PAUSE,
            DtmfStep::Digit(d) => {
                if self.spec.telephone_event.is_some() {
                    if let Some(sender) =
                        Rfc4733Sender::new(d, DIGIT_MS, self.frame as u32 / 8, 8000)
                    {
                        self.sending = Sending::Event {
                            sender,
                            timestamp: self.rtp.timestamp(),
                        };
                    }
                } else if let Some(pcm) = dtmf_tone(d, 8000, DIGIT_MS, -8.0) {
                    let mut audio = Vec::new();
                    self.spec.codec.encode(&pcm, &mut audio);
                    self.sending = Sending::Tone { audio, pos: 0 };
                }
                self.report.digits_sent += 1;
                if Some(idx) == self.last_digit_idx {
                    self.armed = Some((now, !self.last_loud));
                }
            }
        }
    }

    /// Send the frame due at `now` (if any); returns whether it sent.
    fn send_due(&mut self, now: Instant, buf: &mut [u8; HEADER_LEN + MAX_FRAME]) -> bool {
        if now < self.next_due {
            return false;
        }
        let behind = ((now - self.next_due).as_micros() / self.frame_dur.as_micros().max(1)) as u32;
        if behind > 0 {
            // Skip the missed frames by timestamp: no burst.
            self.rtp.advance(behind * self.frame as u32);
            self.play_pos = self.play_pos.saturating_add(behind as usize * self.frame);
        }
        self.next_due += self.frame_dur * (behind + 1);
        self.next_digit(now);
        let frame = self.frame;
        let n = match &mut self.sending {
            Sending::Event { sender, timestamp } => match sender.next() {
                Some(ev) => {
                    let pt = self.spec.telephone_event.unwrap_or(101);
                    let ts = *timestamp;
                    self.rtp.write_at(buf, &ev.payload, pt, ev.marker, ts)
                }
                None => {
                    self.sending = Sending::Idle;
                    self.dtmf_next_at = now + INTER_DIGIT;
                    self.audio_frame(buf)
                }
            },
            Sending::Tone { audio, pos } => {
                let take = (audio.len() - *pos).min(frame);
                let mut payload = [0u8; MAX_FRAME];
                payload[..take].copy_from_slice(&audio[*pos..*pos + take]);
                payload[take..frame].copy_from_slice(&self.spec.codec.silence()[take..frame]);
                *pos += take;
                if *pos >= audio.len() {
                    self.sending = Sending::Idle;
                    self.dtmf_next_at = now + INTER_DIGIT;
                }
                let pt = self.spec.payload_type;
                self.rtp.write(buf, &payload[..frame], pt, false)
            }
            Sending::Idle => self.audio_frame(buf),
        };
        self.rtp.advance(frame as u32);
        let mut keep = None;
        let sent = srtp::seal(self.spec.srtp.as_deref_mut(), &buf[..n], &mut keep, false)
            .map_err(std::io::Error::other)
            .and_then(|wire| self.spec.socket.send_to(wire, self.spec.remote));
        if sent.is_ok() {
            self.report.packets_sent += 1;
        }
        true
    }

    fn audio_frame(&mut self, buf: &mut [u8; HEADER_LEN + MAX_FRAME]) -> usize {
        let frame = self.frame;
        let mut payload = [0u8; MAX_FRAME];
        let silence = self.spec.codec.silence();
        let mut take = 0;
        if let Some(play) = &self.spec.play {
            if self.play_pos < play.len() {
                take = (play.len() - self.play_pos).min(frame);
                payload[..take].copy_from_slice(&play[self.play_pos..self.play_pos + take]);
                self.play_pos += take;
            }
        }
        payload[take..frame].copy_from_slice(&silence[take..frame]);
        let pt = self.spec.payload_type;
        self.rtp.write(buf, &payload[..frame], pt, false)
    }

    /// Read everything waiting on the socket.
    fn drain(&mut self, now: Instant, buf: &mut [u8; 2048], pcm: &mut Vec<i16>) {
        for _ in 0..64 {
            let n = match self.spec.socket.recv_from(buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let mut keep = None;
            let Ok(datagram) =
                srtp::open(self.spec.srtp.as_deref_mut(), &buf[..n], &mut keep, false)
            else {
                continue; // failed authentication or a replay
            };
            let Some(pkt) = rtp::parse(datagram) else {
                continue;
            };
            self.report.packets_received += 1;
            if Some(pkt.payload_type) == self.spec.telephone_event {
                if let Some(d) = self.rx_events.on_packet(pkt.timestamp, pkt.payload) {
                    if self.report.digits_heard.len() < 64 {
                        self.report.digits_heard.push(d);
                    }
                }
                continue;
            }
            if pkt.payload_type != self.spec.payload_type {
                continue;
            }
            pcm.clear();
            self.decoder.decode(pkt.payload, pcm);
            let rms = if pcm.is_empty() {
                0.0
            } else {
                (pcm.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / pcm.len() as f64)
                    .sqrt()
            };
            let loud = rms > LOUD_RMS;
            self.report.audio_frames += 1;
            if loud {
                self.report.loud_frames += 1;
            }
            self.last_loud = loud;
            if let Some((sent, quiet_seen)) = self.armed {
                if loud && quiet_seen {
                    self.report.dtmf_latency = Some(now.saturating_duration_since(sent));
                    self.armed = None;
                } else if !loud {
                    self.armed = Some((sent, true));
                }
            }
            if let Some((rec, _)) = self.report.recording.as_mut() {
                if rec.len() + pcm.len() <= MAX_RECORD_SAMPLES {
                    rec.extend_from_slice(pcm);
                }
            }
        }
    }
}

fn worker(
    rx: std_mpsc::Receiver<Command>,
    reports: tokio::sync::mpsc::UnboundedSender<MediaReport>,
) {
    let mut streams: Vec<Stream> = Vec::new();
    let mut out = [0u8; HEADER_LEN + MAX_FRAME];
    let mut inb = [0u8; 2048];
    let mut pcm = Vec::with_capacity(2 * MAX_FRAME);
    let mut next = Instant::now();
    let mut open = true;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Command::Add(spec)) => streams.push(Stream::new(*spec, next)),
                Ok(Command::Stop(n)) => {
                    if let Some(i) = streams.iter().position(|s| s.spec.n == n) {
                        let mut s = streams.swap_remove(i);
                        s.drain(Instant::now(), &mut inb, &mut pcm);
                        let _ = reports.send(s.report);
                    }
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && streams.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in streams.iter_mut() {
            // Clocked on the grid (`next`), read at the real time (`now`).
            if s.send_due(next, &mut out) || s.armed.is_some() {
                s.drain(now, &mut inb, &mut pcm);
            }
        }
        next += TICK;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > TICK {
            // Stalled for more than a tick: realign; streams skip frames by timestamp.
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn paces_sends_digits_and_measures_the_prompt_after_the_last_one() {
        let (ours, far) = pair();
        far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let spec = StreamSpec {
            n: 7,
            remote: far.local_addr().unwrap(),
            socket: ours.try_clone().unwrap(),
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event: Some(101),
            ptime_ms: 20,
            play: None,
            dtmf: vec![DtmfStep::Digit('1'), DtmfStep::Digit('#')].into(),
            dtmf_after: Duration::from_millis(100),
            record: true,
            srtp: None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut pool = MediaPool::new(1, tx).unwrap();
        let w = pool.add(spec);
        let t0 = Instant::now();
        let mut events = Rfc4733Receiver::default();
        let (mut heard, mut audio, mut b) = (String::new(), 0, [0u8; 2048]);
        let mut times = Vec::new();
        while t0.elapsed() < Duration::from_millis(900) {
            let (n, _) = far.recv_from(&mut b).unwrap();
            let p = rtp::parse(&b[..n]).unwrap();
            if p.payload_type == 101 {
                if let Some(d) = events.on_packet(p.timestamp, p.payload) {
                    heard.push(d);
                }
            } else {
                audio += 1;
                times.push(Instant::now());
            }
        }
        assert_eq!(heard, "1#");
        assert!(audio >= 15, "{audio} audio frames");
        // The last digit has been sent: answer with a quiet frame, then a loud one.
        let to = ours.local_addr().unwrap();
        let mut tx_rtp = RtpSender::new(0);
        let mut p = [0u8; 200];
        let n = tx_rtp.write(&mut p, &[0xFF; 160], 0, false);
        far.send_to(&p[..n], to).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let loud: Vec<u8> = (0..160)
            .map(|i| crate::media::codec::linear_to_ulaw(if i % 2 == 0 { 8000 } else { -8000 }))
            .collect();
        let n = tx_rtp.write(&mut p, &loud, 0, false);
        far.send_to(&p[..n], to).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        pool.stop(w, 7);
        let r = rx.blocking_recv().unwrap();
        assert_eq!(r.n, 7);
        assert_eq!(r.digits_sent, 2);
        assert_eq!((r.audio_frames, r.loud_frames), (2, 1));
        assert!(r.dtmf_latency.is_some(), "{r:?}");
        assert_eq!(
            r.recording.as_ref().map(|(p, rate)| (p.len(), *rate)),
            Some((320, 8000))
        );
        // Audio keeps a 20 ms cadence (generous bounds: a shared CI machine).
        let mut gaps: Vec<u128> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        gaps.sort();
        assert!(
            (10..=30).contains(&gaps[gaps.len() / 2]),
            "median gap {gaps:?}"
        );
    }
}

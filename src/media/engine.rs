//! The media engine: RTP sockets from a port range, and a few pacing workers (OS threads) that
//! each clock all of their calls' outbound streams from one timer. A late tick advances the
//! stream by timestamp and sends only the frame that is due now: audio is never burst.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::codec::Codec;
use super::dtmf::Rfc4733Receiver;
use super::rtp::{self, RtpSender, HEADER_LEN};

/// Worker clock granularity. Every allowed ptime (10–60 ms) is a multiple of it, so packets
/// leave exactly on their due tick.
const TICK: Duration = Duration::from_millis(10);
const MAX_FRAME: usize = 480; // 60 ms at 8 kHz, one byte per sample

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub bind_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in {0}-{1}")]
    NoPort(u16, u16),
    #[error("RTP socket: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A playout item finished (or was stopped).
    PlayoutDone {
        id: u64,
    },
    Dtmf {
        digit: char,
    },
}

/// Negotiated parameters of one RTP stream.
#[derive(Debug, Clone)]
pub struct StreamParams {
    pub remote: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    pub ptime_ms: u32,
}

struct PlayItem {
    id: u64,
    audio: Arc<[u8]>,
    loops_left: u32,
    pos: usize,
}

struct StreamState {
    remote: SocketAddr,
    latched: bool,
    codec: Codec,
    frame: usize,
    rtp: RtpSender,
    queue: VecDeque<PlayItem>,
    next_due: Option<Instant>,
    dtmf: Rfc4733Receiver,
    telephone_event: Option<u8>,
    packets_sent: u64,
    packets_received: u64,
}

struct Stream {
    socket: UdpSocket,
    state: Mutex<StreamState>,
    closed: AtomicBool,
    events: mpsc::UnboundedSender<MediaEvent>,
}

impl Stream {
    /// Send what is due at `now`. Called by the worker on each tick.
    fn tick(&self, now: Instant, buf: &mut [u8; HEADER_LEN + MAX_FRAME]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let frame_dur = Duration::from_micros(st.frame as u64 * 125);
        let due = *st.next_due.get_or_insert(now);
        if due > now {
            return;
        }
        // Frames older than one frame are skipped by timestamp (catch-up without bursting).
        let behind = ((now - due).as_micros() / frame_dur.as_micros().max(1)) as u32;
        for _ in 0..behind {
            self.fill(&mut st, None);
        }
        let frame = st.frame;
        let mut payload = [0u8; MAX_FRAME];
        self.fill(&mut st, Some(&mut payload[..frame]));
        let pt = st.rtp.payload_type;
        let n = st.rtp.write(buf, &payload[..frame], pt, false);
        st.rtp.advance(frame as u32);
        st.next_due = Some(due + frame_dur * (behind + 1));
        st.packets_sent += 1;
        let remote = st.remote;
        drop(st);
        // A full socket buffer drops this one frame, like a congested network would.
        let _ = self.socket.try_send_to(&buf[..n], remote);
    }

    /// Take the next frame of audio (or silence) from the play queue; `out` None skips it.
    fn fill(&self, st: &mut StreamState, mut out: Option<&mut [u8]>) {
        let silence = st.codec.silence_byte();
        let frame = st.frame;
        let mut written = 0;
        while written < frame {
            let Some(item) = st.queue.front_mut() else {
                break;
            };
            let take = (item.audio.len() - item.pos).min(frame - written);
            if let Some(o) = out.as_deref_mut() {
                o[written..written + take].copy_from_slice(&item.audio[item.pos..item.pos + take]);
            }
            item.pos += take;
            written += take;
            if item.pos >= item.audio.len() {
                if item.loops_left > 1 {
                    item.loops_left -= 1;
                    item.pos = 0;
                } else {
                    let id = item.id;
                    st.queue.pop_front();
                    let _ = self.events.send(MediaEvent::PlayoutDone { id });
                }
            }
        }
        if let Some(o) = out {
            o[written..].fill(silence);
        }
    }
}

/// A call's handle on its RTP stream.
pub struct MediaSession {
    stream: Arc<Stream>,
    pub local: SocketAddr,
    pub events: mpsc::UnboundedReceiver<MediaEvent>,
    next_id: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl MediaSession {
    /// Queue encoded audio (in the stream's codec) `loops` times; returns the id that its
    /// `PlayoutDone` will carry.
    pub fn play(&mut self, audio: Arc<[u8]>, loops: u32) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        if let Ok(mut st) = self.stream.state.lock() {
            st.queue.push_back(PlayItem {
                id,
                audio,
                loops_left: loops.max(1),
                pos: 0,
            });
        }
        id
    }

    /// Stop everything queued (barge-in); each dropped item reports `PlayoutDone`.
    pub fn stop_playout(&self) {
        if let Ok(mut st) = self.stream.state.lock() {
            for item in st.queue.drain(..) {
                let _ = self
                    .stream
                    .events
                    .send(MediaEvent::PlayoutDone { id: item.id });
            }
        }
    }

    pub fn codec(&self) -> Codec {
        self.stream
            .state
            .lock()
            .map(|s| s.codec)
            .unwrap_or(Codec::Pcmu)
    }

    pub fn stats(&self) -> (u64, u64) {
        self.stream
            .state
            .lock()
            .map(|s| (s.packets_sent, s.packets_received))
            .unwrap_or((0, 0))
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.stream.closed.store(true, Ordering::Relaxed);
        self.reader.abort();
    }
}

pub struct MediaEngine {
    cfg: MediaConfig,
    next_port: AtomicU32,
    workers: Vec<Mutex<std_mpsc::Sender<Arc<Stream>>>>,
    rr: AtomicUsize,
}

impl MediaEngine {
    pub fn new(cfg: MediaConfig) -> Arc<Self> {
        let n = cfg.workers.max(1);
        let workers = (0..n)
            .map(|i| {
                let (tx, rx) = std_mpsc::channel::<Arc<Stream>>();
                let spawned = std::thread::Builder::new()
                    .name(format!("media-{i}"))
                    .spawn(move || worker(rx));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start media worker thread");
                }
                Mutex::new(tx)
            })
            .collect();
        Arc::new(MediaEngine {
            next_port: AtomicU32::new(0),
            cfg,
            workers,
            rr: AtomicUsize::new(0),
        })
    }

    /// Bind an RTP socket from the port range (even ports, RFC 3550 §11).
    pub fn allocate(&self) -> Result<std::net::UdpSocket, MediaError> {
        let (lo, hi) = (self.cfg.port_min & !1, self.cfg.port_max);
        let slots = ((hi.saturating_sub(lo)) / 2 + 1) as u32;
        for _ in 0..slots {
            let n = self.next_port.fetch_add(1, Ordering::Relaxed) % slots;
            let port = lo + (n * 2) as u16;
            if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(self.cfg.bind_ip, port)) {
                s.set_nonblocking(true)?;
                return Ok(s);
            }
        }
        Err(MediaError::NoPort(lo, hi))
    }

    /// Start a stream on a socket from [`allocate`]: inbound reading and outbound pacing.
    pub fn start(
        &self,
        socket: std::net::UdpSocket,
        p: StreamParams,
    ) -> Result<MediaSession, MediaError> {
        let local = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let frame = (p.ptime_ms.clamp(10, 60) as usize) * 8;
        let stream = Arc::new(Stream {
            socket,
            state: Mutex::new(StreamState {
                remote: p.remote,
                latched: false,
                codec: p.codec,
                frame,
                rtp: RtpSender::new(p.payload_type),
                queue: VecDeque::new(),
                next_due: None,
                dtmf: Rfc4733Receiver::default(),
                telephone_event: p.telephone_event,
                packets_sent: 0,
                packets_received: 0,
            }),
            closed: AtomicBool::new(false),
            events: tx,
        });
        let reader = tokio::spawn(read_loop(stream.clone()));
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        if let Ok(w) = self.workers[i].lock() {
            let _ = w.send(stream.clone());
        }
        Ok(MediaSession {
            stream,
            local,
            events: rx,
            next_id: 0,
            reader,
        })
    }
}

async fn read_loop(stream: Arc<Stream>) {
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = match stream.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        let Some(pkt) = rtp::parse(&buf[..n]) else {
            continue;
        };
        let Ok(mut st) = stream.state.lock() else {
            return;
        };
        st.packets_received += 1;
        // Symmetric RTP: answer to where the caller really sends from (NAT), once it is known.
        if !st.latched {
            st.remote = from;
            st.latched = true;
        }
        if Some(pkt.payload_type) == st.telephone_event {
            if let Some(digit) = st.dtmf.on_packet(pkt.timestamp, pkt.payload) {
                let _ = stream.events.send(MediaEvent::Dtmf { digit });
            }
        }
    }
}

fn worker(rx: std_mpsc::Receiver<Arc<Stream>>) {
    let mut streams: Vec<Arc<Stream>> = Vec::new();
    let mut buf = [0u8; HEADER_LEN + MAX_FRAME];
    let mut next = Instant::now() + TICK;
    loop {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        loop {
            match rx.try_recv() {
                Ok(s) => streams.push(s),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) if streams.is_empty() => return,
                Err(std_mpsc::TryRecvError::Disconnected) => break,
            }
        }
        streams.retain(|s| !s.closed.load(Ordering::Relaxed));
        // Streams are clocked on the worker's grid, not on when this thread woke up, so a
        // little scheduling jitter never shifts timestamps.
        for s in &streams {
            s.tick(next, &mut buf);
        }
        next += TICK;
        let now = Instant::now();
        if next + TICK < now {
            // We fell more than a tick behind (machine stalled): realign to the grid; the
            // streams skip the missed frames by timestamp.
            let missed = ((now - next).as_micros() / TICK.as_micros()) as u32;
            next += TICK * missed;
        }
    }
}

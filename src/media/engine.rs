//! The media engine: RTP sockets from a port range, and a few pacing workers (OS threads) that
//! each clock all of their calls' outbound streams from one timer. A late tick advances the
//! stream by timestamp and sends only the frame that is due now: audio is never burst.
//!
//! Inbound, the same worker drains each call's non-blocking RTP and RTCP sockets on its tick (no
//! task and no reactor registration per call): it latches the caller's address (symmetric RTP),
//! reports DTMF (RFC 4733 events, or in-band tones when telephone-event was not negotiated) and,
//! only while something listens (recording, voice detection), decodes audio in sequence order
//! through a jitter buffer and hands it to the call.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::bridge::{Relay, SharedInlet};
use super::codec::{Codec, Decoder};
use super::dtmf::Rfc4733Receiver;
use super::goertzel::InbandDtmf;
use super::jitter::{JitterBuffer, PopResult};
use super::rtcp::{self, ReceiverStats, REPORT_EVERY_PACKETS};
use super::rtp::{self, RtpSender, HEADER_LEN};
use super::tones::Rfc4733Sender;

/// Worker clock granularity. Every allowed ptime (10–60 ms) is a multiple of it, so packets
/// leave exactly on their due tick.
const TICK: Duration = Duration::from_millis(10);
const MAX_FRAME: usize = 480; // 60 ms at 8 kHz RTP clock, one byte per tick for all our codecs
/// Length of each DTMF digit we send, and the pause after it.
const DIGIT_MS: u32 = 100;
const DIGIT_GAP_MS: u32 = 60;

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
    #[error(transparent)]
    Srtp(#[from] super::srtp::SrtpError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfSource {
    Rfc4733,
    Inband,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A playout item finished (or was stopped).
    PlayoutDone {
        id: u64,
    },
    Dtmf {
        digit: char,
        source: DtmfSource,
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
    /// What log lines name the stream by (the call's Call-ID).
    pub label: String,
    /// SRTP keys when the stream is encrypted (SDES); None for plain RTP.
    pub srtp: Option<super::srtp::SrtpKeys>,
}

enum Item {
    Audio {
        /// What plays, kept so that a codec switch can take its other encoding.
        clip: Arc<super::Clip>,
        /// `clip` in the stream's codec.
        audio: Arc<[u8]>,
        loops_left: u32,
        pos: usize,
    },
    /// DTMF digits to send as RFC 4733 events; `w`/`W` pause 0.5 s / 1 s (Twilio's syntax).
    Digits {
        digits: VecDeque<char>,
        current: Option<(Rfc4733Sender, u32)>,
        pause_frames: u32,
    },
}

struct PlayItem {
    id: u64,
    item: Item,
}

/// Decoded audio of one direction for whoever listens (a recorder, voice or machine
/// detection). Several may listen at once (a whole-call recording and a voicemail); each stops
/// when its tap is dropped.
pub struct Tap {
    pub frames: mpsc::UnboundedReceiver<Vec<i16>>,
    pub sample_rate: u32,
    id: u64,
    stream: std::sync::Weak<Stream>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.upgrade() {
            if let Ok(mut st) = stream.state.lock() {
                st.remove_tap(self.id);
            }
        }
    }
}

/// A tap: its id, the sample rate it was made at (kept across a codec switch), its channel.
type TapSender = (u64, u32, mpsc::UnboundedSender<Vec<i16>>);

/// Who listens to a stream; boxed and made on the first tap (most calls never have one).
#[derive(Default)]
struct Taps {
    next_id: u64,
    /// What the peer sends, decoded in sequence order.
    heard: Vec<TapSender>,
    /// What this stream sends (prompts, relayed audio; silence for digit events and holds).
    sent: Vec<TapSender>,
    /// Decodes what we send, for `sent` (its state follows our own encoded stream).
    sent_decoder: Option<Decoder>,
}

struct Inbound {
    decoder: Decoder,
    inband: Option<InbandDtmf>,
    /// Made while someone taps the audio (it holds ~8 KB of frame slots; most calls never need it).
    jitter: Option<JitterBuffer>,
    pcm: Vec<i16>,
}

struct StreamState {
    remote: SocketAddr,
    latched: bool,
    /// Where our RTCP goes: the RTP port + 1 (RFC 3550 §11), or where the peer's RTCP comes from.
    rtcp_remote: SocketAddr,
    rtcp_latched: bool,
    started: Instant,
    recv_stats: ReceiverStats,
    octets_sent: u64,
    /// The peer's latest report about our stream: fraction lost, cumulative lost, jitter.
    peer_report: Option<(u8, u32, u32)>,
    codec: Codec,
    frame: usize,
    rtp: RtpSender,
    queue: VecDeque<PlayItem>,
    next_due: Option<Instant>,
    dtmf: Rfc4733Receiver,
    telephone_event: Option<u8>,
    inbound: Inbound,
    packets_sent: u64,
    packets_received: u64,
    /// False while the peer holds the call (`sendonly`/`inactive`): frames are timed and
    /// consumed as usual, but not sent.
    sending: bool,
    /// Frames timed so far, sent or held: the inbound side is read on each one.
    frames: u64,
    /// Bridged: where what this stream receives goes (the other leg's inlet).
    relay: Option<Relay>,
    /// Bridged: what the other leg relays to this stream, played when no prompt is queued.
    inlet: Option<SharedInlet>,
    taps: Option<Box<Taps>>,
    /// SRTP contexts of an encrypted stream: every packet out is protected here, on the
    /// pacing worker, and every packet in is authenticated before anything reads it.
    srtp: Option<Box<super::srtp::Srtp>>,
}

impl StreamState {
    fn remove_tap(&mut self, id: u64) {
        let Some(t) = self.taps.as_mut() else {
            return;
        };
        t.heard.retain(|(i, ..)| *i != id);
        t.sent.retain(|(i, ..)| *i != id);
        if t.heard.is_empty() {
            self.inbound.jitter = None;
        }
        if t.heard.is_empty() && t.sent.is_empty() {
            self.taps = None;
        }
    }

    /// Hand what this frame sent (decoded; silence for `skipped` late frames before it, and
    /// for a frame that carried no audio) to the `sent` taps.
    fn feed_sent(&mut self, audio: Option<&[u8]>, skipped: u32) {
        let (codec, frame) = (self.codec, self.frame);
        let Some(t) = self.taps.as_mut().filter(|t| !t.sent.is_empty()) else {
            return;
        };
        let samples = frame * (codec.sample_rate() / 8000) as usize;
        let mut pcm = Vec::with_capacity(samples * (skipped as usize + 1));
        pcm.resize(samples * skipped as usize, 0);
        match audio {
            Some(a) => t
                .sent_decoder
                .get_or_insert_with(|| Decoder::new(codec))
                .decode(a, &mut pcm),
            None => pcm.resize(pcm.len() + samples, 0),
        }
        fan_out(&mut t.sent, pcm, codec.sample_rate());
    }
}

/// Send `pcm` (at `rate`) to every tap (the last one gets it without a copy); drop taps whose
/// receiver is gone. A tap made before a codec switch to or from G.722 keeps its own rate.
fn fan_out(taps: &mut Vec<TapSender>, pcm: Vec<i16>, rate: u32) {
    let Some(((_, last_rate, last), rest)) = taps.split_last() else {
        return;
    };
    let at = |want: u32, pcm: &[i16]| -> Vec<i16> {
        match (rate, want) {
            (16000, 8000) => super::resample::halve(pcm).collect(),
            (8000, 16000) => pcm.iter().flat_map(|&s| [s, s]).collect(),
            _ => pcm.to_vec(),
        }
    };
    let mut closed = false;
    for (_, want, tx) in rest {
        closed |= tx.send(at(*want, &pcm)).is_err();
    }
    let pcm = if *last_rate == rate {
        pcm
    } else {
        at(*last_rate, &pcm)
    };
    closed |= last.send(pcm).is_err();
    if closed {
        taps.retain(|(.., tx)| !tx.is_closed());
    }
}

struct Stream {
    /// Non-blocking std sockets: the pacing worker sends and drains them on its ticks, so a call
    /// needs no task and no reactor registration of its own.
    socket: std::net::UdpSocket,
    rtcp: Option<std::net::UdpSocket>,
    /// RTCP SDES CNAME, fixed for the stream's life (RFC 3550 §6.5.1).
    cname: String,
    /// The call's Call-ID, for log lines.
    label: String,
    /// Panics caught while serving this stream (see [`worker`]).
    faults: AtomicU32,
    state: Mutex<StreamState>,
    closed: AtomicBool,
    events: mpsc::UnboundedSender<MediaEvent>,
}

/// What the next frame carries.
enum Frame {
    Audio,
    Event {
        payload: [u8; 4],
        marker: bool,
        timestamp: u32,
    },
}

impl Stream {
    /// Send what is due at `now`. Called by the worker on each tick.
    /// Returns the frame count when a frame was due on this tick (the caller then reads the
    /// inbound side), None otherwise.
    fn tick(&self, now: Instant, buf: &mut [u8; HEADER_LEN + MAX_FRAME]) -> Option<u64> {
        let Ok(mut st) = self.state.lock() else {
            return None;
        };
        let frame_dur = Duration::from_micros(st.frame as u64 * 125);
        let due = *st.next_due.get_or_insert(now);
        if due > now {
            return None;
        }
        // Frames older than one frame are skipped by timestamp (catch-up without bursting).
        let behind = ((now - due).as_micros() / frame_dur.as_micros().max(1)) as u32;
        for _ in 0..behind {
            self.fill(&mut st, None);
        }
        let frame = st.frame;
        let mut payload = [0u8; MAX_FRAME];
        let filled = self.fill(&mut st, Some(&mut payload[..frame]));
        if st.taps.is_some() {
            let audible = matches!(filled, Frame::Audio) && st.sending;
            st.feed_sent(audible.then_some(&payload[..frame]), behind);
        }
        let n = match filled {
            Frame::Audio => {
                let pt = st.rtp.payload_type;
                st.rtp.write(buf, &payload[..frame], pt, false)
            }
            Frame::Event {
                payload: ev,
                marker,
                timestamp,
            } => {
                let pt = st.telephone_event.unwrap_or(101);
                st.rtp.write_at(buf, &ev, pt, marker, timestamp)
            }
        };
        st.rtp.advance(frame as u32);
        st.next_due = Some(due + frame_dur * (behind + 1));
        st.frames += 1;
        if !st.sending {
            // On hold: the prompt plays on to nobody, as it would on a muted line; what the
            // peer sends (music on hold, digits) is still read.
            return Some(st.frames);
        }
        st.packets_sent += 1;
        st.octets_sent += (n - HEADER_LEN) as u64;
        let remote = st.remote;
        // A full socket buffer drops this one frame, like a congested network would.
        let mut keep = None;
        if let Ok(wire) = super::srtp::seal(st.srtp.as_deref_mut(), &buf[..n], &mut keep, false) {
            let _ = self.socket.send_to(wire, remote);
        }
        if st.packets_sent % REPORT_EVERY_PACKETS == 0 {
            if let Some(sock) = &self.rtcp {
                let mut report = [0u8; 128];
                let (ssrc, ts, pkts, octets) = (
                    st.rtp.ssrc,
                    st.rtp.timestamp(),
                    st.packets_sent as u32,
                    st.octets_sent as u32,
                );
                let len = rtcp::sender_report(
                    &mut report,
                    ssrc,
                    ts,
                    pkts,
                    octets,
                    &mut st.recv_stats,
                    &self.cname,
                );
                let (to, mut keep) = (st.rtcp_remote, None);
                let srtp = st.srtp.as_deref_mut();
                if let Ok(wire) = super::srtp::seal(srtp, &report[..len], &mut keep, true) {
                    let _ = sock.send_to(wire, to);
                }
            }
        }
        Some(st.frames)
    }

    /// Take the next frame from the play queue (audio, silence or a DTMF event packet);
    /// `out` None skips it.
    fn fill(&self, st: &mut StreamState, mut out: Option<&mut [u8]>) -> Frame {
        let frame = st.frame;
        if st.queue.is_empty() {
            let mut digit = None;
            if let Some(Ok(mut inlet)) = st.inlet.as_ref().map(|i| i.lock()) {
                digit = inlet.next_digit();
                if digit.is_none() && inlet.take(out.as_deref_mut(), frame) {
                    return Frame::Audio;
                }
            }
            if let Some(d) = digit {
                self.queue_relayed_digit(st, d);
            }
        }
        let mut written = 0;
        while written < frame {
            let ts_now = st.rtp.timestamp();
            let ptime_ms = (frame / 8) as u32;
            let Some(front) = st.queue.front_mut() else {
                break;
            };
            let id = front.id;
            match &mut front.item {
                Item::Audio {
                    audio,
                    loops_left,
                    pos,
                    ..
                } => {
                    let take = (audio.len() - *pos).min(frame - written);
                    if let Some(o) = out.as_deref_mut() {
                        o[written..written + take].copy_from_slice(&audio[*pos..*pos + take]);
                    }
                    *pos += take;
                    written += take;
                    if *pos >= audio.len() {
                        if *loops_left > 1 {
                            *loops_left -= 1;
                            *pos = 0;
                        } else {
                            st.queue.pop_front();
                            let _ = self.events.send(MediaEvent::PlayoutDone { id });
                        }
                    }
                }
                Item::Digits {
                    digits,
                    current,
                    pause_frames,
                } if written == 0 => {
                    if *pause_frames > 0 {
                        *pause_frames -= 1;
                        break; // a silent frame
                    }
                    if current.is_none() {
                        match digits.pop_front() {
                            Some('w') => *pause_frames = 500 / ptime_ms.max(1),
                            Some('W') => *pause_frames = 1000 / ptime_ms.max(1),
                            Some(d) => {
                                *current = Rfc4733Sender::new(d, DIGIT_MS, ptime_ms, 8000)
                                    .map(|s| (s, ts_now))
                            }
                            None => {
                                st.queue.pop_front();
                                let _ = self.events.send(MediaEvent::PlayoutDone { id });
                            }
                        }
                        continue;
                    }
                    let next = current.as_mut().and_then(|(sender, start)| {
                        let p = sender.next()?;
                        let last = p.end && sender.clone().next().is_none();
                        Some((p, *start, last))
                    });
                    match next {
                        Some((p, start, last)) => {
                            if last {
                                *current = None;
                                *pause_frames = DIGIT_GAP_MS / ptime_ms.max(1);
                            }
                            return Frame::Event {
                                payload: p.payload,
                                marker: p.marker,
                                timestamp: start,
                            };
                        }
                        None => *current = None,
                    }
                }
                // DTMF never shares a frame with audio: pad this one with silence.
                Item::Digits { .. } => break,
            }
        }
        if let Some(o) = out {
            let silence = st.codec.silence();
            o[written..].copy_from_slice(&silence[written..frame]);
        }
        Frame::Audio
    }
}

impl Stream {
    /// A digit the other leg of a bridge pressed, sent on as this leg can carry it. (Queued
    /// with id 0, which no call waits for.)
    fn queue_relayed_digit(&self, st: &mut StreamState, digit: char) {
        let item = digits_item(st, &digit.to_string());
        st.queue.push_back(PlayItem { id: 0, item });
    }
}

/// What sends `digits` on this stream: RFC 4733 events when telephone-event was negotiated,
/// else the tones themselves, encoded in the stream's codec.
fn digits_item(st: &StreamState, digits: &str) -> Item {
    if st.telephone_event.is_some() {
        return Item::Digits {
            digits: digits
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '#'))
                .collect(),
            current: None,
            pause_frames: 0,
        };
    }
    let clip = super::Clip::from_pcm(super::tones::inband_digits(digits, DIGIT_MS, DIGIT_GAP_MS));
    Item::Audio {
        audio: clip.encoded(st.codec),
        clip,
        loops_left: 1,
        pos: 0,
    }
}

/// How one call's media went, for its last log line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Inbound packets expected by sequence number, and received.
    pub expected: u64,
    pub received: u64,
    /// Inbound interarrival jitter (ms).
    pub jitter_ms: f64,
    /// The peer's latest RTCP report about our stream, if it sent one.
    pub peer: Option<PeerQuality>,
}

/// What the peer reported about our stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerQuality {
    /// Fraction lost since its previous report, in 1/256.
    pub fraction_lost: u8,
    pub cumulative_lost: u32,
    pub jitter_ms: f64,
}

/// A call's handle on its RTP stream.
pub struct MediaSession {
    stream: Arc<Stream>,
    pub local: SocketAddr,
    pub events: mpsc::UnboundedReceiver<MediaEvent>,
    next_id: u64,
}

impl MediaSession {
    /// Queue the item `make` builds from the stream's state (its codec, telephone-event).
    fn enqueue_with(&mut self, make: impl FnOnce(&StreamState) -> Item) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        if let Ok(mut st) = self.stream.state.lock() {
            let item = make(&st);
            st.queue.push_back(PlayItem { id, item });
        }
        id
    }

    /// Queue a prompt `loops` times; returns the id that its `PlayoutDone` will carry. It is
    /// encoded for the stream's codec here, outside the stream's lock (a clip keeps each
    /// encoding once made), and again should the codec change while it waits.
    pub fn play(&mut self, clip: &Arc<super::Clip>, loops: u32) -> u64 {
        let codec = self.codec();
        let audio = clip.encoded(codec);
        self.enqueue_with(|st| Item::Audio {
            // The codec changed since it was read (a re-INVITE in between).
            audio: if st.codec == codec {
                audio
            } else {
                clip.encoded(st.codec)
            },
            clip: clip.clone(),
            loops_left: loops.max(1),
            pos: 0,
        })
    }

    /// Queue DTMF digits: RFC 4733 events when the peer negotiated telephone-event, else the
    /// tones in-band in the stream's codec.
    pub fn send_digits(&mut self, digits: &str) -> u64 {
        self.enqueue_with(|st| digits_item(st, digits))
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

    /// Receive the peer's decoded audio (in sequence order) until the tap is dropped.
    pub fn tap(&self) -> Tap {
        self.add_tap(false)
    }

    /// Receive what this stream sends, decoded, one frame per frame time (silence while
    /// nothing plays), until the tap is dropped.
    pub fn tap_sent(&self) -> Tap {
        self.add_tap(true)
    }

    fn add_tap(&self, sent: bool) -> Tap {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut rate, mut id) = (8000, 0);
        if let Ok(mut st) = self.stream.state.lock() {
            rate = st.codec.sample_rate();
            if !sent && st.inbound.jitter.is_none() {
                st.inbound.jitter = Some(JitterBuffer::new(3));
            }
            let taps = st.taps.get_or_insert_with(Box::default);
            taps.next_id += 1;
            id = taps.next_id;
            if sent {
                taps.sent.push((id, rate, tx));
            } else {
                taps.heard.push((id, rate, tx));
            }
        }
        Tap {
            frames: rx,
            sample_rate: rate,
            id,
            stream: Arc::downgrade(&self.stream),
        }
    }

    pub fn stats(&self) -> (u64, u64) {
        self.stream
            .state
            .lock()
            .map(|s| (s.packets_sent, s.packets_received))
            .unwrap_or((0, 0))
    }

    /// Inbound quality (expected, received, jitter in ms) and the peer's RTCP report about our
    /// stream (fraction lost /256, cumulative lost, jitter in ms), for the call's last log line.
    pub fn quality(&self) -> Option<Quality> {
        let st = self.stream.state.lock().ok()?;
        let rate = st.codec.rtp_clock_rate() as f64 / 1000.0;
        Some(Quality {
            expected: st.recv_stats.expected(),
            received: st.recv_stats.received,
            jitter_ms: st.recv_stats.jitter() as f64 / rate,
            peer: st.peer_report.map(|(f, l, j)| PeerQuality {
                fraction_lost: f,
                cumulative_lost: l,
                jitter_ms: j as f64 / rate,
            }),
        })
    }
}

/// What signalling may change on a running stream (a re-INVITE's new address, hold), from
/// outside the call's task.
#[derive(Clone)]
pub struct MediaControl {
    stream: Arc<Stream>,
}

impl MediaControl {
    /// Send to `remote` from now on (and its RTCP to the next port), latching afresh.
    pub fn set_remote(&self, remote: SocketAddr) {
        if let Ok(mut st) = self.stream.state.lock() {
            if st.remote != remote {
                st.remote = remote;
                st.latched = false;
                st.rtcp_remote = SocketAddr::new(remote.ip(), remote.port().wrapping_add(1));
                st.rtcp_latched = false;
            }
        }
    }

    /// Stop (hold) or resume sending.
    pub fn set_sending(&self, sending: bool) {
        if let Ok(mut st) = self.stream.state.lock() {
            st.sending = sending;
        }
    }

    /// Switch to a re-negotiated format (a re-INVITE that changed the codec, its payload type,
    /// telephone-event or ptime). Queued prompts go on where they were, in the new codec: each
    /// is a clip whose new encoding is made here, outside the stream's lock, before the switch.
    pub fn set_format(&self, f: super::codec::Format) {
        let frame = (f.ptime_ms.clamp(10, 60) as usize) * 8;
        let clips: Vec<Arc<super::Clip>> = {
            let Ok(st) = self.stream.state.lock() else {
                return;
            };
            let current = (st.codec, st.rtp.payload_type, st.telephone_event, st.frame);
            if current == (f.codec, f.payload_type, f.telephone_event, frame) {
                return;
            }
            st.queue
                .iter()
                .filter_map(|p| match &p.item {
                    Item::Audio { clip, .. } => Some(clip.clone()),
                    Item::Digits { .. } => None,
                })
                .collect()
        };
        for clip in &clips {
            clip.encoded(f.codec);
        }
        let Ok(mut guard) = self.stream.state.lock() else {
            return;
        };
        let st = &mut *guard;
        let switched = st.codec != f.codec;
        st.codec = f.codec;
        st.rtp.payload_type = f.payload_type;
        st.telephone_event = f.telephone_event;
        st.frame = frame;
        for p in st.queue.iter_mut() {
            if let Item::Audio {
                clip, audio, pos, ..
            } = &mut p.item
            {
                // Every codec sends one byte per 8 kHz tick: the position carries over.
                *audio = clip.encoded(f.codec);
                *pos = (*pos).min(audio.len());
            }
        }
        let rate = f.codec.sample_rate();
        st.inbound.inband = match f.telephone_event {
            None => InbandDtmf::new(rate).ok(),
            Some(_) => None,
        };
        if switched {
            st.inbound.decoder = Decoder::new(f.codec);
            if st.inbound.jitter.is_some() {
                st.inbound.jitter = Some(JitterBuffer::new(3));
            }
            if let Some(t) = st.taps.as_mut() {
                t.sent_decoder = None;
            }
            if let Some(r) = st.relay.as_mut() {
                r.set_from(f.codec);
            }
            if let Some(Ok(mut inlet)) = st.inlet.as_ref().map(|i| i.lock()) {
                inlet.retarget(f.codec);
            }
        }
        tracing::info!(call_id = %self.stream.label, codec = ?f.codec, payload_type = f.payload_type, "media format changed");
    }

    /// Take an encrypted stream's keys after a re-negotiation (a peer's new key). A plain
    /// stream stays plain: signalling never turns encryption on or off mid-call.
    pub fn set_srtp(&self, keys: &super::srtp::SrtpKeys) {
        if let Ok(mut st) = self.stream.state.lock() {
            if let Some(srtp) = st.srtp.as_mut() {
                if let Err(e) = srtp.rekey(keys) {
                    tracing::warn!(call_id = %self.stream.label, error = %e, "SRTP re-key failed; the old keys stay");
                }
            }
        }
    }
}

impl MediaSession {
    pub fn control(&self) -> MediaControl {
        MediaControl {
            stream: self.stream.clone(),
        }
    }

    /// Relay what this stream receives to `other` (one way, as for early media), transcoded
    /// into `other`'s codec; digits go as RFC 4733 events or in-band tones, whichever `other`
    /// can carry. `other` plays relayed audio whenever it has no prompt queued.
    pub fn relay_to(&self, other: &MediaSession) {
        // Never two state locks at once (see media::bridge): take the inlet, then link.
        let target = other.stream.state.lock().ok().map(|mut st| {
            let inlet = st.inlet.get_or_insert_with(SharedInlet::default).clone();
            (st.codec, inlet)
        });
        let Some((to, inlet)) = target else {
            return;
        };
        if let Ok(mut st) = self.stream.state.lock() {
            st.relay = Some(Relay::new(st.codec, to, inlet));
        }
    }

    /// Bridge two streams both ways.
    pub fn bridge(&self, other: &MediaSession) {
        self.relay_to(other);
        other.relay_to(self);
    }

    /// Stop relaying what this stream receives, and stop playing what was relayed to it.
    pub fn unbridge(&self) {
        if let Ok(mut st) = self.stream.state.lock() {
            st.relay = None;
            st.inlet = None;
        }
    }

    /// Relayed audio this stream dropped (bytes, the far leg ran fast) and frames it padded
    /// with silence (the far leg ran late or lost packets) while bridged.
    pub fn bridge_stats(&self) -> (u64, u64) {
        self.stream
            .state
            .lock()
            .ok()
            .and_then(|st| {
                let i = st.inlet.as_ref()?.lock().ok()?;
                Some((i.dropped, i.underruns))
            })
            .unwrap_or((0, 0))
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.stream.closed.store(true, Ordering::Relaxed);
    }
}

/// A call's RTP and RTCP sockets.
pub struct Ports {
    pub rtp: std::net::UdpSocket,
    pub rtcp: std::net::UdpSocket,
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

    /// Bind RTP on an even port from the range and RTCP on the odd port above it (RFC 3550 §11).
    pub fn allocate(&self) -> Result<Ports, MediaError> {
        let (lo, hi) = (self.cfg.port_min & !1, self.cfg.port_max);
        let slots = ((hi.saturating_sub(lo)) / 2).max(1) as u32;
        for _ in 0..slots {
            let n = self.next_port.fetch_add(1, Ordering::Relaxed) % slots;
            let port = lo + (n * 2) as u16;
            let Ok(rtp) = std::net::UdpSocket::bind(SocketAddr::new(self.cfg.bind_ip, port)) else {
                continue;
            };
            let Ok(rtcp) = std::net::UdpSocket::bind(SocketAddr::new(self.cfg.bind_ip, port + 1))
            else {
                continue;
            };
            rtp.set_nonblocking(true)?;
            rtcp.set_nonblocking(true)?;
            return Ok(Ports { rtp, rtcp });
        }
        Err(MediaError::NoPort(lo, hi))
    }

    /// Start a stream on a socket from [`allocate`]: inbound reading and outbound pacing.
    pub fn start(&self, ports: Ports, p: StreamParams) -> Result<MediaSession, MediaError> {
        let local = ports.rtp.local_addr()?;
        let socket = ports.rtp;
        let rtcp = Some(ports.rtcp);
        let rtcp_remote = SocketAddr::new(p.remote.ip(), p.remote.port().wrapping_add(1));
        let (tx, rx) = mpsc::unbounded_channel();
        let frame = (p.ptime_ms.clamp(10, 60) as usize) * 8;
        // In-band detection only when the caller cannot send RFC 4733 events.
        let inband = match p.telephone_event {
            None => InbandDtmf::new(p.codec.sample_rate()).ok(),
            Some(_) => None,
        };
        let srtp = match &p.srtp {
            Some(keys) => Some(Box::new(super::srtp::Srtp::new(keys)?)),
            None => None,
        };
        let stream = Arc::new(Stream {
            socket,
            rtcp,
            cname: format!("switchboard@{}", local.ip()),
            label: p.label,
            faults: AtomicU32::new(0),
            state: Mutex::new(StreamState {
                remote: p.remote,
                sending: true,
                frames: 0,
                latched: false,
                rtcp_remote,
                rtcp_latched: false,
                started: Instant::now(),
                recv_stats: ReceiverStats::default(),
                octets_sent: 0,
                peer_report: None,
                codec: p.codec,
                frame,
                rtp: RtpSender::new(p.payload_type),
                queue: VecDeque::new(),
                next_due: None,
                dtmf: Rfc4733Receiver::default(),
                telephone_event: p.telephone_event,
                inbound: Inbound {
                    decoder: Decoder::new(p.codec),
                    inband,
                    jitter: None,
                    pcm: Vec::new(),
                },
                packets_sent: 0,
                packets_received: 0,
                relay: None,
                inlet: None,
                taps: None,
                srtp,
            }),
            closed: AtomicBool::new(false),
            events: tx,
        });
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        if let Ok(w) = self.workers[i].lock() {
            let _ = w.send(stream.clone());
        }
        Ok(MediaSession {
            stream,
            local,
            events: rx,
            next_id: 0,
        })
    }
}

impl Stream {
    /// After a panic while serving this stream: log it (with the Call-ID, rate-limited) and
    /// clear the lock's poison so the call keeps its media; the datagram that hit it is lost.
    fn recover(&self) {
        let n = self.faults.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::get().panics_contained.inc();
        if n.is_power_of_two() {
            tracing::error!(call_id = %self.label, faults = n, "media worker caught a panic serving this call's stream; the stream goes on");
        }
        self.state.clear_poison();
    }

    /// Read everything the caller sent since the last tick (RTP, then RTCP). Non-blocking:
    /// stops at the first would-block.
    /// Called on the ticks where a packet went out (once per ptime): media arrives at that pace,
    /// so reading more often would mostly find nothing. RTCP (every few seconds) is read about
    /// once a second.
    fn drain(&self, buf: &mut [u8; 1500], frames: u64) {
        while let Ok((n, from)) = self.socket.recv_from(buf) {
            if !receive(self, &buf[..n], from) {
                return;
            }
        }
        if frames % 50 != 0 {
            return;
        }
        if let Some(sock) = &self.rtcp {
            while let Ok((n, from)) = sock.recv_from(buf) {
                receive_rtcp(self, &buf[..n], from);
            }
        }
    }
}

/// [`super::srtp::open`], with a refused packet counted (None).
fn unprotect<'a>(
    srtp: Option<&mut super::srtp::Srtp>,
    datagram: &'a [u8],
    keep: &'a mut Option<bytes::BytesMut>,
    rtcp: bool,
) -> Option<&'a [u8]> {
    match super::srtp::open(srtp, datagram, keep, rtcp) {
        Ok(plain) => Some(plain),
        Err(e) => {
            crate::metrics::get().srtp_refused.inc();
            tracing::debug!(error = %e, rtcp, len = datagram.len(), "SRTP packet refused");
            None
        }
    }
}

fn receive_rtcp(stream: &Stream, datagram: &[u8], from: SocketAddr) {
    let Ok(mut guard) = stream.state.lock() else {
        return;
    };
    let st = &mut *guard;
    let mut keep = None;
    let Some(datagram) = unprotect(st.srtp.as_deref_mut(), datagram, &mut keep, true) else {
        return;
    };
    let Some(report) = rtcp::parse(datagram, st.rtp.ssrc) else {
        return;
    };
    if !st.rtcp_latched {
        st.rtcp_remote = from;
        st.rtcp_latched = true;
    }
    if let Some(mid) = report.sr_ntp_middle {
        st.recv_stats.on_sender_report(mid);
    }
    if report.about_us.is_some() {
        st.peer_report = report.about_us;
    }
}

/// Handle one inbound datagram; false when the stream is gone.
fn receive(stream: &Stream, datagram: &[u8], from: SocketAddr) -> bool {
    let Ok(mut guard) = stream.state.lock() else {
        return false;
    };
    let st = &mut *guard;
    // On an encrypted stream nothing unauthenticated is read, counted or latched onto.
    let mut keep = None;
    let Some(datagram) = unprotect(st.srtp.as_deref_mut(), datagram, &mut keep, false) else {
        return true;
    };
    let Some(pkt) = rtp::parse(datagram) else {
        return true;
    };
    st.packets_received += 1;
    let arrival = (st.started.elapsed().as_micros() as u64 * st.codec.rtp_clock_rate() as u64
        / 1_000_000) as u32;
    if Some(pkt.payload_type) != st.telephone_event {
        st.recv_stats
            .on_rtp(pkt.ssrc, pkt.sequence, pkt.timestamp, arrival);
    }
    // Symmetric RTP: answer to where the caller really sends from (NAT), once it is known.
    if !st.latched {
        st.remote = from;
        st.latched = true;
    }
    if Some(pkt.payload_type) == st.telephone_event {
        if let Some(digit) = st.dtmf.on_packet(pkt.timestamp, pkt.payload) {
            if let Some(r) = st.relay.as_mut() {
                r.push_digit(digit);
            }
            let _ = stream.events.send(MediaEvent::Dtmf {
                digit,
                source: DtmfSource::Rfc4733,
            });
        }
        return true;
    }
    if pkt.payload_type != st.rtp.payload_type {
        return true; // comfort noise and anything we did not negotiate
    }
    if let Some(r) = st.relay.as_mut() {
        r.push_audio(pkt.payload);
    }
    let inb = &mut st.inbound;
    if let Some(det) = inb.inband.as_mut() {
        inb.pcm.clear();
        inb.decoder.decode(pkt.payload, &mut inb.pcm);
        let events = &stream.events;
        det.push(&inb.pcm, &mut |digit| {
            let _ = events.send(MediaEvent::Dtmf {
                digit,
                source: DtmfSource::Inband,
            });
        });
    }
    let heard = st.taps.as_mut().map(|t| &mut t.heard);
    if let (Some(heard), Some(jitter)) = (heard, inb.jitter.as_mut()) {
        let mut frame = [0u8; MAX_FRAME];
        jitter.push_ssrc(pkt.ssrc, pkt.sequence, pkt.timestamp, pkt.payload);
        // Release frames once the buffer holds more than its depth (reorder window).
        while jitter.len() > jitter.depth() {
            let mut pcm = Vec::with_capacity(frame.len() * 2);
            match jitter.pop(&mut frame) {
                PopResult::Frame(len) => inb.decoder.decode(&frame[..len], &mut pcm),
                // A lost frame is concealed with silence of the usual length.
                PopResult::Missing => pcm.resize(
                    pkt.payload.len() * (st.codec.sample_rate() / 8000) as usize,
                    0,
                ),
                PopResult::Empty => break,
            }
            fan_out(heard, pcm, st.codec.sample_rate());
            if heard.is_empty() {
                break;
            }
        }
    }
    true
}

/// Pacing threads wake every 10 ms and must not wait behind signalling or database work on a
/// busy machine: ask for real-time scheduling (SCHED_FIFO, low priority), else a better nice
/// value. Without the privilege both fail quietly and pacing runs at normal priority.
#[cfg(target_os = "linux")]
fn raise_priority() -> &'static str {
    // SAFETY: plain syscalls on the calling thread with a valid, initialised sched_param.
    unsafe {
        let param = libc::sched_param { sched_priority: 10 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 {
            return "realtime";
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, -10) == 0 {
            return "nice -10";
        }
    }
    "normal"
}

#[cfg(not(target_os = "linux"))]
fn raise_priority() -> &'static str {
    "normal"
}

fn worker(rx: std_mpsc::Receiver<Arc<Stream>>) {
    let priority = raise_priority();
    tracing::debug!(priority, "media pacing thread started");
    let mut streams: Vec<Arc<Stream>> = Vec::new();
    let mut buf = [0u8; HEADER_LEN + MAX_FRAME];
    let mut next = Instant::now() + TICK;
    loop {
        // Always sleep a little, even when behind: a real-time thread that never sleeps would
        // starve signalling on its core.
        let now = Instant::now();
        std::thread::sleep(
            next.saturating_duration_since(now)
                .max(Duration::from_micros(500)),
        );
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
        let mut inbound = [0u8; 1500];
        for s in &streams {
            // A bug reachable from the network must cost at most the packet that hit it: the
            // worker serves every other call on its core, so a panic is caught per stream.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(sent) = s.tick(next, &mut buf) {
                    s.drain(&mut inbound, sent);
                }
            }));
            if served.is_err() {
                s.recover();
            }
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

//! A call we place (a second leg): routed through a trunk, offered, followed by its own Call-ID
//! until it ends, with its media started from the far end's answer (or its early media).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::outbound::{caller_id_user, Outbound, Refusal, Route};
use super::registry::{LegEvent, Registry};
use crate::flow::{DialResult, Outcome};
use crate::media::engine::Ports;
use crate::media::{Codec, MediaEngine, MediaSession, StreamParams};
use crate::sip::dial::DialSpec;
use crate::sip::sdp;
use crate::sip::{Command, SipHandle};
use crate::store::new_sid;

/// Codecs we offer a far end, in our preference order.
const OFFER: &[Codec] = &[Codec::Pcmu, Codec::Pcma, Codec::G722];

/// What placing legs needs: the trunks, signalling, media, and the registry that routes each
/// leg's SIP events back to the call that placed it.
pub struct Legs {
    /// The trunks calls may go out through.
    pub outbound: Outbound,
    /// Signalling.
    pub sip: SipHandle,
    /// RTP.
    pub media: Arc<MediaEngine>,
    /// Where each leg's events are routed by Call-ID.
    pub registry: Arc<Registry>,
    /// `[media] public_ip`: the address our SDP names, when set.
    pub public_ip: Option<std::net::IpAddr>,
    /// `[sip] srtp`: what offers to registered phones carry.
    pub user_srtp: sdp::SrtpPolicy,
}

/// Where one INVITE goes, however it was chosen.
struct Destination {
    peer: crate::sip::Peer,
    request_uri: String,
    media_ip: std::net::IpAddr,
    credentials: Option<(String, String)>,
    caller_id: Option<String>,
    redirect_hosts: Vec<String>,
    headers: Vec<(String, String)>,
    via: String,
    srtp: sdp::SrtpPolicy,
}

/// Why a leg could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    /// Dial rules refused the target.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No RTP port.
    #[error("no RTP port for the call: {0}")]
    Media(#[from] crate::media::engine::MediaError),
    /// The RTP socket has no address.
    #[error("RTP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Whom to call, and how.
pub struct LegRequest<'a> {
    /// A number or a SIP URI.
    pub target: &'a str,
    /// Caller ID (the From user); the trunk's `caller_id` when None.
    pub caller_id: Option<&'a str>,
    /// Ring time before we CANCEL.
    pub ring_timeout: Duration,
    /// Digest credentials for this call (connect-call-to's `sip_username`/`sip_password`);
    /// the trunk's own when None.
    pub credentials: Option<(String, String)>,
}

/// Events of one call's legs: each with its leg's Call-ID.
pub type LegEvents = mpsc::UnboundedReceiver<(String, LegEvent)>;

/// One leg, from the INVITE to its end. Dropping it hangs it up (CANCEL or BYE) unless it
/// already ended, and stops following it.
pub struct Leg {
    /// Its SIP Call-ID.
    pub call_id: String,
    /// Its call SID (`DialCallSid`).
    pub sid: String,
    /// Whom it called.
    pub target: String,
    /// The trunk route (None for a registered phone, which needs no trunk).
    _route: Option<Route>,
    /// Whom it went to: a trunk's name or `client:NAME`.
    via: String,
    ports: Option<Ports>,
    /// Our SDP offer: its keys are what an encrypted answer is matched against.
    offer: String,
    media: Option<MediaSession>,
    sip: SipHandle,
    engine: Arc<MediaEngine>,
    registry: Arc<Registry>,
    ended: bool,
    answered_at: Option<Instant>,
}

impl Legs {
    /// Place a call: route it, take an RTP port, send the INVITE. Its events arrive on `events`.
    pub fn place(
        &self,
        req: &LegRequest<'_>,
        events: &mpsc::UnboundedSender<(String, LegEvent)>,
    ) -> Result<Leg, LegError> {
        let unreachable: Vec<String> = self
            .sip
            .trunk_reachability()
            .into_iter()
            .filter(|(_, r)| !r.reachable)
            .map(|(name, _)| name)
            .collect();
        let (route, dest) = match req.target.strip_prefix("client:") {
            Some(user) => {
                // A registered phone: only where its own REGISTER came from.
                let loc = self
                    .sip
                    .locate_user(user)
                    .ok_or_else(|| Refusal::NotRegistered(user.to_string()))?;
                let dest = Destination {
                    peer: loc.peer,
                    request_uri: loc.contact,
                    media_ip: self.public_ip.unwrap_or(loc.local.ip()),
                    credentials: None,
                    caller_id: None,
                    redirect_hosts: Vec::new(),
                    headers: Vec::new(),
                    via: req.target.to_string(),
                    srtp: self.user_srtp,
                };
                (None, dest)
            }
            None => {
                let route = self
                    .outbound
                    .route(req.target, &unreachable, Instant::now())?;
                let t = &route.trunk;
                let dest = Destination {
                    peer: t.peer,
                    request_uri: route.request_uri.clone(),
                    media_ip: t.media_ip,
                    credentials: t.credentials.clone(),
                    caller_id: t.caller_id.clone(),
                    redirect_hosts: vec![t.host.clone()],
                    headers: route.headers.clone(),
                    via: t.name.clone(),
                    srtp: t.srtp,
                };
                (Some(route), dest)
            }
        };
        // Only a call that may go out takes RTP ports.
        let ports = self.media.allocate()?;
        let local_rtp = SocketAddr::new(dest.media_ip, ports.rtp.local_addr()?.port());
        let call_id = format!("{:032x}@switchboard", rand::random::<u128>());
        let from_user = match req.caller_id.filter(|c| !c.trim().is_empty()) {
            Some(id) => caller_id_user(id).ok_or_else(|| Refusal::BadCallerId(id.to_string()))?,
            None => dest.caller_id.unwrap_or_else(|| "switchboard".into()),
        };
        let offer = sdp::offer(OFFER, local_rtp, rand::random::<u32>() as u64, dest.srtp);
        let spec = DialSpec {
            call_id: call_id.clone(),
            peer: dest.peer,
            request_uri: dest.request_uri.clone(),
            from_user,
            sdp: offer.clone(),
            credentials: req.credentials.clone().or(dest.credentials),
            ring_timeout: req.ring_timeout,
            redirect_hosts: dest.redirect_hosts,
            headers: dest.headers,
        };
        // Follow it before the INVITE leaves, so no answer can overtake us.
        self.registry.insert_leg(&call_id, events.clone());
        tracing::info!(%call_id, target = %req.target, via = %dest.via, request_uri = %dest.request_uri, "placing a call");
        self.sip.send(Command::Dial {
            local: dest.peer.addr, // replaced by the driver
            spec: Box::new(spec),
        });
        Ok(Leg {
            call_id,
            sid: new_sid("CA"),
            target: req.target.to_string(),
            _route: route,
            via: dest.via,
            ports: Some(ports),
            offer,
            media: None,
            sip: self.sip.clone(),
            engine: self.media.clone(),
            registry: self.registry.clone(),
            ended: false,
            answered_at: None,
        })
    }
}

impl Leg {
    /// The trunk it went out through, or `client:NAME`.
    pub fn trunk(&self) -> &str {
        &self.via
    }

    /// Start (or move) its media to the far end's session: its answer or early media. Err
    /// when that SDP names nothing we can send to.
    pub fn start_media(&mut self, remote_sdp: &str) -> Result<&MediaSession, sdp::SdpError> {
        let n = sdp::negotiate_answer(&self.offer, remote_sdp, OFFER)?;
        let keys = n.srtp.as_ref().map(|s| s.keys.clone());
        if let Some(m) = &self.media {
            // Early media, then the answer (or a forked answer's new key).
            m.control().set_remote(n.remote_rtp);
            if let Some(keys) = &keys {
                m.control().set_srtp(keys);
            }
        } else if let Some(ports) = self.ports.take() {
            let params = StreamParams {
                remote: n.remote_rtp,
                codec: n.codec,
                payload_type: n.payload_type,
                telephone_event: n.telephone_event,
                ptime_ms: n.ptime_ms,
                label: self.call_id.clone(),
                srtp: keys,
            };
            match self.engine.start(ports, params) {
                Ok(m) => {
                    self.registry.attach_media(&self.call_id, m.control());
                    let srtp = n.srtp.as_ref().map_or("off", |s| s.keys.suite.name());
                    tracing::info!(call_id = %self.call_id, codec = ?n.codec, remote_rtp = %n.remote_rtp, srtp, "far end media");
                    self.media = Some(m);
                }
                Err(e) => {
                    tracing::warn!(call_id = %self.call_id, error = %e, "far end media failed to start");
                    return Err(sdp::SdpError::NoConnection);
                }
            }
        }
        self.media.as_ref().ok_or(sdp::SdpError::NoConnection)
    }

    /// Its media, once started.
    pub fn media(&self) -> Option<&MediaSession> {
        self.media.as_ref()
    }

    /// Its media, to play to it.
    pub fn media_mut(&mut self) -> Option<&mut MediaSession> {
        self.media.as_mut()
    }

    /// Its media's events (digits it sent, prompts played to it), once started.
    pub async fn media_event(&mut self) -> Option<crate::media::engine::MediaEvent> {
        match self.media.as_mut() {
            Some(m) => m.events.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The far end answered now.
    pub fn answered(&mut self) {
        self.answered_at = Some(Instant::now());
    }

    /// Whole seconds since the answer (`DialCallDuration`).
    pub fn duration_secs(&self) -> Option<u32> {
        self.answered_at.map(|a| a.elapsed().as_secs() as u32)
    }

    /// It ended on the far side (BYE, final failure): nothing to hang up.
    pub fn ended(&mut self) {
        self.ended = true;
    }

    /// End it from our side: CANCEL while it rings, BYE once answered.
    pub fn hangup(&mut self) {
        if !self.ended {
            self.ended = true;
            self.sip.send(Command::Hangup {
                call_id: self.call_id.clone(),
            });
        }
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.hangup();
        if let Some(m) = &self.media {
            m.unbridge();
        }
        self.registry.remove_leg(&self.call_id);
    }
}

/// How a placed call went, as the flow's connect-call-to or make-outgoing-call-v2 hears it.
pub fn dial_outcome(status: &str, sid: Option<String>, error: Option<String>) -> Outcome {
    Outcome::Dial(Box::new(DialResult {
        status: status.into(),
        sid,
        error,
        ..Default::default()
    }))
}

/// Per-call digest credentials from a widget's username and password, when it names a user.
pub fn widget_credentials(
    user: &Option<String>,
    password: &Option<String>,
) -> Option<(String, String)> {
    match (user, password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        _ => None,
    }
}

/// `DialCallStatus` for a leg that ended without an answer (Twilio's names).
pub fn dial_status(status: u16) -> &'static str {
    match status {
        486 | 600 | 603 => "busy",
        // Cancelled at the ring timeout, or the far end itself gave up ringing.
        487 | 480 => "no-answer",
        _ => "failed",
    }
}

//! Session timers (RFC 4028) as the answering side: what an INVITE asks for, what our
//! responses say, when the session must be refreshed and when an unrefreshed one ends. Pure;
//! the core keeps one per dialog and drives its deadlines.

use std::time::{Duration, Instant};

use super::message::Request;

/// The smallest interval we accept (RFC 4028 §4: 90 s is the recommended minimum).
pub const MIN_SE: u32 = 90;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTimer {
    /// Seconds the session lives without a refresh.
    pub interval: u32,
    /// We send the refreshes (`refresher=uas`); else the peer must.
    pub we_refresh: bool,
    /// The peer supports `timer`: our responses then carry `Require: timer`.
    pub peer_supports: bool,
    /// The peer accepts UPDATE: our refreshes use it (else a re-INVITE with our session).
    pub peer_allows_update: bool,
    /// Without a refresh before this, the session is over (we send BYE).
    pub check_at: Option<Instant>,
    /// When our next refresh is due (when we refresh).
    pub refresh_at: Option<Instant>,
}

/// A Session-Expires below our minimum: answer 422 with `Min-SE: MIN_SE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSmall;

impl SessionTimer {
    /// What a new INVITE (or a refresh) asks for; `None` when it asks for no session timer.
    pub fn negotiate(req: &Request) -> Result<Option<SessionTimer>, TooSmall> {
        let Some((se, refresher)) = req.session_expires.clone() else {
            return Ok(None);
        };
        if se < MIN_SE {
            return Err(TooSmall);
        }
        let interval = se.max(req.min_se.unwrap_or(0));
        let peer_supports = req
            .supported
            .iter()
            .chain(req.require.iter())
            .any(|t| t.eq_ignore_ascii_case("timer"));
        // RFC 4028 §9: without a refresher named, we pick the UAC when it can refresh.
        let we_refresh = match refresher.as_deref() {
            Some("uas") => true,
            Some("uac") => false,
            _ => !peer_supports,
        };
        let peer_allows_update = req.allow.as_deref().is_some_and(|a| {
            a.split(',')
                .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
        });
        Ok(Some(SessionTimer {
            interval,
            we_refresh,
            peer_supports,
            peer_allows_update,
            check_at: None,
            refresh_at: None,
        }))
    }

    /// A refresh from the peer that names its own interval or refresher replaces ours.
    pub fn refreshed_by(&mut self, req: &Request) {
        if let Ok(Some(t)) = SessionTimer::negotiate(req) {
            self.interval = t.interval;
            self.we_refresh = t.we_refresh;
            self.peer_supports |= t.peer_supports;
        }
    }

    /// Headers for our 2xx (and our refreshes).
    pub fn headers(&self) -> String {
        let who = if self.we_refresh { "uas" } else { "uac" };
        let require = if self.peer_supports {
            "Require: timer\r\n"
        } else {
            ""
        };
        format!(
            "Session-Expires: {};refresher={who}\r\n{require}Supported: timer\r\n",
            self.interval
        )
    }

    /// The session was set up or refreshed at `now`: its deadlines from here.
    pub fn restart(&mut self, now: Instant) {
        let i = u64::from(self.interval);
        // RFC 4028 §10: BYE when no refresh came by interval - min(32, interval/3).
        self.check_at = Some(now + Duration::from_secs(i - (i / 3).min(32)));
        self.refresh_at = self
            .we_refresh
            .then(|| now + Duration::from_secs((i / 2).max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> Request {
        let raw = format!(
            "INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        match super::super::message::parse(raw.as_bytes(), 65535) {
            Ok(super::super::message::SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negotiation_follows_rfc4028() {
        assert_eq!(SessionTimer::negotiate(&invite("")), Ok(None));
        assert_eq!(
            SessionTimer::negotiate(&invite("Session-Expires: 30\r\n")),
            Err(TooSmall)
        );
        // The UAC supports timer and names no refresher: it refreshes.
        let t = SessionTimer::negotiate(&invite(
            "Supported: timer, 100rel\r\nSession-Expires: 1800\r\nMin-SE: 600\r\nAllow: INVITE, UPDATE\r\n",
        ))
        .unwrap()
        .unwrap();
        assert!(!t.we_refresh && t.peer_supports && t.peer_allows_update);
        assert_eq!(t.interval, 1800);
        assert_eq!(
            t.headers(),
            "Session-Expires: 1800;refresher=uac\r\nRequire: timer\r\nSupported: timer\r\n"
        );
        // A proxy added Session-Expires for a UAC without timer support: we refresh; compact x.
        let t = SessionTimer::negotiate(&invite("x: 120\r\n"))
            .unwrap()
            .unwrap();
        assert!(t.we_refresh && !t.peer_supports);
        assert_eq!(
            t.headers(),
            "Session-Expires: 120;refresher=uas\r\nSupported: timer\r\n"
        );
        let t = SessionTimer::negotiate(&invite(
            "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\n",
        ))
        .unwrap()
        .unwrap();
        assert!(t.we_refresh);
        // Deadlines: refresh halfway, BYE at interval - min(32, interval/3).
        let mut t = t;
        let t0 = Instant::now();
        t.restart(t0);
        assert_eq!(t.refresh_at, Some(t0 + Duration::from_secs(45)));
        assert_eq!(t.check_at, Some(t0 + Duration::from_secs(60)));
        t.interval = 1800;
        t.restart(t0);
        assert_eq!(t.check_at, Some(t0 + Duration::from_secs(1768)));
    }
}

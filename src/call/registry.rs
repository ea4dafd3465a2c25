//! Live calls by SIP Call-ID, each with the session key that names its execution:
//! (flow, caller, Call-ID), so concurrent calls from one caller ID never share an execution.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    pub flow_sid: String,
    pub caller: String,
    pub call_id: String,
}

impl CallKey {
    /// The store's uniqueness key for the call's active execution.
    pub fn session_key(&self, concurrent: bool) -> String {
        if concurrent {
            format!("voice|{}|{}|{}", self.flow_sid, self.caller, self.call_id)
        } else {
            format!("voice|{}|{}", self.flow_sid, self.caller)
        }
    }
}

/// What signalling tells a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSignal {
    /// BYE, CANCEL or an unacknowledged answer: the caller is gone.
    Hangup,
    /// DTMF from SIP INFO.
    Dtmf(char),
    /// How our REFER goes (see `sip::Event::Transfer`).
    Transfer {
        /// The REFER's answer, or the status a NOTIFY reports.
        status: u16,
        /// Final.
        done: bool,
    },
}

/// What signalling tells the call that placed an outbound leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// 180, 183..., with the far end's early media session when it sent one.
    Progress {
        /// The provisional status.
        status: u16,
        /// Its SDP, when it carries one.
        early_sdp: Option<String>,
    },
    /// Answered, with the far end's SDP.
    Answered {
        /// The SDP answer.
        sdp: String,
    },
    /// Ended without an answer.
    Failed {
        /// The final status (408: no answer at all, 487: cancelled).
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The far end hung up (BYE), or the dialog ended.
    HungUp,
    /// DTMF the far end sent in SIP INFO.
    Dtmf(char),
}

#[derive(Default)]
pub struct Registry {
    calls: Mutex<HashMap<String, (CallKey, mpsc::UnboundedSender<CallSignal>)>>,
    /// Outbound legs by their own Call-ID, each with the call that follows it.
    legs: Mutex<HashMap<String, mpsc::UnboundedSender<(String, LegEvent)>>>,
    /// Each answered call's media, for changes signalling makes (re-INVITE, UPDATE).
    media: Mutex<HashMap<String, crate::media::engine::MediaControl>>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register a call unless one with this Call-ID is live (a second INVITE is not a new call).
    pub fn insert(&self, key: CallKey, tx: mpsc::UnboundedSender<CallSignal>) -> bool {
        let Ok(mut calls) = self.calls.lock() else {
            return false;
        };
        if calls.contains_key(&key.call_id) {
            return false;
        }
        calls.insert(key.call_id.clone(), (key, tx));
        true
    }

    pub fn signal(&self, call_id: &str, s: CallSignal) -> bool {
        self.calls
            .lock()
            .ok()
            .and_then(|c| c.get(call_id).map(|(_, tx)| tx.send(s).is_ok()))
            .unwrap_or(false)
    }

    /// The Call-IDs of the calls in progress.
    pub fn call_ids(&self) -> Vec<String> {
        self.calls
            .lock()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, call_id: &str) {
        if let Ok(mut c) = self.calls.lock() {
            c.remove(call_id);
        }
        if let Ok(mut m) = self.media.lock() {
            m.remove(call_id);
        }
    }

    /// Follow an outbound leg: its SIP events go to `tx`, with its Call-ID, until
    /// [`Self::remove_leg`].
    pub fn insert_leg(&self, call_id: &str, tx: mpsc::UnboundedSender<(String, LegEvent)>) {
        if let Ok(mut l) = self.legs.lock() {
            l.insert(call_id.to_string(), tx);
        }
    }

    /// Hand an event to the leg with this Call-ID; false when no leg has it.
    pub fn leg_event(&self, call_id: &str, ev: LegEvent) -> bool {
        self.legs
            .lock()
            .ok()
            .and_then(|l| {
                l.get(call_id)
                    .map(|tx| tx.send((call_id.to_string(), ev)).is_ok())
            })
            .unwrap_or(false)
    }

    pub fn remove_leg(&self, call_id: &str) {
        if let Ok(mut l) = self.legs.lock() {
            l.remove(call_id);
        }
        if let Ok(mut m) = self.media.lock() {
            m.remove(call_id);
        }
    }

    /// The call's media is up: signalling may now move or hold it.
    pub fn attach_media(&self, call_id: &str, media: crate::media::engine::MediaControl) {
        let live = self
            .calls
            .lock()
            .map(|c| c.contains_key(call_id))
            .unwrap_or(false)
            || self
                .legs
                .lock()
                .map(|l| l.contains_key(call_id))
                .unwrap_or(false);
        if let (true, Ok(mut m)) = (live, self.media.lock()) {
            m.insert(call_id.to_string(), media);
        }
    }

    pub fn media(&self, call_id: &str) -> Option<crate::media::engine::MediaControl> {
        self.media.lock().ok()?.get(call_id).cloned()
    }
}

/// DTMF carried in SIP INFO: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
pub fn info_digit(content_type: &str, body: &[u8]) -> Option<char> {
    let body = std::str::from_utf8(body).ok()?;
    let ct = content_type.to_ascii_lowercase();
    let value = if ct.starts_with("application/dtmf-relay") {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?
    } else if ct.starts_with("application/dtmf") {
        body.trim()
    } else {
        return None;
    };
    let c = match value {
        "10" => '*',
        "11" => '#',
        v if v.len() == 1 => v.chars().next()?.to_ascii_uppercase(),
        _ => return None,
    };
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_bodies() {
        assert_eq!(
            info_digit("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            info_digit("application/dtmf-relay", b"Signal= #\r\n"),
            Some('#')
        );
        assert_eq!(info_digit("application/dtmf", b"7"), Some('7'));
        assert_eq!(info_digit("application/dtmf", b"11"), Some('#'));
        assert_eq!(info_digit("text/plain", b"7"), None);
        assert_eq!(info_digit("application/dtmf-relay", b"Signal=x"), None);
    }

    #[test]
    fn one_entry_per_call_id() {
        let r = Registry::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let key = CallKey {
            flow_sid: "FW1".into(),
            caller: "+1".into(),
            call_id: "a".into(),
        };
        assert!(r.insert(key.clone(), tx.clone()));
        assert!(!r.insert(key.clone(), tx));
        let other = CallKey {
            call_id: "b".into(),
            ..key.clone()
        };
        assert_ne!(
            key.session_key(true),
            other.session_key(true),
            "same caller, two executions"
        );
        assert_eq!(key.session_key(false), other.session_key(false));
        assert!(r.signal("a", CallSignal::Hangup));
        assert_eq!(rx.try_recv().unwrap(), CallSignal::Hangup);
        r.remove("a");
        assert!(r.is_empty());
    }
}

//! The registrar for `[[users]]` (RFC 3261 §10.3): where each authenticated user can be
//! reached, for as long as its registration lasts. In memory: a binding lives no longer than
//! its expiry (an hour at most), and a restart is followed by the phones' own refreshes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::core::Peer;
use super::message::{param, uri_of, Request};

/// Shortest registration we grant (RFC 3261 §10.2.8: 423 below it).
pub const MIN_EXPIRES: u32 = 60;
/// Longest registration we grant, and the default when the phone names none.
pub const MAX_EXPIRES: u32 = 3600;
/// Contacts one user may have registered at once.
pub const MAX_BINDINGS_PER_USER: usize = 10;

/// Where one registered phone can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The phone's Contact URI.
    pub contact: String,
    /// Where its REGISTER came from (requests to it go there: NAT-friendly).
    pub peer: Peer,
    /// When the registration lapses unless refreshed.
    pub expires_at: Instant,
}

/// The registrar's answer to one REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200: the user's bindings now, each with its remaining seconds.
    Bound(Vec<(String, u32)>),
    /// 423 Interval Too Brief, with Min-Expires.
    TooBrief,
    /// 403: the To (address of record) names another user than the credentials.
    NotYours,
    /// 400: no usable Contact.
    BadContact,
}

#[derive(Default)]
pub(crate) struct Registrar {
    bindings: HashMap<String, Vec<Binding>>,
}

impl Registrar {
    /// Apply an authenticated `user`'s REGISTER from `peer`.
    pub fn register(&mut self, now: Instant, user: &str, peer: Peer, req: &Request) -> Outcome {
        let aor_user = super::message::user_of(uri_of(&req.to));
        if aor_user != user {
            return Outcome::NotYours;
        }
        let list = self.bindings.entry(user.to_string()).or_default();
        list.retain(|b| b.expires_at > now);
        if let Some(contact) = req.contact.as_deref() {
            let expires = param(contact, "expires")
                .and_then(|e| e.trim().parse::<u32>().ok())
                .or(req.expires)
                .unwrap_or(MAX_EXPIRES);
            if contact.trim() == "*" {
                if expires != 0 {
                    return Outcome::BadContact;
                }
                list.clear();
            } else {
                let uri = uri_of(contact).to_string();
                if uri.is_empty() {
                    return Outcome::BadContact;
                }
                list.retain(|b| b.contact != uri);
                if expires != 0 {
                    if expires < MIN_EXPIRES {
                        return Outcome::TooBrief;
                    }
                    // A phone has a few contacts; an authenticated user cannot grow the table
                    // without bound: the oldest binding gives way.
                    if list.len() >= MAX_BINDINGS_PER_USER {
                        list.remove(0);
                    }
                    let secs = expires.min(MAX_EXPIRES);
                    list.push(Binding {
                        contact: uri,
                        peer,
                        expires_at: now + Duration::from_secs(u64::from(secs)),
                    });
                }
            }
        }
        let now_bound = list
            .iter()
            .map(|b| {
                let left = b.expires_at.saturating_duration_since(now).as_secs();
                (
                    b.contact.clone(),
                    u32::try_from(left).unwrap_or(MAX_EXPIRES),
                )
            })
            .collect();
        if list.is_empty() {
            self.bindings.remove(user);
        }
        Outcome::Bound(now_bound)
    }

    /// Where `user` can be reached now (the latest registration first).
    pub fn lookup(&self, now: Instant, user: &str) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self
            .bindings
            .get(user)
            .map(|l| l.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default();
        v.reverse();
        v
    }

    /// Forget expired bindings (the core's periodic purge).
    pub fn purge(&mut self, now: Instant) {
        self.bindings.retain(|_, l| {
            l.retain(|b| b.expires_at > now);
            !l.is_empty()
        });
    }
}

//! Which trunk may place a call to whom. Nothing dials out except through a configured trunk:
//! a number only through a trunk whose `dial_allow` matches it, a SIP URI only when its host is
//! a trunk's own; each trunk holds at most `max_outbound` calls out at once and starts at most
//! `calls_per_second` of them. A refusal names the target and the rule that refused it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::sip::Peer;

/// A trunk calls may go out through, with its address resolved.
pub struct OutboundTrunk {
    /// Its `[[trunks]]` name.
    pub name: String,
    /// Where the INVITE goes.
    pub peer: Peer,
    /// `host[:port]` of its `uri`, as written: the Request-URI's host, and the only place a
    /// redirect may send the call.
    pub host: String,
    /// Digest credentials for its challenges.
    pub credentials: Option<(String, String)>,
    /// Its default caller ID.
    pub caller_id: Option<String>,
    /// The address our SDP offers for media towards it.
    pub media_ip: IpAddr,
    /// Its `srtp`: what our offers towards it carry.
    pub srtp: crate::config::SrtpPolicy,
    dial_allow: Vec<String>,
    max_outbound: usize,
    calls_per_second: u32,
    active: AtomicUsize,
    bucket: Mutex<(f64, Instant)>,
}

impl OutboundTrunk {
    /// A trunk from its settings and resolved address.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &crate::config::TrunkConfig,
        peer: Peer,
        host: String,
        media_ip: IpAddr,
    ) -> OutboundTrunk {
        let credentials = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        OutboundTrunk {
            name: cfg.name.clone(),
            peer,
            host,
            credentials,
            caller_id: cfg.caller_id.clone(),
            media_ip,
            srtp: cfg.srtp,
            dial_allow: cfg.dial_allow.clone(),
            max_outbound: cfg.max_outbound,
            calls_per_second: cfg.calls_per_second,
            active: AtomicUsize::new(0),
            bucket: Mutex::new((cfg.calls_per_second as f64, Instant::now())),
        }
    }

    /// Calls out through this trunk now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn allows(&self, number: &str) -> bool {
        self.dial_allow.iter().any(|p| pattern_matches(p, number))
    }

    /// Take one call slot and one token of the rate limit.
    fn admit(self: &Arc<Self>, now: Instant) -> Result<Slot, Refusal> {
        if self.calls_per_second > 0 {
            let Ok(mut b) = self.bucket.lock() else {
                return Err(Refusal::Rate(self.name.clone(), self.calls_per_second));
            };
            let rate = self.calls_per_second as f64;
            let (tokens, at) = *b;
            let tokens =
                (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
            if tokens < 1.0 {
                *b = (tokens, now);
                return Err(Refusal::Rate(self.name.clone(), self.calls_per_second));
            }
            *b = (tokens - 1.0, now);
        }
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_outbound).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(self.clone())),
            Err(_) => Err(Refusal::Full(self.name.clone(), self.max_outbound)),
        }
    }
}

/// One call slot on a trunk, given back when dropped.
pub struct Slot(Arc<OutboundTrunk>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a call was not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a phone number (digits, with an optional leading `+`).
    #[error("{0:?} is not a phone number or SIP URI that can be dialled")]
    BadTarget(String),
    /// No trunk's `dial_allow` matches the number.
    #[error("no trunk may dial {0}: no dial_allow pattern matches it")]
    NotAllowed(String),
    /// The URI's host is no configured trunk.
    #[error("refused to dial {0}: its host is not a configured trunk")]
    UnknownHost(String),
    /// The trunk holds `max_outbound` calls.
    #[error("trunk {0:?} already holds its max_outbound of {1} calls")]
    Full(String, usize),
    /// The trunk's call-rate limit.
    #[error("trunk {0:?} is over its limit of {1} new calls per second")]
    Rate(String, u32),
    /// `client:NAME`: no live registration of that `[[users]]` phone.
    #[error("client {0:?} is not registered: no phone of that user is reachable now")]
    NotRegistered(String),
    /// The trunk does not answer its keep-alives.
    #[error("trunk {0:?} is unreachable (it does not answer OPTIONS)")]
    Unreachable(String),
    /// A caller ID that is neither a number nor a SIP user name.
    #[error("{0:?} cannot be a caller ID: use a number or a SIP user name")]
    BadCallerId(String),
}

/// Where a call goes: the trunk, the Request-URI, and the slot it holds.
pub struct Route {
    /// The trunk it goes through.
    pub trunk: Arc<OutboundTrunk>,
    /// Whom we INVITE: `sip:+15551234@trunk-host`.
    pub request_uri: String,
    /// Headers the SIP URI named after `?` that may go out (see [`uri_headers`]).
    pub headers: Vec<(String, String)>,
    /// Held for the life of the call.
    pub _slot: Slot,
}

/// The trunks calls may go out through, in configuration order.
#[derive(Default)]
pub struct Outbound {
    trunks: Vec<Arc<OutboundTrunk>>,
}

impl Outbound {
    /// From resolved trunks.
    pub fn new(trunks: Vec<OutboundTrunk>) -> Outbound {
        Outbound {
            trunks: trunks.into_iter().map(Arc::new).collect(),
        }
    }

    /// The trunks.
    pub fn trunks(&self) -> &[Arc<OutboundTrunk>] {
        &self.trunks
    }

    /// Route a number (`+15551234`, spaces and dashes allowed) or a SIP URI whose host is a
    /// trunk's. `unreachable` names trunks known not to answer, which are skipped.
    pub fn route(
        &self,
        target: &str,
        unreachable: &[String],
        now: Instant,
    ) -> Result<Route, Refusal> {
        let target = target.trim();
        if target.to_ascii_lowercase().starts_with("sip:") {
            return self.route_uri(target, unreachable, now);
        }
        let number = normalise(target).ok_or_else(|| Refusal::BadTarget(target.into()))?;
        let mut first_refusal = None;
        for t in self.trunks.iter().filter(|t| t.allows(&number)) {
            if unreachable.contains(&t.name) {
                first_refusal.get_or_insert(Refusal::Unreachable(t.name.clone()));
                continue;
            }
            match t.admit(now) {
                Ok(slot) => {
                    return Ok(Route {
                        trunk: t.clone(),
                        request_uri: format!("sip:{number}@{}", t.host),
                        headers: Vec::new(),
                        _slot: slot,
                    })
                }
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        Err(first_refusal.unwrap_or(Refusal::NotAllowed(number)))
    }

    /// Whether a trunk could dial `target` (a number, `tel:` or a SIP URI whose user is a
    /// number or whose host is a trunk's): what a transfer (REFER) must pass, since the
    /// caller's side then dials it for us. Takes no call slot.
    pub fn permits(&self, target: &str) -> Result<(), Refusal> {
        let t = target.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(number) = lower.strip_prefix("tel:") {
            let n = normalise(number.split(';').next().unwrap_or(""))
                .ok_or_else(|| Refusal::BadTarget(t.into()))?;
            return self.any_allows(&n);
        }
        if lower.starts_with("sip:") || lower.starts_with("sips:") {
            let host = uri_host(
                t.strip_prefix("sips:")
                    .map(|r| format!("sip:{r}"))
                    .as_deref()
                    .unwrap_or(t),
            )
            .ok_or_else(|| Refusal::BadTarget(t.into()))?;
            if self.trunks.iter().any(|tr| same_host(&tr.host, &host)) {
                return Ok(());
            }
            let user = t
                .split_once(':')
                .map(|(_, r)| r)
                .and_then(|r| r.split_once('@'))
                .map(|(u, _)| u)
                .unwrap_or("");
            return match normalise(user) {
                Some(n) => self.any_allows(&n),
                None => Err(Refusal::UnknownHost(t.into())),
            };
        }
        let n = normalise(t).ok_or_else(|| Refusal::BadTarget(t.into()))?;
        self.any_allows(&n)
    }

    fn any_allows(&self, number: &str) -> Result<(), Refusal> {
        if self.trunks.iter().any(|t| t.allows(number)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed(number.into()))
        }
    }

    fn route_uri(&self, uri: &str, unreachable: &[String], now: Instant) -> Result<Route, Refusal> {
        // Rendered from a flow: nothing that could end the Request-URI or its line.
        let printable = uri
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"".contains(&b));
        if !printable || uri.len() > 512 {
            return Err(Refusal::BadTarget(uri.into()));
        }
        let host = uri_host(uri).ok_or_else(|| Refusal::BadTarget(uri.into()))?;
        let trunk = self
            .trunks
            .iter()
            .find(|t| same_host(&t.host, &host))
            .ok_or_else(|| Refusal::UnknownHost(uri.into()))?;
        if unreachable.contains(&trunk.name) {
            return Err(Refusal::Unreachable(trunk.name.clone()));
        }
        let slot = trunk.admit(now)?;
        // Headers after `?` go into the INVITE, not its Request-URI.
        let request_uri = uri.split('?').next().unwrap_or(uri).to_string();
        Ok(Route {
            trunk: trunk.clone(),
            request_uri,
            headers: uri_headers(uri),
            _slot: slot,
        })
    }
}

/// Most headers a SIP URI may send along, and the longest value.
const MAX_URI_HEADERS: usize = 8;
const MAX_HEADER_VALUE: usize = 256;

/// The headers a SIP URI names after `?` (`sip:desk@pbx.example?X-Ticket=42&X-Queue=sales`),
/// passed on as Twilio's `<Sip>` passes them: only `X-` headers and `User-to-User`,
/// %-decoded, without control characters, at most eight. Anything else is dropped with a log
/// line: a flow must not set Route, Contact or whatever else the dialog depends on.
pub fn uri_headers(uri: &str) -> Vec<(String, String)> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (percent_decode(name), percent_decode(value)) else {
            tracing::warn!(header = %pair, "SIP URI header is not valid %-encoding; not sent");
            continue;
        };
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
        // `get`: the name is %-decoded, so it may hold multi-byte characters.
        let allowed = name.len() > 2 && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
            || name.eq_ignore_ascii_case("user-to-user");
        let clean = !value.chars().any(char::is_control) && value.len() <= MAX_HEADER_VALUE;
        if !(token && allowed && clean) || out.len() == MAX_URI_HEADERS {
            tracing::warn!(header = %name, "SIP URI header not sent: only X- headers and User-to-User, short and on one line, at most {MAX_URI_HEADERS}");
            continue;
        }
        out.push((name, value));
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A caller ID as the From user: a number (spaces and dashes dropped) or a SIP user name
/// (RFC 3261 `user` characters, up to 64); None for anything else, which could end the From
/// header or carry another.
pub fn caller_id_user(id: &str) -> Option<String> {
    let id = id.trim();
    // `client:alice` (a Twilio Client caller) and `sip:alice@host` name the user.
    let id = match id.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("client") => rest,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sip") => {
            rest.split(['@', ';', '>']).next().unwrap_or("")
        }
        _ => id,
    };
    if let Some(n) = normalise(id) {
        return Some(n);
    }
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b));
    ok.then(|| id.to_string())
}

/// A number as dialled: digits with an optional leading `+`; spaces, dashes, dots and
/// brackets dropped.
pub(crate) fn normalise(number: &str) -> Option<String> {
    let n: String = number
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = n.strip_prefix('+').unwrap_or(&n);
    (!digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(n)
}

/// A `dial_allow` pattern: a number, or a prefix ending in `*` (`*` alone: any number).
fn pattern_matches(pattern: &str, number: &str) -> bool {
    let p = pattern.trim();
    match p.strip_suffix('*') {
        Some(prefix) => number.starts_with(prefix),
        None => p == number,
    }
}

/// `host[:port]` of a SIP URI, lower-cased.
fn uri_host(uri: &str) -> Option<String> {
    let rest = uri.trim();
    let rest = rest.get(4..)?; // "sip:"
    let rest = rest.split([';', '?', '>']).next()?;
    let host = rest.rsplit('@').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Two `host[:port]` naming the same place (5060 when no port is written).
fn same_host(a: &str, b: &str) -> bool {
    let with_port = |h: &str| -> String {
        let h = h.to_ascii_lowercase();
        let has_port = if h.starts_with('[') {
            h.contains("]:")
        } else {
            h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        };
        if has_port {
            h
        } else {
            format!("{h}:5060")
        }
    };
    with_port(a) == with_port(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn caller_ids_are_numbers_or_sip_users_and_nothing_else() {
        use super::caller_id_user as c;
        assert_eq!(c(" +1 (555) 010-0100 ").as_deref(), Some("+15550100100"));
        assert_eq!(c("anonymous").as_deref(), Some("anonymous"));
        assert_eq!(c("client:alice").as_deref(), Some("alice"));
        assert_eq!(
            c("sip:bob@pbx.example;transport=tcp").as_deref(),
            Some("bob")
        );
        assert_eq!(c("x>\r\nContact: <sip:evil>"), None);
        assert_eq!(c("alice smith"), None);
        assert_eq!(c(&"9a".repeat(40)), None);
    }

    use super::*;
    use crate::sip::Transport;
    use std::time::Duration;

    fn trunk(name: &str, host: &str, allow: &[&str], max: usize, cps: u32) -> OutboundTrunk {
        let cfg: crate::config::TrunkConfig = serde_json::from_value(serde_json::json!({
            "name": name, "uri": format!("sip:{host}"), "dial_allow": allow,
            "max_outbound": max, "calls_per_second": cps,
        }))
        .unwrap();
        OutboundTrunk::new(
            &cfg,
            Peer {
                addr: "127.0.0.1:5080".parse().unwrap(),
                transport: Transport::Udp,
            },
            host.into(),
            "127.0.0.1".parse().unwrap(),
        )
    }

    #[test]
    fn numbers_go_only_where_dial_allow_says() {
        let out = Outbound::new(vec![
            trunk("us", "us.example", &["+1*"], 10, 0),
            trunk("uk", "uk.example:5070", &["+44*", "+15550000"], 10, 0),
        ]);
        let now = Instant::now();
        let r = out.route("+1 (555) 123-4567", &[], now).unwrap();
        assert_eq!(r.trunk.name, "us");
        assert_eq!(r.request_uri, "sip:+15551234567@us.example");
        let r = out.route("+442071234567", &[], now).unwrap();
        assert_eq!(r.request_uri, "sip:+442071234567@uk.example:5070");
        assert_eq!(
            out.route("+33123456789", &[], now).err(),
            Some(Refusal::NotAllowed("+33123456789".into()))
        );
        assert!(matches!(
            out.route("+1555; rm -rf", &[], now),
            Err(Refusal::BadTarget(_))
        ));
        assert!(matches!(
            out.route("", &[], now),
            Err(Refusal::BadTarget(_))
        ));
        // An unreachable trunk is skipped.
        assert_eq!(
            out.route("+15551234567", &["us".into()], now).err(),
            Some(Refusal::Unreachable("us".into()))
        );
        // No dial_allow: nothing.
        let none = Outbound::new(vec![trunk("closed", "c.example", &[], 10, 0)]);
        assert!(matches!(
            none.route("+15551234567", &[], now),
            Err(Refusal::NotAllowed(_))
        ));
    }

    #[test]
    fn sip_uris_only_to_trunk_hosts() {
        let out = Outbound::new(vec![trunk("pbx", "pbx.example", &[], 10, 0)]);
        let now = Instant::now();
        let r = out
            .route("sip:desk@PBX.example:5060;transport=udp", &[], now)
            .unwrap();
        assert_eq!(r.trunk.name, "pbx");
        assert_eq!(r.request_uri, "sip:desk@PBX.example:5060;transport=udp");
        assert_eq!(
            out.route("sip:desk@evil.example", &[], now).err(),
            Some(Refusal::UnknownHost("sip:desk@evil.example".into()))
        );
        assert!(out.route("sip:desk@pbx.example:5070", &[], now).is_err());
        // A flow-rendered URI that would end its line, or name another header, is refused.
        assert!(matches!(
            out.route("sip:desk@PBX.example\r\nContact: <sip:x@evil>", &[], now),
            Err(Refusal::BadTarget(_))
        ));
        let r = out
            .route(
                "sip:desk@pbx.example?X-Ticket=4%202&Contact=evil&x-queue=sales&User-to-User=abc",
                &[],
                now,
            )
            .unwrap();
        assert_eq!(r.request_uri, "sip:desk@pbx.example");
        assert_eq!(
            r.headers,
            [
                ("X-Ticket".to_string(), "4 2".to_string()),
                ("x-queue".into(), "sales".into()),
                ("User-to-User".into(), "abc".into()),
            ]
        );
        assert!(uri_headers("sip:a@b?X-A=%0d%0aVia:x").is_empty());
        // A decoded name that starts with a multi-byte character is refused, not a panic.
        assert!(uri_headers("sip:a@b?%E2%82%ACx=1&%C3%A9=2").is_empty());
    }

    #[test]
    fn transfers_only_to_what_a_trunk_may_dial() {
        let out = Outbound::new(vec![trunk("us", "us.example", &["+1*"], 10, 0)]);
        assert!(out.permits("sip:+15551234567@pbx.other.example").is_ok());
        assert!(out.permits("tel:+15551234567").is_ok());
        assert!(out.permits("sip:anyone@us.example").is_ok());
        assert!(matches!(
            out.permits("sip:+447700900123@pbx.other.example"),
            Err(Refusal::NotAllowed(_))
        ));
        assert!(matches!(
            out.permits("sip:desk@pbx.other.example"),
            Err(Refusal::UnknownHost(_))
        ));
        assert!(out.permits("tel:+33123").is_err());
    }

    #[test]
    fn max_outbound_and_call_rate_hold() {
        let out = Outbound::new(vec![trunk("t", "t.example", &["*"], 2, 0)]);
        let now = Instant::now();
        let a = out.route("100", &[], now).unwrap();
        let _b = out.route("101", &[], now).unwrap();
        assert_eq!(
            out.route("102", &[], now).err(),
            Some(Refusal::Full("t".into(), 2))
        );
        drop(a);
        assert_eq!(out.trunks()[0].active(), 1);
        assert!(out.route("102", &[], now).is_ok());

        let limited = Outbound::new(vec![trunk("r", "r.example", &["*"], 100, 5)]);
        let ok = (0..20)
            .filter_map(|_| limited.route("100", &[], now).ok())
            .count();
        assert_eq!(ok, 5, "a burst of the rate, then refusals");
        let later = now + Duration::from_millis(250);
        assert!(limited.route("100", &[], later).is_ok(), "tokens refill");
        assert_eq!(
            limited.route("100", &[], later).err(),
            Some(Refusal::Rate("r".into(), 5))
        );
    }
}

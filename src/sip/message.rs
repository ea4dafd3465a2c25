//! The parts of a SIP message that our transaction and dialog logic needs, taken from the
//! rsip parser (inside rsipstack) and kept as owned strings so that nothing else in the crate
//! depends on the parser's types.

use rsipstack::sip::{self as rsip, prelude::*};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MessageError {
    #[error("unparseable SIP message: {0}")]
    Unparseable(String),
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    #[error("message of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub vias: Vec<String>,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: String,
    pub contact: Option<String>,
    pub record_routes: Vec<String>,
    pub content_type: Option<String>,
    pub max_forwards: Option<u32>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: String,
    pub branch: Option<String>,
}

#[derive(Debug)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// What a message that failed to parse still tells us, so that we can answer it with a 400
/// (RFC 3261 §8.2: a request we cannot understand still deserves a response when we can route one).
#[derive(Debug, Default, Clone)]
pub struct Salvage {
    pub is_request: bool,
    pub method: Option<String>,
    pub vias: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

impl Salvage {
    /// True when we have every header a response must echo.
    pub fn can_answer(&self) -> bool {
        self.is_request
            && !self.vias.is_empty()
            && self.from.is_some()
            && self.to.is_some()
            && self.call_id.is_some()
            && self.cseq.is_some()
            && self.method.as_deref() != Some("ACK")
    }
}

/// A message that did not parse, with what could be salvaged from it.
pub type ParseFailure = Box<(MessageError, Salvage)>;

pub fn parse(data: &[u8], max_len: usize) -> Result<Message, ParseFailure> {
    if data.len() > max_len {
        return Err(Box::new((
            MessageError::TooLarge(data.len(), max_len),
            salvage(data),
        )));
    }
    let msg = match rsip::SipMessage::try_from(data) {
        Ok(m) => m,
        Err(e) => {
            return Err(Box::new((
                MessageError::Unparseable(e.to_string()),
                salvage(data),
            )))
        }
    };
    let out = match msg {
        rsip::SipMessage::Request(r) => request_from(&r).map(Message::Request),
        rsip::SipMessage::Response(r) => response_from(&r).map(Message::Response),
    };
    out.map_err(|e| Box::new((e, salvage(data))))
}

fn cseq_parts(raw: &str) -> Option<(u32, String)> {
    let mut it = raw.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let m = it.next()?.to_string();
    Some((n, m))
}

fn request_from(r: &rsip::Request) -> Result<Request, MessageError> {
    let mut vias = Vec::new();
    let mut record_routes = Vec::new();
    let mut contact = None;
    let mut content_type = None;
    let mut max_forwards = None;
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for h in r.headers().iter() {
        match h {
            rsip::Header::Via(v) => vias.push(v.value().to_string()),
            rsip::Header::From(v) => from = Some(v.value().to_string()),
            rsip::Header::To(v) => to = Some(v.value().to_string()),
            rsip::Header::CallId(v) => call_id = Some(v.value().to_string()),
            rsip::Header::CSeq(v) => cseq = Some(v.value().to_string()),
            rsip::Header::Contact(v) if contact.is_none() => contact = Some(v.value().to_string()),
            rsip::Header::RecordRoute(v) => record_routes.push(v.value().to_string()),
            rsip::Header::ContentType(v) => content_type = Some(v.value().to_string()),
            rsip::Header::MaxForwards(v) => max_forwards = v.value().trim().parse().ok(),
            _ => {}
        }
    }
    if vias.is_empty() {
        return Err(MessageError::BadHeader("Via"));
    }
    let (cseq, cseq_method) = cseq
        .as_deref()
        .and_then(cseq_parts)
        .ok_or(MessageError::BadHeader("CSeq"))?;
    Ok(Request {
        method: r.method().to_string(),
        uri: r.uri().to_string(),
        vias,
        from: from.ok_or(MessageError::BadHeader("From"))?,
        to: to.ok_or(MessageError::BadHeader("To"))?,
        call_id: call_id
            .filter(|c| !c.trim().is_empty())
            .ok_or(MessageError::BadHeader("Call-ID"))?,
        cseq,
        cseq_method,
        contact,
        record_routes,
        content_type,
        max_forwards,
        body: r.body().clone(),
    })
}

fn response_from(r: &rsip::Response) -> Result<Response, MessageError> {
    let call_id = r
        .call_id_header()
        .map_err(|_| MessageError::BadHeader("Call-ID"))?
        .value()
        .to_string();
    let (cseq, cseq_method) = r
        .cseq_header()
        .ok()
        .and_then(|c| cseq_parts(c.value()))
        .ok_or(MessageError::BadHeader("CSeq"))?;
    let branch = r.via_header().ok().and_then(|v| param(v.value(), "branch"));
    Ok(Response {
        status: u16::from(r.status_code().clone()),
        call_id,
        cseq,
        cseq_method,
        branch,
    })
}

/// Best-effort header scan for messages the parser refused.
pub fn salvage(data: &[u8]) -> Salvage {
    let text = String::from_utf8_lossy(&data[..data.len().min(16 * 1024)]);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let mut s = Salvage::default();
    if let Some(start) = lines.next() {
        let mut parts = start.split_whitespace();
        let first = parts.next().unwrap_or("");
        let _uri = parts.next();
        if parts.next() == Some("SIP/2.0") && first.chars().all(|c| c.is_ascii_uppercase()) {
            s.is_request = true;
            s.method = Some(first.to_string());
        }
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => s.vias.push(value),
            "from" | "f" => s.from = Some(value),
            "to" | "t" => s.to = Some(value),
            "call-id" | "i" => s.call_id = Some(value),
            "cseq" => s.cseq = Some(value),
            _ => {}
        }
    }
    s
}

/// Value of a `;name=value` parameter in a header value (outside `<...>`).
pub fn param(header: &str, name: &str) -> Option<String> {
    let tail = match header.rfind('>') {
        Some(i) => &header[i + 1..],
        None => header,
    };
    tail.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

pub fn has_param(header: &str, name: &str) -> bool {
    let tail = match header.rfind('>') {
        Some(i) => &header[i + 1..],
        None => header,
    };
    tail.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(name)
    })
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;tag=1`) or an addr-spec (`sip:bob@x;tag=1`).
pub fn uri_of(header: &str) -> &str {
    if let (Some(a), Some(b)) = (header.find('<'), header.rfind('>')) {
        if a < b {
            return &header[a + 1..b];
        }
    }
    header.split(';').next().unwrap_or(header).trim()
}

/// The user part of a SIP/tel URI (`sip:+1555@host` → `+1555`), or the whole URI when it has none.
pub fn user_of(uri: &str) -> &str {
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    let rest = rest.split([';', '?']).next().unwrap_or(rest);
    match rest.split_once('@') {
        Some((user, _)) => user.split(':').next().unwrap_or(user),
        None => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:ivr@127.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n\
        f: \"Caller\" <sip:+15550100000@127.0.0.1:5070>;tag=abc\r\n\
        t: <sip:ivr@127.0.0.1:5060>\r\n\
        i: call-1@host\r\n\
        CSeq: 1 INVITE\r\n\
        m: <sip:+15550100000@127.0.0.1:5070>\r\n\
        Max-Forwards: 70\r\n\
        c: application/sdp\r\n\
        l: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_compact_headers() {
        let Message::Request(r) = parse(INVITE.as_bytes(), 65535).unwrap() else {
            panic!()
        };
        assert_eq!(r.method, "INVITE");
        assert_eq!(r.call_id, "call-1@host");
        assert_eq!(param(&r.from, "tag").as_deref(), Some("abc"));
        assert_eq!(user_of(uri_of(&r.from)), "+15550100000");
        assert_eq!((r.cseq, r.cseq_method.as_str()), (1, "INVITE"));
        assert_eq!(r.body, b"v=0\n");
        assert!(has_param(&r.vias[0], "rport"));
        assert_eq!(r.max_forwards, Some(70));
    }

    #[test]
    fn salvages_headers_of_broken_requests() {
        let broken = "INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\
                      From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: q\r\nCSeq: nonsense\r\n\r\n";
        let (_, s) = *parse(broken.as_bytes(), 65535).unwrap_err();
        assert!(s.can_answer());
        assert_eq!(s.call_id.as_deref(), Some("q"));
        let (_, s) = *parse(b"\x00\x01garbage", 65535).unwrap_err();
        assert!(!s.can_answer());
    }

    #[test]
    fn oversized_messages_are_refused() {
        let err = parse(INVITE.as_bytes(), 10).map(|_| ()).map_err(|e| e.0);
        assert!(matches!(err, Err(MessageError::TooLarge(_, 10))));
    }
}

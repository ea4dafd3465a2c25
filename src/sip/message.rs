//! The parts of a SIP message that our transaction and dialog logic needs, taken from the
//! rsip parser (inside rsipstack) and kept as owned strings so that nothing else in the crate
//! depends on the parser's types.

use rsipstack::sip::{self as rsip, prelude::*};
use thiserror::Error;

/// Why a message was refused before or by the parser.
#[derive(Debug, Error)]
pub enum MessageError {
    /// The parser refused it (its message).
    #[error("unparseable SIP message: {0}")]
    Unparseable(String),
    /// A required header is missing or malformed.
    #[error("missing or malformed {0} header")]
    BadHeader(&'static str),
    /// The message is larger than the limit (size, limit).
    #[error("message of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// The request line is not `METHOD URI SIP/2.0`.
    #[error("malformed request line")]
    BadRequestLine,
    /// Not SIP/2.0 (answered with 505).
    #[error("SIP version {0:?} is not supported")]
    BadVersion(String),
    /// Content-Length is malformed, repeated, or larger than the message (what is wrong).
    #[error("Content-Length: {0}")]
    BadContentLength(&'static str),
    /// A header that may appear once appears twice.
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    /// A header value is longer than the limit (the limit).
    #[error("a header value is longer than {0} bytes")]
    HeaderTooLong(usize),
    /// More header lines than the limit (the limit).
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
}

impl MessageError {
    /// The status a request refused for this reason is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            MessageError::BadVersion(_) => (505, "Version Not Supported"),
            _ => (400, "Bad Request"),
        }
    }
}

/// Longest header value (after unfolding) we accept. The parser logs a warning per folded line
/// beyond 4 KiB, so longer values are refused before it sees them.
pub(crate) const MAX_HEADER_VALUE: usize = 4096;
/// Most header lines (continuations included) we accept in one message.
pub(crate) const MAX_HEADER_LINES: usize = 256;

/// A parsed request: the headers the core uses, as owned strings.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, e.g. `INVITE`.
    pub method: String,
    /// The Request-URI as the parser renders it.
    pub uri: String,
    /// The Via headers, topmost first.
    pub vias: Vec<String>,
    /// The From header.
    pub from: String,
    /// The To header.
    pub to: String,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq number.
    pub cseq: u32,
    /// The CSeq method.
    pub cseq_method: String,
    /// The Contact header.
    pub contact: Option<String>,
    /// The Record-Route headers, in order.
    pub record_routes: Vec<String>,
    /// The Content-Type.
    pub content_type: Option<String>,
    /// Max-Forwards.
    pub max_forwards: Option<u32>,
    /// The Request-URI exactly as sent (the parser may re-render `uri`).
    pub raw_uri: String,
    /// Option tags of all Require headers.
    pub require: Vec<String>,
    /// The Accept header values, when present.
    pub accept: Option<String>,
    /// The User-Agent (scanner filter).
    pub user_agent: Option<String>,
    /// The `Authorization` header (a UAS challenge answered), else `Proxy-Authorization`.
    pub authorization: Option<String>,
    /// The `Expires` header (REGISTER).
    pub expires: Option<u32>,
    /// Option tags of all Supported headers.
    pub supported: Vec<String>,
    /// The methods of the Allow headers, when present.
    pub allow: Option<String>,
    /// `Session-Expires` (RFC 4028): the interval and the `refresher` parameter.
    pub session_expires: Option<(u32, Option<String>)>,
    /// `Min-SE` (RFC 4028).
    pub min_se: Option<u32>,
    /// The body.
    pub body: Vec<u8>,
}

/// A parsed response: what matching it to our transaction needs.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq number.
    pub cseq: u32,
    /// The CSeq method.
    pub cseq_method: String,
    /// The topmost Via's branch.
    pub branch: Option<String>,
    /// The reason phrase.
    pub reason: String,
    /// `WWW-Authenticate` (401) challenges, in order.
    pub www_authenticate: Vec<String>,
    /// `Proxy-Authenticate` (407) challenges, in order.
    pub proxy_authenticate: Vec<String>,
    /// Every `Contact` header value (a registrar lists the bindings it holds).
    pub contacts: Vec<String>,
    /// The `Expires` header.
    pub expires: Option<u32>,
    /// The `Min-Expires` header (423 Interval Too Brief).
    pub min_expires: Option<u32>,
    /// The To header (its tag names the far end of a dialog our INVITE makes).
    pub to: String,
    /// Record-Route values in order (the route set of a dialog our INVITE makes).
    pub record_routes: Vec<String>,
    /// The Content-Type header.
    pub content_type: Option<String>,
    /// `Require` option tags, lower-cased (`100rel` on a reliable provisional, RFC 3262).
    pub require: Vec<String>,
    /// `RSeq` of a reliable provisional response (RFC 3262 §7.1).
    pub rseq: Option<u32>,
    /// The body (an SDP answer, or early media).
    pub body: Vec<u8>,
}

// One message is parsed and handled at a time, never stored: boxing buys nothing.
/// A parsed SIP message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SipMessage {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// What a message that failed to parse still tells us, so that we can answer it with a 400
/// (RFC 3261 §8.2: a request we cannot understand still deserves a response when we can route one).
#[derive(Debug, Default, Clone)]
pub struct Salvage {
    /// Whether it looked like a request (not a status line).
    pub is_request: bool,
    /// The method of the request line.
    pub method: Option<String>,
    /// The Via headers that could be read.
    pub vias: Vec<String>,
    /// The From header, if readable.
    pub from: Option<String>,
    /// The To header, if readable.
    pub to: Option<String>,
    /// The Call-ID, if readable.
    pub call_id: Option<String>,
    /// The CSeq, if readable.
    pub cseq: Option<String>,
}

impl Salvage {
    /// True when a response could reach the sender and be matched to its request: it needs
    /// the Via and the CSeq. From, To and Call-ID are echoed when present (RFC 4475 §3.3.1
    /// asks for a 400 even when they are missing).
    pub fn can_answer(&self) -> bool {
        self.is_request
            && !self.vias.is_empty()
            && self.cseq.is_some()
            && self.method.as_deref() != Some("ACK")
    }
}

/// The head of a message as we scan it ourselves: the start line and the unfolded headers
/// with compact names expanded and lower-cased. Bounded in size and count.
#[derive(Debug)]
struct Scanned {
    start: String,
    headers: Vec<(String, String)>,
    /// Offset of the body (after the blank line), or the end of the data when there is none.
    body_start: usize,
}

impl Scanned {
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn long_name(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    let long = match n.as_str() {
        "i" => "call-id",
        "m" => "contact",
        "e" => "content-encoding",
        "l" => "content-length",
        "c" => "content-type",
        "f" => "from",
        "s" => "subject",
        "k" => "supported",
        "t" => "to",
        "v" => "via",
        "x" => "session-expires",
        _ => return n,
    };
    long.to_string()
}

fn scan(data: &[u8]) -> Result<Scanned, MessageError> {
    let (head_end, body_start) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, i + 4),
        None => (data.len(), data.len()),
    };
    let text = String::from_utf8_lossy(&data[..head_end]);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADER_LINES {
            return Err(MessageError::TooManyHeaders(MAX_HEADER_LINES));
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
                if v.len() > MAX_HEADER_VALUE {
                    return Err(MessageError::HeaderTooLong(MAX_HEADER_VALUE));
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if value.len() > MAX_HEADER_VALUE {
            return Err(MessageError::HeaderTooLong(MAX_HEADER_VALUE));
        }
        headers.push((long_name(name), value.trim().to_string()));
    }
    Ok(Scanned {
        start,
        headers,
        body_start,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Split on `sep` outside double quotes and angle brackets.
fn split_outside(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut angle, mut escaped) =
        (Vec::new(), 0, false, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == sep && !quoted && !angle => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Checks the parser does not make (RFC 4475 §3.1.2, §3.3.8, §3.3.9). Returns the body range.
fn check(sc: &Scanned, data: &[u8], stream: bool, max: usize) -> Result<Vec<u8>, MessageError> {
    let is_request = !sc.start.starts_with("SIP/");
    if is_request {
        let parts: Vec<&str> = sc.start.split_whitespace().collect();
        let [method, uri, version] = parts[..] else {
            return Err(MessageError::BadRequestLine);
        };
        if !version.to_ascii_uppercase().starts_with("SIP/") {
            return Err(MessageError::BadRequestLine);
        }
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(MessageError::BadVersion(version.chars().take(16).collect()));
        }
        if !is_token(method) || uri.starts_with('<') || !uri.contains(':') {
            return Err(MessageError::BadRequestLine);
        }
        for name in ["to", "from", "call-id", "cseq", "max-forwards"] {
            if sc.all(name).count() > 1 {
                return Err(MessageError::DuplicateHeader(match name {
                    "to" => "To",
                    "from" => "From",
                    "call-id" => "Call-ID",
                    "cseq" => "CSeq",
                    _ => "Max-Forwards",
                }));
            }
        }
        for via in sc.all("via") {
            for part in split_outside(via, ',') {
                // `SIP/2.0/UDP host;;,;,,` (RFC 4475 §3.1.2.1): empty values or parameters.
                let mut params = split_outside(part, ';').into_iter();
                let sent_by = params.next().unwrap_or("").trim();
                if sent_by.is_empty() || params.any(|p| p.trim().is_empty()) {
                    return Err(MessageError::BadHeader("Via"));
                }
            }
        }
    }
    let mut lengths = sc.all("content-length").map(|v| v.trim().parse::<u64>());
    let available = data.len().saturating_sub(sc.body_start);
    let length = match lengths.next() {
        None => None,
        Some(Err(_)) => return Err(MessageError::BadContentLength("not a number")),
        Some(Ok(n)) => {
            for other in lengths {
                match other {
                    Ok(m) if m == n => {}
                    Ok(_) => return Err(MessageError::BadContentLength("more than one value")),
                    Err(_) => return Err(MessageError::BadContentLength("not a number")),
                }
            }
            let n = usize::try_from(n).ok().filter(|n| *n <= max).ok_or(
                MessageError::BadContentLength("over the message size limit"),
            )?;
            Some(n)
        }
    };
    let body = match length {
        // RFC 3261 §18.3: octets after the body in a datagram are ignored.
        Some(n) if n <= available => &data[sc.body_start..sc.body_start + n],
        Some(_) if stream => &data[sc.body_start..],
        Some(_) => return Err(MessageError::BadContentLength("larger than the datagram")),
        // RFC 3261 §20.14: without Content-Length a datagram's body runs to its end; on a
        // stream the framer has already taken Content-Length as 0.
        None if stream => &[],
        None => &data[sc.body_start..],
    };
    Ok(body.to_vec())
}

/// A message that did not parse, with what could be salvaged from it.
pub type ParseFailure = Box<(MessageError, Salvage)>;

/// Parse one whole datagram.
pub fn parse(data: &[u8], max_len: usize) -> Result<SipMessage, ParseFailure> {
    parse_from(data, max_len, false)
}

/// Parse one message. `stream` says it came framed from TCP (the body length was then already
/// taken from Content-Length) rather than as a whole datagram.
pub(crate) fn parse_from(
    data: &[u8],
    max_len: usize,
    stream: bool,
) -> Result<SipMessage, ParseFailure> {
    if data.len() > max_len {
        return Err(Box::new((
            MessageError::TooLarge(data.len(), max_len),
            salvage(data),
        )));
    }
    let fail = |e: MessageError| Box::new((e, salvage(data)));
    let scanned = scan(data).map_err(fail)?;
    let body = check(&scanned, data, stream, max_len).map_err(fail)?;
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
        rsip::SipMessage::Request(r) => request_from(&r, &scanned, body).map(SipMessage::Request),
        rsip::SipMessage::Response(r) => {
            response_from(&r, &scanned, body).map(SipMessage::Response)
        }
    };
    out.map_err(|e| Box::new((e, salvage(data))))
}

fn cseq_parts(raw: &str) -> Option<(u32, String)> {
    let mut it = raw.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let m = it.next()?.to_string();
    Some((n, m))
}

fn request_from(r: &rsip::Request, sc: &Scanned, body: Vec<u8>) -> Result<Request, MessageError> {
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
        raw_uri: sc.start.split_whitespace().nth(1).unwrap_or("").to_string(),
        require: sc
            .all("require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        accept: {
            let all: Vec<&str> = sc.all("accept").collect();
            (!all.is_empty()).then(|| all.join(", "))
        },
        user_agent: sc.all("user-agent").next().map(str::to_string),
        authorization: sc
            .all("authorization")
            .chain(sc.all("proxy-authorization"))
            .next()
            .map(str::to_string),
        expires: sc.all("expires").next().and_then(|v| v.trim().parse().ok()),
        supported: sc
            .all("supported")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
        allow: {
            let all: Vec<&str> = sc.all("allow").collect();
            (!all.is_empty()).then(|| all.join(", "))
        },
        session_expires: sc.all("session-expires").next().and_then(|v| {
            let mut parts = v.split(';');
            let secs = parts.next()?.trim().parse().ok()?;
            let refresher = parts.find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("refresher")
                    .then(|| v.trim().to_ascii_lowercase())
            });
            Some((secs, refresher))
        }),
        min_se: sc
            .all("min-se")
            .next()
            .and_then(|v| v.split(';').next()?.trim().parse().ok()),
        body,
    })
}

fn response_from(
    r: &rsip::Response,
    sc: &Scanned,
    body: Vec<u8>,
) -> Result<Response, MessageError> {
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
        reason: sc
            .start
            .splitn(3, ' ')
            .nth(2)
            .unwrap_or("")
            .trim()
            .to_string(),
        www_authenticate: sc.all("www-authenticate").map(str::to_string).collect(),
        proxy_authenticate: sc.all("proxy-authenticate").map(str::to_string).collect(),
        contacts: sc
            .all("contact")
            .flat_map(split_list)
            .map(str::to_string)
            .collect(),
        expires: sc.all("expires").next().and_then(|v| v.trim().parse().ok()),
        min_expires: sc
            .all("min-expires")
            .next()
            .and_then(|v| v.trim().parse().ok()),
        to: sc.all("to").next().unwrap_or("").trim().to_string(),
        record_routes: sc
            .all("record-route")
            .flat_map(split_list)
            .map(str::to_string)
            .collect(),
        content_type: sc.all("content-type").next().map(|v| v.trim().to_string()),
        require: sc
            .all("require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
        rseq: sc.all("rseq").next().and_then(|v| v.trim().parse().ok()),
        body,
    })
}

/// The entries of a comma-separated header value, commas inside `<...>` or quotes kept.
pub fn split_list(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth <= 0 => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&v[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// Best-effort header scan for messages the parser refused.
pub fn salvage(data: &[u8]) -> Salvage {
    let text = String::from_utf8_lossy(&data[..data.len().min(16 * 1024)]);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let mut s = Salvage::default();
    if let Some(start) = lines.next() {
        // Liberal on purpose: LWS inside the Request-URI or a bad version still leaves a
        // request we can answer (RFC 4475 §3.1.2.8, §3.1.2.16).
        let parts: Vec<&str> = start.split_whitespace().collect();
        if parts.len() >= 3
            && is_token(parts[0])
            && parts[parts.len() - 1]
                .to_ascii_uppercase()
                .starts_with("SIP/")
        {
            s.is_request = true;
            s.method = Some(parts[0].to_string());
        }
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let value = value.trim().chars().take(1024).collect::<String>();
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

/// Whether the header has the parameter `name` (after the URI's `>`, if any).
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
        let SipMessage::Request(r) = parse(INVITE.as_bytes(), 65535).unwrap() else {
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

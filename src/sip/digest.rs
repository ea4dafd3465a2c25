//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616): the answer a client
//! gives to a 401/407 challenge, and the challenges and checks a server makes for its users.
//! Pure functions and a bounded nonce book; no I/O, no clock of its own.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The hash of a challenge (RFC 7616 §3.3). `-sess` variants are not offered by SIP peers in
/// practice and are refused rather than answered wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (RFC 2617's, still what most phones know).
    Md5,
    /// `SHA-256` (RFC 7616).
    Sha256,
}

impl Algorithm {
    /// `MD5` or `SHA-256`, case-insensitively.
    pub fn parse(s: &str) -> Result<Algorithm, DigestError> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Ok(Algorithm::Md5),
            "SHA-256" => Ok(Algorithm::Sha256),
            _ => Err(DigestError::Algorithm(s.to_string())),
        }
    }

    /// The name as a header writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => {
                use md5::Digest as _;
                hex::encode(md5::Md5::digest(data.as_bytes()))
            }
            Algorithm::Sha256 => {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(data.as_bytes()))
            }
        }
    }
}

/// Why a challenge or credentials cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Another scheme (Basic, AKA...).
    #[error("not a Digest challenge or credentials")]
    NotDigest,
    /// A parameter the scheme requires is absent.
    #[error("digest parameter {0} missing")]
    Missing(&'static str),
    /// An algorithm we do not implement (`-sess` variants among them).
    #[error("digest algorithm {0:?} not supported")]
    Algorithm(String),
    /// A quality of protection other than `auth`.
    #[error("digest qop {0:?} not supported (only auth)")]
    Qop(String),
    /// Not `key=value` pairs.
    #[error("malformed digest parameters")]
    Malformed,
}

/// `key=value, key="quoted, value"` pairs after the scheme; keys lower-cased.
fn params(s: &str) -> Result<HashMap<String, String>, DigestError> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or(DigestError::Malformed)?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() || key.contains([' ', ',', '"']) {
            return Err(DigestError::Malformed);
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => v.push(c),
                }
            }
            let end = end.ok_or(DigestError::Malformed)?;
            value = v;
            rest = q[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        out.insert(key, value);
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return Err(DigestError::Malformed),
        }
    }
    Ok(out)
}

/// The `algorithm` parameter; MD5 when absent (RFC 7616 §3.3).
fn algorithm_of(p: &HashMap<String, String>) -> Result<Algorithm, DigestError> {
    p.get("algorithm")
        .map(|a| Algorithm::parse(a))
        .transpose()
        .map(|a| a.unwrap_or(Algorithm::Md5))
}

fn strip_scheme(value: &str) -> Result<&str, DigestError> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest);
    }
    Ok(rest)
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space: which credentials to use.
    pub realm: String,
    /// The server's nonce.
    pub nonce: String,
    /// Returned as given.
    pub opaque: Option<String>,
    /// The hash to answer with.
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (then `nc` and `cnonce` are sent); `false`: RFC 2069 style.
    pub qop_auth: bool,
    /// The previous credentials were right but the nonce had expired: retry, not a failure.
    pub stale: bool,
}

impl Challenge {
    /// A `WWW-Authenticate`/`Proxy-Authenticate` value.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let p = params(strip_scheme(value)?)?;
        let qop_auth = match p.get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(DigestError::Qop(q.clone()));
                }
            }
        };
        Ok(Challenge {
            realm: p
                .get("realm")
                .cloned()
                .ok_or(DigestError::Missing("realm"))?,
            nonce: p
                .get("nonce")
                .cloned()
                .ok_or(DigestError::Missing("nonce"))?,
            opaque: p.get("opaque").cloned(),
            algorithm: algorithm_of(&p)?,
            qop_auth,
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The strongest challenge of several (RFC 7616 §3.7: SHA-256 before MD5).
    pub fn best<'a>(values: impl IntoIterator<Item = &'a String>) -> Option<Challenge> {
        values
            .into_iter()
            .filter_map(|v| Challenge::parse(v).ok())
            .max_by_key(|c| c.algorithm == Algorithm::Sha256)
    }

    /// The header value answering this challenge for `method` on `uri`. `cnonce` is the
    /// client's random string and `nc` how many times this nonce has been used (from 1).
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hash(&format!("{username}:{}:{password}", self.realm));
        let ha2 = alg.hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = if self.qop_auth {
            alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            alg.hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut v = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            alg.as_str()
        );
        if self.qop_auth {
            v.push_str(&format!(
                ", qop=auth, nc={nc}, cnonce=\"{}\"",
                quote(cnonce)
            ));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque=\"{}\"", quote(o)));
        }
        v
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `Authorization` / `Proxy-Authorization` credentials as a server receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    /// `Some((nc, cnonce))` with `qop=auth`.
    pub qop: Option<(u32, String)>,
}

impl Credentials {
    pub fn parse(value: &str) -> Result<Credentials, DigestError> {
        let p = params(strip_scheme(value)?)?;
        let get = |k: &'static str| p.get(k).cloned().ok_or(DigestError::Missing(k));
        let qop = match p.get("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc =
                    u32::from_str_radix(&get("nc")?, 16).map_err(|_| DigestError::Malformed)?;
                Some((nc, get("cnonce")?))
            }
            Some(q) => return Err(DigestError::Qop(q.clone())),
        };
        Ok(Credentials {
            username: get("username")?,
            realm: get("realm")?,
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?.to_ascii_lowercase(),
            algorithm: algorithm_of(&p)?,
            qop,
        })
    }

    /// The response these credentials should carry for `password` and `method`.
    fn expected(&self, password: &str, method: &str) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hash(&format!("{}:{}:{password}", self.username, self.realm));
        let ha2 = alg.hash(&format!("{method}:{}", self.uri));
        match &self.qop {
            Some((nc, cnonce)) => alg.hash(&format!(
                "{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}",
                self.nonce
            )),
            None => alg.hash(&format!("{ha1}:{}:{ha2}", self.nonce)),
        }
    }
}

/// What a server makes of a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// Right password, fresh nonce, a count not seen before: this user.
    Accepted(String),
    /// Right password but an expired or unknown nonce: challenge again with `stale=true`.
    Stale,
    /// Wrong password, unknown user, another realm, a replayed count, or a URI other than the
    /// request's: refuse (403).
    Refused(&'static str),
}

/// Nonces this server issued, with their age and the highest `nc` seen, so that an expired
/// nonce is stale and a replayed request is refused. Bounded: the oldest are forgotten first
/// (a client holding one then gets a fresh challenge with `stale=true`).
pub(crate) struct NonceBook {
    realm: String,
    lifetime: Duration,
    capacity: usize,
    nonces: HashMap<String, NonceUse>,
    order: VecDeque<String>,
}

struct NonceUse {
    issued: Instant,
    /// Highest `nc` accepted; `None` until first use. Without qop a nonce is good once.
    last_nc: Option<u32>,
}

impl NonceBook {
    pub fn new(realm: &str, lifetime: Duration, capacity: usize) -> NonceBook {
        NonceBook {
            realm: realm.to_string(),
            lifetime,
            capacity: capacity.max(1),
            nonces: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A fresh challenge header value (`WWW-Authenticate: <this>`), SHA-256 and MD5 offered
    /// as two headers by the caller when it wants both; this one names `algorithm`.
    pub fn challenge(&mut self, now: Instant, algorithm: Algorithm, stale: bool) -> String {
        let nonce = format!("{:032x}", rand::random::<u128>());
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.nonces.remove(&old);
            }
        }
        self.order.push_back(nonce.clone());
        self.nonces.insert(
            nonce.clone(),
            NonceUse {
                issued: now,
                last_nc: None,
            },
        );
        format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
            quote(&self.realm),
            algorithm.as_str(),
            if stale { ", stale=true" } else { "" }
        )
    }

    /// Check `creds` on a request with `method` and Request-URI `uri`; `password` gives a
    /// user's password (None: no such user).
    pub fn check<'p>(
        &mut self,
        now: Instant,
        creds: &Credentials,
        method: &str,
        uri: &str,
        password: impl Fn(&str) -> Option<&'p str>,
    ) -> Check {
        if creds.realm != self.realm {
            return Check::Refused("another realm");
        }
        if !same_uri(&creds.uri, uri) {
            return Check::Refused("credentials for another URI");
        }
        let Some(pw) = password(&creds.username) else {
            return Check::Refused("unknown user");
        };
        if !crate::redact::constant_time_eq(
            creds.expected(pw, method).as_bytes(),
            creds.response.as_bytes(),
        ) {
            return Check::Refused("wrong password");
        }
        let Some(n) = self.nonces.get_mut(&creds.nonce) else {
            return Check::Stale;
        };
        if now.saturating_duration_since(n.issued) > self.lifetime {
            self.nonces.remove(&creds.nonce);
            return Check::Stale;
        }
        let nc = creds.qop.as_ref().map(|(nc, _)| *nc);
        match (nc, n.last_nc) {
            (None, Some(_)) => return Check::Refused("nonce already used"),
            (Some(nc), Some(last)) if nc <= last => return Check::Refused("replayed nonce count"),
            _ => {}
        }
        n.last_nc = Some(nc.unwrap_or(0));
        Check::Accepted(creds.username.clone())
    }
}

/// Whether the credentials' `uri` names this request's target. Some user agents (SIPp among
/// them) put our `sip:host:port` there rather than the whole Request-URI, so the host and port
/// must agree and the user part may be left out; the nonce (ours, with its count) is what
/// binds the credentials to this server and this request.
fn same_uri(creds: &str, request: &str) -> bool {
    fn host_port(uri: &str) -> String {
        let rest = uri.trim();
        let rest = rest.split_once(':').map(|(_, r)| r).unwrap_or(rest);
        let rest = rest.split([';', '?', '>']).next().unwrap_or("");
        rest.rsplit('@').next().unwrap_or("").to_ascii_lowercase()
    }
    creds.trim().eq_ignore_ascii_case(request.trim())
        || (!host_port(creds).is_empty() && host_port(creds) == host_port(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
    const CHALLENGE: &str = "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
        algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_examples_sha256_and_md5() {
        let c = Challenge::parse(CHALLENGE).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.qop_auth);
        let v = c.answer(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            CNONCE,
            1,
        );
        assert!(
            v.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{v}"
        );
        assert!(v.contains("nc=00000001"), "{v}");
        assert!(v.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""));
        let md5 = Challenge::parse(&CHALLENGE.replace("SHA-256", "MD5")).unwrap();
        let v = md5.answer(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            CNONCE,
            1,
        );
        assert!(
            v.contains("response=\"8ca523f5e9506fed4657c9700eebdbec\""),
            "{v}"
        );
        // The answer parses back as credentials the server side checks the same way.
        let creds = Credentials::parse(&v).unwrap();
        assert_eq!(creds.qop, Some((1, CNONCE.to_string())));
        assert_eq!(
            creds.expected("Circle of Life", "GET"),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn rfc2617_style_without_qop() {
        // RFC 2617 §3.5's example (MD5, qop=auth) and the same without qop.
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        let v = c.answer(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(
            v.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{v}"
        );
        let plain = Challenge {
            qop_auth: false,
            ..c
        };
        let v = plain.answer("Mufasa", "Circle Of Life", "GET", "/dir/index.html", "x", 1);
        assert!(!v.contains("qop"), "{v}");
        assert_eq!(Credentials::parse(&v).unwrap().qop, None);
    }

    #[test]
    fn challenges_parse_strictly() {
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Challenge::parse("Digest nonce=\"n\""),
            Err(DigestError::Missing("realm"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::Qop("auth-int".into()))
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess"),
            Err(DigestError::Algorithm(_))
        ));
        assert_eq!(
            Challenge::parse("Digest realm=\"unterminated"),
            Err(DigestError::Malformed)
        );
        let c = Challenge::parse("digest REALM=\"a \\\"b\\\", c\",nonce=abc,stale=TRUE").unwrap();
        assert_eq!(c.realm, "a \"b\", c");
        assert_eq!(c.nonce, "abc");
        assert!(c.stale);
        assert_eq!(c.algorithm, Algorithm::Md5);
        let best = Challenge::best(&[
            "Digest realm=\"r\", nonce=\"1\", algorithm=MD5".to_string(),
            "Digest realm=\"r\", nonce=\"2\", algorithm=SHA-256".to_string(),
        ])
        .unwrap();
        assert_eq!(best.nonce, "2");
    }

    fn answer_from(book_challenge: &str, password: &str, nc: u32, uri: &str) -> Credentials {
        let c = Challenge::parse(book_challenge).unwrap();
        Credentials::parse(&c.answer("alice", password, "INVITE", uri, "c0ffee", nc)).unwrap()
    }

    #[test]
    fn the_server_accepts_once_per_count_and_expires_nonces() {
        let t0 = Instant::now();
        let mut book = NonceBook::new("switchboard", Duration::from_secs(30), 100);
        let users = |u: &str| (u == "alice").then_some("wonderland");
        let uri = "sip:+15550100@127.0.0.1:5060";
        let ch = book.challenge(t0, Algorithm::Sha256, false);
        let ok = answer_from(&ch, "wonderland", 1, uri);
        assert_eq!(
            book.check(t0, &ok, "INVITE", uri, users),
            Check::Accepted("alice".into())
        );
        // The same count again is a replay; a higher one is the client's next request.
        assert_eq!(
            book.check(t0, &ok, "INVITE", uri, users),
            Check::Refused("replayed nonce count")
        );
        let next = answer_from(&ch, "wonderland", 2, uri);
        assert!(matches!(
            book.check(t0, &next, "INVITE", uri, users),
            Check::Accepted(_)
        ));
        // Wrong password, another URI, another method's credentials.
        let wrong = answer_from(&ch, "looking-glass", 4, uri);
        assert_eq!(
            book.check(t0, &wrong, "INVITE", uri, users),
            Check::Refused("wrong password")
        );
        let other = answer_from(&ch, "wonderland", 3, "sip:+15550100@192.0.2.1:5060");
        assert_eq!(
            book.check(t0, &other, "INVITE", uri, users),
            Check::Refused("credentials for another URI")
        );
        // Our host and port without the user part (as SIPp sends it) is this request's.
        let hostonly = answer_from(&ch, "wonderland", 3, "sip:127.0.0.1:5060");
        assert!(matches!(
            book.check(t0, &hostonly, "INVITE", uri, users),
            Check::Accepted(_)
        ));
        assert_eq!(
            book.check(t0, &next, "BYE", uri, users),
            Check::Refused("wrong password")
        );
        // An expired nonce with the right password is stale, not refused.
        let ch2 = book.challenge(t0, Algorithm::Md5, false);
        let late = answer_from(&ch2, "wonderland", 1, uri);
        assert_eq!(
            book.check(t0 + Duration::from_secs(31), &late, "INVITE", uri, users),
            Check::Stale
        );
        assert!(book
            .challenge(t0, Algorithm::Md5, true)
            .contains("stale=true"));
    }

    #[test]
    fn the_nonce_book_is_bounded() {
        let t0 = Instant::now();
        let mut book = NonceBook::new("r", Duration::from_secs(30), 3);
        let first = book.challenge(t0, Algorithm::Md5, false);
        for _ in 0..10 {
            book.challenge(t0, Algorithm::Md5, false);
        }
        assert_eq!(book.nonces.len(), 3);
        let creds = answer_from(&first, "pw", 1, "sip:x");
        let users = |_: &str| Some("pw");
        assert_eq!(
            book.check(t0, &creds, "INVITE", "sip:x", users),
            Check::Stale
        );
    }
}

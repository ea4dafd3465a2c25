//! Command-line options of `switchboard call`, parsed into a validated [`Options`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use crate::media::Codec;

/// An option of `switchboard call` that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    /// A duration that does not parse.
    #[error("bad duration {0:?}: expected e.g. 500ms, 2s, 1.5s, 1m or 1h")]
    Duration(String),
    /// A target that is not a SIP URI.
    #[error("bad target {0:?}: expected sip:user@host[:port]")]
    Target(String),
    /// A codec we do not have.
    #[error("unknown codec {0:?}: expected pcmu, pcma or g722")]
    Codec(String),
    /// A character of `--dtmf` that is not a digit.
    #[error("bad DTMF digit {0:?}: expected 0-9, *, #, A-D or ',' (a 500 ms pause)")]
    Digit(char),
    /// Options that do not go together, or a value out of range (why).
    #[error("{0}")]
    Invalid(&'static str),
}

/// Place one call, or many (`--calls`), to a SIP URI as a real user agent.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Target, e.g. sip:ivr@127.0.0.1:5060 (UDP; port 5060 when absent).
    pub target: String,
    /// Caller ID (the From user).
    #[arg(long, default_value = "+15550100000")]
    pub from: String,
    /// Use this many consecutive caller IDs (--from, --from + 1, ...), one per call in turn.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub from_range: u64,
    /// Digits to send as RFC 4733 events (in-band tones when the answer has no
    /// telephone-event); ',' pauses 500 ms.
    #[arg(long, default_value = "")]
    pub dtmf: String,
    /// When to start sending --dtmf, counted from the answer.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub dtmf_after: Duration,
    /// Audio file to send (WAV, MP3, OGG, FLAC); silence when absent or finished.
    #[arg(long)]
    pub play: Option<PathBuf>,
    /// Save what was heard as a PCM16 8 kHz WAV (single call only).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Hang up this long after the answer (default: wait for the far end's BYE).
    #[arg(long, value_parser = parse_duration)]
    pub hangup_after: Option<Duration>,
    /// Number of calls to place.
    #[arg(long, default_value_t = 1)]
    pub calls: u64,
    /// Most calls in progress at once (default: --calls).
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// New calls per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop everything (hanging up calls still up) after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// Give up on a call not answered within this long (RFC 3261 Timer B is 32 s).
    #[arg(long, default_value = "32s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// Codecs offered, in order (comma-separated: pcmu, pcma, g722).
    #[arg(long, default_value = "pcmu,pcma")]
    pub codecs: String,
    /// Count an answered call that heard no non-silent audio as failed ("no audio").
    #[arg(long)]
    pub require_audio: bool,
    /// Pacing threads for outbound RTP (default: one per core).
    #[arg(long)]
    pub media_threads: Option<usize>,
    /// Local address to bind SIP and RTP on (default: the route's source address).
    #[arg(long)]
    pub bind: Option<std::net::IpAddr>,
    /// SRTP with SDES keys: `off`, `optional` (RTP/AVP with a=crypto: encrypted if the far
    /// end keys its answer) or `required` (RTP/SAVP).
    #[arg(long, default_value = "off", value_parser = parse_srtp)]
    pub srtp: crate::config::SrtpPolicy,
}

fn parse_srtp(s: &str) -> Result<crate::config::SrtpPolicy, String> {
    use crate::config::SrtpPolicy;
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(SrtpPolicy::Off),
        "optional" => Ok(SrtpPolicy::Optional),
        "required" => Ok(SrtpPolicy::Required),
        _ => Err(format!("--srtp {s:?}: expected off, optional or required")),
    }
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) target: Target,
    pub(crate) from: String,
    pub(crate) from_range: u64,
    pub(crate) dtmf: Vec<DtmfStep>,
    pub(crate) dtmf_after: Duration,
    pub(crate) play: Option<PathBuf>,
    pub(crate) record: Option<PathBuf>,
    pub(crate) hangup_after: Option<Duration>,
    /// Number of calls to place.
    pub calls: u64,
    pub(crate) concurrency: u64,
    pub(crate) rate: f64,
    pub(crate) max_duration: Duration,
    pub(crate) setup_timeout: Duration,
    pub(crate) codecs: Vec<Codec>,
    pub(crate) require_audio: bool,
    pub(crate) media_threads: usize,
    pub(crate) bind: Option<std::net::IpAddr>,
    pub(crate) srtp: crate::config::SrtpPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DtmfStep {
    Digit(char),
    Pause,
}

/// A parsed SIP URI: the user part (Request-URI user) and where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(uri: &str) -> Result<Target, OptionError> {
        let bad = || OptionError::Target(uri.to_string());
        let rest = uri.trim();
        let rest = rest.strip_prefix("sip:").unwrap_or(rest);
        if rest.starts_with("sips:") || rest.contains("://") {
            return Err(bad());
        }
        let rest = rest.split([';', '?']).next().unwrap_or(rest);
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()).filter(|u| !u.is_empty()), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(bad)?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if tail.is_empty() => 5060,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (hostport.to_string(), 5060),
            }
        };
        if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Target { user, host, port })
    }

    /// The Request-URI for a call to `addr`.
    pub fn request_uri(&self, addr: SocketAddr) -> String {
        match &self.user {
            Some(u) => format!("sip:{u}@{addr}"),
            None => format!("sip:{addr}"),
        }
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, `1h`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, OptionError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| OptionError::Duration(s.into()))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(OptionError::Duration(s.into())),
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(OptionError::Duration(s.into()));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn parse_dtmf(s: &str) -> Result<Vec<DtmfStep>, OptionError> {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            ',' => Ok(DtmfStep::Pause),
            c if crate::media::dtmf::digit_event(c).is_some() => Ok(DtmfStep::Digit(c)),
            c => Err(OptionError::Digit(c)),
        })
        .collect()
}

pub(crate) fn parse_codecs(s: &str) -> Result<Vec<Codec>, OptionError> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let c = match name.to_ascii_lowercase().as_str() {
            "pcmu" | "ulaw" => Codec::Pcmu,
            "pcma" | "alaw" => Codec::Pcma,
            "g722" => Codec::G722,
            _ => return Err(OptionError::Codec(name.into())),
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(OptionError::Invalid("--codecs names no codec"));
    }
    Ok(out)
}

impl CallArgs {
    /// Check the arguments and turn them into [`Options`].
    pub fn validate(&self) -> Result<Options, OptionError> {
        if self.calls == 0 {
            return Err(OptionError::Invalid("--calls must be at least 1"));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(OptionError::Invalid("--rate must be a positive number"));
        }
        if self.record.is_some() && self.calls > 1 {
            return Err(OptionError::Invalid("--record needs a single call"));
        }
        if self.from_range == 0 {
            return Err(OptionError::Invalid("--from-range must be at least 1"));
        }
        if self.from.is_empty()
            || self
                .from
                .contains(|c: char| c.is_whitespace() || "<>@;:\"".contains(c))
        {
            return Err(OptionError::Invalid(
                "--from must be a plain user part such as +15550100000",
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Options {
            target: Target::parse(&self.target)?,
            from: self.from.clone(),
            from_range: self.from_range,
            dtmf: parse_dtmf(&self.dtmf)?,
            dtmf_after: self.dtmf_after,
            play: self.play.clone(),
            record: self.record.clone(),
            hangup_after: self.hangup_after,
            calls: self.calls,
            concurrency: self.concurrency.unwrap_or(self.calls).clamp(1, self.calls),
            rate: self.rate,
            max_duration: self.max_duration,
            setup_timeout: self.setup_timeout,
            codecs: parse_codecs(&self.codecs)?,
            require_audio: self.require_audio,
            media_threads: self.media_threads.unwrap_or(cores).clamp(1, 64),
            bind: self.bind,
            srtp: self.srtp,
        })
    }
}

/// The caller ID of call `n` (0-based): `from` with `n % range` added to its trailing number.
pub(crate) fn caller_id(from: &str, range: u64, n: u64) -> String {
    let k = n % range.max(1);
    if k == 0 {
        return from.to_string();
    }
    let digits_at = from
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let (prefix, digits) = from.split_at(digits_at);
    match digits.parse::<u128>() {
        Ok(v) => {
            let next = (v + k as u128).to_string();
            let pad = digits.len().saturating_sub(next.len());
            format!("{prefix}{}{next}", "0".repeat(pad))
        }
        Err(_) => format!("{from}{k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "s", "2x", "-1s", "1e400s", "2 fortnights"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("sip:ivr@127.0.0.1:5070").unwrap();
        assert_eq!(
            t,
            Target {
                user: Some("ivr".into()),
                host: "127.0.0.1".into(),
                port: 5070
            }
        );
        let t = Target::parse("sip:+1555@[::1];transport=udp").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5060));
        assert_eq!(Target::parse("127.0.0.1").unwrap().user, None);
        assert_eq!(
            t.request_uri("[::1]:5060".parse().unwrap()),
            "sip:+1555@[::1]:5060"
        );
        for bad in [
            "sip:ivr@",
            "sip:ivr@host:x",
            "sips:a@b",
            "http://x",
            "sip:a@[::1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dtmf_and_codecs() {
        assert_eq!(
            parse_dtmf("1,#").unwrap(),
            vec![DtmfStep::Digit('1'), DtmfStep::Pause, DtmfStep::Digit('#')]
        );
        assert_eq!(parse_dtmf("1x"), Err(OptionError::Digit('x')));
        assert_eq!(
            parse_codecs("PCMA, pcmu,pcma").unwrap(),
            vec![Codec::Pcma, Codec::Pcmu]
        );
        assert!(parse_codecs("opus").is_err());
        assert!(parse_codecs(",").is_err());
    }

    #[test]
    fn caller_ids_step_through_the_range() {
        assert_eq!(caller_id("+15550100000", 1, 7), "+15550100000");
        assert_eq!(caller_id("+15550100000", 100, 7), "+15550100007");
        assert_eq!(caller_id("+15550100099", 3, 2), "+15550100101");
        assert_eq!(caller_id("0099", 5, 1), "0100");
        assert_eq!(caller_id("alice", 5, 2), "alice2");
    }
}

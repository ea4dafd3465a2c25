//! Per-source policy against floods and scanners, and the rate limit on per-source log lines.
//! Sans-IO: time comes in as an `Instant`, so the tests drive it with a fake clock.
//!
//! Memory is bounded: the tables are swept of idle entries every `SWEEP_EVERY`, and when a
//! table still holds `MAX_SOURCES` entries, new sources share one overflow bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::acl::{Acl, AclError};

pub(crate) const MAX_SOURCES: usize = 65_536;
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub(crate) use crate::config::{DefenceConfig, OverRate};

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Over the rate: answer 503 with Retry-After (seconds).
    Reject {
        retry_after: u32,
    },
    /// Over the rate with `over_rate = "drop"`: send nothing.
    DropOverRate,
    /// A known scanner: send nothing, and count it towards a ban.
    DropScanner,
}

/// A ban that has just started (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The banned source.
    pub ip: IpAddr,
    /// The refusals that led to the ban.
    pub failures: u32,
    /// How long the ban lasts, in seconds.
    pub secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant, capacity: f64) -> Self {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    /// Take one token if there is one, refilling at `per_sec` up to `capacity` first.
    fn take(&mut self, now: Instant, per_sec: f64, capacity: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    /// INVITE, REGISTER, OPTIONS, others.
    buckets: [Option<Bucket>; 4],
    failures: Vec<Instant>,
    banned_until: Option<Instant>,
    last_seen: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Defence {
    cfg: DefenceConfig,
    exempt: Acl,
    scanners: Vec<String>,
    sources: HashMap<IpAddr, Source>,
    /// Shared by new sources once `sources` is full, so a spoofed flood cannot grow memory.
    overflow: Source,
    next_sweep: Option<Instant>,
}

impl Defence {
    pub fn new(cfg: DefenceConfig) -> Result<Self, AclError> {
        let exempt = Acl::parse(&cfg.exempt)?;
        Ok(Self::with_exempt(cfg, exempt))
    }

    /// For a configuration already checked with [`Defence::new`]: an invalid exempt list
    /// exempts nobody rather than failing.
    pub fn lenient(cfg: DefenceConfig) -> Self {
        let exempt = Acl::parse(&cfg.exempt).unwrap_or_default();
        Self::with_exempt(cfg, exempt)
    }

    fn with_exempt(cfg: DefenceConfig, exempt: Acl) -> Self {
        Defence {
            exempt,
            scanners: cfg
                .scanner_user_agents
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            cfg,
            sources: HashMap::new(),
            overflow: Source::default(),
            next_sweep: None,
        }
    }

    fn guarded(&self, ip: IpAddr) -> bool {
        self.cfg.enabled && !self.exempt.allows(ip)
    }

    fn source(&mut self, now: Instant, ip: IpAddr) -> &mut Source {
        self.sweep(now);
        let s = if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            &mut self.overflow
        } else {
            self.sources.entry(ip).or_default()
        };
        s.last_seen = Some(now);
        s
    }

    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| t > now) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let window = Duration::from_secs(self.cfg.ban_window_secs);
        // An entry idle this long has full buckets and no failures in the window: forget it.
        let idle = window.max(Duration::from_secs(10));
        self.sources.retain(|_, s| {
            let banned = s.banned_until.is_some_and(|t| t > now);
            let recent = s
                .last_seen
                .is_some_and(|t| now.saturating_duration_since(t) < idle);
            banned || recent
        });
    }

    /// Is `ip` banned now? Checked before anything else is done with a message.
    pub fn is_banned(&mut self, now: Instant, ip: IpAddr) -> bool {
        if !self.guarded(ip) {
            return false;
        }
        let s = match self.sources.get_mut(&ip) {
            Some(s) => s,
            None => return false,
        };
        match s.banned_until {
            Some(t) if t > now => true,
            Some(_) => {
                s.banned_until = None;
                s.failures.clear();
                false
            }
            None => false,
        }
    }

    /// Every source banned at `now` (the driver hands these to the TCP accept loop).
    pub fn banned(&self, now: Instant) -> std::collections::HashSet<IpAddr> {
        self.sources
            .iter()
            .filter(|(_, s)| s.banned_until.is_some_and(|t| t > now))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// `ip` was refused (ACL, scanner). Returns the ban this failure starts, if any.
    pub fn on_failure(&mut self, now: Instant, ip: IpAddr) -> Option<Ban> {
        if !self.guarded(ip) || self.cfg.ban_after_failures == 0 {
            return None;
        }
        let (limit, window, secs) = (
            self.cfg.ban_after_failures,
            Duration::from_secs(self.cfg.ban_window_secs),
            self.cfg.ban_secs,
        );
        let s = self.source(now, ip);
        if s.banned_until.is_some_and(|t| t > now) {
            return None;
        }
        s.failures
            .retain(|t| now.saturating_duration_since(*t) < window);
        s.failures.push(now);
        let failures = s.failures.len() as u32;
        if failures < limit {
            return None;
        }
        s.failures.clear();
        s.banned_until = Some(now + Duration::from_secs(secs));
        crate::metrics::get().sip_bans.inc();
        Some(Ban { ip, failures, secs })
    }

    /// The verdict on one request that passed the ACL.
    pub fn check_request(
        &mut self,
        now: Instant,
        ip: IpAddr,
        method: &str,
        user_agent: Option<&str>,
    ) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Pass;
        }
        if let Some(ua) = user_agent {
            let ua = ua.to_ascii_lowercase();
            if self.scanners.iter().any(|s| ua.contains(s.as_str())) {
                return Verdict::DropScanner;
            }
        }
        if method == "ACK" || !self.guarded(ip) {
            return Verdict::Pass;
        }
        let (class, rate) = match method {
            "INVITE" => (0, self.cfg.rate_invite),
            "REGISTER" => (1, self.cfg.rate_register),
            "OPTIONS" => (2, self.cfg.rate_options),
            _ => (3, self.cfg.rate_other),
        };
        let over = self.cfg.over_rate;
        let per_sec = f64::from(rate.max(1));
        let capacity = per_sec * 2.0;
        let s = self.source(now, ip);
        let bucket = s.buckets[class].get_or_insert_with(|| Bucket::full(now, capacity));
        if bucket.take(now, per_sec, capacity) {
            Verdict::Pass
        } else if over == OverRate::Reject {
            Verdict::Reject { retry_after: 1 }
        } else {
            Verdict::DropOverRate
        }
    }
}

/// Limits log lines about one source: a burst, then one line per interval, each saying how
/// many were suppressed since the last. A global bucket bounds the total over all sources, so
/// many (spoofed) sources cannot flood the log either.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_source: HashMap<IpAddr, (Bucket, u64)>,
    global: Bucket,
    global_suppressed: u64,
    burst: f64,
    per_sec: f64,
    next_sweep: Option<Instant>,
}

/// Lines per source in a burst, then one per 10 s; 20 lines in a burst over all sources,
/// then 2 per second.
const LOG_BURST: f64 = 5.0;
const LOG_PER_SEC: f64 = 0.1;
const LOG_GLOBAL_BURST: f64 = 20.0;
const LOG_GLOBAL_PER_SEC: f64 = 2.0;

impl LogLimiter {
    pub fn new(now: Instant) -> Self {
        LogLimiter {
            per_source: HashMap::new(),
            global: Bucket::full(now, LOG_GLOBAL_BURST),
            global_suppressed: 0,
            burst: LOG_BURST,
            per_sec: LOG_PER_SEC,
            next_sweep: None,
        }
    }

    /// May a line about `ip` be logged now? `Some(n)`: yes, and `n` lines about it were
    /// suppressed since the last one that was (and should be reported on this line).
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> Option<u64> {
        if self.next_sweep.is_none_or(|t| t <= now) {
            self.next_sweep = Some(now + SWEEP_EVERY);
            let full_after = Duration::from_secs_f64(self.burst / self.per_sec);
            self.per_source.retain(|_, (b, suppressed)| {
                *suppressed > 0 || now.saturating_duration_since(b.last) < full_after
            });
        }
        let (burst, per_sec) = (self.burst, self.per_sec);
        let full = self.per_source.len() >= MAX_SOURCES && !self.per_source.contains_key(&ip);
        let entry = if full {
            None
        } else {
            Some(
                self.per_source
                    .entry(ip)
                    .or_insert_with(|| (Bucket::full(now, burst), 0)),
            )
        };
        let source_ok = match entry {
            Some((b, _)) => b.take(now, per_sec, burst),
            None => false,
        };
        let ok = source_ok && self.global.take(now, LOG_GLOBAL_PER_SEC, LOG_GLOBAL_BURST);
        let counter = match self.per_source.get_mut(&ip) {
            Some((_, n)) => n,
            None => &mut self.global_suppressed,
        };
        if ok {
            Some(std::mem::take(counter))
        } else {
            *counter += 1;
            None
        }
    }
}

/// What [`LogLimiter::take_summary`] reports: lines suppressed since the last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub lines: u64,
    pub sources: usize,
    /// The source most lines were about, and how many.
    pub top: Option<(IpAddr, u64)>,
}

impl LogLimiter {
    /// Lines suppressed since the last call (and not yet reported on a later line about
    /// their source), so that a source that went quiet is still accounted for. Resets the
    /// counts. The driver logs this as one line every few seconds, when there is anything.
    pub fn take_summary(&mut self) -> Option<Suppressed> {
        let mut out = Suppressed {
            lines: std::mem::take(&mut self.global_suppressed),
            sources: 0,
            top: None,
        };
        for (ip, (_, n)) in self.per_source.iter_mut() {
            if *n == 0 {
                continue;
            }
            out.lines += *n;
            out.sources += 1;
            if out.top.is_none_or(|(_, m)| *n > m) {
                out.top = Some((*ip, *n));
            }
            *n = 0;
        }
        (out.lines > 0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guarded() -> DefenceConfig {
        DefenceConfig {
            exempt: vec![],
            rate_invite: 2,
            ban_after_failures: 3,
            ban_window_secs: 10,
            ban_secs: 60,
            ..DefenceConfig::default()
        }
    }

    #[test]
    fn rate_limits_per_source_and_method_refill_with_time() {
        let mut d = Defence::new(guarded()).unwrap();
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        // A burst of twice the rate passes, then 503.
        for _ in 0..4 {
            assert_eq!(d.check_request(t0, a, "INVITE", None), Verdict::Pass);
        }
        assert_eq!(
            d.check_request(t0, a, "INVITE", None),
            Verdict::Reject { retry_after: 1 }
        );
        // Other methods and other sources have their own buckets; ACK is never limited.
        assert_eq!(d.check_request(t0, a, "OPTIONS", None), Verdict::Pass);
        assert_eq!(d.check_request(t0, a, "ACK", None), Verdict::Pass);
        assert_eq!(
            d.check_request(t0, ip("198.51.100.2"), "INVITE", None),
            Verdict::Pass
        );
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(d.check_request(t1, a, "INVITE", None), Verdict::Pass);
        assert_ne!(d.check_request(t1, a, "INVITE", None), Verdict::Pass);

        let mut drop = Defence::new(DefenceConfig {
            over_rate: OverRate::Drop,
            ..guarded()
        })
        .unwrap();
        for _ in 0..4 {
            drop.check_request(t0, a, "INVITE", None);
        }
        assert_eq!(
            drop.check_request(t0, a, "INVITE", None),
            Verdict::DropOverRate
        );
    }

    #[test]
    fn failures_in_a_window_ban_then_the_ban_expires() {
        let mut d = Defence::new(guarded()).unwrap();
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        assert_eq!(d.on_failure(t0, a), None);
        // Failures outside the window do not add up.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(d.on_failure(t1, a), None);
        assert_eq!(d.on_failure(t1, a), None);
        assert!(!d.is_banned(t1, a));
        let ban = d
            .on_failure(t1, a)
            .expect("third failure in the window bans");
        assert_eq!((ban.ip, ban.failures, ban.secs), (a, 3, 60));
        assert!(d.is_banned(t1 + Duration::from_secs(59), a));
        assert_eq!(d.banned(t1).into_iter().collect::<Vec<_>>(), vec![a]);
        assert!(
            !d.is_banned(t1, ip("198.51.100.8")),
            "others are unaffected"
        );
        assert!(!d.is_banned(t1 + Duration::from_secs(60), a), "bans expire");
        assert_eq!(
            d.on_failure(t1 + Duration::from_secs(61), a),
            None,
            "count restarts"
        );
    }

    #[test]
    fn exempt_sources_scanners_and_disabled() {
        let t0 = Instant::now();
        let mut d = Defence::new(DefenceConfig {
            ban_after_failures: 1,
            ..DefenceConfig::default()
        })
        .unwrap();
        let lo = ip("127.0.0.1");
        assert_eq!(d.on_failure(t0, lo), None, "loopback is exempt by default");
        for _ in 0..1000 {
            assert_eq!(d.check_request(t0, lo, "INVITE", None), Verdict::Pass);
        }
        assert_eq!(
            d.check_request(t0, lo, "OPTIONS", Some("friendly-scanner")),
            Verdict::DropScanner,
            "the User-Agent check applies to exempt sources too"
        );
        assert!(matches!(
            d.check_request(
                t0,
                ip("198.51.100.1"),
                "REGISTER",
                Some("Mozilla SIPVicious 0.3")
            ),
            Verdict::DropScanner
        ));
        let mut off = Defence::new(DefenceConfig {
            enabled: false,
            ..guarded()
        })
        .unwrap();
        let a = ip("198.51.100.1");
        for _ in 0..100 {
            assert_eq!(
                off.check_request(t0, a, "INVITE", Some("sipvicious")),
                Verdict::Pass
            );
            assert_eq!(off.on_failure(t0, a), None);
        }
        assert!(Defence::new(DefenceConfig {
            exempt: vec!["bogus".into()],
            ..DefenceConfig::default()
        })
        .is_err());
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let mut d = Defence::new(guarded()).unwrap();
        let t0 = Instant::now();
        for i in 0..100u8 {
            d.check_request(t0, IpAddr::from([198, 51, 100, i]), "INVITE", None);
        }
        assert_eq!(d.sources.len(), 100);
        d.check_request(
            t0 + Duration::from_secs(120),
            ip("203.0.113.1"),
            "INVITE",
            None,
        );
        assert_eq!(d.sources.len(), 1);
    }

    #[test]
    fn log_limiter_bursts_then_summarises() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(t0);
        let a = ip("198.51.100.1");
        let logged = (0..1000).filter(|_| l.allow(t0, a).is_some()).count();
        assert_eq!(logged, 5);
        // Ten seconds later one more line, reporting what was suppressed.
        assert_eq!(l.allow(t0 + Duration::from_secs(10), a), Some(995));
        assert_eq!(l.allow(t0 + Duration::from_secs(10), a), None);
        // Many sources: the global bucket bounds the total.
        let mut l = LogLimiter::new(t0);
        let total = (0..10_000u32)
            .filter(|i| l.allow(t0, IpAddr::from(i.to_be_bytes())).is_some())
            .count();
        assert_eq!(total, 20);
        let sum = l.take_summary().expect("suppressed lines are reported");
        assert_eq!(sum.lines, 10_000 - 20);
        assert_eq!(l.take_summary(), None, "and reported once");
    }
}

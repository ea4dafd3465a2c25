//! The load side of `switchboard call`: when to start the next call (rate and concurrency),
//! and the statistics of finished calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::uac::End;

const CATCH_UP: Duration = Duration::from_millis(100);

/// Starts calls at `rate` per second, at most `concurrency` at once, `calls` in all.
#[derive(Debug)]
pub struct Scheduler {
    calls: u64,
    concurrency: u64,
    interval: Duration,
    next: Instant,
    pub started: u64,
}

impl Scheduler {
    pub fn new(calls: u64, concurrency: u64, rate: f64, now: Instant) -> Scheduler {
        Scheduler {
            calls,
            concurrency: concurrency.max(1),
            interval: Duration::from_secs_f64(1.0 / rate.max(1e-6)),
            next: now,
            started: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.started >= self.calls
    }

    /// When the next call may start, given `active` calls in progress (None: not until one
    /// ends, or never).
    pub fn next_start(&self, active: u64) -> Option<Instant> {
        (!self.done() && active < self.concurrency).then_some(self.next)
    }

    /// Whether a call may start now; if so, it is counted as started.
    pub fn try_start(&mut self, now: Instant, active: u64) -> bool {
        match self.next_start(active) {
            Some(t) if t <= now => {
                self.started += 1;
                // On schedule (timer lateness is caught up), but no burst after the
                // concurrency cap held calls back for longer than CATCH_UP.
                let scheduled = self.next + self.interval;
                self.next = if scheduled + CATCH_UP < now {
                    now + self.interval
                } else {
                    scheduled
                };
                true
            }
            _ => false,
        }
    }
}

/// One finished call.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub end: End,
    /// Local faults (e.g. no RTP port) before any SIP was sent.
    pub local_error: Option<String>,
    pub setup: Option<Duration>,
    pub heard_audio: bool,
    pub dtmf_latency: Option<Duration>,
    pub answered: bool,
}

impl CallResult {
    /// The failure reason, or None for a call that completed.
    pub fn failure(&self, require_audio: bool) -> Option<String> {
        if let Some(e) = &self.local_error {
            return Some(format!("local error: {e}"));
        }
        match &self.end {
            End::Completed { .. } if require_audio && !self.heard_audio => Some("no audio".into()),
            End::Completed { .. } => None,
            End::Refused { status, reason } => {
                Some(format!("{status} {reason}").trim().to_string())
            }
            End::SetupTimeout => Some("timeout (no answer)".into()),
            End::ByeFailed(why) => Some(format!("BYE failed: {why}")),
            End::BadAnswer(why) => Some(format!("bad SDP answer: {why}")),
            End::Aborted => Some("aborted at --max-duration".into()),
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub attempted: u64,
    pub answered: u64,
    pub completed: u64,
    pub failed: BTreeMap<String, u64>,
    pub setup: Vec<Duration>,
    pub audio_with: u64,
    pub audio_without: u64,
    pub dtmf_latency: Vec<Duration>,
    pub hung_up_by_remote: u64,
    /// The first failure, for the single-call message.
    pub first_failure: Option<String>,
}

impl Stats {
    pub fn record(&mut self, r: &CallResult, require_audio: bool) {
        self.attempted += 1;
        if r.answered {
            self.answered += 1;
            if r.heard_audio {
                self.audio_with += 1;
            } else {
                self.audio_without += 1;
            }
        }
        if let Some(s) = r.setup {
            self.setup.push(s);
        }
        if let Some(l) = r.dtmf_latency {
            self.dtmf_latency.push(l);
        }
        if matches!(r.end, End::Completed { by_remote: true }) {
            self.hung_up_by_remote += 1;
        }
        match r.failure(require_audio) {
            None => self.completed += 1,
            Some(why) => {
                self.first_failure.get_or_insert_with(|| why.clone());
                *self.failed.entry(why).or_default() += 1;
            }
        }
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// p50/p90/p99/max in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(samples: &[Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * ms.len() as f64).ceil() as usize;
        let v = ms[i.clamp(1, ms.len()) - 1];
        (v * 10.0).round() / 10.0
    };
    Some(Percentiles {
        count: ms.len(),
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: rank(100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_keeps_rate_and_concurrency() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(5, 2, 10.0, t0);
        assert!(s.try_start(t0, 0));
        assert!(!s.try_start(t0, 1), "rate: next in 100 ms");
        assert_eq!(s.next_start(1), Some(t0 + Duration::from_millis(100)));
        assert!(s.try_start(t0 + Duration::from_millis(100), 1));
        assert_eq!(s.next_start(2), None, "concurrency cap");
        // Held back for a second: one catch-up start, then the rate again.
        let t = t0 + Duration::from_secs(1);
        assert!(s.try_start(t, 1));
        assert!(!s.try_start(t, 1), "no burst");
        assert!(s.try_start(t + Duration::from_millis(100), 0));
        assert!(s.try_start(t + Duration::from_millis(200), 0));
        assert!(s.done());
        assert_eq!(s.next_start(0), None);
    }

    #[test]
    fn stats_count_failures_by_reason() {
        let ok = CallResult {
            end: End::Completed { by_remote: true },
            local_error: None,
            setup: Some(Duration::from_millis(5)),
            heard_audio: true,
            dtmf_latency: Some(Duration::from_millis(40)),
            answered: true,
        };
        let silent = CallResult {
            heard_audio: false,
            ..ok.clone()
        };
        let refused = CallResult {
            end: End::Refused {
                status: 488,
                reason: "Not Acceptable Here".into(),
            },
            setup: None,
            answered: false,
            heard_audio: false,
            ..ok.clone()
        };
        let mut s = Stats::default();
        for r in [&ok, &silent, &refused, &refused] {
            s.record(r, true);
        }
        assert_eq!((s.attempted, s.answered, s.completed), (4, 2, 1));
        assert_eq!(s.failed.get("488 Not Acceptable Here"), Some(&2));
        assert_eq!(s.failed.get("no audio"), Some(&1));
        assert_eq!((s.audio_with, s.audio_without), (1, 1));
        assert_eq!(s.first_failure.as_deref(), Some("no audio"));
        let mut lax = Stats::default();
        lax.record(&silent, false);
        assert_eq!(lax.completed, 1);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&d).unwrap();
        assert_eq!(
            (p.count, p.p50, p.p90, p.p99, p.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(percentiles(&[]), None);
        let one = percentiles(&[Duration::from_micros(1500)]).unwrap();
        assert_eq!((one.p50, one.max), (1.5, 1.5));
    }
}

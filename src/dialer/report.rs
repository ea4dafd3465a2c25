//! The end-of-run summary: a few human lines and one JSON line (`{"summary": {...}}`), the last
//! line of stdout, for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::load::{percentiles, Percentiles, Stats};

/// What a run did: counts, failures by reason, audio checks and timings.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub(crate) target: String,
    /// Calls placed.
    pub attempted: u64,
    pub(crate) answered: u64,
    /// Calls that were answered and ended cleanly.
    pub completed: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) hung_up_by_remote: u64,
    pub(crate) audio: AudioCheck,
    pub(crate) setup_ms: Option<Percentiles>,
    pub(crate) dtmf_to_prompt_ms: Option<Percentiles>,
    pub(crate) elapsed_s: f64,
    pub(crate) calls_per_second: f64,
    /// Answered calls per second from the first INVITE to the last 200 OK.
    pub(crate) setup_rate_cps: Option<f64>,
    pub(crate) max_concurrent: u64,
    #[serde(skip)]
    /// Why the first failed call failed (for a single call's error message).
    pub first_failure: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct AudioCheck {
    pub with: u64,
    pub without: u64,
}

impl Summary {
    pub(crate) fn new(
        target: String,
        stats: &Stats,
        elapsed: Duration,
        max_concurrent: u64,
    ) -> Summary {
        let secs = elapsed.as_secs_f64();
        Summary {
            target,
            attempted: stats.attempted,
            answered: stats.answered,
            completed: stats.completed,
            failed: stats.failed_total(),
            failures: stats.failed.clone(),
            hung_up_by_remote: stats.hung_up_by_remote,
            audio: AudioCheck {
                with: stats.audio_with,
                without: stats.audio_without,
            },
            setup_ms: percentiles(&stats.setup),
            dtmf_to_prompt_ms: percentiles(&stats.dtmf_latency),
            elapsed_s: (secs * 1000.0).round() / 1000.0,
            calls_per_second: if secs > 0.0 {
                ((stats.attempted as f64 / secs) * 100.0).round() / 100.0
            } else {
                0.0
            },
            setup_rate_cps: None,
            max_concurrent,
            first_failure: stats.first_failure.clone(),
        }
    }

    /// Whether calls were placed and every one completed.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.completed == self.attempted && self.attempted > 0
    }

    /// The summary for people: a few lines of counts and timings.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "calls: {} attempted, {} answered, {} completed, {} failed ({:.1} s, {} calls/s, max {} concurrent)",
            self.attempted,
            self.answered,
            self.completed,
            self.failed,
            self.elapsed_s,
            self.calls_per_second,
            self.max_concurrent
        );
        for (why, n) in &self.failures {
            let _ = writeln!(s, "  failed: {n} × {why}");
        }
        let _ = writeln!(
            s,
            "audio: {} calls heard non-silent audio, {} did not",
            self.audio.with, self.audio.without
        );
        let line = |name: &str, p: &Option<Percentiles>| match p {
            Some(p) => format!(
                "{name}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} calls)\n",
                p.p50, p.p90, p.p99, p.max, p.count
            ),
            None => format!("{name}: -\n"),
        };
        s.push_str(&line("setup (INVITE→200)", &self.setup_ms));
        s.push_str(&line("DTMF→prompt", &self.dtmf_to_prompt_ms));
        s
    }

    /// `{"summary": {...}}` on one line, for scripts.
    pub fn json_line(&self) -> String {
        serde_json::json!({ "summary": self }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialer::load::CallResult;
    use crate::dialer::uac::End;

    #[test]
    fn json_line_has_the_counts() {
        let mut st = Stats::default();
        st.record(
            &CallResult {
                end: End::Completed { by_remote: false },
                local_error: None,
                setup: Some(Duration::from_millis(3)),
                heard_audio: true,
                dtmf_latency: None,
                answered: true,
            },
            false,
        );
        let s = Summary::new(
            "sip:ivr@127.0.0.1:5060".into(),
            &st,
            Duration::from_secs(2),
            1,
        );
        let v: serde_json::Value = serde_json::from_str(&s.json_line()).unwrap();
        assert_eq!(v["summary"]["completed"], 1);
        assert_eq!(v["summary"]["audio"]["with"], 1);
        assert_eq!(v["summary"]["setup_ms"]["p50"], 3.0);
        assert!(v["summary"]["dtmf_to_prompt_ms"].is_null());
        assert!(s.success());
        assert!(s.human().contains("1 completed, 0 failed"));
    }
}

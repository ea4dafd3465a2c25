//! Operational metrics, updated where each thing happens and read at `/metrics` in the
//! Prometheus/OpenMetrics text format. One process-wide registry: the counters are atomics, so
//! updating one costs about as much as the event's log line would, and per-packet figures are
//! added once per call (from the stream's own counters), not per packet.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A reason label (`reason="busy"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

/// An outcome label (`outcome="ok"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// A trunk label (`trunk="carrier"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabel {
    pub trunk: String,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    pub calls_active: Gauge,
    pub call_attempts: Counter,
    pub calls_answered: Counter,
    /// Calls refused or failed before or at the answer, by reason.
    pub call_failures: Family<Reason, Counter>,
    /// INVITE received to 200 OK sent, in seconds.
    pub call_setup_seconds: Histogram,
    /// Calls we placed (second legs, outgoing calls), by `DialCallStatus` (`completed`,
    /// `busy`, `no-answer`, `failed`, `canceled`, `refused`).
    pub dials: Family<Outcome, Counter>,
    /// Calls bridged to a second leg now.
    pub bridges_active: Gauge,
    pub rtp_packets_sent: Counter,
    pub rtp_packets_received: Counter,
    /// Inbound packets missing by sequence number.
    pub rtp_packets_lost: Counter,
    /// Inbound interarrival jitter of each finished call, in milliseconds.
    pub rtp_jitter_ms: Histogram,
    /// Executions started, and ended by reason.
    pub executions: Family<Outcome, Counter>,
    /// Steps taken, `ok` or `error`.
    pub steps: Family<Outcome, Counter>,
    /// Outbound messages a provider refused or could not take, by provider.
    pub provider_errors: Family<Reason, Counter>,
    /// Inbound message webhook requests by result (`delivered`, `repeat`, `bad_signature`…).
    pub webhook_requests: Family<Outcome, Counter>,
    /// Event-stream batches given up.
    pub event_batches_dropped: Counter,
    /// Sources banned by the SIP defence, and datagrams dropped from banned sources.
    pub sip_bans: Counter,
    /// Digest credentials refused (wrong password, unknown user, replay).
    pub sip_auth_failures: Counter,
    /// 1 while our registration with the trunk holds, else 0.
    pub trunk_registered: Family<TrunkLabel, Gauge>,
    /// 1 while the trunk answers OPTIONS keep-alives, 0 after it stopped.
    pub trunk_reachable: Family<TrunkLabel, Gauge>,
    /// One group commit of execution progress, in seconds.
    pub store_write_seconds: Histogram,
    pub panics_contained: Counter,
    /// SRTP/SRTCP packets refused: failed authentication, replays, too short.
    pub srtp_refused: Counter,
}

fn register<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("switchboard");
        let seconds = || Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let jitter = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        Metrics {
            calls_active: register(
                &mut r,
                "calls_active",
                "Calls in progress",
                Gauge::default(),
            ),
            call_attempts: register(
                &mut r,
                "call_attempts",
                "INVITEs that could start a call",
                Counter::default(),
            ),
            calls_answered: register(
                &mut r,
                "calls_answered",
                "Calls answered (200 OK sent)",
                Counter::default(),
            ),
            call_failures: register(
                &mut r,
                "call_failures",
                "Calls refused or failed, by reason",
                Family::default(),
            ),
            dials: register(
                &mut r,
                "dials",
                "Calls placed through trunks, by DialCallStatus",
                Family::default(),
            ),
            bridges_active: register(
                &mut r,
                "bridges_active",
                "Calls bridged to a second leg",
                Gauge::default(),
            ),
            sip_auth_failures: register(
                &mut r,
                "sip_auth_failures",
                "Digest credentials refused (wrong password, unknown user, replay)",
                Counter::default(),
            ),
            trunk_registered: register(
                &mut r,
                "trunk_registered",
                "1 while our registration with the trunk holds",
                Family::default(),
            ),
            trunk_reachable: register(
                &mut r,
                "trunk_reachable",
                "1 while the trunk answers OPTIONS keep-alives",
                Family::default(),
            ),
            call_setup_seconds: register(
                &mut r,
                "call_setup_seconds",
                "INVITE received to 200 OK sent",
                seconds(),
            ),
            rtp_packets_sent: register(
                &mut r,
                "rtp_packets_sent",
                "RTP packets sent",
                Counter::default(),
            ),
            rtp_packets_received: register(
                &mut r,
                "rtp_packets_received",
                "RTP packets received",
                Counter::default(),
            ),
            rtp_packets_lost: register(
                &mut r,
                "rtp_packets_lost",
                "Inbound RTP packets missing by sequence number",
                Counter::default(),
            ),
            rtp_jitter_ms: register(
                &mut r,
                "rtp_jitter_ms",
                "Inbound interarrival jitter of finished calls (ms)",
                jitter,
            ),
            executions: register(
                &mut r,
                "executions",
                "Executions started, and ended by reason",
                Family::default(),
            ),
            steps: register(
                &mut r,
                "steps",
                "Flow steps taken, by outcome",
                Family::default(),
            ),
            provider_errors: register(
                &mut r,
                "provider_errors",
                "Outbound messages a provider refused or could not take",
                Family::default(),
            ),
            webhook_requests: register(
                &mut r,
                "webhook_requests",
                "Inbound message webhook requests, by result",
                Family::default(),
            ),
            event_batches_dropped: register(
                &mut r,
                "event_batches_dropped",
                "Event-stream batches given up after retries",
                Counter::default(),
            ),
            sip_bans: register(
                &mut r,
                "sip_bans",
                "Sources banned by the SIP defence",
                Counter::default(),
            ),
            store_write_seconds: register(
                &mut r,
                "store_write_seconds",
                "One group commit of execution progress",
                seconds(),
            ),
            panics_contained: register(
                &mut r,
                "panics_contained",
                "Panics caught and contained (media streams)",
                Counter::default(),
            ),
            srtp_refused: register(
                &mut r,
                "srtp_refused",
                "SRTP and SRTCP packets refused (authentication, replay, length)",
                Counter::default(),
            ),
            registry: r,
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Count one labelled event.
pub fn count(family: &Family<Reason, Counter>, reason: &str) {
    family
        .get_or_create(&Reason {
            reason: reason.to_string(),
        })
        .inc();
}

/// Count one outcome.
pub fn outcome(family: &Family<Outcome, Counter>, outcome: &str) {
    family
        .get_or_create(&Outcome {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = get();
        m.call_attempts.inc();
        count(&m.call_failures, "busy");
        outcome(&m.steps, "ok");
        m.call_setup_seconds.observe(0.004);
        let text = m.encode();
        for name in [
            "switchboard_calls_active",
            "switchboard_call_attempts_total",
            "switchboard_call_failures_total{reason=\"busy\"}",
            "switchboard_steps_total{outcome=\"ok\"}",
            "switchboard_call_setup_seconds_bucket",
            "switchboard_store_write_seconds_count",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}

//! One non-INVITE client transaction (RFC 3261 §17.1.2): the request in flight, its
//! retransmissions on UDP (timer E: T1 doubling to T2) and its end after 64·T1 without a
//! final answer (timer F). Shared by our REGISTERs and OPTIONS keep-alives.

use std::time::{Duration, Instant};

use super::core::{T1, T2};
use super::message::Response;

/// Timer F.
pub const TIMEOUT: Duration = Duration::from_secs(32);

#[derive(Debug, Clone)]
pub struct ClientTx {
    branch: String,
    cseq: u32,
    data: Vec<u8>,
    interval: Duration,
    retransmit_at: Option<Instant>,
    give_up_at: Instant,
}

/// What a transaction's timer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxTimer {
    /// Send these bytes again.
    Resend(Vec<u8>),
    /// No final answer in time (a 408 of our own).
    TimedOut,
    Nothing,
}

impl ClientTx {
    /// A request just sent at `now` (`udp`: it is retransmitted until answered).
    pub fn new(now: Instant, branch: String, cseq: u32, data: Vec<u8>, udp: bool) -> ClientTx {
        ClientTx {
            branch,
            cseq,
            data,
            interval: T1,
            retransmit_at: udp.then(|| now + T1),
            give_up_at: now + TIMEOUT,
        }
    }

    pub fn next_timer(&self) -> Instant {
        match self.retransmit_at {
            Some(r) => r.min(self.give_up_at),
            None => self.give_up_at,
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> TxTimer {
        if now >= self.give_up_at {
            return TxTimer::TimedOut;
        }
        match self.retransmit_at {
            Some(at) if at <= now => {
                self.interval = (self.interval * 2).min(T2);
                self.retransmit_at = Some(now + self.interval);
                TxTimer::Resend(self.data.clone())
            }
            _ => TxTimer::Nothing,
        }
    }

    /// Whether `r` answers this request (same branch and CSeq).
    pub fn matches(&self, r: &Response) -> bool {
        r.branch.as_deref() == Some(self.branch.as_str()) && r.cseq == self.cseq
    }

    /// A provisional answer: the peer has it; retransmit at T2 from now on (§17.1.2.2).
    pub fn provisional(&mut self, now: Instant) {
        if self.retransmit_at.is_some() {
            self.interval = T2;
            self.retransmit_at = Some(now + T2);
        }
    }
}

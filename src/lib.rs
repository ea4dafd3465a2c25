//! Switchboard: a self-hosted telephony and IVR media gateway that runs Twilio Studio flows.
//!
//! Layers (see `docs/ARCHITECTURE.md`): `sip` (signalling) → `call` (a dialog plus its media)
//! → `flow` (the Studio engine, a pure state machine) ← `store` (persistence). `media` owns RTP,
//! codecs, pacing and prompts. The flow engine knows nothing of SIP or RTP.

#![warn(missing_docs)]

mod api;
mod call;
pub mod chat;
pub mod config;
pub mod dialer;
pub mod events;
pub mod flow;
pub mod media;
pub mod messaging;
mod metrics;
mod redact;
mod retention;
pub mod routing;
pub mod runner;
pub mod server;
pub mod sip;
mod speech;
pub mod store;
pub mod twiml;
pub mod web;

//! Media: RTP streams, codecs, pacing, DTMF and prompts (TTS and files).

pub mod amd;
pub(crate) mod bridge;
pub(crate) mod clip;
pub mod codec;
pub mod dtmf;
pub(crate) mod engine;
pub mod g722;
pub mod goertzel;
pub mod jitter;
pub(crate) mod player;
pub(crate) mod resample;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod ssml;
pub mod tones;
pub mod tts;
pub(crate) mod vad;

pub use clip::Clip;
pub(crate) use codec::Codec;
pub(crate) use engine::{MediaConfig, MediaEngine, MediaSession, StreamParams};

//! Media: RTP streams, codecs, pacing, DTMF and prompts (TTS and files).

pub mod clip;
pub mod codec;
pub mod dtmf;
pub mod engine;
pub mod g722;
pub mod goertzel;
pub mod jitter;
pub mod player;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod tones;
pub mod tts;
pub mod vad;

pub use clip::Clip;
pub use codec::Codec;
pub use engine::{MediaConfig, MediaEngine, MediaEvent, MediaSession, StreamParams};

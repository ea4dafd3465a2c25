//! Calls: the dispatcher that turns SIP events into calls, and each call's task, which runs
//! its flow execution and performs voice effects on its media session.

pub mod call_recording;
pub mod callbacks;
pub mod connect;
pub mod leg;
pub mod outbound;
pub mod outgoing;
pub mod prompts;
pub mod recordings;
pub mod registry;
pub mod session;
pub mod stereo;
pub mod voice;
mod voicemail_callbacks;

pub use registry::{CallSignal, Registry};
pub use session::{dispatch, CallServices};

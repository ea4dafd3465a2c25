//! TwiML for Studio's `add-twiml-redirect` widget: fetch a TwiML document, run its verbs on the
//! call, follow redirects and actions, and hand control back to the flow when the TwiML
//! redirects to the flow's return URL (`…/Flows/{FlowSid}?FlowEvent=return`).
//!
//! - [`parse`]: quick-xml event reader → [`parse::Verb`]s in document order (nested `<Gather>` prompts);
//!   unknown or unsupported verbs are errors naming the verb and its line and column.
//! - [`run_redirect`]: the interpreter, over any [`VoiceOps`] (the call's voice channel).
//! - `client`: requests like Twilio's voice webhook (form or query parameters,
//!   `X-Twilio-Signature`).

pub(crate) mod client;
mod interpret;
pub mod parse;

pub use interpret::{run_redirect, Limits, RedirectEnv, Transfer, VoiceOps};

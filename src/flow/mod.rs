//! Twilio Studio–compatible flow engine: a pure state machine over an
//! exported flow definition. It knows nothing of SIP, RTP or HTTP servers.
//!
//! ```text
//! let flow = Flow::from_json(text)?;                     // validate + compile Liquid once
//! let (mut exec, adv) = Engine::start(&flow, init, Trigger::IncomingCall { call }, now);
//! // persist adv.steps, perform adv.effect on the channel, then:
//! let adv = Engine::resume(&flow, &mut exec, Outcome::Digits { digits: "1".into() }, now);
//! // ... until adv.effect is Effect::End(reason)
//! ```
//!
//! The engine runs trigger, `split-based-on`, `set-variables` and the
//! widgets whose service does not exist here (they take their failure event
//! with `Step::error`) by itself, and stops at the first widget that needs
//! the channel, returning an [`Effect`] with all Liquid rendered. The driver
//! answers with an [`Outcome`]; `Outcome::Failed` takes the widget's failure
//! event. `now` is passed in (UTC unless the deployment configures an offset):
//! nothing here reads a clock or does I/O.

pub(crate) mod conditions;
pub(crate) mod context;
pub(crate) mod definition;
pub(crate) mod effect;
pub(crate) mod engine;
pub(crate) mod filters;
pub(crate) mod liquid_limits;
pub mod template;
pub mod validate;
pub(crate) mod widgets;

pub use definition::{Condition, Flags, FlowDefinition, State, Transition};
pub use effect::{
    Connect, DialResult, Effect, EndReason, Gather, GatherInput, HttpAuth, HttpBody, HttpRequest,
    Message, Outcome, OutgoingCall, Prompt, Record, RecordCall, Redirect, RunSubflow,
};
pub use engine::{
    Advance, Engine, Execution, ExecutionInit, ExecutionStatus, Flow, FlowError, Step, Trigger,
    ENDED, MAX_REPEATS, MAX_STEPS,
};
pub use liquid_limits::{
    MAX_CONDITION_OPERATORS, MAX_NESTING, MAX_RENDER_WORK, MAX_TEMPLATE_BYTES, MAX_VALUE_BYTES,
};
pub use template::{TemplateError, MAX_LOOP_ITERATIONS, MAX_RENDERED_BYTES};
pub use validate::{validate, ValidationError, ValidationErrors, MAX_WIDGETS};

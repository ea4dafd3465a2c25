//! The execution state machine. Pure: no I/O and no clock; callers pass `now`.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::context;
use super::definition::{FlowDefinition, State};
use super::effect::{Effect, EndReason, Outcome};
use super::template::{Scope, Templates};
use super::validate::{validate, ValidationError, ValidationErrors};
use super::widgets::{self, Action, Props, Resolution};

/// An execution ends after this many steps (SPEC §5).
pub const MAX_STEPS: u32 = 1000;
/// The same widget may run this many times in a row; one more ends the execution.
pub const MAX_REPEATS: u32 = 10;
/// `transitioned_to` of a step that ends the execution.
pub const ENDED: &str = "Ended";

/// Why a flow could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// The text is not JSON (the parser's message).
    #[error("flow definition is not JSON: {0}")]
    Json(String),
    /// The JSON is not a valid flow.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// A validated, compiled flow. Immutable; share it behind an `Arc`.
#[derive(Debug)]
pub struct Flow {
    definition: FlowDefinition,
    index: HashMap<String, usize>,
    templates: Templates,
    warnings: Vec<ValidationError>,
}

impl Flow {
    /// Parse, validate and compile a definition.
    pub fn from_json(text: &str) -> Result<Flow, FlowError> {
        let v: Value = serde_json::from_str(text).map_err(|e| FlowError::Json(e.to_string()))?;
        Flow::from_value(&v)
    }

    /// Validate and compile a definition already parsed as JSON.
    pub fn from_value(json: &Value) -> Result<Flow, FlowError> {
        let definition = validate(json)?;
        let (templates, warnings, limits) = compile_templates(&definition);
        if !limits.is_empty() {
            return Err(FlowError::Invalid(ValidationErrors(limits)));
        }
        let index = definition
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Ok(Flow {
            definition,
            index,
            templates,
            warnings,
        })
    }

    /// The definition as validated.
    pub fn definition(&self) -> &FlowDefinition {
        &self.definition
    }

    /// The widget called `name`.
    pub fn state(&self, name: &str) -> Option<&State> {
        self.index
            .get(name)
            .and_then(|&i| self.definition.states.get(i))
    }

    /// Liquid that does not compile (the widget fails when it runs). Studio
    /// imports such flows, so these do not make the flow invalid.
    pub fn warnings(&self) -> &[ValidationError] {
        &self.warnings
    }

    /// How many distinct Liquid templates the flow holds.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }
}

/// Compile every Liquid string once. Templates that do not compile become warnings;
/// templates over a limit (size, nesting) are errors that make the flow invalid.
fn compile_templates(
    def: &FlowDefinition,
) -> (Templates, Vec<ValidationError>, Vec<ValidationError>) {
    let mut t = Templates::default();
    let mut warnings = Vec::new();
    let mut limits = Vec::new();
    let mut add = |state: &str, path: String, src: &str| {
        if let Err(e) = t.add(src) {
            let fault = ValidationError {
                state: Some(state.to_owned()),
                path,
                message: e.to_string(),
            };
            if e.is_limit() {
                limits.push(fault);
            } else {
                warnings.push(fault);
            }
        }
    };
    for (i, s) in def.states.iter().enumerate() {
        for (k, v) in &s.properties {
            if k != "offset" {
                walk_strings(v, format!("$.states[{i}].properties.{k}"), &mut |p, src| {
                    add(&s.name, p, src)
                });
            }
        }
        for (j, tr) in s.transitions.iter().enumerate() {
            for (c, cond) in tr.conditions.iter().enumerate() {
                add(
                    &s.name,
                    format!("$.states[{i}].transitions[{j}].conditions[{c}].value"),
                    &cond.value,
                );
            }
        }
    }
    (t, warnings, limits)
}

fn walk_strings(v: &Value, path: String, f: &mut dyn FnMut(String, &str)) {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk_strings(x, format!("{path}[{i}]"), f);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                walk_strings(x, format!("{path}.{k}"), f);
            }
        }
        _ => {}
    }
}

/// What started an execution; its data becomes `trigger.call` / `.message` / ….
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// A call came in.
    IncomingCall {
        /// `trigger.call`: the call's parameters (`From`, `To`, `CallSid`, ...).
        call: Map<String, Value>,
    },
    /// A message came in.
    IncomingMessage {
        /// `trigger.message`: the message's parameters (`Body`, `From`, ...).
        message: Map<String, Value>,
    },
    /// A message came in for a flow wired only for Conversations.
    IncomingConversationMessage {
        /// `trigger.conversation`: the message's parameters.
        message: Map<String, Value>,
    },
    /// An execution was created through the REST API.
    IncomingRequest {
        /// `trigger.request`: the request's parameters.
        request: Map<String, Value>,
    },
    /// A parent flow's run-subflow started this execution.
    IncomingParent {
        /// `trigger.parent`: the parent's identity (`FlowSid`, `ExecutionSid`, ...).
        parent: Map<String, Value>,
    },
}

impl Trigger {
    /// The trigger widget's event for this trigger.
    pub fn event(&self) -> &'static str {
        match self {
            Trigger::IncomingCall { .. } => "incomingCall",
            Trigger::IncomingMessage { .. } => "incomingMessage",
            Trigger::IncomingConversationMessage { .. } => "incomingConversationMessage",
            Trigger::IncomingRequest { .. } => "incomingRequest",
            Trigger::IncomingParent { .. } => "incomingParent",
        }
    }

    fn into_context_parts(self) -> (&'static str, Map<String, Value>) {
        match self {
            Trigger::IncomingCall { call } => ("call", call),
            Trigger::IncomingMessage { message } => ("message", message),
            Trigger::IncomingConversationMessage { message } => ("conversation", message),
            Trigger::IncomingRequest { request } => ("request", request),
            Trigger::IncomingParent { parent } => ("parent", parent),
        }
    }
}

/// Identity and data of a new execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionInit {
    /// Execution SID (`FN…`).
    pub sid: String,
    /// Flow SID (`FW…`).
    pub flow_sid: String,
    /// Our own address (`flow.channel.address`).
    pub channel_address: String,
    /// The other party's address (`contact.channel.address`).
    pub contact_address: String,
    /// `flow.data` (REST `Parameters` or a parent's parameters).
    pub data: Value,
}

/// Whether an execution can still advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Running or waiting for an outcome.
    Active,
    /// Ended; see [`Execution::end_reason`].
    Ended,
}

/// One execution's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Execution SID (`FN…`).
    pub sid: String,
    /// Flow SID (`FW…`).
    pub flow_sid: String,
    /// The Studio context (`flow`, `trigger`, `widgets`, `contact`).
    pub context: Value,
    /// The widget waiting for an outcome (`None` once ended).
    pub current: Option<String>,
    /// Steps taken so far (bounded by [`MAX_STEPS`]).
    pub step_count: u32,
    /// Active or ended.
    pub status: ExecutionStatus,
    /// Why it ended, once it has.
    pub end_reason: Option<EndReason>,
    /// Last widget entered and how many times in a row (loop guard).
    pub last_widget: Option<String>,
    /// How many times in a row [`Execution::last_widget`] ran (bounded by [`MAX_REPEATS`]).
    pub repeat_count: u32,
}

/// One transition, as Studio's Steps API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The widget that finished.
    pub name: String,
    /// The widget the transition leaves (Studio reports the same name as `name`).
    pub transitioned_from: String,
    /// The next widget, or [`ENDED`].
    pub transitioned_to: String,
    /// The event the widget took.
    pub event: String,
    /// The execution context after the widget finished.
    pub context: Value,
    /// Why the widget failed, when it took a failure event inside the engine.
    pub error: Option<String>,
}

/// The result of starting or resuming: steps taken and the next effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advance {
    /// Steps taken, to be persisted before the effect runs.
    pub steps: Vec<Step>,
    /// What the channel must do next.
    pub effect: Effect,
}

/// The engine's entry points (stateless; all state is in [`Execution`]).
pub struct Engine;

impl Engine {
    /// Start an execution: fire the trigger's event and run until the first
    /// widget that needs the channel (or the end).
    pub fn start(
        flow: &Flow,
        init: ExecutionInit,
        trigger: Trigger,
        now: DateTime<FixedOffset>,
    ) -> (Execution, Advance) {
        let event = trigger.event();
        let (key, data) = trigger.into_context_parts();
        let ctx = context::initial(
            &init.flow_sid,
            &init.sid,
            &init.channel_address,
            &init.contact_address,
            init.data,
            key,
            data,
        );
        let mut exec = Execution {
            sid: init.sid,
            flow_sid: init.flow_sid,
            context: ctx,
            current: None,
            step_count: 0,
            status: ExecutionStatus::Active,
            end_reason: None,
            last_widget: None,
            repeat_count: 0,
        };
        let trigger_name = flow.definition.initial_state.clone();
        let mut steps = Vec::new();
        let advance = match flow.state(&trigger_name) {
            Some(state) => {
                let next = follow(&mut exec, state, &Resolution::event(event), &mut steps);
                run(flow, &mut exec, next, steps, now)
            }
            None => finish(
                &mut exec,
                steps,
                EndReason::Error {
                    widget: trigger_name,
                    message: "initial state is missing".into(),
                },
            ),
        };
        (exec, advance)
    }

    /// Feed the outcome of the pending effect and run on.
    pub fn resume(
        flow: &Flow,
        exec: &mut Execution,
        outcome: Outcome,
        now: DateTime<FixedOffset>,
    ) -> Advance {
        if exec.status == ExecutionStatus::Ended {
            return Advance {
                steps: Vec::new(),
                effect: Effect::End(EndReason::AlreadyEnded),
            };
        }
        let Some(name) = exec.current.clone() else {
            return finish(exec, Vec::new(), EndReason::AlreadyEnded);
        };
        let Some(state) = flow.state(&name) else {
            let reason = EndReason::Error {
                widget: name,
                message: "widget no longer exists in this flow".into(),
            };
            return finish(exec, Vec::new(), reason);
        };
        // The outbound half of send-and-wait: note it and keep waiting.
        if let (true, Outcome::MessageSent { fields }) =
            (state.kind == "send-and-wait-for-reply", &outcome)
        {
            let mut m = Map::new();
            m.insert("outbound".into(), Value::Object(fields.clone()));
            context::merge_widget(&mut exec.context, &name, m);
            let scope = Scope::new(&exec.context);
            let props = Props {
                state,
                templates: &flow.templates,
                scope: &scope,
            };
            let timeout_secs = props
                .u32_or("timeout", widgets::messaging::DEFAULT_REPLY_TIMEOUT_SECS)
                .unwrap_or(widgets::messaging::DEFAULT_REPLY_TIMEOUT_SECS);
            return Advance {
                steps: Vec::new(),
                effect: Effect::AwaitReply { timeout_secs },
            };
        }
        match widgets::resolve(&state.kind, outcome, &exec.context) {
            Ok(res) => {
                let mut steps = Vec::new();
                exec.current = None;
                let next = follow(exec, state, &res, &mut steps);
                if res.end_hangup {
                    return finish(exec, steps, EndReason::Hangup { widget: name });
                }
                run(flow, exec, next, steps, now)
            }
            Err(message) => {
                // The step log shows why the execution stopped here.
                exec.step_count = exec.step_count.saturating_add(1);
                let step = Step {
                    name: name.clone(),
                    transitioned_from: name.clone(),
                    transitioned_to: ENDED.into(),
                    event: "failed".into(),
                    context: exec.context.clone(),
                    error: Some(message.clone()),
                };
                finish(
                    exec,
                    vec![step],
                    EndReason::Error {
                        widget: name,
                        message,
                    },
                )
            }
        }
    }
}

/// Apply a widget's resolution, record its step, and return where to go.
/// `Err(reason)` when the execution ends here.
fn follow(
    exec: &mut Execution,
    state: &State,
    res: &Resolution,
    steps: &mut Vec<Step>,
) -> Result<String, EndReason> {
    if let Some(p) = &res.publish {
        context::set_widget(&mut exec.context, &state.name, p.clone());
    }
    if let Some(m) = &res.merge {
        context::merge_widget(&mut exec.context, &state.name, m.clone());
    }
    for (k, v) in &res.variables {
        context::set_variable(&mut exec.context, k, Value::String(v.clone()));
    }
    let transition = match res.transition {
        Some(i) => state.transitions.get(i),
        None => state.transitions.iter().find(|t| t.event == res.event),
    };
    let next = if res.end_hangup {
        None
    } else {
        transition.and_then(|t| t.target()).map(str::to_owned)
    };
    exec.step_count = exec.step_count.saturating_add(1);
    steps.push(Step {
        name: state.name.clone(),
        transitioned_from: state.name.clone(),
        transitioned_to: next.clone().unwrap_or_else(|| ENDED.into()),
        event: res.event.clone(),
        context: exec.context.clone(),
        error: res.error.clone(),
    });
    next.ok_or_else(|| EndReason::Completed {
        widget: state.name.clone(),
        event: res.event.clone(),
    })
}

fn finish(exec: &mut Execution, steps: Vec<Step>, reason: EndReason) -> Advance {
    exec.status = ExecutionStatus::Ended;
    exec.current = None;
    exec.end_reason = Some(reason.clone());
    Advance {
        steps,
        effect: Effect::End(reason),
    }
}

/// Run widgets from `next` until one needs the channel or the execution ends.
fn run(
    flow: &Flow,
    exec: &mut Execution,
    mut next: Result<String, EndReason>,
    mut steps: Vec<Step>,
    now: DateTime<FixedOffset>,
) -> Advance {
    loop {
        let name = match next {
            Ok(n) => n,
            Err(reason) => return finish(exec, steps, reason),
        };
        if exec.step_count >= MAX_STEPS {
            return finish(exec, steps, EndReason::StepLimit { limit: MAX_STEPS });
        }
        if exec.last_widget.as_deref() == Some(name.as_str()) {
            exec.repeat_count = exec.repeat_count.saturating_add(1);
        } else {
            exec.last_widget = Some(name.clone());
            exec.repeat_count = 1;
        }
        if exec.repeat_count > MAX_REPEATS {
            let reason = EndReason::LoopLimit {
                widget: name,
                limit: MAX_REPEATS,
            };
            return finish(exec, steps, reason);
        }
        let Some(state) = flow.state(&name) else {
            let reason = EndReason::Error {
                widget: name,
                message: "transition to a widget that does not exist".into(),
            };
            return finish(exec, steps, reason);
        };
        let scope = Scope::new(&exec.context);
        let props = Props {
            state,
            templates: &flow.templates,
            scope: &scope,
        };
        match widgets::enter(&props, &exec.context, now) {
            Ok(Action::Effect(effect)) => {
                exec.current = Some(name);
                return Advance { steps, effect };
            }
            Ok(Action::Done(res)) => next = follow(exec, state, &res, &mut steps),
            Err(message) => {
                // The step log shows why the execution stopped here, as in `resume`.
                exec.step_count = exec.step_count.saturating_add(1);
                steps.push(Step {
                    name: name.clone(),
                    transitioned_from: name.clone(),
                    transitioned_to: ENDED.into(),
                    event: "failed".into(),
                    context: exec.context.clone(),
                    error: Some(message.clone()),
                });
                let reason = EndReason::Error {
                    widget: name,
                    message,
                };
                return finish(exec, steps, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::effect::HttpBody;
    use serde_json::json;

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00+00:00").expect("time")
    }

    fn flow(states: Value) -> Flow {
        let def = json!({"description": "t", "states": states, "initial_state": "Trigger",
                         "flags": {"allow_concurrent_calls": false}});
        Flow::from_value(&def).unwrap_or_else(|e| panic!("{e}"))
    }

    fn trigger(event: &str, next: &str) -> Value {
        json!({"name": "Trigger", "type": "trigger", "properties": {},
               "transitions": [{"event": event, "next": next}]})
    }

    fn init() -> ExecutionInit {
        ExecutionInit {
            sid: "FN1".into(),
            flow_sid: "FW1".into(),
            channel_address: "+15550000".into(),
            contact_address: "+15551111".into(),
            data: json!({"lang": "en"}),
        }
    }

    fn call() -> Trigger {
        let mut call = Map::new();
        call.insert("CallSid".into(), json!("CA1"));
        call.insert("From".into(), json!("+15551111"));
        call.insert("To".into(), json!("+15550000"));
        Trigger::IncomingCall { call }
    }

    fn sms(body: &str) -> Trigger {
        let mut message = Map::new();
        message.insert("Body".into(), json!(body));
        message.insert("From".into(), json!("+15551111"));
        Trigger::IncomingMessage { message }
    }

    fn ended(adv: &Advance) -> &EndReason {
        match &adv.effect {
            Effect::End(r) => r,
            other => panic!("expected End, got {other:?}"),
        }
    }

    #[test]
    fn say_play_renders_and_completes() {
        let f = flow(json!([
            trigger("incomingCall", "hello"),
            {"name": "hello", "type": "say-play",
             "properties": {"say": "Hi {{trigger.call.From}} ({{flow.data.lang}})", "voice": "alice", "loop": "2"},
             "transitions": [{"event": "audioComplete"}]}
        ]));
        let (mut exec, adv) = Engine::start(&f, init(), call(), now());
        assert_eq!(adv.steps.len(), 1);
        assert_eq!(adv.steps[0].name, "Trigger");
        assert_eq!(adv.steps[0].transitioned_to, "hello");
        assert_eq!(adv.steps[0].event, "incomingCall");
        let Effect::SayPlay(p) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(p.say.as_deref(), Some("Hi +15551111 (en)"));
        assert_eq!(p.voice.as_deref(), Some("alice"));
        assert_eq!(p.loop_count, 2);
        assert_eq!(exec.current.as_deref(), Some("hello"));
        let adv = Engine::resume(&f, &mut exec, Outcome::AudioComplete, now());
        assert_eq!(adv.steps[0].transitioned_to, ENDED);
        assert!(
            matches!(ended(&adv), EndReason::Completed { widget, event } if widget == "hello" && event == "audioComplete")
        );
        assert_eq!(exec.status, ExecutionStatus::Ended);
        assert_eq!(exec.step_count, 2);
        // Resuming an ended execution changes nothing.
        let again = Engine::resume(&f, &mut exec, Outcome::AudioComplete, now());
        assert_eq!(again.effect, Effect::End(EndReason::AlreadyEnded));
        assert!(again.steps.is_empty());
    }

    fn gather_flow() -> Flow {
        flow(json!([
            trigger("incomingCall", "menu"),
            {"name": "menu", "type": "gather-input-on-call",
             "properties": {"say": "Press 1", "timeout": 7, "number_of_digits": "1", "stop_gather": true},
             "transitions": [{"event": "keypress", "next": "route"},
                             {"event": "speech", "next": "route"},
                             {"event": "timeout", "next": "bye"}]},
            {"name": "route", "type": "split-based-on",
             "properties": {"input": "{{widgets.menu.Digits}}{{widgets.menu.SpeechResult}}"},
             "transitions": [
                {"event": "noMatch", "next": "bye"},
                {"event": "match", "next": "sales",
                 "conditions": [{"friendly_name": "1", "arguments": ["{{widgets.menu.Digits}}"], "type": "equal_to", "value": "1"}]},
                {"event": "match", "next": "support",
                 "conditions": [{"friendly_name": "2", "arguments": [], "type": "matches_any_of", "value": "2, support"}]}]},
            {"name": "sales", "type": "say-play", "properties": {"say": "Sales {{widgets.menu.CallSid}}"},
             "transitions": [{"event": "audioComplete"}]},
            {"name": "support", "type": "say-play", "properties": {"say": "Support"},
             "transitions": [{"event": "audioComplete"}]},
            {"name": "bye", "type": "say-play", "properties": {"say": "Bye"},
             "transitions": [{"event": "audioComplete"}]}
        ]))
    }

    fn say_text(adv: &Advance) -> String {
        match &adv.effect {
            Effect::SayPlay(p) => p.say.clone().unwrap_or_default(),
            other => panic!("expected SayPlay, got {other:?}"),
        }
    }

    #[test]
    fn gather_keypress_then_split() {
        let f = gather_flow();
        let (mut exec, adv) = Engine::start(&f, init(), call(), now());
        let Effect::Gather(g) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(g.timeout_secs, 7);
        assert_eq!(g.number_of_digits, Some(1));
        assert_eq!(g.finish_on_key, "#");
        assert_eq!(g.prompt.say.as_deref(), Some("Press 1"));
        let adv = Engine::resume(&f, &mut exec, Outcome::Digits { digits: "1".into() }, now());
        let events: Vec<_> = adv
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.event.as_str(),
                    s.transitioned_to.as_str(),
                )
            })
            .collect();
        assert_eq!(
            events,
            vec![("menu", "keypress", "route"), ("route", "match", "sales")]
        );
        assert_eq!(say_text(&adv), "Sales CA1");
        assert_eq!(
            exec.context.pointer("/widgets/menu/Digits"),
            Some(&json!("1"))
        );
        assert_eq!(
            exec.context.pointer("/widgets/menu/From"),
            Some(&json!("+15551111"))
        );
    }

    #[test]
    fn gather_speech_takes_second_condition_set() {
        let f = gather_flow();
        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let adv = Engine::resume(
            &f,
            &mut exec,
            Outcome::Speech {
                result: "Support".into(),
                confidence: Some(0.9),
            },
            now(),
        );
        assert_eq!(adv.steps[0].event, "speech");
        assert_eq!(adv.steps[1].transitioned_to, "support");
        assert_eq!(
            exec.context.pointer("/widgets/menu/Confidence"),
            Some(&json!("0.9"))
        );
    }

    #[test]
    fn gather_timeout_and_no_match() {
        let f = gather_flow();
        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let adv = Engine::resume(&f, &mut exec, Outcome::Timeout, now());
        assert_eq!(adv.steps[0].event, "timeout");
        assert_eq!(say_text(&adv), "Bye");

        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let adv = Engine::resume(&f, &mut exec, Outcome::Digits { digits: "9".into() }, now());
        assert_eq!(adv.steps[1].event, "noMatch");
        assert_eq!(say_text(&adv), "Bye");
    }

    #[test]
    fn hangup_ends_with_running_step() {
        let f = gather_flow();
        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let adv = Engine::resume(&f, &mut exec, Outcome::Hangup, now());
        assert_eq!(adv.steps.len(), 1);
        assert_eq!(adv.steps[0].name, "menu");
        assert_eq!(adv.steps[0].event, "hangup");
        assert_eq!(adv.steps[0].transitioned_to, ENDED);
        assert_eq!(
            ended(&adv),
            &EndReason::Hangup {
                widget: "menu".into()
            }
        );
        assert_eq!(exec.status, ExecutionStatus::Ended);
    }

    #[test]
    fn hangup_event_is_followed_when_the_widget_has_one() {
        let f = flow(json!([
            trigger("incomingCall", "vm"),
            {"name": "vm", "type": "record-voicemail", "properties": {"max_length": 99999},
             "transitions": [{"event": "recordingComplete"}, {"event": "noAudio"},
                             {"event": "hangup", "next": "notify"}]},
            {"name": "notify", "type": "send-message", "properties": {"body": "Missed call"},
             "transitions": [{"event": "sent"}, {"event": "failed"}]}
        ]));
        let (mut exec, adv) = Engine::start(&f, init(), call(), now());
        let Effect::Record(r) = &adv.effect else {
            panic!()
        };
        assert_eq!(r.max_length_secs, 14_400);
        assert!(r.play_beep);
        let adv = Engine::resume(&f, &mut exec, Outcome::Hangup, now());
        assert_eq!(adv.steps[0].transitioned_to, "notify");
        let Effect::SendMessage(m) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!((m.from.as_str(), m.to.as_str()), ("+15550000", "+15551111"));
    }

    #[test]
    fn set_variables_then_render() {
        let f = flow(json!([
            trigger("incomingMessage", "vars"),
            {"name": "vars", "type": "set-variables",
             "properties": {"variables": [{"key": "greeting", "value": "Hi {{trigger.message.Body | upcase}}"},
                                           {"key": "n", "value": 5}]},
             "transitions": [{"event": "next", "next": "reply"}]},
            {"name": "reply", "type": "send-message",
             "properties": {"body": "{{flow.variables.greeting}} x{{flow.variables.n}}", "to": "{{contact.channel.address}}"},
             "transitions": [{"event": "sent"}, {"event": "failed"}]}
        ]));
        let (mut exec, adv) = Engine::start(&f, init(), sms("yo"), now());
        assert_eq!(
            exec.context.pointer("/flow/variables/greeting"),
            Some(&json!("Hi YO"))
        );
        let Effect::SendMessage(m) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(m.body, "Hi YO x5");
        let mut fields = Map::new();
        fields.insert("Sid".into(), json!("SM1"));
        let adv = Engine::resume(&f, &mut exec, Outcome::MessageSent { fields }, now());
        assert_eq!(adv.steps[0].event, "sent");
        assert_eq!(
            exec.context.pointer("/widgets/reply/message/Sid"),
            Some(&json!("SM1"))
        );
    }

    fn http_flow() -> Flow {
        flow(json!([
            trigger("incomingRequest", "lookup"),
            {"name": "lookup", "type": "make-http-request",
             "properties": {"method": "post", "url": "https://api.example/{{flow.data.lang}}",
                            "content_type": "application/json;charset=utf-8",
                            "body": "{\"q\": \"{{flow.data.lang}}\"}"},
             "transitions": [{"event": "success", "next": "ok"}, {"event": "failed", "next": "bad"}]},
            {"name": "ok", "type": "set-variables",
             "properties": {"variables": [{"key": "who", "value": "{{widgets.lookup.parsed.name}}"}]},
             "transitions": [{"event": "next"}]},
            {"name": "bad", "type": "set-variables",
             "properties": {"variables": [{"key": "code", "value": "{{widgets.lookup.status_code}}"}]},
             "transitions": [{"event": "next"}]}
        ]))
    }

    #[test]
    fn http_success_publishes_parsed_body() {
        let f = http_flow();
        let (mut exec, adv) = Engine::start(
            &f,
            init(),
            Trigger::IncomingRequest {
                request: Map::new(),
            },
            now(),
        );
        let Effect::HttpRequest(r) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "https://api.example/en");
        assert_eq!(r.body, HttpBody::Text("{\"q\": \"en\"}".into()));
        assert_eq!(r.timeout_secs, 10);
        let adv = Engine::resume(
            &f,
            &mut exec,
            Outcome::Http {
                status: 200,
                content_type: Some("application/json".into()),
                body: "{\"name\":\"Ada\"}".into(),
            },
            now(),
        );
        assert_eq!(adv.steps[0].event, "success");
        assert_eq!(
            exec.context.pointer("/flow/variables/who"),
            Some(&json!("Ada"))
        );
        assert_eq!(
            exec.context.pointer("/widgets/lookup/status_code"),
            Some(&json!(200))
        );
        assert!(matches!(ended(&adv), EndReason::Completed { widget, .. } if widget == "ok"));
    }

    #[test]
    fn http_failure_status_and_driver_failure() {
        let f = http_flow();
        let req = || Trigger::IncomingRequest {
            request: Map::new(),
        };
        let (mut exec, _) = Engine::start(&f, init(), req(), now());
        let adv = Engine::resume(
            &f,
            &mut exec,
            Outcome::Http {
                status: 503,
                content_type: None,
                body: "down".into(),
            },
            now(),
        );
        assert_eq!(adv.steps[0].event, "failed");
        assert_eq!(adv.steps[0].error.as_deref(), Some("HTTP status 503"));
        assert_eq!(
            exec.context.pointer("/flow/variables/code"),
            Some(&json!("503"))
        );

        let (mut exec, _) = Engine::start(&f, init(), req(), now());
        let adv = Engine::resume(
            &f,
            &mut exec,
            Outcome::Failed {
                error: "dns".into(),
            },
            now(),
        );
        assert_eq!(adv.steps[0].event, "failed");
        assert_eq!(adv.steps[0].error.as_deref(), Some("dns"));
    }

    #[test]
    fn send_and_wait_reply() {
        let f = flow(json!([
            trigger("incomingMessage", "ask"),
            {"name": "ask", "type": "send-and-wait-for-reply",
             "properties": {"body": "Your name?", "timeout": "60"},
             "transitions": [{"event": "incomingMessage", "next": "thanks"},
                             {"event": "timeout"}, {"event": "deliveryFailure"}]},
            {"name": "thanks", "type": "send-message", "properties": {"body": "Thanks {{widgets.ask.inbound.Body}}"},
             "transitions": [{"event": "sent"}, {"event": "failed"}]}
        ]));
        let (mut exec, adv) = Engine::start(&f, init(), sms("hi"), now());
        let Effect::SendAndWait {
            message,
            timeout_secs,
        } = &adv.effect
        else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(
            (message.body.as_str(), message.to.as_str(), *timeout_secs),
            ("Your name?", "+15551111", 60)
        );
        let mut out = Map::new();
        out.insert("Sid".into(), json!("SM9"));
        let adv = Engine::resume(&f, &mut exec, Outcome::MessageSent { fields: out }, now());
        assert!(adv.steps.is_empty());
        assert_eq!(adv.effect, Effect::AwaitReply { timeout_secs: 60 });
        let mut reply = Map::new();
        reply.insert("Body".into(), json!("Grace"));
        let adv = Engine::resume(&f, &mut exec, Outcome::Reply { fields: reply }, now());
        assert_eq!(adv.steps[0].event, "incomingMessage");
        let Effect::SendMessage(m) = &adv.effect else {
            panic!("{:?}", adv.effect)
        };
        assert_eq!(m.body, "Thanks Grace");
        assert_eq!(
            exec.context.pointer("/widgets/ask/outbound/Sid"),
            Some(&json!("SM9"))
        );

        let (mut exec, _) = Engine::start(&f, init(), sms("hi"), now());
        let adv = Engine::resume(&f, &mut exec, Outcome::Timeout, now());
        assert_eq!(adv.steps[0].event, "timeout");
        assert_eq!(exec.status, ExecutionStatus::Ended);
    }

    #[test]
    fn unavailable_services_take_failure_event_with_step_error() {
        let f = flow(json!([
            trigger("incomingCall", "fn"),
            {"name": "fn", "type": "run-function",
             "properties": {"service_sid": "ZS1", "function_sid": "ZH1", "url": ""},
             "transitions": [{"event": "success"}, {"event": "fail", "next": "flex"}]},
            {"name": "flex", "type": "send-to-flex", "properties": {"workflow": "WW1"},
             "transitions": [{"event": "callComplete"}, {"event": "failedToEnqueue", "next": "sorry"}, {"event": "callFailure"}]},
            {"name": "sorry", "type": "say-play", "properties": {"say": "Sorry"},
             "transitions": [{"event": "audioComplete"}]}
        ]));
        let (_, adv) = Engine::start(&f, init(), call(), now());
        assert_eq!(adv.steps.len(), 3);
        assert_eq!(adv.steps[1].event, "fail");
        assert!(adv.steps[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ZH1")));
        assert_eq!(adv.steps[2].event, "failedToEnqueue");
        assert!(adv.steps[2]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Flex")));
        assert_eq!(say_text(&adv), "Sorry");
    }

    #[test]
    fn step_limit_stops_execution() {
        let f = flow(json!([
            trigger("incomingRequest", "a"),
            {"name": "a", "type": "set-variables", "properties": {}, "transitions": [{"event": "next", "next": "b"}]},
            {"name": "b", "type": "set-variables", "properties": {}, "transitions": [{"event": "next", "next": "a"}]}
        ]));
        let (exec, adv) = Engine::start(
            &f,
            init(),
            Trigger::IncomingRequest {
                request: Map::new(),
            },
            now(),
        );
        assert_eq!(ended(&adv), &EndReason::StepLimit { limit: MAX_STEPS });
        assert_eq!(exec.step_count, MAX_STEPS);
        assert_eq!(adv.steps.len(), MAX_STEPS as usize);
        assert!(ended(&adv).to_string().contains("1000 steps"));
    }

    #[test]
    fn same_widget_in_a_row_is_stopped() {
        let f = flow(json!([
            trigger("incomingCall", "menu"),
            {"name": "menu", "type": "gather-input-on-call", "properties": {"say": "again"},
             "transitions": [{"event": "keypress"}, {"event": "speech"}, {"event": "timeout", "next": "menu"}]}
        ]));
        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let mut last = None;
        for _ in 0..MAX_REPEATS {
            last = Some(Engine::resume(&f, &mut exec, Outcome::Timeout, now()));
        }
        let adv = last.expect("ran");
        assert_eq!(
            ended(&adv),
            &EndReason::LoopLimit {
                widget: "menu".into(),
                limit: MAX_REPEATS
            }
        );
        // Ten runs of the widget happened; the eleventh entry was refused.
        assert_eq!(exec.step_count, 1 + MAX_REPEATS);
    }

    #[test]
    fn trigger_without_transition_ends_at_once() {
        let f = flow(json!([trigger("incomingMessage", "")]));
        let (exec, adv) = Engine::start(&f, init(), call(), now());
        assert_eq!(exec.status, ExecutionStatus::Ended);
        assert_eq!(adv.steps[0].event, "incomingCall");
        assert_eq!(adv.steps[0].transitioned_to, ENDED);
    }

    #[test]
    fn unexpected_outcome_without_failure_event_ends_with_error() {
        let f = gather_flow();
        let (mut exec, _) = Engine::start(&f, init(), call(), now());
        let adv = Engine::resume(&f, &mut exec, Outcome::NoAudio, now());
        assert!(
            matches!(ended(&adv), EndReason::Error { widget, message } if widget == "menu" && message.contains("no_audio"))
        );
    }

    #[test]
    fn bad_liquid_is_a_warning_and_fails_the_widget_at_run_time() {
        let def = json!({"states": [trigger("incomingCall", "s"),
            {"name": "s", "type": "say-play", "properties": {"say": "{% if %}"}, "transitions": []},
            {"name": "h", "type": "make-http-request", "properties": {"method": "GET", "url": "{{x"},
             "transitions": [{"event": "failed", "next": "s"}]}],
            "initial_state": "Trigger"});
        let f = Flow::from_value(&def).expect("imports");
        assert_eq!(f.warnings().len(), 2);
        assert_eq!(f.warnings()[0].state.as_deref(), Some("s"));
        assert_eq!(f.warnings()[0].path, "$.states[1].properties.say");
        // say-play has no failure event: the execution ends naming the property.
        let (_, adv) = Engine::start(&f, init(), call(), now());
        assert!(matches!(ended(&adv), EndReason::Error { widget, message }
            if widget == "s" && message.contains("property `say`")));
    }

    #[test]
    fn bad_liquid_takes_the_failure_event_when_there_is_one() {
        let def = json!({"states": [trigger("incomingCall", "h"),
            {"name": "h", "type": "make-http-request", "properties": {"method": "GET", "url": "{{x"},
             "transitions": [{"event": "failed"}]}],
            "initial_state": "Trigger"});
        let f = Flow::from_value(&def).expect("imports");
        let (_, adv) = Engine::start(&f, init(), call(), now());
        assert_eq!(adv.steps[1].event, "failed");
        assert!(adv.steps[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("property `url`")));
    }

    #[test]
    fn liquid_over_a_limit_makes_the_flow_invalid_with_state_and_path() {
        // The shape of issue #10: ~1,200 nested `if`s (29 KB) overflowed a worker's stack.
        let hostile = format!(
            "{}boom{}",
            "{% if true %}".repeat(1200),
            "{% endif %}".repeat(1200)
        );
        let def = json!({"states": [trigger("incomingCall", "s"),
            {"name": "s", "type": "say-play", "properties": {"say": "ok"}, "transitions": []},
            {"name": "deep", "type": "set-variables",
             "properties": {"variables": [{"key": "k", "value": hostile}]},
             "transitions": [{"event": "next"}]}],
            "initial_state": "Trigger"});
        let Err(FlowError::Invalid(errs)) = Flow::from_value(&def) else {
            panic!("a hostile template must be rejected");
        };
        assert_eq!(errs.0.len(), 1, "{errs}");
        let e = &errs.0[0];
        assert_eq!(e.state.as_deref(), Some("deep"));
        assert_eq!(e.path, "$.states[2].properties.variables[0].value");
        assert!(e.message.contains("limit is 16384 bytes"), "{e}");
        // Under the size limit, the depth is what trips.
        let deep = format!(
            "{}x{}",
            "{% if true %}".repeat(100),
            "{% endif %}".repeat(100)
        );
        let def = json!({"states": [trigger("incomingCall", "s"),
            {"name": "s", "type": "say-play", "properties": {"say": deep}, "transitions": []}],
            "initial_state": "Trigger"});
        let Err(FlowError::Invalid(errs)) = Flow::from_value(&def) else {
            panic!("too deep");
        };
        assert!(
            errs.to_string().contains(
                "state \"s\" at $.states[1].properties.say: Liquid blocks nest more than 32 deep"
            ),
            "{errs}"
        );
    }

    #[test]
    fn flow_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Flow>();
    }

    #[test]
    fn execution_round_trips_through_json() {
        let f = gather_flow();
        let (exec, _) = Engine::start(&f, init(), call(), now());
        let text = serde_json::to_string(&exec).expect("ser");
        let back: Execution = serde_json::from_str(&text).expect("de");
        assert_eq!(back, exec);
    }
}

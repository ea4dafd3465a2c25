//! Structural validation of a flow definition, reporting every fault with
//! the state and JSON path it concerns (paths are written `$.states[3].name`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::conditions::Operator;
use super::definition::FlowDefinition;
use super::widgets;

/// Studio's limit on widgets per flow.
pub const MAX_WIDGETS: usize = 2000;

/// One validation fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// The state at fault, when the fault is inside a state.
    pub state: Option<String>,
    /// JSON path of the offending value, e.g. `$.states[3].transitions[0].next`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            Some(s) => write!(f, "state \"{s}\" at {}: {}", self.path, self.message),
            None => write!(f, "at {}: {}", self.path, self.message),
        }
    }
}

/// All faults found in one definition (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid flow definition ({} errors)", self.0.len())?;
        for e in &self.0 {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The faults, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }
}

#[derive(Default)]
struct Collector(Vec<ValidationError>);

impl Collector {
    fn push(&mut self, state: Option<&str>, path: String, message: impl Into<String>) {
        self.0.push(ValidationError {
            state: state.map(str::to_owned),
            path,
            message: message.into(),
        });
    }
}

/// Validate a definition given as JSON and return its typed model.
///
/// Every fault is collected; the model is only returned when there are none.
pub fn validate(json: &Value) -> Result<FlowDefinition, ValidationErrors> {
    let mut errs = Collector::default();
    check_raw(json, &mut errs);
    if !errs.0.is_empty() {
        return Err(ValidationErrors(errs.0));
    }
    let def: FlowDefinition = match serde_json::from_value(json.clone()) {
        Ok(d) => d,
        Err(e) => {
            errs.push(None, "$".into(), format!("malformed definition: {e}"));
            return Err(ValidationErrors(errs.0));
        }
    };
    check_reply_widgets_on_calls(&def, &mut errs);
    if errs.0.is_empty() {
        Ok(def)
    } else {
        Err(ValidationErrors(errs.0))
    }
}

/// Whether a state name follows Studio's rule (letter, then letters, digits, `_`, `-`).
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks on the raw JSON, so that type errors in one state do not hide
/// faults in the others.
fn check_raw(json: &Value, errs: &mut Collector) {
    let Some(root) = json.as_object() else {
        errs.push(None, "$".into(), "flow definition must be a JSON object");
        return;
    };
    let Some(states) = root.get("states").and_then(Value::as_array) else {
        let msg = if root.contains_key("states") {
            "`states` must be an array"
        } else {
            "missing `states`"
        };
        errs.push(None, "$.states".into(), msg);
        return;
    };
    if states.len() > MAX_WIDGETS {
        errs.push(
            None,
            "$.states".into(),
            format!(
                "flow has {} widgets; the limit is {MAX_WIDGETS}",
                states.len()
            ),
        );
    }

    // Names first, so transitions can be checked against all of them.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, st) in states.iter().enumerate() {
        let Some(name) = st.get("name").and_then(Value::as_str) else {
            errs.push(
                None,
                format!("$.states[{i}].name"),
                "state has no string `name`",
            );
            continue;
        };
        if !is_valid_name(name) {
            errs.push(
                Some(name),
                format!("$.states[{i}].name"),
                "state name must start with a letter and contain only letters, digits, `_` or `-`",
            );
        }
        if let Some(first) = names.insert(name, i) {
            errs.push(
                Some(name),
                format!("$.states[{i}].name"),
                format!("duplicate state name (also states[{first}])"),
            );
            names.insert(name, first);
        }
    }

    match root.get("initial_state") {
        Some(Value::String(init)) => match names.get(init.as_str()) {
            None => errs.push(
                None,
                "$.initial_state".into(),
                format!("initial_state \"{init}\" is not a state of this flow"),
            ),
            Some(&i) => {
                let kind = states[i].get("type").and_then(Value::as_str);
                if kind.is_some_and(|k| widgets::spec(k).is_some()) && kind != Some("trigger") {
                    errs.push(
                        Some(init),
                        format!("$.states[{i}].type"),
                        "the initial state must be a `trigger` widget",
                    );
                }
            }
        },
        None => {
            let v1 = states.iter().any(|s| s.get("sid").is_some());
            let msg = if v1 {
                "missing `initial_state`: this is the retired Studio v1 (2018) export format, which cannot be imported; re-export the flow from current Studio"
            } else {
                "missing `initial_state`"
            };
            errs.push(None, "$.initial_state".into(), msg);
        }
        Some(_) => errs.push(
            None,
            "$.initial_state".into(),
            "`initial_state` must be a string",
        ),
    }

    for (i, st) in states.iter().enumerate() {
        check_state(i, st, &names, errs);
    }
}

fn check_state(i: usize, st: &Value, names: &HashMap<&str, usize>, errs: &mut Collector) {
    let base = format!("$.states[{i}]");
    let Some(obj) = st.as_object() else {
        errs.push(None, base, "state must be an object");
        return;
    };
    let name = obj.get("name").and_then(Value::as_str);
    let spec = match obj.get("type") {
        Some(Value::String(kind)) => {
            let spec = widgets::spec(kind);
            if spec.is_none() {
                errs.push(
                    name,
                    format!("{base}.type"),
                    format!("unknown widget type \"{kind}\""),
                );
            }
            spec
        }
        _ => {
            errs.push(name, format!("{base}.type"), "state has no string `type`");
            None
        }
    };

    let props = match obj.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => {
            errs.push(
                name,
                format!("{base}.properties"),
                "`properties` must be an object",
            );
            None
        }
    };
    if let Some(spec) = spec {
        for group in spec.required {
            let present = group
                .iter()
                .any(|k| props.and_then(|p| p.get(*k)).is_some_and(|v| !v.is_null()));
            if !present {
                errs.push(
                    name,
                    format!("{base}.properties.{}", group[0]),
                    format!(
                        "{} requires property {}",
                        spec.type_name,
                        group
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                );
            }
        }
    }

    let transitions = match obj.get("transitions") {
        None | Some(Value::Null) => return,
        Some(Value::Array(t)) => t,
        Some(_) => {
            errs.push(
                name,
                format!("{base}.transitions"),
                "`transitions` must be an array",
            );
            return;
        }
    };
    let mut seen_events = HashSet::new();
    for (j, t) in transitions.iter().enumerate() {
        let tpath = format!("{base}.transitions[{j}]");
        let Some(event) = t.get("event").and_then(Value::as_str) else {
            errs.push(
                name,
                format!("{tpath}.event"),
                "transition has no string `event`",
            );
            continue;
        };
        if let Some(spec) = spec {
            if !spec.events.contains(&event) {
                errs.push(
                    name,
                    format!("{tpath}.event"),
                    format!(
                        "event \"{event}\" is not an event of {} (expected one of: {})",
                        spec.type_name,
                        spec.events.join(", ")
                    ),
                );
            } else if event != "match" && !seen_events.insert(event) {
                errs.push(
                    name,
                    format!("{tpath}.event"),
                    format!("event \"{event}\" has more than one transition"),
                );
            }
        }
        match t.get("next") {
            None | Some(Value::Null) => {}
            Some(Value::String(next)) => {
                if !next.is_empty() && !names.contains_key(next.as_str()) {
                    errs.push(
                        name,
                        format!("{tpath}.next"),
                        format!("event \"{event}\" goes to missing state \"{next}\""),
                    );
                }
            }
            Some(_) => errs.push(name, format!("{tpath}.next"), "`next` must be a string"),
        }
        check_conditions(name, &tpath, t, errs);
    }
}

fn check_conditions(name: Option<&str>, tpath: &str, t: &Value, errs: &mut Collector) {
    let conds = match t.get("conditions") {
        None | Some(Value::Null) => return,
        Some(Value::Array(c)) => c,
        Some(_) => {
            errs.push(
                name,
                format!("{tpath}.conditions"),
                "`conditions` must be an array",
            );
            return;
        }
    };
    for (k, c) in conds.iter().enumerate() {
        let cpath = format!("{tpath}.conditions[{k}]");
        match c.get("type").and_then(Value::as_str) {
            Some(op) if Operator::parse(op).is_some() => {}
            Some(op) => errs.push(
                name,
                format!("{cpath}.type"),
                format!("unknown split operator \"{op}\""),
            ),
            None => errs.push(
                name,
                format!("{cpath}.type"),
                "condition has no string `type`",
            ),
        }
    }
}

/// Studio refuses `send-and-wait-for-reply` downstream of `incomingCall` while
/// concurrent calls are allowed: the reply could not be matched to one call.
fn check_reply_widgets_on_calls(def: &FlowDefinition, errs: &mut Collector) {
    if !def.flags.allow_concurrent_calls {
        return;
    }
    let index: HashMap<&str, usize> = def
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let Some(&init) = index.get(def.initial_state.as_str()) else {
        return;
    };
    let mut stack: Vec<usize> = def.states[init]
        .transitions
        .iter()
        .filter(|t| t.event == "incomingCall")
        .filter_map(|t| t.target().and_then(|n| index.get(n).copied()))
        .collect();
    let mut seen = HashSet::new();
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        let st = &def.states[i];
        if st.kind == "send-and-wait-for-reply" {
            errs.push(
                Some(&st.name),
                format!("$.states[{i}].type"),
                "send-and-wait-for-reply cannot be reached from the trigger's incomingCall while flags.allow_concurrent_calls is true: a reply could not be matched to one of the caller's concurrent calls; disable concurrent calls for this flow or move the widget off the call path",
            );
        }
        stack.extend(
            st.transitions
                .iter()
                .filter_map(|t| t.target().and_then(|n| index.get(n).copied())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<ValidationError> {
        match validate(&v) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn base(states: Value) -> Value {
        json!({"description": "t", "states": states, "initial_state": "Trigger",
               "flags": {"allow_concurrent_calls": true}})
    }

    fn trigger(next: &str) -> Value {
        json!({"name": "Trigger", "type": "trigger", "properties": {},
               "transitions": [{"event": "incomingCall", "next": next}]})
    }

    #[test]
    fn minimal_flow_is_valid() {
        let v = base(json!([trigger(""),]));
        assert!(validate(&v).is_ok());
    }

    #[test]
    fn non_object_and_missing_states() {
        let e = errors(json!([1, 2]));
        assert_eq!(e[0].path, "$");
        let e = errors(json!({"initial_state": "Trigger"}));
        assert_eq!(e[0].path, "$.states");
        assert!(e[0].message.contains("missing"));
    }

    #[test]
    fn initial_state_missing_or_unknown() {
        let e = errors(json!({"states": [trigger("")]}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "$.initial_state");
        let e = errors(json!({"states": [trigger("")], "initial_state": "Nope"}));
        assert!(e[0].message.contains("\"Nope\""));
    }

    #[test]
    fn v1_format_is_named() {
        let e = errors(json!({"states": [
            {"name": "Trigger", "type": "InitialState", "sid": "FF1", "properties": {},
             "transitions": [{"event": "incomingCall", "next": "FFabc"}]}
        ]}));
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("v1 (2018)")), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("unknown widget type \"InitialState\"")
                    && t.starts_with("state \"Trigger\" at $.states[0].type")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("missing state \"FFabc\"")
                && t.contains("$.states[0].transitions[0].next")),
            "{text:?}"
        );
    }

    #[test]
    fn collects_all_faults() {
        let v = base(json!([
            trigger("say"),
            {"name": "say", "type": "say-play", "properties": {},
             "transitions": [{"event": "audioComplete", "next": "nowhere"},
                             {"event": "keypress", "next": ""}]},
            {"name": "say", "type": "hangup", "properties": {}, "transitions": []},
            {"name": "1bad name", "type": "split-based-on", "properties": {},
             "transitions": [{"event": "match", "next": "",
                              "conditions": [{"friendly_name": "x", "arguments": [], "type": "is_purple", "value": ""}]}]},
            {"name": "http", "type": "make-http-request", "properties": {"method": "GET"}, "transitions": []}
        ]));
        let e = errors(v);
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("state \"say\" at $.states[1].properties.say: say-play requires property `say` or `play` or `digits`"), "{text:?}");
        assert!(has("at $.states[1].transitions[0].next: event \"audioComplete\" goes to missing state \"nowhere\""));
        assert!(has(
            "at $.states[1].transitions[1].event: event \"keypress\" is not an event of say-play"
        ));
        assert!(has(
            "state \"say\" at $.states[2].name: duplicate state name"
        ));
        assert!(has("at $.states[2].type: unknown widget type \"hangup\""));
        assert!(has("state \"1bad name\" at $.states[3].name"));
        assert!(has(
            "$.states[3].properties.input: split-based-on requires property `input`"
        ));
        assert!(has(
            "$.states[3].transitions[0].conditions[0].type: unknown split operator \"is_purple\""
        ));
        assert!(has("state \"http\" at $.states[4].properties.url"));
        assert_eq!(e.len(), 9, "{text:?}");
    }

    #[test]
    fn widget_limit() {
        let mut states = vec![trigger("")];
        for i in 0..MAX_WIDGETS {
            states.push(json!({"name": format!("s{i}"), "type": "set-variables", "properties": {}, "transitions": []}));
        }
        let e = errors(base(Value::Array(states)));
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("limit is 2000"));
    }

    #[test]
    fn send_and_wait_on_concurrent_call_path() {
        let states = json!([
            trigger("a"),
            {"name": "a", "type": "say-play", "properties": {"say": "hi"},
             "transitions": [{"event": "audioComplete", "next": "w"}]},
            {"name": "w", "type": "send-and-wait-for-reply", "properties": {"body": "?"},
             "transitions": [{"event": "incomingMessage"}]}
        ]);
        let e = errors(base(states.clone()));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].state.as_deref(), Some("w"));
        assert!(e[0].message.contains("allow_concurrent_calls"));
        let mut v = base(states);
        v["flags"]["allow_concurrent_calls"] = json!(false);
        assert!(validate(&v).is_ok());
    }

    #[test]
    fn name_rule() {
        assert!(is_valid_name("get-customer"));
        assert!(is_valid_name("gather_1"));
        assert!(!is_valid_name("1x"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name(""));
    }
}

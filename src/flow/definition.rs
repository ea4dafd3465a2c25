//! Serde model of an exported Studio flow definition.
//!
//! Only the fields the engine needs are typed; everything else is kept in
//! `extra` maps so that import → export round-trips without loss.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A whole flow definition (`description`, `states`, `initial_state`, `flags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowDefinition {
    /// Free text (Studio's flow description).
    #[serde(default, deserialize_with = "lenient_string")]
    pub description: String,
    /// The widgets.
    pub states: Vec<State>,
    /// The name of the trigger widget, where executions start.
    pub initial_state: String,
    /// Flow flags.
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Flags,
    /// Unknown top-level fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Flow flags. Absent or `null` flags mean Studio's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    /// Several calls from one caller may run at once (one execution per Call-ID); when
    /// false, one execution per caller.
    #[serde(default = "default_true")]
    pub allow_concurrent_calls: bool,
    /// Unknown flags, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            allow_concurrent_calls: true,
            extra: Map::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One widget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The widget's name, unique in the flow.
    pub name: String,
    /// The widget type (`type`), e.g. `say-play`, `split-based-on`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where each event leads.
    #[serde(default, deserialize_with = "null_as_default")]
    pub transitions: Vec<Transition>,
    /// The widget's settings, as exported (Liquid not yet rendered).
    #[serde(default, deserialize_with = "null_as_default")]
    pub properties: Map<String, Value>,
    /// Unknown fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An edge: when `event` fires, go to `next` (absent/empty/null: the execution ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The event, e.g. `incomingCall`, `keypress`, `match`.
    pub event: String,
    /// The widget it leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// For `split-based-on`: the conditions of a `match` transition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Unknown fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Transition {
    /// The target state, treating `""` like an absent `next`.
    pub fn target(&self) -> Option<&str> {
        self.next.as_deref().filter(|n| !n.is_empty())
    }
}

/// One `split-based-on` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The name Studio shows for it.
    #[serde(default, deserialize_with = "lenient_string")]
    pub friendly_name: String,
    /// What is compared: the split's `input` (Liquid).
    #[serde(default, deserialize_with = "null_as_default")]
    pub arguments: Vec<Value>,
    /// The operator (`type`), e.g. `equal_to`, `matches_any_of`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value compared against.
    #[serde(default, deserialize_with = "lenient_string")]
    pub value: String,
    /// Unknown fields, kept for round-tripping.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl State {
    /// A property as text: strings as-is, numbers and booleans formatted.
    /// `None` for absent, null, arrays and objects.
    pub fn prop_text(&self, key: &str) -> Option<String> {
        scalar_text(self.properties.get(key)?)
    }

    /// A property as an unsigned number, accepting `3600` and `"3600"`.
    pub fn prop_u64(&self, key: &str) -> Option<u64> {
        parse_u64(self.properties.get(key)?)
    }

    /// A property as a boolean, accepting `true` and `"true"`.
    pub fn prop_bool(&self, key: &str) -> Option<bool> {
        parse_bool(self.properties.get(key)?)
    }
}

/// Text of a scalar JSON value (strings, numbers, booleans).
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Unsigned number from a number or numeric string (fractions truncated).
pub(crate) fn parse_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => parse_u64_str(s),
        _ => None,
    }
}

pub(crate) fn parse_u64_str(s: &str) -> Option<u64> {
    let s = s.trim();
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

pub(crate) fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool_str(s),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        _ => None,
    }
}

pub(crate) fn parse_bool_str(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Studio exports sometimes carry `null` where a list/object is expected.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Strings that exports sometimes write as numbers, booleans or null.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(scalar_text(&v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_round_trip() {
        let src = json!({
            "description": "d",
            "states": [{
                "name": "Trigger", "type": "trigger", "sid": "FF1",
                "properties": {"offset": {"x": 1, "y": 2}, "custom": [1, 2]},
                "transitions": [{"event": "incomingCall", "next": "a", "uuid": "u1"}]
            }],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": false, "other": 1},
            "x_extra": "kept"
        });
        let def: FlowDefinition = serde_json::from_value(src.clone()).expect("parse");
        assert!(!def.flags.allow_concurrent_calls);
        let back = serde_json::to_value(&def).expect("ser");
        assert_eq!(back, src);
    }

    #[test]
    fn flags_default_when_null_or_absent() {
        let def: FlowDefinition =
            serde_json::from_value(json!({"states": [], "initial_state": "T", "flags": null}))
                .expect("parse");
        assert!(def.flags.allow_concurrent_calls);
        let def: FlowDefinition =
            serde_json::from_value(json!({"states": [], "initial_state": "T"})).expect("parse");
        assert!(def.flags.allow_concurrent_calls);
    }

    #[test]
    fn typed_accessors_accept_strings_and_numbers() {
        let s: State = serde_json::from_value(json!({
            "name": "g", "type": "gather-input-on-call",
            "properties": {"a": "3600", "b": 30, "c": "true", "d": false, "e": " 7 ", "f": "x"}
        }))
        .expect("parse");
        assert_eq!(s.prop_u64("a"), Some(3600));
        assert_eq!(s.prop_u64("b"), Some(30));
        assert_eq!(s.prop_u64("e"), Some(7));
        assert_eq!(s.prop_u64("f"), None);
        assert_eq!(s.prop_bool("c"), Some(true));
        assert_eq!(s.prop_bool("d"), Some(false));
        assert_eq!(s.prop_text("b").as_deref(), Some("30"));
        assert_eq!(s.prop_text("missing"), None);
    }

    #[test]
    fn empty_next_means_end() {
        let t: Transition =
            serde_json::from_value(json!({"event": "x", "next": ""})).expect("parse");
        assert_eq!(t.target(), None);
        let t: Transition =
            serde_json::from_value(json!({"event": "x", "next": null})).expect("parse");
        assert_eq!(t.target(), None);
    }
}

//! The execution context, shaped exactly as Studio exposes it to Liquid:
//! `flow.*`, `trigger.*`, `widgets.NAME.*`, `contact.channel.address`.

use serde_json::{json, Map, Value};

/// Builds the initial context of an execution.
pub(crate) fn initial(
    flow_sid: &str,
    execution_sid: &str,
    channel_address: &str,
    contact_address: &str,
    data: Value,
    trigger_key: &str,
    trigger_data: Map<String, Value>,
) -> Value {
    let data = if data.is_object() { data } else { json!({}) };
    let mut trigger = Map::new();
    trigger.insert(trigger_key.to_owned(), Value::Object(trigger_data));
    json!({
        "flow": {
            "flow_sid": flow_sid,
            "sid": execution_sid,
            "channel": {"address": channel_address},
            "data": data,
            "variables": {},
        },
        "trigger": trigger,
        "widgets": {},
        "contact": {"channel": {"address": contact_address}},
    })
}

/// Mutable object at `ctx[a][b]...`, created (replacing non-objects) as needed.
fn object_at<'a>(ctx: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = ctx;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else {
            unreachable!("just made an object")
        };
        cur = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    match cur {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// Replace what widget `name` published.
pub(crate) fn set_widget(ctx: &mut Value, name: &str, published: Map<String, Value>) {
    object_at(ctx, &["widgets"]).insert(name.to_owned(), Value::Object(published));
}

/// Merge keys into what widget `name` published.
pub(crate) fn merge_widget(ctx: &mut Value, name: &str, published: Map<String, Value>) {
    object_at(ctx, &["widgets", name]).extend(published);
}

/// Set `flow.variables.KEY`.
pub(crate) fn set_variable(ctx: &mut Value, key: &str, value: Value) {
    object_at(ctx, &["flow", "variables"]).insert(key.to_owned(), value);
}

/// `trigger.call` as an object (empty when the execution has no call).
pub(crate) fn trigger_call(ctx: &Value) -> Map<String, Value> {
    ctx.pointer("/trigger/call")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `contact.channel.address`.
pub(crate) fn contact_address(ctx: &Value) -> String {
    ctx.pointer("/contact/channel/address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_studio() {
        let mut call = Map::new();
        call.insert("From".into(), json!("+1555"));
        let mut c = initial(
            "FW1",
            "FN1",
            "+1000",
            "+1555",
            json!({"k": 1}),
            "call",
            call,
        );
        assert_eq!(c.pointer("/flow/flow_sid"), Some(&json!("FW1")));
        assert_eq!(c.pointer("/flow/sid"), Some(&json!("FN1")));
        assert_eq!(c.pointer("/flow/channel/address"), Some(&json!("+1000")));
        assert_eq!(c.pointer("/flow/data/k"), Some(&json!(1)));
        assert_eq!(c.pointer("/trigger/call/From"), Some(&json!("+1555")));
        assert_eq!(contact_address(&c), "+1555");
        set_variable(&mut c, "x", json!("y"));
        assert_eq!(c.pointer("/flow/variables/x"), Some(&json!("y")));
        let mut p = Map::new();
        p.insert("Digits".into(), json!("1"));
        set_widget(&mut c, "g", p.clone());
        p.insert("More".into(), json!(2));
        merge_widget(&mut c, "g", p);
        assert_eq!(c.pointer("/widgets/g/Digits"), Some(&json!("1")));
        assert_eq!(c.pointer("/widgets/g/More"), Some(&json!(2)));
        assert_eq!(trigger_call(&c).len(), 1);
    }

    #[test]
    fn non_object_data_becomes_empty() {
        let c = initial("FW", "FN", "", "", json!("x"), "request", Map::new());
        assert_eq!(c.pointer("/flow/data"), Some(&json!({})));
    }
}

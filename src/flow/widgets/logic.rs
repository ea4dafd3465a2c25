//! Widgets that run inside the engine: `split-based-on`, `set-variables`.

use chrono::{DateTime, FixedOffset};

use super::{PropError, Props, Resolution};
use crate::flow::conditions::{evaluate, Operator};

/// Test `input` against each `match` transition in order; first full match wins.
/// A condition set with no conditions never matches (Studio requires one).
pub(crate) fn split(
    props: &Props<'_>,
    now: DateTime<FixedOffset>,
) -> Result<Resolution, PropError> {
    let input = props.text_or_empty("input")?;
    for (j, t) in props.state.transitions.iter().enumerate() {
        if t.event != "match" || t.conditions.is_empty() {
            continue;
        }
        let mut all = true;
        for c in &t.conditions {
            let value = props.render_raw("value", &c.value)?;
            let holds =
                Operator::parse(&c.kind).is_some_and(|op| evaluate(op, &input, &value, now));
            if !holds {
                all = false;
                break;
            }
        }
        if all {
            return Ok(Resolution {
                event: "match".into(),
                transition: Some(j),
                ..Resolution::default()
            });
        }
    }
    Ok(Resolution::event("noMatch"))
}

/// Render every `{key, value}` into `flow.variables` (all against the context
/// as it was when the widget started).
pub(crate) fn set_variables(props: &Props<'_>) -> Result<Resolution, PropError> {
    Ok(Resolution {
        event: "next".into(),
        variables: props.pairs("variables")?,
        ..Resolution::default()
    })
}

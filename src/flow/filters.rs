//! Liquid filters Twilio documents for Studio that liquid-rust's stdlib lacks: `sum`,
//! `base64_encode`, `base64_decode`, `base64_url_safe_encode`, `base64_url_safe_decode`,
//! `remove_last`, `replace_last`. Registered (and metered) with the stdlib's in
//! `template::metered_filters`.

use base64::Engine as _;
use liquid_core::model::ValueView;
use liquid_core::{
    Display_filter, Expression, Filter, FilterParameters, FilterReflection, FromFilterParameters,
    ParseFilter, Result, Runtime, Value,
};

/// The filters this module adds, for the parser.
pub(crate) fn all() -> Vec<Box<dyn liquid_core::ParseFilter>> {
    vec![
        Box::new(SumParser),
        Box::new(Base64EncodeParser),
        Box::new(Base64DecodeParser),
        Box::new(Base64UrlSafeEncodeParser),
        Box::new(Base64UrlSafeDecodeParser),
        Box::new(RemoveLastParser),
        Box::new(ReplaceLastParser),
    ]
}

fn error(msg: String) -> liquid_core::Error {
    liquid_core::Error::with_msg(msg)
}

// --- sum ------------------------------------------------------------------------------------

#[derive(Debug, FilterParameters)]
struct SumArgs {
    #[parameter(
        description = "Sum this property of each item instead.",
        arg_type = "str"
    )]
    property: Option<Expression>,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "sum",
    description = "The sum of an array's numbers (or of one property of its items).",
    parameters(SumArgs),
    parsed(SumFilter)
)]
struct SumParser;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "sum"]
struct SumFilter {
    #[parameters]
    args: SumArgs,
}

impl Filter for SumFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let args = self.args.evaluate(runtime)?;
        let Some(items) = input.as_array() else {
            return Err(error("sum: the input is not an array".into()));
        };
        let (mut int, mut float, mut is_float) = (0i64, 0f64, false);
        for item in items.values() {
            let v = match &args.property {
                Some(p) => item
                    .as_object()
                    .and_then(|o| o.get(p.as_str()))
                    .map(|v| v.to_value()),
                None => Some(item.to_value()),
            };
            let Some(s) = v
                .as_ref()
                .and_then(|v| v.as_scalar().map(|s| s.into_owned()))
            else {
                continue; // nil and non-numbers count as 0, as Shopify's sum does
            };
            if let Some(i) = s.to_integer() {
                int = int.saturating_add(i);
                float += i as f64;
            } else if let Some(f) = s.to_float() {
                is_float = true;
                float += f;
            }
        }
        Ok(if is_float {
            Value::scalar(float)
        } else {
            Value::scalar(int)
        })
    }
}

// --- base64 ---------------------------------------------------------------------------------

macro_rules! base64_filter {
    ($parser:ident, $filter:ident, $name:literal, $desc:literal, $engine:expr, $decode:literal) => {
        #[derive(Clone, ParseFilter, FilterReflection)]
        #[filter(name = $name, description = $desc, parsed($filter))]
        struct $parser;

        #[derive(Debug, Default, Display_filter)]
        #[name = $name]
        struct $filter;

        impl Filter for $filter {
            fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<Value> {
                let text = input.to_kstr();
                if $decode {
                    let bytes = $engine
                        .decode(text.as_bytes())
                        .map_err(|e| error(format!("{}: {e}", $name)))?;
                    let s = String::from_utf8(bytes).map_err(|_| {
                        error(format!("{}: the decoded bytes are not UTF-8", $name))
                    })?;
                    Ok(Value::scalar(s))
                } else {
                    Ok(Value::scalar($engine.encode(text.as_bytes())))
                }
            }
        }
    };
}

base64_filter!(
    Base64EncodeParser,
    Base64Encode,
    "base64_encode",
    "Encodes a string as Base64.",
    base64::engine::general_purpose::STANDARD,
    false
);
base64_filter!(
    Base64DecodeParser,
    Base64Decode,
    "base64_decode",
    "Decodes a Base64 string.",
    base64::engine::general_purpose::STANDARD,
    true
);
base64_filter!(
    Base64UrlSafeEncodeParser,
    Base64UrlSafeEncode,
    "base64_url_safe_encode",
    "Encodes a string as URL-safe Base64.",
    base64::engine::general_purpose::URL_SAFE,
    false
);
base64_filter!(
    Base64UrlSafeDecodeParser,
    Base64UrlSafeDecode,
    "base64_url_safe_decode",
    "Decodes a URL-safe Base64 string.",
    base64::engine::general_purpose::URL_SAFE,
    true
);

// --- remove_last, replace_last -------------------------------------------------------------

#[derive(Debug, FilterParameters)]
struct RemoveLastArgs {
    #[parameter(description = "The text to remove.", arg_type = "str")]
    string: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "remove_last",
    description = "Removes the last occurrence of a substring.",
    parameters(RemoveLastArgs),
    parsed(RemoveLastFilter)
)]
struct RemoveLastParser;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "remove_last"]
struct RemoveLastFilter {
    #[parameters]
    args: RemoveLastArgs,
}

impl Filter for RemoveLastFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let args = self.args.evaluate(runtime)?;
        Ok(Value::scalar(replace_last(
            &input.to_kstr(),
            args.string.as_str(),
            "",
        )))
    }
}

#[derive(Debug, FilterParameters)]
struct ReplaceLastArgs {
    #[parameter(description = "The text to replace.", arg_type = "str")]
    search: Expression,
    #[parameter(description = "What replaces it.", arg_type = "str")]
    replace: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "replace_last",
    description = "Replaces the last occurrence of a substring.",
    parameters(ReplaceLastArgs),
    parsed(ReplaceLastFilter)
)]
struct ReplaceLastParser;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "replace_last"]
struct ReplaceLastFilter {
    #[parameters]
    args: ReplaceLastArgs,
}

impl Filter for ReplaceLastFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let args = self.args.evaluate(runtime)?;
        Ok(Value::scalar(replace_last(
            &input.to_kstr(),
            args.search.as_str(),
            args.replace.as_str(),
        )))
    }
}

fn replace_last(text: &str, search: &str, with: &str) -> String {
    match (search.is_empty(), text.rfind(search)) {
        (false, Some(at)) => format!("{}{with}{}", &text[..at], &text[at + search.len()..]),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::flow::template::{Scope, Templates};

    fn render(t: &str) -> String {
        let ctx = serde_json::json!({
            "flow": {"variables": {
                "prices": [1, 2, 3.5], "counts": [1, 2, 3],
                "items": [{"qty": 2}, {"qty": 5}, {"other": 1}],
                "s": "a-b-a-b"
            }}
        });
        Templates::default()
            .render(t, &Scope::new(&ctx))
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn sum_adds_numbers_or_a_property() {
        assert_eq!(render("{{ flow.variables.counts | sum }}"), "6");
        assert_eq!(render("{{ flow.variables.prices | sum }}"), "6.5");
        assert_eq!(render("{{ flow.variables.items | sum: 'qty' }}"), "7");
        assert!(render("{{ flow.variables.s | sum }}").starts_with("error"));
    }

    #[test]
    fn base64_both_ways_and_url_safe() {
        assert_eq!(
            render("{{ 'Ada:secret' | base64_encode }}"),
            "QWRhOnNlY3JldA=="
        );
        assert_eq!(
            render("{{ 'QWRhOnNlY3JldA==' | base64_decode }}"),
            "Ada:secret"
        );
        assert_eq!(render("{{ '???' | base64_url_safe_encode }}"), "Pz8_");
        assert_eq!(render("{{ 'Pz8_' | base64_url_safe_decode }}"), "???");
        assert!(render("{{ 'not base64!' | base64_decode }}").starts_with("error"));
    }

    #[test]
    fn remove_and_replace_the_last_occurrence() {
        assert_eq!(
            render("{{ flow.variables.s | remove_last: 'a' }}"),
            "a-b--b"
        );
        assert_eq!(
            render("{{ flow.variables.s | replace_last: 'b', 'c' }}"),
            "a-b-a-c"
        );
        assert_eq!(
            render("{{ flow.variables.s | replace_last: 'z', 'c' }}"),
            "a-b-a-b"
        );
        assert_eq!(
            render("{{ flow.variables.s | remove_last: '' }}"),
            "a-b-a-b"
        );
    }

    #[test]
    fn url_encode_and_decode_are_there_too() {
        assert_eq!(render("{{ 'a b&c' | url_encode }}"), "a%20b%26c");
        assert_eq!(render("{{ 'a%20b%26c' | url_decode }}"), "a b&c");
        assert_eq!(render("{{ 'a b&c' | url_encode | url_decode }}"), "a b&c");
    }
}

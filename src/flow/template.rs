//! Liquid rendering with Studio's leniency.
//!
//! The `liquid` crate errors on undefined variables; Studio renders them as
//! empty. Rendering therefore goes through [`Scope`], a copy of the context
//! whose missing keys (at any depth) yield an `Undefined` node that renders
//! `""`, is nil/blank/empty, and is itself an object of `Undefined`.
//! Templates are compiled once per flow ([`Templates`]) and plain strings
//! without `{{`/`{%` never reach Liquid.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use liquid_core::model::{ArrayView, DisplayCow, KStringCow, ObjectView, State, ValueView};
use liquid_core::{
    Display_filter, Expression, Filter, FilterParameters, FilterReflection, FromFilterParameters,
    ParseFilter, Result as LiquidResult, Runtime, Value,
};
use regex::Regex;

use super::liquid_limits::{self as limits, CappedWriter};

/// Largest rendered value (SPEC §4).
pub const MAX_RENDERED_BYTES: usize = 16 * 1024;
/// Most iterations a `for` or `tablerow` loop runs, whatever its `limit:` says (SPEC §4).
pub const MAX_LOOP_ITERATIONS: usize = 15;

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not compile (the Liquid library's message).
    #[error("invalid Liquid template: {0}")]
    Parse(String),
    /// Rendering failed (the Liquid library's message).
    #[error("Liquid rendering failed: {0}")]
    Render(String),
    /// The rendered value is longer than [`MAX_RENDERED_BYTES`].
    #[error("rendered value is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Bytes rendered.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The template itself is longer than its limit.
    #[error("Liquid template is {size} bytes; the limit is {limit} bytes")]
    TooLong {
        /// Bytes of template.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Blocks nest deeper than their limit.
    #[error("Liquid blocks nest more than {limit} deep (`{{% {tag} %}}` at byte {offset})")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// The block tag that went too deep.
        tag: String,
        /// Where, in bytes from the start of the template.
        offset: usize,
    },
    /// A condition has more `and`/`or` operators than its limit.
    #[error("a Liquid condition has more than {limit} `and`/`or` operators (at byte {offset})")]
    TooManyOperators {
        /// The limit.
        limit: usize,
        /// Where, in bytes from the start of the template.
        offset: usize,
    },
}

impl TemplateError {
    /// A bound the template breaks whatever the data: the flow is invalid, not just this
    /// widget (unlike a parse error, which Studio imports).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            TemplateError::TooLong { .. }
                | TemplateError::TooDeep { .. }
                | TemplateError::TooManyOperators { .. }
        )
    }
}

/// Whether a string needs Liquid at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Compiled templates of one flow, keyed by their source text. Templates that
/// do not compile are kept as their error: real exports contain broken Liquid
/// that Studio imports, so it fails the widget at run time, not the import.
#[derive(Default)]
pub struct Templates {
    compiled: HashMap<String, Result<liquid::Template, TemplateError>>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.compiled.len())
            .finish()
    }
}

impl Templates {
    /// Compile `src` (once) and keep it, or its error. Plain strings are not stored.
    pub fn add(&mut self, src: &str) -> Result<(), TemplateError> {
        if !is_template(src) {
            return Ok(());
        }
        if let Some(known) = self.compiled.get(src) {
            return known.as_ref().map(|_| ()).map_err(Clone::clone);
        }
        let t = compile(src);
        let out = t.as_ref().map(|_| ()).map_err(Clone::clone);
        self.compiled.insert(src.to_owned(), t);
        out
    }

    /// Number of distinct compiled templates.
    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    /// Whether no template is compiled.
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// Render `src` against `scope`. Strings not seen at compile time are
    /// compiled on the fly (values computed at run time, tests).
    pub fn render(&self, src: &str, scope: &Scope) -> Result<String, TemplateError> {
        if !is_template(src) {
            return cap(src.to_owned());
        }
        let compiled;
        let t = match self.compiled.get(src) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                compiled = compile(src)?;
                &compiled
            }
        };
        // The writer stops at the limit, so a huge output is never held in memory.
        let mut out = CappedWriter::new(MAX_RENDERED_BYTES);
        let rendered = catch_unwind(AssertUnwindSafe(|| {
            t.render_to(&mut out, &Root(&scope.root))
        }));
        let Ok(rendered) = rendered else {
            return Err(TemplateError::Render(LIQUID_PANICKED.into()));
        };
        match rendered {
            Ok(()) => cap(String::from_utf8_lossy(&out.buf).into_owned()),
            Err(_) if out.overflow.is_some() => Err(TemplateError::TooLarge {
                size: out.overflow.unwrap_or_default(),
                limit: MAX_RENDERED_BYTES,
            }),
            Err(e) => Err(TemplateError::Render(e.to_string())),
        }
    }
}

fn cap(s: String) -> Result<String, TemplateError> {
    if s.len() > MAX_RENDERED_BYTES {
        Err(TemplateError::TooLarge {
            size: s.len(),
            limit: MAX_RENDERED_BYTES,
        })
    } else {
        Ok(s)
    }
}

fn parser() -> Result<&'static liquid::Parser, TemplateError> {
    static PARSER: OnceLock<Result<liquid::Parser, String>> = OnceLock::new();
    PARSER
        .get_or_init(|| {
            metered_filters(
                liquid::ParserBuilder::with_stdlib()
                    .block(limits::ForBlock)
                    .block(limits::TableRowBlock)
                    .block(limits::CaptureBlock),
            )
            .build()
            .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| TemplateError::Parse(e.clone()))
}

/// Every filter, ours and the stdlib's, charged to the render's work budget and capped in
/// the size of what it returns (registering a name again replaces the stdlib filter).
fn metered_filters(b: liquid::ParserBuilder) -> liquid::ParserBuilder {
    use liquid_lib::stdlib as s;
    let filters: Vec<Box<dyn liquid_core::ParseFilter>> = vec![
        Box::new(s::Abs),
        Box::new(s::Append),
        Box::new(s::AtLeast),
        Box::new(s::AtMost),
        Box::new(s::Capitalize),
        Box::new(s::Ceil),
        Box::new(s::Compact),
        Box::new(s::Concat),
        Box::new(DateFilterParser),
        Box::new(s::Default),
        Box::new(s::DividedBy),
        Box::new(s::Downcase),
        Box::new(s::Escape),
        Box::new(s::EscapeOnce),
        Box::new(s::First),
        Box::new(s::Floor),
        Box::new(s::Join),
        Box::new(s::Last),
        Box::new(s::Lstrip),
        Box::new(s::Map),
        Box::new(s::Minus),
        Box::new(s::Modulo),
        Box::new(s::NewlineToBr),
        Box::new(s::Plus),
        Box::new(s::Prepend),
        Box::new(s::Remove),
        Box::new(s::RemoveFirst),
        Box::new(s::Replace),
        Box::new(s::ReplaceFirst),
        Box::new(s::Reverse),
        Box::new(s::Round),
        Box::new(s::Rstrip),
        Box::new(s::Size),
        Box::new(s::Slice),
        Box::new(s::Sort),
        Box::new(s::SortNatural),
        Box::new(s::Strip),
        Box::new(s::StripHtml),
        Box::new(s::StripNewlines),
        Box::new(s::Times),
        Box::new(s::Truncate),
        Box::new(s::TruncateWords),
        Box::new(s::Uniq),
        Box::new(s::Upcase),
        Box::new(s::UrlDecode),
        Box::new(s::UrlEncode),
        Box::new(s::Where),
        Box::new(JsonFilterParser),
        Box::new(SplitFilterParser),
    ];
    filters
        .into_iter()
        .chain(super::filters::all())
        .fold(b, |b, f| b.filter(limits::Metered(f)))
}

fn compile(src: &str) -> Result<liquid::Template, TemplateError> {
    // Before the parser: it recurses per nested block and would overflow the stack.
    limits::prescan(src)?;
    let parser = parser()?;
    match parse(parser, src)? {
        Ok(t) => Ok(t),
        Err(first) => {
            // Published flows write `widgets. name .parsed`; Studio accepts it.
            let repaired = join_spaced_dots(src);
            if repaired == src {
                return Err(TemplateError::Parse(first.to_string()));
            }
            limits::prescan(&repaired)?;
            parse(parser, &repaired)?.map_err(|_| TemplateError::Parse(first.to_string()))
        }
    }
}

/// `liquid` 0.26 panics on some hostile templates instead of returning an error (found by
/// fuzzing, `fuzz/`: blocks cut short in some places, a `date` format with a non-ASCII
/// character after `%`, among others). Such a panic is caught and made an error of this
/// template, so it fails one widget and never the thread that imports or runs the flow.
const LIQUID_PANICKED: &str = "the Liquid library failed on this template";

fn parse(
    parser: &liquid::Parser,
    src: &str,
) -> Result<Result<liquid::Template, liquid::Error>, TemplateError> {
    catch_unwind(AssertUnwindSafe(|| parser.parse(src)))
        .map_err(|_| TemplateError::Parse(LIQUID_PANICKED.into()))
}

/// Inside `{{ }}` and `{% %}`, remove whitespace around the dots of a
/// variable path (`widgets. get_x .parsed` → `widgets.get_x.parsed`).
fn join_spaced_dots(src: &str) -> String {
    static TAG: OnceLock<Option<(Regex, Regex)>> = OnceLock::new();
    let Some((tag, dot)) = TAG
        .get_or_init(|| {
            let tag = Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}").ok()?;
            let dot = Regex::new(r"([A-Za-z0-9_\]-])\s*\.\s*([A-Za-z_])").ok()?;
            Some((tag, dot))
        })
        .as_ref()
    else {
        return src.to_owned();
    };
    tag.replace_all(src, |c: &regex::Captures<'_>| {
        dot.replace_all(&c[0], "$1.$2").into_owned()
    })
    .into_owned()
}

/// A copy of the execution context that Liquid can walk leniently.
#[derive(Debug)]
pub struct Scope {
    root: Node,
}

impl Scope {
    /// A scope over `context` (the execution context, or any JSON object).
    pub fn new(context: &serde_json::Value) -> Scope {
        Scope {
            root: Node::from_json(context),
        }
    }
}

#[derive(Debug)]
enum Node {
    Undefined,
    /// A scalar; strings carry their precomputed `size` for `x.size`.
    Scalar {
        value: Value,
        size: Option<Value>,
    },
    Array(Vec<Node>),
    Object(BTreeMap<String, Node>),
}

static UNDEFINED: Node = Node::Undefined;

impl Node {
    fn from_json(v: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        match v {
            J::Null => Node::Undefined,
            J::Bool(b) => Node::scalar(Value::scalar(*b), None),
            J::Number(n) => {
                let value = match n.as_i64() {
                    Some(i) => Value::scalar(i),
                    None => Value::scalar(n.as_f64().unwrap_or(0.0)),
                };
                Node::scalar(value, None)
            }
            J::String(s) => {
                let size = i64::try_from(s.len()).unwrap_or(i64::MAX);
                Node::scalar(Value::scalar(s.clone()), Some(Value::scalar(size)))
            }
            J::Array(a) => Node::Array(a.iter().map(Node::from_json).collect()),
            J::Object(o) => Node::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        }
    }

    fn scalar(value: Value, size: Option<Value>) -> Node {
        Node::Scalar { value, size }
    }
}

impl ValueView for Node {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        match self {
            Node::Undefined => DisplayCow::Borrowed(&""),
            Node::Scalar { value, .. } => value.render(),
            _ => DisplayCow::Owned(Box::new(self.to_value().render().to_string())),
        }
    }
    fn source(&self) -> DisplayCow<'_> {
        match self {
            Node::Undefined => DisplayCow::Borrowed(&"nil"),
            Node::Scalar { value, .. } => value.source(),
            _ => DisplayCow::Owned(Box::new(self.to_value().source().to_string())),
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            Node::Undefined => "nil",
            Node::Scalar { value, .. } => value.type_name(),
            Node::Array(_) => "array",
            Node::Object(_) => "object",
        }
    }
    fn query_state(&self, state: State) -> bool {
        match self {
            Node::Undefined => !matches!(state, State::Truthy),
            Node::Scalar { value, .. } => value.query_state(state),
            Node::Array(a) => match state {
                State::Truthy => true,
                _ => a.is_empty(),
            },
            Node::Object(o) => match state {
                State::Truthy => true,
                _ => o.is_empty(),
            },
        }
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        match self {
            Node::Undefined => KStringCow::from_static(""),
            Node::Scalar { value, .. } => value.to_kstr(),
            _ => KStringCow::from_string(self.render().to_string()),
        }
    }
    fn to_value(&self) -> Value {
        match self {
            Node::Undefined => Value::Nil,
            Node::Scalar { value, .. } => value.clone(),
            Node::Array(a) => Value::Array(a.iter().map(ValueView::to_value).collect()),
            Node::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone().into(), v.to_value()))
                    .collect(),
            ),
        }
    }
    fn as_scalar(&self) -> Option<liquid_core::model::ScalarCow<'_>> {
        match self {
            Node::Scalar { value, .. } => value.as_scalar(),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&dyn ArrayView> {
        match self {
            Node::Array(_) => Some(self),
            _ => None,
        }
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        match self {
            // Strings index as objects of Undefined too, except `size`.
            Node::Object(_) | Node::Undefined => Some(self),
            Node::Scalar { size: Some(_), .. } => Some(self),
            _ => None,
        }
    }
    fn is_nil(&self) -> bool {
        match self {
            Node::Undefined => true,
            Node::Scalar { value, .. } => value.is_nil(),
            _ => false,
        }
    }
}

impl ObjectView for Node {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Node::Object(o) => i64::try_from(o.len()).unwrap_or(i64::MAX),
            _ => 0,
        }
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        match self {
            Node::Object(o) => Box::new(o.keys().map(|k| KStringCow::from_ref(k.as_str()))),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Node::Object(o) => Box::new(o.values().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        match self {
            Node::Object(o) => Box::new(
                o.iter()
                    .map(|(k, v)| (KStringCow::from_ref(k.as_str()), v as &dyn ValueView)),
            ),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn contains_key(&self, index: &str) -> bool {
        matches!(self, Node::Object(o) if o.contains_key(index))
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match self {
            Node::Object(o) => match o.get(index) {
                Some(v) => Some(v),
                // Let liquid answer `size` for objects.
                None if index == "size" => None,
                None => Some(&UNDEFINED),
            },
            Node::Scalar {
                size: Some(size), ..
            } if index == "size" => Some(size),
            _ => Some(&UNDEFINED),
        }
    }
}

impl ArrayView for Node {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Node::Array(a) => i64::try_from(a.len()).unwrap_or(i64::MAX),
            _ => 0,
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Node::Array(a) => Box::new(a.iter().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn contains_key(&self, index: i64) -> bool {
        self.array_get(index).is_some()
    }
    fn get(&self, index: i64) -> Option<&dyn ValueView> {
        Some(self.array_get(index).unwrap_or(&UNDEFINED))
    }
}

impl Node {
    fn array_get(&self, index: i64) -> Option<&Node> {
        let Node::Array(a) = self else { return None };
        let len = i64::try_from(a.len()).ok()?;
        let i = if index < 0 { len + index } else { index };
        usize::try_from(i).ok().and_then(|i| a.as_slice().get(i))
    }
}

/// The root object: claims every top-level name so that liquid never reports
/// an unknown variable (assigned variables still shadow it).
#[derive(Debug)]
struct Root<'a>(&'a Node);

impl ValueView for Root<'_> {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        self.0.render()
    }
    fn source(&self) -> DisplayCow<'_> {
        self.0.source()
    }
    fn type_name(&self) -> &'static str {
        "object"
    }
    fn query_state(&self, state: State) -> bool {
        self.0.query_state(state)
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        self.0.to_kstr()
    }
    fn to_value(&self) -> Value {
        self.0.to_value()
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
}

impl ObjectView for Root<'_> {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        ObjectView::size(self.0)
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        ObjectView::keys(self.0)
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        ObjectView::values(self.0)
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        ObjectView::iter(self.0)
    }
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        ObjectView::get(self.0, index).or(Some(&UNDEFINED))
    }
}

/// `{{ x | json }}`: the value serialised as JSON (undefined → `null`).
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "json",
    description = "Serialises the input as JSON.",
    parsed(JsonFilter)
)]
struct JsonFilterParser;

#[derive(Debug, Default, Display_filter)]
#[name = "json"]
struct JsonFilter;

impl Filter for JsonFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LiquidResult<Value> {
        let json = liquid_to_json(&input.to_value());
        let text = serde_json::to_string(&json)
            .map_err(|e| liquid_core::Error::with_msg(format!("json filter: {e}")))?;
        Ok(Value::scalar(text))
    }
}

/// Liquid's `date`, with the format checked first: a conversion with a field width
/// (`%3333333333Y`) makes the library pad to that width, which took minutes for an 80-byte
/// template (found by fuzzing). Widths up to [`MAX_DATE_WIDTH`] are kept (`%10Y`), anything
/// wider is a template error.
#[derive(Debug, FilterParameters)]
struct DateArgs {
    #[parameter(description = "The format to return the date in.", arg_type = "str")]
    format: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "date",
    description = "Converts a timestamp into another date format.",
    parameters(DateArgs),
    parsed(DateFilter)
)]
struct DateFilterParser;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "date"]
struct DateFilter {
    #[parameters]
    args: DateArgs,
}

/// Widest field a `date` format may ask for.
const MAX_DATE_WIDTH: u64 = 64;

/// Whether every `%` conversion of `format` asks for a field no wider than `MAX_DATE_WIDTH`.
fn date_format_is_bounded(format: &str) -> bool {
    let b = format.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        i += 1;
        // Flags, then a width.
        while i < b.len() && matches!(b[i], b'-' | b'_' | b'0' | b'^' | b'#' | b':') {
            i += 1;
        }
        let mut width: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            width = width
                .saturating_mul(10)
                .saturating_add(u64::from(b[i] - b'0'));
            if width > MAX_DATE_WIDTH {
                return false;
            }
            i += 1;
        }
        i += 1;
    }
    true
}

impl Filter for DateFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LiquidResult<Value> {
        let args = self.args.evaluate(runtime)?;
        let format = args.format.as_str();
        if !date_format_is_bounded(format) {
            return Err(liquid_core::Error::with_msg(format!(
                "date: a field in {format:?} is wider than {MAX_DATE_WIDTH}"
            )));
        }
        let date = input.as_scalar().and_then(|s| s.to_date_time());
        match date {
            Some(date) if !format.is_empty() => {
                let s = date.format(format).map_err(|_| {
                    liquid_core::Error::with_msg(format!("Invalid date-format string: {format}"))
                })?;
                Ok(Value::scalar(s))
            }
            _ => Ok(input.to_value()),
        }
    }
}

/// Ruby's `split`, which Studio templates rely on: an empty separator splits
/// into characters and trailing empty items are dropped (liquid-rust keeps
/// Rust's `str::split` quirks otherwise).
#[derive(Debug, FilterParameters)]
struct SplitArgs {
    #[parameter(description = "The separator.", arg_type = "str")]
    pattern: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "split",
    description = "Divides a string into an array using the separator.",
    parameters(SplitArgs),
    parsed(SplitFilter)
)]
struct SplitFilterParser;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "split"]
struct SplitFilter {
    #[parameters]
    args: SplitArgs,
}

impl Filter for SplitFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LiquidResult<Value> {
        let args = self.args.evaluate(runtime)?;
        let input = input.to_kstr();
        let pattern = args.pattern.as_str();
        let mut parts: Vec<String> = if pattern.is_empty() {
            input.chars().map(String::from).collect()
        } else {
            input.split(pattern).map(str::to_owned).collect()
        };
        while parts.as_slice().last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        Ok(Value::Array(parts.into_iter().map(Value::scalar).collect()))
    }
}

fn liquid_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil | Value::State(_) => J::Null,
        Value::Array(a) => J::Array(a.iter().map(liquid_to_json).collect()),
        Value::Object(o) => {
            // liquid's objects are hash maps: sort keys so output is stable.
            let mut items: Vec<_> = o.iter().collect();
            items.sort_by(|a, b| a.0.cmp(b.0));
            J::Object(
                items
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), liquid_to_json(v)))
                    .collect(),
            )
        }
        Value::Scalar(s) => serde_json::to_value(s).unwrap_or(J::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> serde_json::Value {
        json!({
            "flow": {"variables": {"name": "Ada", "count": 3, "empty": ""}, "data": {}},
            "trigger": {"message": {"Body": "Hello", "From": "+15550001"}},
            "widgets": {
                "get-customer": {"parsed": {"name": "Grace", "tags": ["a", "b"], "n": null}},
                "http_1": {"status_code": 200, "parsed": {"items": (0..20).collect::<Vec<i32>>()}}
            }
        })
    }

    fn r(src: &str) -> Result<String, TemplateError> {
        Templates::default().render(src, &Scope::new(&ctx()))
    }

    /// Found by fuzzing (`fuzz/`, target `liquid`, minimised by afl-tmin): templates on which
    /// `liquid` 0.26 panics. Each is an error of its own template, at import and at run time.
    #[test]
    fn templates_that_make_the_liquid_library_panic_are_errors() {
        for (src, parse_error) in [
            // "File shouldn't end before EOI." (parser)
            ("{%comment%}{%raw%}", true),
            // "`LiquidParser::parse` should fail in InvalidLiquidTokens." (parser)
            ("\u{1b}\u{fffd}{{0|where:\"\" }}{%\"}}", true),
            // A byte slice inside a multi-byte character (`date`'s strftime, at render time).
            ("{{\"now\"|date:\"%\u{fffd}\"}}{%case 0%}{%endcase%}", false),
            ("{{ \"now\" | date: \"%é\" }}", false),
            // A field width that made the library pad for minutes (fuzzing, liquid target).
            (
                "{{ \"now\" | date: \"333333{%3333333333333%\" | strip }}",
                false,
            ),
            ("{{ \"now\" | date: \"-false3333333%3333333333%\" }}", false),
        ] {
            let mut ts = Templates::default();
            let added = ts.add(src);
            assert_eq!(added.is_err(), parse_error, "{src:?}: {added:?}");
            let err = r(src).expect_err(src);
            assert!(
                matches!(err, TemplateError::Parse(_) | TemplateError::Render(_)),
                "{src:?}: {err}"
            );
        }
    }

    fn ok(src: &str) -> String {
        r(src).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn date_formats_keep_their_fields_and_refuse_huge_widths() {
        assert_eq!(
            ok("{{ \"2020-01-02 10:00:00 +0000\" | date: \"%Y-%m-%d\" }}"),
            "2020-01-02"
        );
        assert!(date_format_is_bounded("%Y-%m-%d %H:%M %-d %_10Y %%"));
        assert!(!date_format_is_bounded("%65Y"));
        assert!(!date_format_is_bounded("%-99999999999999999999999d"));
        assert!(date_format_is_bounded("100%"));
    }

    #[test]
    fn plain_strings_skip_liquid() {
        assert_eq!(ok("no tags {here}"), "no tags {here}");
        assert!(!is_template("a } b"));
        assert!(is_template("{% if x %}"));
    }

    #[test]
    fn renders_context_values() {
        assert_eq!(ok("Hi {{flow.variables.name}}!"), "Hi Ada!");
        assert_eq!(ok("{{trigger.message.Body | upcase}}"), "HELLO");
        assert_eq!(ok("{{widgets.http_1.status_code}}"), "200");
    }

    #[test]
    fn undefined_renders_empty_at_any_depth() {
        assert_eq!(ok("[{{nope}}]"), "[]");
        assert_eq!(ok("[{{widgets.nope.parsed.x}}]"), "[]");
        assert_eq!(ok("[{{widgets.get-customer.parsed.missing.deeper}}]"), "[]");
        assert_eq!(ok("[{{widgets.get-customer.parsed.n.x}}]"), "[]");
        assert_eq!(ok("[{{trigger.message.Body.foo}}]"), "[]");
        assert_eq!(ok("[{{widgets.get-customer.parsed.tags[5]}}]"), "[]");
    }

    #[test]
    fn hyphenated_names() {
        assert_eq!(ok("{{widgets.get-customer.parsed.name}}"), "Grace");
        assert_eq!(ok("{{widgets['get-customer'].parsed.name}}"), "Grace");
    }

    #[test]
    fn default_filter_and_blank_comparisons() {
        assert_eq!(ok("{{widgets.nope.x | default: 'fallback'}}"), "fallback");
        assert_eq!(ok("{{flow.variables.empty | default: 'fb'}}"), "fb");
        assert_eq!(ok("{{flow.variables.name | default: 'fb'}}"), "Ada");
        assert_eq!(ok("{% if widgets.nope.x == blank %}B{% endif %}"), "B");
        assert_eq!(ok("{% if widgets.nope.x == empty %}E{% endif %}"), "E");
        assert_eq!(ok("{% if widgets.nope.x == nil %}N{% endif %}"), "N");
        assert_eq!(
            ok("{% if flow.variables.empty == blank %}B{% endif %}"),
            "B"
        );
        assert_eq!(
            ok("{% if flow.variables.name == blank %}B{% else %}n{% endif %}"),
            "n"
        );
        assert_eq!(ok("{% if widgets.nope %}T{% else %}F{% endif %}"), "F");
        assert_eq!(
            ok("{% if widgets.get-customer %}T{% else %}F{% endif %}"),
            "T"
        );
    }

    #[test]
    fn sizes_and_assign() {
        assert_eq!(ok("{{trigger.message.Body.size}}"), "5");
        assert_eq!(ok("{{widgets.get-customer.parsed.tags.size}}"), "2");
        assert_eq!(ok("{{widgets.get-customer.parsed.size}}"), "3");
        assert_eq!(ok("{% assign x = 'v' %}{{x}}"), "v");
        assert_eq!(ok("{% assign flow = 'shadow' %}{{flow}}"), "shadow");
    }

    #[test]
    fn json_filter() {
        assert_eq!(
            ok("{{widgets.get-customer.parsed.tags | json}}"),
            r#"["a","b"]"#
        );
        assert_eq!(ok("{{flow.variables.name | json}}"), r#""Ada""#);
        assert_eq!(ok("{{flow.variables.count | json}}"), "3");
        assert_eq!(ok("{{widgets.nope | json}}"), "null");
        assert_eq!(
            ok("{{trigger.message | json}}"),
            r#"{"Body":"Hello","From":"+15550001"}"#
        );
    }

    #[test]
    fn loops_are_capped() {
        let out = ok("{% for i in widgets.http_1.parsed.items %}{{i}},{% endfor %}");
        assert_eq!(out, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,");
        let out = ok("{%- for i in (1..100) -%}x{%- endfor -%}");
        assert_eq!(out.len(), MAX_LOOP_ITERATIONS);
        // An explicit limit is kept.
        assert_eq!(ok("{% for i in (1..9) limit:2 %}{{i}}{% endfor %}"), "12");
    }

    #[test]
    fn huge_ranges_are_not_materialised_and_limit_cannot_lift_the_cap() {
        // Materialising this range would need exabytes; it must cost 15 items.
        let out = ok("{% for i in (1..9000000000000000000) %}x{% endfor %}");
        assert_eq!(out.len(), MAX_LOOP_ITERATIONS);
        let out = ok("{% for i in (1..3000000) limit:3000000 %}x{% endfor %}");
        assert_eq!(out.len(), MAX_LOOP_ITERATIONS);
        let out = ok("{% for i in widgets.http_1.parsed.items limit: 100 %}{{i}},{% endfor %}");
        assert_eq!(out, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,");
        let out = ok("{% tablerow i in (1..3000000) %}x{% endtablerow %}");
        assert_eq!(out.matches("<td").count(), MAX_LOOP_ITERATIONS);
        let out = ok("{% tablerow i in (1..3000000) limit:99 cols:5 %}x{% endtablerow %}");
        assert_eq!(out.matches("<td").count(), MAX_LOOP_ITERATIONS);
        assert_eq!(out.matches("<tr").count(), 3);
    }

    #[test]
    fn for_keeps_liquid_semantics() {
        assert_eq!(
            ok("{% for i in (1..5) offset:1 limit:3 reversed %}{{i}}{% endfor %}"),
            "432"
        );
        assert_eq!(
            ok("{% for i in (1..3) %}{{forloop.index}}/{{forloop.length}}{% unless forloop.last %},{% endunless %}{% endfor %}"),
            "1/3,2/3,3/3"
        );
        assert_eq!(
            ok("{% for a in (1..2) %}{% for b in (1..2) %}{{forloop.parentloop.index}}{{b}} {% endfor %}{% endfor %}"),
            "11 12 21 22 "
        );
        assert_eq!(
            ok("{% for i in widgets.nope %}x{% else %}none{% endfor %}"),
            "none"
        );
        assert_eq!(
            ok("{% for i in (1..9) %}{% if i == 3 %}{% break %}{% endif %}{{i}}{% endfor %}"),
            "12"
        );
        assert_eq!(
            ok("{% for p in widgets.get-customer.parsed.tags %}{{p}}{% endfor %}"),
            "ab"
        );
    }

    #[test]
    fn nested_loops_share_one_work_budget() {
        // 15^4 = 50,625 iterations: over the render's work budget, refused quickly.
        let src = "{% for a in (1..15) %}{% for b in (1..15) %}{% for c in (1..15) %}{% for d in (1..15) %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let err = r(src).expect_err("too much work");
        assert!(err.to_string().contains("units of work"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Three levels (3,375 iterations) are within it.
        assert!(r("{% for a in (1..15) %}{% for b in (1..15) %}{% for c in (1..15) %}{% endfor %}{% endfor %}{% endfor %}").is_ok());
    }

    #[test]
    fn values_cannot_grow_without_bound() {
        // Each line doubles `s`: 2^60 bytes if nothing stopped it.
        let src = format!(
            "{{% assign s = 'xxxxxxxxxxxxxxxx' %}}{}{{{{ s | size }}}}",
            "{% assign s = s | append: s %}".repeat(60)
        );
        let err = r(&src).expect_err("capped");
        assert!(err.to_string().contains("append"), "{err}");
        let src = format!(
            "{{% assign s = 'xxxxxxxxxxxxxxxx' %}}{}{{{{ s | size }}}}",
            "{% capture s %}{{s}}{{s}}{% endcapture %}".repeat(60)
        );
        assert!(r(&src).is_err());
    }

    #[test]
    fn limits_are_errors_of_their_own() {
        let deep = format!(
            "{}x{}",
            "{% if true %}".repeat(40),
            "{% endif %}".repeat(40)
        );
        let err = Templates::default().add(&deep).expect_err("deep");
        assert!(err.is_limit(), "{err}");
        assert!(!TemplateError::Parse("x".into()).is_limit());
        // Inside the cap, nesting renders normally.
        let fine = format!(
            "{}x{}",
            "{% if true %}".repeat(30),
            "{% endif %}".repeat(30)
        );
        assert_eq!(ok(&fine), "x");
    }

    #[test]
    fn output_is_capped() {
        let big = "x".repeat(MAX_RENDERED_BYTES + 1);
        let c = json!({"flow": {"variables": {"big": big}}});
        let err = Templates::default()
            .render("{{flow.variables.big}}", &Scope::new(&c))
            .expect_err("too large");
        assert!(matches!(
            err,
            TemplateError::TooLarge {
                limit: MAX_RENDERED_BYTES,
                ..
            }
        ));
        assert!(err.to_string().contains("16384"));
        let fits = "y".repeat(MAX_RENDERED_BYTES);
        let c = json!({"v": fits});
        assert!(Templates::default()
            .render("{{v}}", &Scope::new(&c))
            .is_ok());
    }

    #[test]
    fn parse_errors_are_reported_and_kept() {
        let mut t = Templates::default();
        assert!(matches!(t.add("{% if %}"), Err(TemplateError::Parse(_))));
        assert!(matches!(t.add("{% if %}"), Err(TemplateError::Parse(_))));
        assert!(t.add("{{ a }}").is_ok());
        assert!(t.add("plain").is_ok());
        assert_eq!(t.len(), 2);
        let err = t
            .render("{% if %}", &Scope::new(&ctx()))
            .expect_err("broken");
        assert!(matches!(err, TemplateError::Parse(_)));
        assert!(r("{{flow.variables.name").is_err());
    }

    #[test]
    fn spaced_dots_in_paths_are_repaired() {
        // From segment-ivr.json and support-triage-sms.json.
        assert_eq!(ok("{{flow. variables .name}}"), "Ada");
        assert_eq!(
            ok("{% if widgets. \nget-customer .parsed.name == 'Grace' %}y{% endif %}"),
            "y"
        );
        assert_eq!(ok("{{ 'a. b' }}"), "a. b");
    }

    #[test]
    fn split_follows_ruby() {
        assert_eq!(ok("{{ 'abc' | split: '' | join: '-' }}"), "a-b-c");
        assert_eq!(ok("{{ 'a,b,,' | split: ',' | size }}"), "2");
        assert_eq!(ok("{{ '' | split: ',' | size }}"), "0");
    }

    #[test]
    fn studio_digit_spelling_template() {
        // From appointment-ivr-es-set-variables.json.
        let src = "{%- assign number = widgets.g.Digits | split: \"\" -%}\n{%- for digit in number -%}\n{{ digit }}\n {%- unless forloop.last -%}{{ '... ' }}{%- endunless -%}\n{%- endfor -%}";
        let c = json!({"widgets": {"g": {"Digits": "123"}}});
        let out = Templates::default()
            .render(src, &Scope::new(&c))
            .expect("render");
        assert_eq!(out, "1... 2... 3");
    }
}

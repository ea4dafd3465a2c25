//! Bounds on Liquid that the `liquid` crate does not enforce itself.
//!
//! - Parse time ([`prescan`]): template size, block nesting depth and `and`/`or` operators
//!   per condition are checked on the raw text *before* `liquid` sees it. Its block parser
//!   recurses once per nested block (and conditions evaluate recursively), so a hostile
//!   template would overflow the thread's stack inside the parser: a bound checked afterwards
//!   is too late.
//! - Render time: our own `for`, `tablerow` and `capture` blocks replace the stdlib ones.
//!   Loops never materialise their range (`(1..3000000)` costs 15 items, not 3 million),
//!   run at most [`MAX_LOOP_ITERATIONS`] times whatever `limit:` says, and every iteration
//!   and filter call is charged to one render-wide budget ([`MAX_RENDER_WORK`]), so nested
//!   or repeated loops stay bounded too. Filter results and captures are capped in size, so
//!   `{% assign s = s | append: s %}` repeated cannot grow exponentially.

use std::io::Write;

use liquid_core::model::{KString, Object, ScalarCow, Value, ValueCow, ValueView};
use liquid_core::parser::{BlockElement, FilterArguments, TryMatchToken};
use liquid_core::runtime::{Interrupt, InterruptRegister, StackFrame};
use liquid_core::{
    BlockReflection, Error, Expression, Filter, FilterReflection, Language, ParseBlock,
    ParseFilter, Renderable, Result, Runtime, TagBlock, TagTokenIter, Template,
};
use liquid_lib::stdlib::{Range, RangeExpression};

use super::template::{TemplateError, MAX_LOOP_ITERATIONS, MAX_RENDERED_BYTES};

/// Longest template source (the largest in the Studio corpus is under 1 KB).
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Longest `{{ … }}` or `{% … %}` (the largest in the Studio corpus is 150 bytes): the
/// `liquid` parser backtracks over a tag in time quadratic in its length.
pub const MAX_TAG_BYTES: usize = 1024;
/// Longest run of blank characters (spaces, tabs, line breaks) in a template: the `liquid`
/// lexer takes time quadratic in each run's length (6,000 spaces after a tag took 5 s). The
/// longest run in the Studio corpus's templates is 9.
pub const MAX_BLANK_RUN: usize = 64;
/// Deepest nesting of Liquid blocks (`if`, `for`, `case`, …).
pub const MAX_NESTING: usize = 32;
/// Most `and`/`or` operators in one condition tag (they evaluate recursively).
pub const MAX_CONDITION_OPERATORS: usize = 64;
/// Work one render may do: one unit per loop iteration and per filter call, plus one per
/// 4 KB a filter produces.
pub const MAX_RENDER_WORK: usize = 10_000;
/// Largest value a filter may produce (the largest HTTP body a widget publishes is 1 MB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Block tags of the stdlib (and our replacements): each nests one parser frame.
const BLOCKS: &[&str] = &[
    "if",
    "unless",
    "ifchanged",
    "for",
    "tablerow",
    "comment",
    "capture",
    "case",
    "raw",
];

/// Check size, nesting and condition length on the raw text, mirroring how `liquid`'s
/// lexer splits it: `{{ … }}` and `{% … %}` end at the first closer outside a quoted
/// string, and a block closes only on its own end tag (any other end tag is an error in
/// `liquid`, or ignored inside `comment`), so the depth found here is never below the
/// parser's.
pub(crate) fn prescan(src: &str) -> std::result::Result<(), TemplateError> {
    if src.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLong {
            size: src.len(),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    let b = src.as_bytes();
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_whitespace() {
            run += 1;
            if run > MAX_BLANK_RUN {
                return Err(TemplateError::Parse(format!(
                    "more than {MAX_BLANK_RUN} blank characters in a row at byte {}; a template may hold at most {MAX_BLANK_RUN}",
                    i + 1 - run
                )));
            }
        } else {
            run = 0;
        }
    }
    let mut stack: Vec<&str> = Vec::new();
    let mut in_raw = false;
    let mut i = 0;
    while i + 1 < b.len() {
        let is_tag = match (b[i], b[i + 1]) {
            (b'{', b'%') => true,
            (b'{', b'{') => false,
            _ => {
                i += 1;
                continue;
            }
        };
        let start = i + 2;
        let closer: &[u8] = if is_tag { b"%}" } else { b"}}" };
        // Unterminated: `liquid` refuses it too, but only after backtracking over the rest of
        // the text, which takes time quadratic in its length (fuzzing found a 16 KB template
        // that took over 10 s): refuse it here at once.
        let Some(end) = find_closer(b, start, closer) else {
            return Err(TemplateError::Parse(format!(
                "`{}` at byte {i} is never closed with `{}`",
                if is_tag { "{%" } else { "{{" },
                if is_tag { "%}" } else { "}}" },
            )));
        };
        let inner = src.get(start..end).unwrap_or("");
        if !in_raw && inner.len() > MAX_TAG_BYTES {
            return Err(TemplateError::Parse(format!(
                "the `{}` at byte {i} holds {} bytes; a tag or output may hold at most {MAX_TAG_BYTES}",
                if is_tag { "{%" } else { "{{" },
                inner.len()
            )));
        }
        if !in_raw {
            if let Some(digits) = overflowing_integer(inner) {
                return Err(TemplateError::Parse(format!(
                    "integer literal {digits} at byte {i} does not fit in 64 bits"
                )));
            }
        }
        if is_tag {
            let name = tag_name(inner);
            if in_raw {
                in_raw = name != "endraw";
            } else if BLOCKS.contains(&name) {
                if stack.len() >= MAX_NESTING {
                    return Err(TemplateError::TooDeep {
                        limit: MAX_NESTING,
                        tag: name.to_owned(),
                        offset: i,
                    });
                }
                if name == "raw" {
                    in_raw = true;
                } else {
                    stack.push(name);
                }
            } else if let Some(block) = name.strip_prefix("end") {
                if stack.last() == Some(&block) {
                    stack.pop();
                }
            }
            if matches!(name, "if" | "elsif" | "unless")
                && operators(inner) > MAX_CONDITION_OPERATORS
            {
                return Err(TemplateError::TooManyOperators {
                    limit: MAX_CONDITION_OPERATORS,
                    offset: i,
                });
            }
        }
        i = end + 2;
    }
    Ok(())
}

/// Index of `closer` at or after `from`, skipping quoted strings (as the lexer does).
fn find_closer(b: &[u8], from: usize, closer: &[u8]) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                let close = b.get(i + 1..)?.iter().position(|&c| c == q)?;
                i += close + 2;
            }
            _ if b[i..].starts_with(closer) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// An integer literal outside quoted strings that does not fit in an `i64`: `liquid` 0.26
/// panics on one while parsing ("Grammar ensures matches are parseable as integers."), so it
/// must be refused before the parser sees it. A digit run that belongs to a name (`a9`,
/// `a-9`, `x.9`) or is a float's part is not an integer literal; `(1..9)` and `-9` are.
fn overflowing_integer(inner: &str) -> Option<&str> {
    let b = inner.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => match b[i + 1..].iter().position(|&c| c == q) {
                Some(close) => i += close + 2,
                None => return None,
            },
            c if c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let before = |n: usize| start.checked_sub(n).map(|p| b[p]);
                let literal = match before(1) {
                    None => true,
                    // `a-9` is a name, ` -9` a negative literal.
                    Some(b'-') => !before(2).is_some_and(word),
                    // `(1..9)` ends a range; `x.9` and `1.9` are not integers.
                    Some(b'.') => before(2) == Some(b'.'),
                    Some(c) => !(c.is_ascii_alphanumeric() || c == b'_'),
                };
                let float = b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit);
                let digits = &inner[start..i];
                let negative = before(1) == Some(b'-');
                let fits = if negative {
                    format!("-{digits}").parse::<i64>().is_ok()
                } else {
                    digits.parse::<i64>().is_ok()
                };
                if literal && !float && !fits {
                    return Some(digits);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The identifier a tag starts with (after whitespace control and blanks).
fn tag_name(inner: &str) -> &str {
    let t = inner.strip_prefix('-').unwrap_or(inner).trim_start();
    let len = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    &t[..len]
}

/// `and`/`or` words outside quoted strings.
fn operators(inner: &str) -> usize {
    let mut plain = String::with_capacity(inner.len());
    let mut quote = None;
    for c in inner.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                plain.push(' ');
            }
            None => plain.push(c),
        }
    }
    plain
        .split_whitespace()
        .filter(|w| *w == "and" || *w == "or")
        .count()
}

/// The render-wide work counter (a liquid register lives as long as one render).
#[derive(Default)]
struct Work {
    used: usize,
}

fn charge(runtime: &dyn Runtime, units: usize) -> Result<()> {
    let mut w = runtime.registers().get_mut::<Work>();
    w.used = w.used.saturating_add(units);
    if w.used > MAX_RENDER_WORK {
        return Err(Error::with_msg(format!(
            "the template did more than {MAX_RENDER_WORK} units of work (loop iterations and filter calls)"
        )));
    }
    Ok(())
}

/// Size of a value in bytes (strings) and items, counting no further than `limit + 1`.
fn value_size(v: &dyn ValueView, limit: usize) -> usize {
    if let Some(s) = v.as_scalar() {
        return s.to_kstr().len();
    }
    let mut total = 0usize;
    if let Some(a) = v.as_array() {
        for x in a.values() {
            total = total.saturating_add(1 + value_size(x, limit));
            if total > limit {
                break;
            }
        }
    } else if let Some(o) = v.as_object() {
        for (k, x) in o.iter() {
            total = total.saturating_add(1 + k.len() + value_size(x, limit));
            if total > limit {
                break;
            }
        }
    }
    total
}

/// A writer that refuses to grow past `limit` bytes.
pub(crate) struct CappedWriter {
    pub buf: Vec<u8>,
    limit: usize,
    /// Bytes that were asked for when the limit was hit.
    pub overflow: Option<usize>,
}

impl CappedWriter {
    pub fn new(limit: usize) -> CappedWriter {
        CappedWriter {
            buf: Vec::new(),
            limit,
            overflow: None,
        }
    }
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let want = self.buf.len().saturating_add(data.len());
        if want > self.limit {
            self.overflow = Some(want);
            return Err(std::io::Error::other(format!(
                "output over {} bytes",
                self.limit
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Wraps a filter: charges the work budget and caps the size of what it returns.
#[derive(Clone)]
pub(crate) struct Metered(pub Box<dyn ParseFilter>);

impl ParseFilter for Metered {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>> {
        let inner = self.0.parse(arguments)?;
        Ok(Box::new(MeteredFilter {
            name: self.0.reflection().name().to_owned(),
            inner,
        }))
    }

    fn reflection(&self) -> &dyn FilterReflection {
        self.0.reflection()
    }
}

#[derive(Debug)]
struct MeteredFilter {
    name: String,
    inner: Box<dyn Filter>,
}

impl std::fmt::Display for MeteredFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Filter for MeteredFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        charge(runtime, 1)?;
        let out = self.inner.evaluate(input, runtime)?;
        let size = value_size(&out, MAX_VALUE_BYTES);
        if size > MAX_VALUE_BYTES {
            return Err(Error::with_msg(format!(
                "filter `{}` produced a value over {MAX_VALUE_BYTES} bytes",
                self.name
            )));
        }
        charge(runtime, size / 4096)?;
        Ok(out)
    }
}

/// `:` then a value (`limit: 3`, `offset: n`).
fn parse_attr(arguments: &mut TagTokenIter<'_>) -> Result<Expression> {
    arguments
        .expect_next("\":\" expected.")?
        .expect_str(":")
        .into_result_custom_msg("\":\" expected.")?;
    arguments
        .expect_next("Value expected.")?
        .expect_value()
        .into_result()
}

fn parse_range(arguments: &mut TagTokenIter<'_>) -> Result<RangeExpression> {
    let range = arguments.expect_next("Array or range expected.")?;
    Ok(match range.expect_value() {
        TryMatchToken::Matches(array) => RangeExpression::Array(array),
        TryMatchToken::Fails(range) => match range.expect_range() {
            TryMatchToken::Matches((start, stop)) => RangeExpression::Counted(start, stop),
            TryMatchToken::Fails(range) => return range.raise_error().into_err(),
        },
    })
}

fn whole_number(attr: &Option<Expression>, runtime: &dyn Runtime) -> Result<Option<usize>> {
    let Some(attr) = attr else { return Ok(None) };
    let value = attr.evaluate(runtime)?;
    let n = value
        .as_scalar()
        .and_then(|s| s.to_integer())
        .ok_or_else(|| {
            Error::with_msg(format!(
                "Expected whole number, found `{}`",
                value.type_name()
            ))
        })?;
    // Negative limits and offsets count as 0, as in Ruby Liquid.
    Ok(Some(usize::try_from(n).unwrap_or(0)))
}

/// At most `limit` items of `range` after skipping `offset`, without materialising more.
fn items<'r>(range: &'r Range<'r>, offset: usize, limit: usize) -> Result<Vec<ValueCow<'r>>> {
    Ok(match range {
        Range::Counted(start, stop) => {
            let first = i64::try_from(offset)
                .ok()
                .and_then(|o| start.checked_add(o));
            match first {
                Some(first) if first <= *stop => (first..=*stop)
                    .take(limit)
                    .map(|x| ValueCow::Owned(Value::scalar(x)))
                    .collect(),
                _ => Vec::new(),
            }
        }
        Range::Array(v) => {
            let v = v.as_view();
            if let Some(a) = v.as_array() {
                a.values()
                    .skip(offset)
                    .take(limit)
                    .map(ValueCow::Borrowed)
                    .collect()
            } else if let Some(o) = v.as_object() {
                o.iter()
                    .skip(offset)
                    .take(limit)
                    .map(|(k, x)| {
                        ValueCow::Owned(Value::Array(vec![
                            Value::scalar(k.into_owned()),
                            x.to_value(),
                        ]))
                    })
                    .collect()
            } else if v.is_state() || v.is_nil() {
                Vec::new()
            } else {
                return Err(Error::with_msg(format!(
                    "Expected array, found `{}`",
                    v.type_name()
                )));
            }
        }
    })
}

/// `limit:` can lower the cap, never raise it.
fn capped(limit: Option<usize>) -> usize {
    limit.map_or(MAX_LOOP_ITERATIONS, |l| l.min(MAX_LOOP_ITERATIONS))
}

/// `{% for x in range limit:n offset:n reversed %}…{% else %}…{% endfor %}`, bounded.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct ForBlock;

impl BlockReflection for ForBlock {
    fn start_tag(&self) -> &str {
        "for"
    }
    fn end_tag(&self) -> &str {
        "endfor"
    }
    fn description(&self) -> &str {
        "Loop over an array or range (at most 15 iterations)."
    }
}

impl ParseBlock for ForBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let var_name = arguments
            .expect_next("Identifier expected.")?
            .expect_identifier()
            .into_result()?;
        arguments
            .expect_next("\"in\" expected.")?
            .expect_str("in")
            .into_result_custom_msg("\"in\" expected.")?;
        let range = parse_range(&mut arguments)?;
        let (mut limit, mut offset, mut reversed) = (None, None, false);
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "limit" => limit = Some(parse_attr(&mut arguments)?),
                "offset" => offset = Some(parse_attr(&mut arguments)?),
                "reversed" => reversed = true,
                _ => {
                    return token
                        .raise_custom_error("\"limit\", \"offset\" or \"reversed\" expected.")
                        .into_err()
                }
            }
        }
        arguments.expect_nothing()?;

        let mut item_template = Vec::new();
        let mut else_template = None;
        while let Some(element) = tokens.next()? {
            match element {
                BlockElement::Tag(mut tag) => match tag.name() {
                    "else" => {
                        tag.tokens().expect_nothing()?;
                        else_template = Some(tokens.parse_all(options)?);
                        break;
                    }
                    _ => item_template.push(tag.parse(&mut tokens, options)?),
                },
                element => item_template.push(element.parse(&mut tokens, options)?),
            }
        }
        tokens.assert_empty();
        Ok(Box::new(For {
            var_name: KString::from_ref(var_name),
            range,
            item_template: Template::new(item_template),
            else_template: else_template.map(Template::new),
            limit,
            offset,
            reversed,
        }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct For {
    var_name: KString,
    range: RangeExpression,
    item_template: Template,
    else_template: Option<Template>,
    limit: Option<Expression>,
    offset: Option<Expression>,
    reversed: bool,
}

fn forloop(i: usize, len: usize, parent: Option<&Value>) -> Value {
    let (i, len) = (i as i64, len as i64);
    let mut o = Object::new();
    o.insert("length".into(), Value::scalar(len));
    o.insert("index0".into(), Value::scalar(i));
    o.insert("index".into(), Value::scalar(i + 1));
    o.insert("rindex0".into(), Value::scalar(len - i - 1));
    o.insert("rindex".into(), Value::scalar(len - i));
    o.insert("first".into(), Value::scalar(i == 0));
    o.insert("last".into(), Value::scalar(i == len - 1));
    if let Some(p) = parent {
        o.insert("parentloop".into(), p.clone());
    }
    Value::Object(o)
}

impl Renderable for For {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let range = self.range.evaluate(runtime)?;
        let limit = capped(whole_number(&self.limit, runtime)?);
        let offset = whole_number(&self.offset, runtime)?.unwrap_or(0);
        let mut items = items(&range, offset, limit)?;
        if self.reversed {
            items.reverse();
        }
        if items.is_empty() {
            if let Some(t) = &self.else_template {
                t.render_to(writer, runtime)?;
            }
            return Ok(());
        }
        let parent = runtime
            .try_get(&[ScalarCow::new("forloop")])
            .map(|v| v.to_value());
        let len = items.len();
        for (i, v) in items.into_iter().enumerate() {
            charge(runtime, 1)?;
            let fl = forloop(i, len, parent.as_ref());
            let mut root = std::collections::HashMap::<
                liquid_core::model::KStringRef<'_>,
                &dyn ValueView,
            >::new();
            root.insert("forloop".into(), &fl);
            root.insert(self.var_name.as_ref(), &v);
            let scope = StackFrame::new(runtime, &root);
            self.item_template.render_to(writer, &scope)?;
            let interrupt = scope.registers().get_mut::<InterruptRegister>().reset();
            if let Some(Interrupt::Break) = interrupt {
                break;
            }
        }
        Ok(())
    }
}

/// `{% tablerow x in range cols:n limit:n offset:n %}…{% endtablerow %}`, bounded like `for`.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct TableRowBlock;

impl BlockReflection for TableRowBlock {
    fn start_tag(&self) -> &str {
        "tablerow"
    }
    fn end_tag(&self) -> &str {
        "endtablerow"
    }
    fn description(&self) -> &str {
        "HTML table rows over an array or range (at most 15 cells)."
    }
}

impl ParseBlock for TableRowBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let var_name = arguments
            .expect_next("Identifier expected.")?
            .expect_identifier()
            .into_result()?;
        arguments
            .expect_next("\"in\" expected.")?
            .expect_str("in")
            .into_result_custom_msg("\"in\" expected.")?;
        let range = parse_range(&mut arguments)?;
        let (mut cols, mut limit, mut offset) = (None, None, None);
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "cols" => cols = Some(parse_attr(&mut arguments)?),
                "limit" => limit = Some(parse_attr(&mut arguments)?),
                "offset" => offset = Some(parse_attr(&mut arguments)?),
                _ => {
                    return token
                        .raise_custom_error("\"cols\", \"limit\" or \"offset\" expected.")
                        .into_err()
                }
            }
        }
        arguments.expect_nothing()?;
        let item_template = Template::new(tokens.parse_all(options)?);
        tokens.assert_empty();
        Ok(Box::new(TableRow {
            var_name: KString::from_ref(var_name),
            range,
            item_template,
            cols,
            limit,
            offset,
        }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct TableRow {
    var_name: KString,
    range: RangeExpression,
    item_template: Template,
    cols: Option<Expression>,
    limit: Option<Expression>,
    offset: Option<Expression>,
}

fn tablerow(i: usize, len: usize, col: usize, cols: usize) -> Value {
    let (i, len, col, cols) = (i as i64, len as i64, col as i64, cols as i64);
    let mut o = Object::new();
    o.insert("length".into(), Value::scalar(len));
    o.insert("index0".into(), Value::scalar(i));
    o.insert("index".into(), Value::scalar(i + 1));
    o.insert("rindex0".into(), Value::scalar(len - i - 1));
    o.insert("rindex".into(), Value::scalar(len - i));
    o.insert("first".into(), Value::scalar(i == 0));
    o.insert("last".into(), Value::scalar(i == len - 1));
    o.insert("col0".into(), Value::scalar(col));
    o.insert("col".into(), Value::scalar(col + 1));
    o.insert("col_first".into(), Value::scalar(col == 0));
    o.insert(
        "col_last".into(),
        Value::scalar(col == cols - 1 || i == len - 1),
    );
    Value::Object(o)
}

fn render_err(e: std::io::Error) -> Error {
    Error::with_msg(format!("Failed to render: {e}"))
}

impl Renderable for TableRow {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let range = self.range.evaluate(runtime)?;
        let limit = capped(whole_number(&self.limit, runtime)?);
        let offset = whole_number(&self.offset, runtime)?.unwrap_or(0);
        let items = items(&range, offset, limit)?;
        let len = items.len();
        let cols = whole_number(&self.cols, runtime)?
            .filter(|c| *c > 0)
            .unwrap_or(len.max(1));
        for (i, v) in items.into_iter().enumerate() {
            charge(runtime, 1)?;
            let (col, row) = (i % cols, i / cols);
            let tr = tablerow(i, len, col, cols);
            if col == 0 {
                write!(writer, "<tr class=\"row{}\">", row + 1).map_err(render_err)?;
            }
            write!(writer, "<td class=\"col{}\">", col + 1).map_err(render_err)?;
            let mut root = std::collections::HashMap::<
                liquid_core::model::KStringRef<'_>,
                &dyn ValueView,
            >::new();
            root.insert("tablerow".into(), &tr);
            root.insert(self.var_name.as_ref(), &v);
            let scope = StackFrame::new(runtime, &root);
            self.item_template.render_to(writer, &scope)?;
            write!(writer, "</td>").map_err(render_err)?;
            if col == cols - 1 || i == len - 1 {
                write!(writer, "</tr>").map_err(render_err)?;
            }
        }
        Ok(())
    }
}

/// `{% capture x %}…{% endcapture %}` whose captured text is capped like rendered output.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct CaptureBlock;

impl BlockReflection for CaptureBlock {
    fn start_tag(&self) -> &str {
        "capture"
    }
    fn end_tag(&self) -> &str {
        "endcapture"
    }
    fn description(&self) -> &str {
        "Capture rendered text into a variable (at most 16 KB)."
    }
}

impl ParseBlock for CaptureBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let id: KString = arguments
            .expect_next("Identifier expected")?
            .expect_identifier()
            .into_result()?
            .to_owned()
            .into();
        arguments.expect_nothing()?;
        let template = Template::new(tokens.parse_all(options)?);
        tokens.assert_empty();
        Ok(Box::new(Capture { id, template }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct Capture {
    id: KString,
    template: Template,
}

impl Renderable for Capture {
    fn render_to(&self, _writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let mut captured = CappedWriter::new(MAX_RENDERED_BYTES);
        self.template.render_to(&mut captured, runtime)?;
        let output = String::from_utf8_lossy(&captured.buf).into_owned();
        runtime.set_global(self.id.clone(), Value::scalar(output));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/`, target `liquid`): `liquid` 0.26 panicked parsing an
    /// integer literal beyond `i64`, which aborted a flow import or a render.
    #[test]
    fn integer_literals_beyond_64_bits_are_a_parse_error_not_a_panic() {
        use crate::flow::template::{Scope, Templates};
        let huge = [
            "{{ 99999999999999999999 }}",
            "{{ x | plus: 9223372036854775808 }}",
            "{{ -9223372036854775809 }}",
            "{% assign a = 99999999999999999999 %}",
            "{% if x > 99999999999999999999 %}y{% endif %}",
            "{% for i in (1..99999999999999999999) %}{{ i }}{% endfor %}",
            "{{ x[99999999999999999999] }}",
            // The fuzzer's input, minimised.
            "{{ 999999999999999999999910 | divided_by: 0 }}",
        ];
        let scope = Scope::new(&serde_json::json!({"x": [1]}));
        for t in huge {
            let err = prescan(t).expect_err(t);
            assert!(matches!(err, TemplateError::Parse(_)), "{t}: {err}");
            assert!(Templates::default().render(t, &scope).is_err(), "{t}");
        }
        // What still fits, and digits that are not integer literals.
        for t in [
            "{{ 9223372036854775807 }}",
            "{{ -9223372036854775808 }}",
            "{{ 1.99999999999999999999 }}",
            "{{ \"99999999999999999999\" }}",
            "{{ a99999999999999999999 }}",
            "{{ a-99999999999999999999 }}",
            "{% raw %}{{ 99999999999999999999 }}{% endraw %}",
            "99999999999999999999",
        ] {
            assert!(prescan(t).is_ok(), "{t}");
            let mut ts = Templates::default();
            let _ = ts.add(t);
            let _ = ts.render(t, &scope);
        }
    }

    /// Found by fuzzing (target `flow`): an unclosed `{%` or `{{` followed by kilobytes of
    /// text made `liquid` backtrack for seconds before refusing it.
    #[test]
    fn an_unclosed_tag_is_refused_before_liquid_backtracks_over_it() {
        use crate::flow::template::{Scope, Templates};
        let scope = Scope::new(&serde_json::json!({}));
        let long = "x".repeat(12_000);
        for t in [
            format!("{{%  C{long}"),
            format!("{{{{ x{long}"),
            "{% if a %}".to_string() + "{{ b",
            "hello {{".to_string(),
            "{% '%}' ".to_string(),
        ] {
            let err = prescan(&t).expect_err(&t[..t.len().min(20)]);
            assert!(err.to_string().contains("never closed"), "{err}");
        }
        // Liquid itself agrees on the short ones: no valid template is lost.
        for t in ["{{ b", "hello {{", "{% if a %}"] {
            if t.contains("{{") {
                assert!(Templates::default().render(t, &scope).is_err(), "{t}");
            }
        }
        // Braces that open nothing are text.
        for t in ["{ x }", "100% sure", "a } b %}", "{x{y"] {
            assert!(prescan(t).is_ok(), "{t}");
        }
    }

    /// Found by fuzzing (target `flow`): a closed tag of 11 KB (an unknown tag, spaces, a
    /// filter chain) took 10 s to refuse.
    #[test]
    fn a_tag_longer_than_its_limit_is_refused_before_parsing() {
        let long = format!(
            "{{% of {} sed.name | default: x default: y ev[ %}}",
            "x ".repeat(5_000)
        );
        let err = prescan(&long).expect_err("too long");
        assert!(err.to_string().contains("at most 1024"), "{err}");
        let output = format!("{{{{ x{} }}}}", " y".repeat(1000));
        assert!(prescan(&output).is_err());
        // Up to the limit, and anything inside raw, is fine.
        let fits = format!("{{{{ x{} }}}}", " y".repeat(500));
        assert!(prescan(&fits).is_ok());
        let raw = format!("{{% raw %}}{{{{ {} }}}}{{% endraw %}}", "y".repeat(5000));
        assert!(prescan(&raw).is_ok());
    }

    /// Found by fuzzing (target `flow`, in CI's smoke run): `{% if a %}` followed by 10,000
    /// spaces took 10 s; a long blank run anywhere is slow to lex, inside a tag or not.
    #[test]
    fn long_blank_runs_are_refused_before_lexing() {
        for t in [
            format!("{{% if a %}}{}{{% endif %}}", " ".repeat(6000)),
            format!("{{{{ a }}}}{}", "\n".repeat(100)),
            format!("{}{{{{ a }}}}", " \t".repeat(40)),
        ] {
            let err = prescan(&t).expect_err("blank run");
            assert!(
                err.to_string().contains("blank characters in a row"),
                "{err}"
            );
        }
        // JSON bodies and prompts keep their indentation and line breaks.
        let body = "{\n    \"to\": \"{{contact.channel.address}}\",\n        \"x\": 1\n}";
        assert!(prescan(body).is_ok());
        assert!(prescan(&format!("{{{{ a }}}}{}", " ".repeat(64))).is_ok());
    }

    #[test]
    fn prescan_counts_real_nesting_only() {
        assert!(prescan("{% if a %}{% for x in y %}{{x}}{% endfor %}{% endif %}").is_ok());
        // Many blocks one after another are fine; depth is what counts.
        let seq = "{% if a %}x{% endif %}".repeat(200);
        assert!(prescan(&seq).is_ok());
        let deep = format!(
            "{}{}",
            "{% if true %}".repeat(MAX_NESTING + 1),
            "{% endif %}".repeat(MAX_NESTING + 1)
        );
        let err = prescan(&deep).expect_err("too deep");
        assert!(
            matches!(err, TemplateError::TooDeep { limit: 32, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("32"), "{err}");
        let ok = format!(
            "{}{}",
            "{%- if true -%}".repeat(MAX_NESTING),
            "{%- endif -%}".repeat(MAX_NESTING)
        );
        assert!(prescan(&ok).is_ok());
    }

    #[test]
    fn prescan_is_not_fooled_by_closers_in_strings_or_wrong_end_tags() {
        // An `endif` inside a string, an expression or a mismatched end tag closes nothing.
        for hide in [
            "{{ \"{% endif %}\" }}",
            "{% assign s = \"{% endif %}\" %}",
            "{% endfor %}",
            "{% comment %}{% endif %}{% endcomment %}",
        ] {
            let t = format!("{{% if true %}}{hide}").repeat(MAX_NESTING + 1);
            assert!(prescan(&t).is_err(), "{hide}");
        }
        // Raw blocks are not parsed.
        let raw = format!("{{% raw %}}{}{{% endraw %}}", "{% if x %}".repeat(100));
        assert!(prescan(&raw).is_ok());
    }

    #[test]
    fn prescan_bounds_size_and_conditions() {
        let long = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(prescan(&long), Err(TemplateError::TooLong { .. })));
        let ors = format!(
            "{{% if a {} %}}y{{% endif %}}",
            "or a ".repeat(MAX_CONDITION_OPERATORS + 1)
        );
        assert!(matches!(
            prescan(&ors),
            Err(TemplateError::TooManyOperators { .. })
        ));
        assert!(prescan("{% if a == 'x or y and z' or b %}y{% endif %}").is_ok());
    }
}

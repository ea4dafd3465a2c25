//! SSML inside a `say` (Studio and Twilio accept `<break>`, `<prosody>`, `<say-as>`,
//! `<emphasis>`, `<sub>` in the text): rewritten into the subset espeak-ng renders with `-m`,
//! or into plain text for an engine without SSML (flite). Only known elements and attributes
//! pass; `<audio>`, `<mark>`, `<phoneme>` and vendor tags are dropped (their text kept), so
//! text from a flow's variables cannot make the engine read files. `<say-as>` is expanded
//! here (digits, telephone, characters, date), since espeak-ng reads most of it as words.

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Elements passed on to espeak-ng, with the attributes each may keep.
const KEPT: &[(&str, &[&str])] = &[
    ("break", &["time", "strength"]),
    ("prosody", &["rate", "pitch", "volume"]),
    ("emphasis", &["level"]),
    ("p", &[]),
    ("s", &[]),
];

/// Deepest element nesting taken as SSML (deeper text is spoken as plain text).
const MAX_DEPTH: usize = 32;
/// Longest `<break>` (Twilio's limit), and all breaks of one text together: text from a
/// flow's variables must not make the engine render hours of silence.
const MAX_BREAK_MS: u64 = 10_000;
const MAX_BREAKS_MS: u64 = 60_000;

/// Whether `text` holds SSML markup worth interpreting.
pub fn is_ssml(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "<speak",
        "<break",
        "<prosody",
        "<say-as",
        "<emphasis",
        "<sub",
        "<p>",
        "<s>",
    ]
    .iter()
    .any(|t| lower.contains(t))
}

/// What the engine is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// `<speak>…</speak>` for espeak-ng `-m`.
    Ssml(String),
    /// Text without markup (pauses as commas).
    Plain(String),
}

/// `text` (SSML, with or without its `<speak>` root) for an engine that renders SSML
/// (`ssml = true`) or not. Markup that does not parse is read as plain text, tags removed.
pub fn render(text: &str, ssml: bool) -> Rendered {
    let trimmed = text.trim();
    let doc = if trimmed.to_ascii_lowercase().starts_with("<speak") {
        trimmed.to_string()
    } else {
        format!("<speak>{trimmed}</speak>")
    };
    match convert(&doc, ssml) {
        Some(out) if ssml => Rendered::Ssml(format!("<speak>{out}</speak>")),
        Some(out) => Rendered::Plain(collapse(&out)),
        None => Rendered::Plain(collapse(&strip_tags(trimmed))),
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// An open element: what to write at its end, and the `<say-as>`/`<sub>` text it collects.
struct Open {
    close: Option<String>,
    collect: Option<Collect>,
}

enum Collect {
    SayAs {
        kind: String,
        format: String,
        text: String,
    },
    Sub {
        alias: String,
    },
}

fn convert(doc: &str, ssml: bool) -> Option<String> {
    let mut reader = Reader::from_str(doc);
    reader.config_mut().check_end_names = true;
    let mut out = String::new();
    let mut breaks_ms = 0u64;
    let mut stack: Vec<Open> = Vec::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return None;
                }
                let open = start(&e, ssml, &mut out, &mut breaks_ms)?;
                stack.push(open);
            }
            Event::Empty(e) => {
                if let Some(open) = start(&e, ssml, &mut out, &mut breaks_ms) {
                    finish(open, &mut out, ssml);
                }
            }
            Event::End(_) => {
                let open = stack.pop()?;
                finish(open, &mut out, ssml);
            }
            Event::Text(t) => push_text(&mut stack, &mut out, &t.xml10_content(), ssml),
            Event::CData(t) => push_text(&mut stack, &mut out, &t.xml10_content(), ssml),
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().ok()? {
                    Some(c) => c.to_string(),
                    None => resolve_predefined_entity(&r)?.to_string(),
                };
                push_text(&mut stack, &mut out, &s, ssml);
            }
            Event::Eof => return stack.is_empty().then_some(out),
            _ => {}
        }
    }
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        a.key.as_ref().eq_ignore_ascii_case(name).then(|| {
            a.normalized_value(XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_default()
        })
    })
}

/// Open an element: write what it becomes and say how it ends. None only for malformed
/// attributes.
fn start(e: &BytesStart<'_>, ssml: bool, out: &mut String, breaks_ms: &mut u64) -> Option<Open> {
    let name = e.local_name().as_ref().to_ascii_lowercase();
    let plain = |close: Option<String>| {
        Some(Open {
            close,
            collect: None,
        })
    };
    match name.as_str() {
        "say-as" => Some(Open {
            close: None,
            collect: Some(Collect::SayAs {
                kind: attr(e, "interpret-as")
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                format: attr(e, "format").unwrap_or_default().to_ascii_lowercase(),
                text: String::new(),
            }),
        }),
        "sub" => Some(Open {
            close: None,
            collect: Some(Collect::Sub {
                alias: attr(e, "alias").unwrap_or_default(),
            }),
        }),
        "break" if !ssml => {
            out.push_str(", ");
            plain(None)
        }
        "break" => {
            // Its length in milliseconds, clamped; `strength` alone is espeak-ng's to size.
            let wanted = attr(e, "time").and_then(|t| break_ms(&t));
            match wanted {
                Some(ms) => {
                    let ms = ms.min(MAX_BREAK_MS).min(MAX_BREAKS_MS - *breaks_ms);
                    *breaks_ms += ms;
                    out.push_str(&format!("<break time=\"{ms}ms\">"));
                }
                None => match attr(e, "strength") {
                    Some(s) if s.chars().all(|c| c.is_ascii_alphabetic() || c == '-') => {
                        out.push_str(&format!("<break strength=\"{}\">", &s[..s.len().min(8)]))
                    }
                    _ => out.push_str("<break>"),
                },
            }
            plain(Some("</break>".into()))
        }
        _ if !ssml => plain(None),
        other => match KEPT.iter().find(|(n, _)| *n == other) {
            Some((n, allowed)) => {
                out.push('<');
                out.push_str(n);
                for a in allowed.iter() {
                    if let Some(v) = attr(e, a) {
                        let clean: String = v
                            .chars()
                            .filter(|c| c.is_ascii_alphanumeric() || "+-.%".contains(*c))
                            .take(16)
                            .collect();
                        out.push_str(&format!(" {a}=\"{clean}\""));
                    }
                }
                out.push('>');
                plain(Some(format!("</{n}>")))
            }
            // `<speak>` is ours to write; unknown elements keep their text only.
            None => plain(None),
        },
    }
}

/// `2s`, `500ms`, `1.5s` in milliseconds.
fn break_ms(t: &str) -> Option<u64> {
    let t = t.trim().to_ascii_lowercase();
    let (num, scale) = match t.strip_suffix("ms") {
        Some(n) => (n, 1.0),
        None => (t.strip_suffix('s')?, 1000.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * scale).min(1e9) as u64)
}

fn finish(open: Open, out: &mut String, ssml: bool) {
    let spoken = match open.collect {
        Some(Collect::SayAs { kind, format, text }) => Some(say_as(&kind, &format, &text)),
        Some(Collect::Sub { alias }) => Some(alias),
        None => None,
    };
    if let Some(s) = spoken {
        out.push(' ');
        push_escaped(out, &s, ssml);
        out.push(' ');
    }
    if let Some(c) = open.close {
        out.push_str(&c);
    }
}

fn push_text(stack: &mut [Open], out: &mut String, text: &str, ssml: bool) {
    match stack.last_mut().and_then(|o| o.collect.as_mut()) {
        Some(Collect::SayAs { text: t, .. }) => t.push_str(text),
        Some(Collect::Sub { .. }) => {} // the alias is spoken instead
        None => push_escaped(out, text, ssml),
    }
}

fn push_escaped(out: &mut String, s: &str, ssml: bool) {
    if ssml {
        out.push_str(&escape(s));
    } else {
        out.push_str(s);
    }
}

/// `<say-as>` read out: digits one by one, a telephone number in its groups, characters
/// spelled, an ISO or US date in words (English); anything else as written.
fn say_as(kind: &str, format: &str, text: &str) -> String {
    let t = text.trim();
    match kind {
        "digits" => spaced(t.chars().filter(char::is_ascii_digit)),
        "characters" | "spell-out" | "verbatim" => spaced(t.chars().filter(|c| !c.is_whitespace())),
        "telephone" => t
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|g| !g.is_empty())
            .map(|g| spaced(g.chars()))
            .collect::<Vec<_>>()
            .join(", "),
        "date" => date_words(t, format).unwrap_or_else(|| t.to_string()),
        _ => t.to_string(),
    }
}

fn spaced(chars: impl Iterator<Item = char>) -> String {
    chars.map(String::from).collect::<Vec<_>>().join(" ")
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `2026-12-01` (ymd, the default for that shape), `12/01/2026` (mdy) or `01/12/2026` (dmy).
fn date_words(t: &str, format: &str) -> Option<String> {
    let parts: Vec<u32> = t
        .split(['-', '/', '.'])
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c] = parts[..] else { return None };
    let (y, m, d) = match format {
        "dmy" => (c, b, a),
        "mdy" => (c, a, b),
        "ymd" | "" if a > 31 => (a, b, c),
        "" => (c, a, b), // US order, as Twilio's default voice reads it
        _ => return None,
    };
    let month = MONTHS.get(m.checked_sub(1)? as usize)?;
    (1..=31).contains(&d).then(|| format!("{month} {d}, {y}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_elements_pass_and_say_as_is_expanded() {
        let r = render(
            r#"Your code is <say-as interpret-as="digits">4 2 7</say-as>.<break time="2s"/>Call <say-as interpret-as="telephone">+1-555-0100</say-as> <prosody rate="slow" onload="x">now</prosody>"#,
            true,
        );
        assert_eq!(
            r,
            Rendered::Ssml(
                "<speak>Your code is  4 2 7 .<break time=\"2000ms\"></break>Call  1, 5 5 5, 0 1 0 0  <prosody rate=\"slow\">now</prosody></speak>".into()
            )
        );
        assert_eq!(
            render(
                r#"<speak>On <say-as interpret-as="date">2026-12-01</say-as><break time="1s"/><sub alias="World Wide Web">WWW</sub></speak>"#,
                false
            ),
            Rendered::Plain("On December 1, 2026 , World Wide Web".into())
        );
    }

    #[test]
    fn dangerous_or_broken_markup_is_read_as_text() {
        // An <audio> element (espeak-ng would look for its file) keeps only its text.
        assert_eq!(
            render(r#"Hi <audio src="/etc/passwd">there</audio>"#, true),
            Rendered::Ssml("<speak>Hi there</speak>".into())
        );
        // Text from a caller with angle brackets is escaped, not markup.
        assert_eq!(
            render("1 &lt; 2 <emphasis>really</emphasis>", true),
            Rendered::Ssml("<speak>1 &lt; 2 <emphasis>really</emphasis></speak>".into())
        );
        assert_eq!(
            render("<break time='1s'> unclosed", true),
            Rendered::Plain("unclosed".into())
        );
        assert!(!is_ssml("Press 1 for sales"));
        // Breaks are clamped: 10 s each, a minute in all.
        let Rendered::Ssml(long) = render(&r#"<break time="1200s"/>"#.repeat(10), true) else {
            panic!("SSML");
        };
        assert_eq!(long.matches("time=\"10000ms\"").count(), 6, "{long}");
        assert_eq!(long.matches("time=\"0ms\"").count(), 4, "{long}");
        assert!(is_ssml("Wait <break time=\"1s\"/> please"));
    }
}

//! TwiML documents → [`Verb`]s, in document order, with `<Gather>`'s nested prompts.
//!
//! A quick-xml event reader walks the document once with an explicit stack (no recursion, so no
//! input can exhaust the stack). Every problem is a [`ParseError`] that names what is wrong and
//! where (line and column, 1-based); no input panics.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// The most elements open at once (`<Response><Gather><Say><prosody>…` needs a handful).
const MAX_DEPTH: usize = 32;

/// Where something is in a document (1-based line and column; the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a document is not TwiML this interpreter can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The XML itself is malformed.
    #[error("malformed XML at {at}: {message}")]
    Xml {
        /// The XML reader's message.
        message: String,
        /// Where.
        at: Position,
    },
    /// The document has no root element.
    #[error("not a TwiML document: it has no <Response> element")]
    NoResponse,
    /// The root element is not `<Response>`.
    #[error("not a TwiML document: the root element is <{found}> at {at}, expected <Response>")]
    NotResponse {
        /// The root element's name.
        found: String,
        /// Where.
        at: Position,
    },
    /// An element that is not a TwiML voice verb.
    #[error("unknown TwiML verb <{verb}> at {at}")]
    UnknownVerb {
        /// The element's name.
        verb: String,
        /// Where.
        at: Position,
    },
    /// A TwiML verb this interpreter does not run (`<Dial>`, `<Connect>`, ...).
    #[error("TwiML verb <{verb}> at {at} is not supported by Switchboard (supported: Say, Play, Pause, Gather, Record, Redirect, Hangup, Reject)")]
    UnsupportedVerb {
        /// The verb.
        verb: String,
        /// Where.
        at: Position,
    },
    /// A verb nested where it may not be (e.g. `<Record>` inside `<Gather>`).
    #[error("<{parent}> cannot contain <{child}> (at {at})")]
    BadNesting {
        /// The enclosing element.
        parent: String,
        /// The element it may not contain.
        child: String,
        /// Where the child is.
        at: Position,
    },
    /// An attribute value out of its range or of the wrong kind.
    #[error("<{verb}> at {at}: attribute {attribute}=\"{value}\" is invalid: expected {expected}")]
    InvalidAttribute {
        /// The verb.
        verb: String,
        /// The attribute's name.
        attribute: String,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
        /// Where the verb is.
        at: Position,
    },
    /// `<Redirect>` without a URL.
    #[error("<Redirect> at {at} has no URL")]
    MissingUrl {
        /// Where.
        at: Position,
    },
    /// `<Dial>` (or one of its nouns) without anyone to dial.
    #[error("<{verb}> at {at} names nobody to dial")]
    NothingToDial {
        /// `Dial`, `Number`, `Sip` or `Client`.
        verb: String,
        /// Where.
        at: Position,
    },
    /// More elements open at once than the limit.
    #[error("document nests elements deeper than {limit} levels (at {at})")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where it was passed.
        at: Position,
    },
}

/// `GET` or `POST` (TwiML's `method` attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST` (TwiML's default).
    #[default]
    Post,
}

impl Method {
    /// `GET`/`POST`, any case.
    pub fn parse(s: &str) -> Option<Method> {
        match s.trim().to_ascii_uppercase().as_str() {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            _ => None,
        }
    }

    /// `GET` or `POST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// `<Say voice language loop>text</Say>` (SSML tags inside are reduced to their text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    /// The text to speak.
    pub text: String,
    /// `voice`.
    pub voice: Option<String>,
    /// `language`.
    pub language: Option<String>,
    /// Default 1; 0 repeats until the caller hangs up (capped by the voice channel).
    pub loop_count: u32,
}

/// `<Play loop digits>url</Play>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Play {
    /// Absolute or relative to the document's URL; None when the verb only sends `digits`.
    pub url: Option<String>,
    /// `digits`: DTMF tones to send (`w` pauses half a second).
    pub digits: Option<String>,
    /// `loop` (default 1; 0 repeats until the caller hangs up).
    pub loop_count: u32,
}

/// `<Pause length>` (seconds, default 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// `length` in seconds.
    pub length_secs: u32,
}

/// What `<Gather>` may nest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatherPrompt {
    /// A nested `<Say>`.
    Say(Say),
    /// A nested `<Play>`.
    Play(Play),
    /// A nested `<Pause>`.
    Pause(Pause),
}

/// `<Gather>` with its nested prompts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherVerb {
    /// Requested with the result; None means the current document's URL.
    pub action: Option<String>,
    /// How `action` is requested.
    pub method: Method,
    /// `input`: `dtmf` (default), `speech`, or `dtmf speech`.
    pub dtmf: bool,
    /// `input` includes `speech`.
    pub speech: bool,
    /// `numDigits`: stop after this many digits.
    pub num_digits: Option<u32>,
    /// Default `#`; empty disables it.
    pub finish_on_key: String,
    /// Seconds without input (default 5).
    pub timeout_secs: u32,
    /// Request `action` even when nothing was entered (default false: go on to the next verb).
    pub action_on_empty_result: bool,
    /// `language` of the speech to recognise.
    pub language: Option<String>,
    /// `hints`: words and phrases to expect.
    pub hints: Option<String>,
    /// `speechTimeout`: seconds, or `auto`.
    pub speech_timeout: Option<String>,
    /// `speechModel`.
    pub speech_model: Option<String>,
    /// `profanityFilter` (default true).
    pub profanity_filter: bool,
    /// The nested `<Say>`, `<Play>` and `<Pause>`, in order.
    pub prompts: Vec<GatherPrompt>,
}

/// `<Record>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVerb {
    /// Requested with the recording; None means the current document's URL.
    pub action: Option<String>,
    /// How `action` is requested.
    pub method: Method,
    /// Seconds of silence that end the recording (default 5).
    pub timeout_secs: u32,
    /// Default `1234567890*#`.
    pub finish_on_key: String,
    /// Default 3600 s.
    pub max_length_secs: u32,
    /// Default true.
    pub play_beep: bool,
    /// `trim`: `trim-silence` (default) or `do-not-trim`.
    pub trim_silence: bool,
    /// `transcribe` (default false).
    pub transcribe: bool,
    /// `transcribeCallback`.
    pub transcribe_callback: Option<String>,
    /// `recordingStatusCallback`.
    pub recording_status_callback: Option<String>,
}

/// `<Dial>`: connect the caller to another party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialVerb {
    /// Requested when the dialled call ends; None: the document goes on with the next verb.
    pub action: Option<String>,
    /// How `action` is requested.
    pub method: Method,
    /// Seconds to ring (default 30).
    pub timeout_secs: u32,
    /// `callerId`: the caller ID the other party sees.
    pub caller_id: Option<String>,
    /// `record`: record the bridged call (`record-from-answer`, `record-from-ringing`, `true`).
    pub record: bool,
    /// `timeLimit`: longest time connected, seconds (default 14,400).
    pub time_limit_secs: u32,
    /// `hangupOnStar`: the caller pressing `*` ends the other leg and goes on.
    pub hangup_on_star: bool,
    /// `answerOnBridge` (the caller is already answered here: accepted, no effect).
    pub answer_on_bridge: bool,
    /// `ringTone` (accepted; the caller hears North American ringback).
    pub ring_tone: Option<String>,
    /// Whom to ring: the nested nouns, or the bare number the element holds.
    pub nouns: Vec<DialNoun>,
}

/// A party `<Dial>` rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialNoun {
    /// `<Number sendDigits>` or a bare number.
    Number {
        /// The number.
        number: String,
        /// `sendDigits`: DTMF sent once it answers.
        send_digits: Option<String>,
    },
    /// `<Sip username password>uri</Sip>`.
    Sip {
        /// The SIP URI.
        uri: String,
        /// Digest username.
        username: Option<String>,
        /// Digest password.
        password: Option<String>,
    },
    /// `<Client>name</Client>`.
    Client(String),
}

/// `<Refer><Sip>uri</Sip></Refer>`: a blind transfer of the call by SIP REFER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferVerb {
    /// Requested once the transfer ended; None: the document goes on with the next verb.
    pub action: Option<String>,
    /// How `action` is requested.
    pub method: Method,
    /// Where the call is to go (the `<Sip>` noun).
    pub target: String,
}

/// `<Message>` (or the older `<Sms>`) in voice TwiML: a text to send while the call goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerb {
    /// `to`: the caller when absent.
    pub to: Option<String>,
    /// `from`: the number called when absent.
    pub from: Option<String>,
    /// The text.
    pub body: String,
    /// Requested with `SmsSid` and `SmsStatus` once sent; None: the document goes on.
    pub action: Option<String>,
    /// How `action` is requested.
    pub method: Method,
}

/// `<Redirect method>url</Redirect>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectVerb {
    /// Where to go, absolute or relative to the document's URL.
    pub url: String,
    /// How it is requested.
    pub method: Method,
}

/// One TwiML verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `<Say>`.
    Say(Say),
    /// `<Play>`.
    Play(Play),
    /// `<Pause>`.
    Pause(Pause),
    /// `<Gather>`.
    Gather(GatherVerb),
    /// `<Record>`.
    Record(RecordVerb),
    /// `<Redirect>`.
    Redirect(RedirectVerb),
    /// `<Dial>`.
    Dial(DialVerb),
    /// `<Refer>`.
    Refer(ReferVerb),
    /// `<Message>` / `<Sms>`.
    Message(MessageVerb),
    /// `<Hangup>`.
    Hangup,
    /// `<Reject>`.
    Reject {
        /// `reason` (`rejected` or `busy` in TwiML).
        reason: Option<String>,
    },
}

/// Twilio voice verbs this interpreter knows of but does not run.
const UNSUPPORTED: &[&str] = &[
    "Enqueue",
    "Leave",
    "Connect",
    "Start",
    "Stop",
    "Pay",
    "Prompt",
    "Queue",
    "Echo",
    "Conference",
    "Number",
    "Client",
    "Sip",
    "Stream",
    "Siprec",
];

/// An element still open while reading.
struct Open {
    name: String,
    attrs: Vec<(String, String)>,
    at: Position,
    text: String,
    prompts: Vec<GatherPrompt>,
    /// The nouns of a `<Dial>`.
    nouns: Vec<DialNoun>,
    /// An SSML element inside `<Say>`: its text belongs to the `<Say>`.
    ssml: bool,
    /// The same content as markup (text escaped, SSML elements kept), and whether it holds
    /// any SSML: a `<Say>` with SSML is spoken from this (see `media::ssml`).
    xml: String,
    has_ssml: bool,
}

/// Parse a TwiML voice document.
pub fn parse(src: &str) -> Result<Vec<Verb>, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut reader = Reader::from_str(src);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open> = Vec::new();
    let mut verbs: Vec<Verb> = Vec::new();
    let mut root_done = false;
    let mut root_seen = false;
    loop {
        let before = offset(reader.buffer_position());
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(e) => {
                return Err(ParseError::Xml {
                    message: e.to_string(),
                    at: position(src, offset(reader.error_position())),
                })
            }
        };
        // The element starts at the first `<` after the previous event.
        let here = || {
            let start = src
                .get(before..)
                .and_then(|rest| rest.find('<'))
                .map_or(before, |i| before + i);
            position(src, start)
        };
        match event {
            Event::Start(e) | Event::Empty(e) if root_done => {
                return Err(ParseError::Xml {
                    message: format!("a second root element <{}>", name_of(&e)),
                    at: here(),
                });
            }
            Event::Start(e) => {
                let open = open(&e, &stack, here())?;
                root_seen = true;
                if stack.len() >= MAX_DEPTH {
                    return Err(ParseError::TooDeep {
                        limit: MAX_DEPTH,
                        at: open.at,
                    });
                }
                stack.push(open);
            }
            Event::Empty(e) => {
                let open = open(&e, &stack, here())?;
                root_seen = true;
                root_done |= close(open, &mut stack, &mut verbs)?;
            }
            Event::End(_) => match stack.pop() {
                Some(open) => root_done |= close(open, &mut stack, &mut verbs)?,
                None => {
                    return Err(ParseError::Xml {
                        message: "an end tag without a start tag".into(),
                        at: here(),
                    })
                }
            },
            Event::Text(t) => push_text(&mut stack, &t.xml10_content()),
            Event::CData(t) => push_text(&mut stack, &t.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match resolve_predefined_entity(&r) {
                        Some(s) => s.to_string(),
                        None => {
                            return Err(ParseError::Xml {
                                message: format!("unknown entity &{};", &*r),
                                at: position(src, before),
                            })
                        }
                    },
                    Err(e) => {
                        return Err(ParseError::Xml {
                            message: e.to_string(),
                            at: position(src, before),
                        })
                    }
                };
                push_text(&mut stack, &resolved);
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(ParseError::Xml {
                        message: format!("the document ends inside <{}>", open.name),
                        at: position(src, src.len()),
                    });
                }
                if !root_seen {
                    return Err(ParseError::NoResponse);
                }
                return Ok(verbs);
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
}

fn offset(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

/// Line and column of byte `offset` in `src`.
fn position(src: &str, offset: usize) -> Position {
    let offset = offset.min(src.len());
    let head = &src.as_bytes()[..offset];
    let line = head.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = head.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&head[line_start..]).chars().count() + 1;
    Position { line, column }
}

fn name_of(e: &BytesStart<'_>) -> String {
    e.name().into_inner().to_string()
}

fn push_text(stack: &mut [Open], text: &str) {
    if let Some(top) = stack.last_mut() {
        top.text.push_str(text);
        top.xml.push_str(&quick_xml::escape::escape(text));
    }
}

/// The elements a verb may hold (none for the rest).
fn children_of(verb: &str) -> &'static [&'static str] {
    match verb {
        "Gather" => &["Say", "Play", "Pause"],
        "Dial" => &["Number", "Sip", "Client"],
        "Refer" => &["Sip"],
        _ => &[],
    }
}

/// Check that `e` may open inside the top of `stack`, and read its attributes.
fn open(e: &BytesStart<'_>, stack: &[Open], at: Position) -> Result<Open, ParseError> {
    let name = name_of(e);
    let ssml = match stack.last() {
        None if name == "Response" => false,
        None => return Err(ParseError::NotResponse { found: name, at }),
        Some(parent) if parent.name == "Say" || parent.ssml => true,
        Some(parent) if parent.name == "Response" => {
            check_verb(&name, at)?;
            false
        }
        Some(parent) if !children_of(&parent.name).is_empty() => {
            if !children_of(&parent.name).contains(&name.as_str()) {
                check_verb(&name, at)?;
                return Err(ParseError::BadNesting {
                    parent: parent.name.clone(),
                    child: name,
                    at,
                });
            }
            false
        }
        Some(parent) => {
            return Err(ParseError::BadNesting {
                parent: parent.name.clone(),
                child: name,
                at,
            })
        }
    };
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| ParseError::Xml {
            message: format!("in the attributes of <{name}>: {err}"),
            at,
        })?;
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| ParseError::Xml {
                message: format!("in the attributes of <{name}>: {err}"),
                at,
            })?;
        attrs.push((a.key.into_inner().to_string(), value.into_owned()));
    }
    Ok(Open {
        name,
        attrs,
        at,
        text: String::new(),
        xml: String::new(),
        has_ssml: false,
        prompts: Vec::new(),
        nouns: Vec::new(),
        ssml,
    })
}

/// Whether `name` is a verb we run (Ok) or an error naming it.
fn check_verb(name: &str, at: Position) -> Result<(), ParseError> {
    match name {
        "Say" | "Play" | "Pause" | "Gather" | "Record" | "Redirect" | "Dial" | "Refer"
        | "Message" | "Sms" | "Hangup" | "Reject" => Ok(()),
        n if UNSUPPORTED.contains(&n) => Err(ParseError::UnsupportedVerb {
            verb: n.to_string(),
            at,
        }),
        n => Err(ParseError::UnknownVerb {
            verb: n.to_string(),
            at,
        }),
    }
}

/// Finish `open` and hand it to its parent; true when it was the root.
fn close(open: Open, stack: &mut [Open], verbs: &mut Vec<Verb>) -> Result<bool, ParseError> {
    let Some(parent) = stack.last_mut() else {
        return Ok(true); // </Response>
    };
    if open.ssml {
        // SSML inside <Say>: keep the words apart.
        if !parent.text.is_empty() && !parent.text.ends_with(char::is_whitespace) {
            parent.text.push(' ');
        }
        parent.text.push_str(&open.text);
        parent.text.push(' ');
        parent.xml.push('<');
        parent.xml.push_str(&open.name);
        for (k, v) in &open.attrs {
            parent.xml.push_str(&format!(
                " {k}=\"{}\"",
                quick_xml::escape::escape(v.as_str())
            ));
        }
        parent.xml.push('>');
        parent.xml.push_str(&open.xml);
        parent.xml.push_str(&format!("</{}>", open.name));
        parent.has_ssml = true;
        return Ok(false);
    }
    if parent.name == "Dial" || parent.name == "Refer" {
        let noun = dial_noun(&open)?;
        parent.nouns.push(noun);
        return Ok(false);
    }
    let verb = build(open)?;
    if parent.name == "Gather" {
        match verb {
            Verb::Say(s) => parent.prompts.push(GatherPrompt::Say(s)),
            Verb::Play(p) => parent.prompts.push(GatherPrompt::Play(p)),
            Verb::Pause(p) => parent.prompts.push(GatherPrompt::Pause(p)),
            _ => {} // refused when it opened
        }
    } else {
        verbs.push(verb);
    }
    Ok(false)
}

struct Attrs<'a> {
    verb: &'a str,
    at: Position,
    attrs: &'a [(String, String)],
}

impl Attrs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn invalid(&self, key: &str, value: &str, expected: &'static str) -> ParseError {
        ParseError::InvalidAttribute {
            verb: self.verb.to_string(),
            attribute: key.to_string(),
            value: value.to_string(),
            expected,
            at: self.at,
        }
    }

    fn u32_or(&self, key: &str, default: u32) -> Result<u32, ParseError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) if v.trim().is_empty() => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| self.invalid(key, v, "a whole number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ParseError> {
        match self.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v.is_empty() => Ok(default),
            Some(v) if v == "true" => Ok(true),
            Some(v) if v == "false" => Ok(false),
            Some(v) => Err(self.invalid(key, &v, "true or false")),
        }
    }

    fn method(&self) -> Result<Method, ParseError> {
        match self.get("method") {
            None => Ok(Method::Post),
            Some(v) if v.trim().is_empty() => Ok(Method::Post),
            Some(v) => Method::parse(v).ok_or_else(|| self.invalid("method", v, "GET or POST")),
        }
    }
}

/// A noun inside `<Dial>`.
fn dial_noun(open: &Open) -> Result<DialNoun, ParseError> {
    let a = Attrs {
        verb: &open.name,
        at: open.at,
        attrs: &open.attrs,
    };
    let text = open.text.trim().to_string();
    if text.is_empty() {
        return Err(ParseError::NothingToDial {
            verb: open.name.clone(),
            at: open.at,
        });
    }
    Ok(match open.name.as_str() {
        "Number" => DialNoun::Number {
            number: text,
            send_digits: a.text("sendDigits"),
        },
        "Sip" => DialNoun::Sip {
            uri: text,
            username: a.text("username"),
            password: a.get("password").map(str::to_string),
        },
        _ => DialNoun::Client(text),
    })
}

fn build(open: Open) -> Result<Verb, ParseError> {
    let a = Attrs {
        verb: &open.name,
        at: open.at,
        attrs: &open.attrs,
    };
    let text = open.text.trim();
    // Wrapped in <speak>, so the TTS reads it as SSML whatever elements it holds.
    let markup = format!("<speak>{}</speak>", open.xml.trim());
    let spoken = if open.has_ssml { markup.as_str() } else { text };
    Ok(match open.name.as_str() {
        "Say" => Verb::Say(Say {
            // SSML and line breaks leave runs of whitespace: speak them as one space.
            text: spoken.split_whitespace().collect::<Vec<_>>().join(" "),
            voice: a.text("voice"),
            language: a.text("language"),
            loop_count: a.u32_or("loop", 1)?,
        }),
        "Play" => Verb::Play(Play {
            url: (!text.is_empty()).then(|| text.to_string()),
            digits: a.text("digits"),
            loop_count: a.u32_or("loop", 1)?,
        }),
        "Pause" => Verb::Pause(Pause {
            length_secs: a.u32_or("length", 1)?,
        }),
        "Gather" => {
            let (dtmf, speech) = match a.text("input").map(|i| i.to_ascii_lowercase()) {
                None => (true, false),
                Some(i) => {
                    let words: Vec<&str> = i.split_whitespace().collect();
                    if words.is_empty() || words.iter().any(|w| *w != "dtmf" && *w != "speech") {
                        return Err(a.invalid("input", &i, "dtmf, speech or \"dtmf speech\""));
                    }
                    (words.contains(&"dtmf"), words.contains(&"speech"))
                }
            };
            Verb::Gather(GatherVerb {
                action: a.text("action"),
                method: a.method()?,
                dtmf,
                speech,
                num_digits: match a.get("numDigits") {
                    None => None,
                    Some(v) if v.trim().is_empty() => None,
                    Some(_) => Some(a.u32_or("numDigits", 0)?).filter(|n| *n > 0),
                },
                finish_on_key: a.get("finishOnKey").unwrap_or("#").trim().to_string(),
                timeout_secs: a.u32_or("timeout", 5)?,
                action_on_empty_result: a.bool_or("actionOnEmptyResult", false)?,
                language: a.text("language"),
                hints: a.text("hints"),
                speech_timeout: a.text("speechTimeout"),
                speech_model: a.text("speechModel"),
                profanity_filter: a.bool_or("profanityFilter", true)?,
                prompts: open.prompts,
            })
        }
        "Record" => Verb::Record(RecordVerb {
            action: a.text("action"),
            method: a.method()?,
            timeout_secs: a.u32_or("timeout", 5)?,
            finish_on_key: a
                .get("finishOnKey")
                .unwrap_or("1234567890*#")
                .trim()
                .to_string(),
            max_length_secs: a.u32_or("maxLength", 3600)?,
            play_beep: a.bool_or("playBeep", true)?,
            trim_silence: match a.get("trim").map(str::trim) {
                None | Some("") | Some("trim-silence") => true,
                Some("do-not-trim") => false,
                Some(v) => return Err(a.invalid("trim", v, "trim-silence or do-not-trim")),
            },
            transcribe: a.bool_or("transcribe", false)?,
            transcribe_callback: a.text("transcribeCallback"),
            recording_status_callback: a.text("recordingStatusCallback"),
        }),
        "Redirect" => {
            if text.is_empty() {
                return Err(ParseError::MissingUrl { at: open.at });
            }
            Verb::Redirect(RedirectVerb {
                url: text.to_string(),
                method: a.method()?,
            })
        }
        "Dial" => {
            let mut nouns = open.nouns;
            if nouns.is_empty() && !text.is_empty() {
                nouns.push(DialNoun::Number {
                    number: text.to_string(),
                    send_digits: None,
                });
            }
            if nouns.is_empty() {
                return Err(ParseError::NothingToDial {
                    verb: "Dial".into(),
                    at: open.at,
                });
            }
            Verb::Dial(DialVerb {
                action: a.text("action"),
                method: a.method()?,
                timeout_secs: a.u32_or("timeout", 30)?,
                caller_id: a.text("callerId"),
                record: a.text("record").is_some_and(|r| {
                    let r = r.to_ascii_lowercase();
                    r == "true" || r.starts_with("record-from")
                }),
                time_limit_secs: a.u32_or("timeLimit", 14_400)?,
                hangup_on_star: a.bool_or("hangupOnStar", false)?,
                answer_on_bridge: a.bool_or("answerOnBridge", false)?,
                ring_tone: a.text("ringTone"),
                nouns,
            })
        }
        "Refer" => {
            let target = open.nouns.iter().find_map(|n| match n {
                DialNoun::Sip { uri, .. } => Some(uri.clone()),
                _ => None,
            });
            let Some(target) = target else {
                return Err(ParseError::NothingToDial {
                    verb: "Refer".into(),
                    at: open.at,
                });
            };
            Verb::Refer(ReferVerb {
                action: a.text("action"),
                method: a.method()?,
                target,
            })
        }
        "Message" | "Sms" => {
            if text.is_empty() {
                return Err(ParseError::NothingToDial {
                    verb: open.name.clone(),
                    at: open.at,
                });
            }
            Verb::Message(MessageVerb {
                to: a.text("to"),
                from: a.text("from"),
                body: text.to_string(),
                action: a.text("action"),
                method: a.method()?,
            })
        }
        "Hangup" => Verb::Hangup,
        "Reject" => Verb::Reject {
            reason: a.text("reason"),
        },
        // `open` only admits the verbs above.
        other => {
            return Err(ParseError::UnknownVerb {
                verb: other.to_string(),
                at: open.at,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(text: &str) -> Verb {
        Verb::Say(Say {
            text: text.into(),
            voice: None,
            language: None,
            loop_count: 1,
        })
    }

    #[test]
    fn verbs_in_order_with_attributes() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Say voice="Polly.Joanna" language="en-GB" loop="2">Hello there</Say>
  <Play loop="0">https://example.com/a.wav</Play>
  <Play digits="ww1234"/>
  <Pause length="3"/>
  <Record action="/rec" method="GET" timeout="7" finishOnKey="*" maxLength="30" playBeep="false" trim="do-not-trim" transcribe="true"/>
  <Redirect method="GET">next.xml</Redirect>
  <Hangup/>
  <Reject reason="busy"/>
</Response>"#;
        let verbs = parse(doc).expect("parses");
        assert_eq!(verbs.len(), 8);
        assert_eq!(
            verbs[0],
            Verb::Say(Say {
                text: "Hello there".into(),
                voice: Some("Polly.Joanna".into()),
                language: Some("en-GB".into()),
                loop_count: 2
            })
        );
        assert_eq!(
            verbs[1],
            Verb::Play(Play {
                url: Some("https://example.com/a.wav".into()),
                digits: None,
                loop_count: 0
            })
        );
        assert_eq!(
            verbs[2],
            Verb::Play(Play {
                url: None,
                digits: Some("ww1234".into()),
                loop_count: 1
            })
        );
        assert_eq!(verbs[3], Verb::Pause(Pause { length_secs: 3 }));
        assert_eq!(
            verbs[4],
            Verb::Record(RecordVerb {
                action: Some("/rec".into()),
                method: Method::Get,
                timeout_secs: 7,
                finish_on_key: "*".into(),
                max_length_secs: 30,
                play_beep: false,
                trim_silence: false,
                transcribe: true,
                transcribe_callback: None,
                recording_status_callback: None,
            })
        );
        assert_eq!(
            verbs[5],
            Verb::Redirect(RedirectVerb {
                url: "next.xml".into(),
                method: Method::Get
            })
        );
        assert_eq!(verbs[6], Verb::Hangup);
        assert_eq!(
            verbs[7],
            Verb::Reject {
                reason: Some("busy".into())
            }
        );
    }

    #[test]
    fn defaults() {
        let verbs = parse(
            "<Response><Gather/><Record/><Pause/><Redirect>u</Redirect><Say>x</Say></Response>",
        )
        .expect("parses");
        let Verb::Gather(g) = &verbs[0] else {
            panic!("not a gather: {verbs:?}")
        };
        assert_eq!(g.action, None);
        assert_eq!(g.method, Method::Post);
        assert!(g.dtmf && !g.speech);
        assert_eq!(g.finish_on_key, "#");
        assert_eq!(g.timeout_secs, 5);
        assert_eq!(g.num_digits, None);
        assert!(!g.action_on_empty_result);
        let Verb::Record(r) = &verbs[1] else {
            panic!("not a record")
        };
        assert_eq!(r.finish_on_key, "1234567890*#");
        assert_eq!((r.timeout_secs, r.max_length_secs), (5, 3600));
        assert!(r.play_beep && r.trim_silence && !r.transcribe);
        assert_eq!(verbs[2], Verb::Pause(Pause { length_secs: 1 }));
        assert_eq!(
            verbs[3],
            Verb::Redirect(RedirectVerb {
                url: "u".into(),
                method: Method::Post
            })
        );
        assert_eq!(verbs[4], say("x"));
    }

    #[test]
    fn gather_nests_prompts_in_order() {
        let doc = r#"<Response>
            <Gather input="dtmf speech" numDigits="4" finishOnKey="" timeout="9" action="https://app.example/menu?x=1&amp;y=2" method="GET" actionOnEmptyResult="true">
                <Say>Enter your PIN</Say>
                <Pause length="2"/>
                <Play>beep.wav</Play>
            </Gather>
            <Say>We did not get it</Say>
        </Response>"#;
        let verbs = parse(doc).expect("parses");
        assert_eq!(verbs.len(), 2);
        let Verb::Gather(g) = &verbs[0] else {
            panic!("not a gather")
        };
        assert!(g.dtmf && g.speech);
        assert_eq!(g.num_digits, Some(4));
        assert_eq!(g.finish_on_key, "");
        assert_eq!(g.timeout_secs, 9);
        assert_eq!(
            g.action.as_deref(),
            Some("https://app.example/menu?x=1&y=2")
        );
        assert_eq!(g.method, Method::Get);
        assert!(g.action_on_empty_result);
        assert_eq!(g.prompts.len(), 3);
        assert!(matches!(&g.prompts[0], GatherPrompt::Say(s) if s.text == "Enter your PIN"));
        assert_eq!(g.prompts[1], GatherPrompt::Pause(Pause { length_secs: 2 }));
        assert!(
            matches!(&g.prompts[2], GatherPrompt::Play(p) if p.url.as_deref() == Some("beep.wav"))
        );
        assert_eq!(verbs[1], say("We did not get it"));
    }

    #[test]
    fn unknown_verb_is_named_with_its_position() {
        let doc = "<Response>\n  <Say>hi</Say>\n  <Shout>HI</Shout>\n</Response>";
        let err = parse(doc).expect_err("unknown verb");
        assert_eq!(
            err,
            ParseError::UnknownVerb {
                verb: "Shout".into(),
                at: Position { line: 3, column: 3 }
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown TwiML verb <Shout> at line 3, column 3"
        );
        // An empty element too, and inside <Gather>.
        let err = parse("<Response><Gather><Beep/></Gather></Response>").expect_err("unknown");
        assert!(
            matches!(&err, ParseError::UnknownVerb { verb, at } if verb == "Beep" && at.column == 19),
            "{err:?}"
        );
    }

    #[test]
    fn known_but_unsupported_verbs_say_so() {
        let err = parse("<Response><Enqueue>support</Enqueue></Response>").expect_err("enqueue");
        assert!(
            matches!(&err, ParseError::UnsupportedVerb { verb, .. } if verb == "Enqueue"),
            "{err:?}"
        );
        let err = parse("<Response><Dial><Conference>room</Conference></Dial></Response>")
            .expect_err("conference");
        assert!(
            matches!(&err, ParseError::UnsupportedVerb { verb, .. } if verb == "Conference"),
            "{err:?}"
        );
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn dial_with_nouns_and_attributes() {
        let doc = r#"<Response>
  <Dial action="/after" method="GET" timeout="12" callerId="+15550001" record="record-from-answer"
        timeLimit="60" hangupOnStar="true">
    <Number sendDigits="ww12#">+15551230001</Number>
    <Sip username="u" password="p">sip:desk@pbx.example</Sip>
    <Client>alice</Client>
  </Dial>
  <Dial>+1 555 123 0002</Dial>
</Response>"#;
        let verbs = parse(doc).unwrap();
        let Verb::Dial(d) = &verbs[0] else {
            panic!("{verbs:?}")
        };
        assert_eq!(d.action.as_deref(), Some("/after"));
        assert_eq!(d.method, Method::Get);
        assert_eq!((d.timeout_secs, d.time_limit_secs), (12, 60));
        assert!(d.record && d.hangup_on_star && !d.answer_on_bridge);
        assert_eq!(d.caller_id.as_deref(), Some("+15550001"));
        assert_eq!(
            d.nouns,
            vec![
                DialNoun::Number {
                    number: "+15551230001".into(),
                    send_digits: Some("ww12#".into())
                },
                DialNoun::Sip {
                    uri: "sip:desk@pbx.example".into(),
                    username: Some("u".into()),
                    password: Some("p".into())
                },
                DialNoun::Client("alice".into()),
            ]
        );
        let Verb::Dial(bare) = &verbs[1] else {
            panic!("{verbs:?}")
        };
        assert_eq!(
            bare.nouns,
            vec![DialNoun::Number {
                number: "+1 555 123 0002".into(),
                send_digits: None
            }]
        );
        assert_eq!((bare.timeout_secs, bare.action.clone()), (30, None));
        assert!(parse("<Response><Dial></Dial></Response>").is_err());
        assert!(parse("<Response><Dial><Say>x</Say></Dial></Response>").is_err());
    }

    #[test]
    fn message_and_sms_in_voice_twiml() {
        let verbs = parse(
            r#"<Response><Message to="+15550001">Your code is 42</Message><Sms action="/s">Hi</Sms></Response>"#,
        )
        .unwrap();
        assert_eq!(
            verbs,
            vec![
                Verb::Message(MessageVerb {
                    to: Some("+15550001".into()),
                    from: None,
                    body: "Your code is 42".into(),
                    action: None,
                    method: Method::Post
                }),
                Verb::Message(MessageVerb {
                    to: None,
                    from: None,
                    body: "Hi".into(),
                    action: Some("/s".into()),
                    method: Method::Post
                }),
            ]
        );
        assert!(parse("<Response><Message/></Response>").is_err());
    }

    #[test]
    fn refer_with_its_sip_noun() {
        let verbs = parse(
            r#"<Response><Refer action="/done" method="GET"><Sip>sip:+15551230009@pbx.example</Sip></Refer><Hangup/></Response>"#,
        )
        .unwrap();
        assert_eq!(
            verbs[0],
            Verb::Refer(ReferVerb {
                action: Some("/done".into()),
                method: Method::Get,
                target: "sip:+15551230009@pbx.example".into()
            })
        );
        assert!(parse("<Response><Refer></Refer></Response>").is_err());
        assert!(parse("<Response><Refer><Number>+1555</Number></Refer></Response>").is_err());
    }

    #[test]
    fn bad_nesting() {
        for (doc, parent, child) in [
            (
                "<Response><Gather><Gather/></Gather></Response>",
                "Gather",
                "Gather",
            ),
            (
                "<Response><Gather><Redirect>x</Redirect></Gather></Response>",
                "Gather",
                "Redirect",
            ),
            (
                "<Response><Play><Say>x</Say></Play></Response>",
                "Play",
                "Say",
            ),
            ("<Response><Hangup><x/></Hangup></Response>", "Hangup", "x"),
        ] {
            match parse(doc) {
                Err(ParseError::BadNesting {
                    parent: p,
                    child: c,
                    ..
                }) => assert_eq!((p.as_str(), c.as_str()), (parent, child), "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_xml_is_an_error_with_a_position() {
        for doc in [
            "<Response><Say>hi</Play></Response>",
            "<Response><Say>hi</Say>",
            "<Response><Say voice=alice>hi</Say></Response>",
            "<Response><Say>a &nbsp; b</Say></Response>",
            "<Response><Say>&#0;</Say></Response>",
            "<Response></Response><Response></Response>",
            "<Response><Say>x</Say></Response></Response>",
            "<Response><Say a=\"1\" a=\"2\">x</Say></Response>",
            "<Response><",
        ] {
            match parse(doc) {
                Err(ParseError::Xml { message, at }) => {
                    assert!(!message.is_empty(), "{doc}");
                    assert!(at.line >= 1 && at.column >= 1, "{doc}");
                }
                other => panic!("{doc}: expected an XML error, got {other:?}"),
            }
        }
    }

    #[test]
    fn not_twiml() {
        assert_eq!(parse(""), Err(ParseError::NoResponse));
        assert_eq!(parse("   \n"), Err(ParseError::NoResponse));
        assert_eq!(parse("just some text"), Err(ParseError::NoResponse));
        assert!(matches!(
            parse("<html><body>Not found</body></html>"),
            Err(ParseError::NotResponse { found, .. }) if found == "html"
        ));
        assert!(matches!(
            parse(r#"{"json": true}"#),
            Err(ParseError::NoResponse)
        ));
    }

    #[test]
    fn entities_cdata_and_ssml() {
        let verbs = parse(
            "<Response><Say>Tom &amp; Jerry &lt;3 &#x41;&#66;</Say>\
             <Say><![CDATA[<raw> & text]]></Say>\
             <Say language=\"fr-FR\">Bonjour <prosody rate=\"slow\">tout</prosody><break time=\"1s\"/>le monde</Say>\
             <Say>\n   several\n   lines  </Say>\
             <Say>caf\u{e9} \u{1F600}</Say></Response>",
        )
        .expect("parses");
        assert_eq!(verbs[0], say("Tom & Jerry <3 AB"));
        assert_eq!(verbs[1], say("<raw> & text"));
        // SSML stays markup, for the TTS engine to render (media::ssml).
        assert!(
            matches!(&verbs[2], Verb::Say(s) if s.text == "<speak>Bonjour <prosody rate=\"slow\">tout</prosody><break time=\"1s\"></break>le monde</speak>"),
            "{:?}",
            verbs[2]
        );
        assert_eq!(verbs[3], say("several lines"));
        assert_eq!(verbs[4], say("caf\u{e9} \u{1F600}"));
    }

    #[test]
    fn invalid_attributes_name_verb_and_attribute() {
        for (doc, attribute) in [
            (
                "<Response><Gather numDigits=\"four\"/></Response>",
                "numDigits",
            ),
            ("<Response><Pause length=\"-1\"/></Response>", "length"),
            (
                "<Response><Redirect method=\"PUT\">x</Redirect></Response>",
                "method",
            ),
            (
                "<Response><Record playBeep=\"yes\"/></Response>",
                "playBeep",
            ),
            ("<Response><Gather input=\"voice\"/></Response>", "input"),
            ("<Response><Record trim=\"some\"/></Response>", "trim"),
        ] {
            match parse(doc) {
                Err(ParseError::InvalidAttribute { attribute: a, .. }) => {
                    assert_eq!(a, attribute, "{doc}")
                }
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("<Response><Redirect>  </Redirect></Response>"),
            Err(ParseError::MissingUrl { .. })
        ));
    }

    #[test]
    fn empty_response_and_comments() {
        assert_eq!(parse("<Response/>"), Ok(vec![]));
        assert_eq!(
            parse("<!-- hi --><Response><!-- c --><Hangup/></Response>\n"),
            Ok(vec![Verb::Hangup])
        );
        assert_eq!(parse("\u{feff}<Response/>"), Ok(vec![]));
    }

    #[test]
    fn nesting_depth_is_bounded() {
        let doc = format!(
            "<Response><Say>{}x{}</Say></Response>",
            "<p>".repeat(100),
            "</p>".repeat(100)
        );
        assert!(matches!(parse(&doc), Err(ParseError::TooDeep { .. })));
    }

    #[test]
    fn no_prefix_or_mutation_panics() {
        let doc = "<?xml version=\"1.0\"?><Response><Gather action=\"/a?x=1&amp;y=2\" numDigits=\"1\"><Say voice=\"alice\">Press &#49;</Say></Gather><Record maxLength=\"5\"/><Redirect method=\"GET\">https://h/x</Redirect></Response>";
        assert!(parse(doc).is_ok());
        // Every prefix, and every single-byte corruption, parses or errors without panicking.
        for i in 0..doc.len() {
            if let Some(prefix) = doc.get(..i) {
                let _ = parse(prefix);
            }
        }
        for i in 0..doc.len() {
            for c in ['<', '>', '&', '"', '/', '\u{0}', 'é'] {
                let mut s = doc.to_string();
                if s.is_char_boundary(i) && s.is_char_boundary(i + 1) {
                    s.replace_range(i..i + 1, &c.to_string());
                    let _ = parse(&s);
                }
            }
        }
    }
}

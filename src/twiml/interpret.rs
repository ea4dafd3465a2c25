//! Running TwiML on a call for the `add-twiml-redirect` widget.
//!
//! [`run_redirect`] fetches the widget's URL, runs the verbs it returns over a [`VoiceOps`] (the
//! call's voice channel), follows `<Redirect>`s and `<Gather>`/`<Record>` actions, and stops when
//! a request goes to the flow's return URL (Studio's `…/Flows/{FlowSid}?FlowEvent=return`):
//! that request's parameters become the widget's `return` outcome.

use std::future::Future;
use std::time::Duration;

use reqwest::Url;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::client::{fetch, resolve, TwimlError};
use super::parse::{
    parse, DialNoun, DialVerb, GatherPrompt, GatherVerb, MessageVerb, Method, Pause, Play,
    RecordVerb, ReferVerb, Say, Verb,
};
use crate::flow::effect::{
    Connect, Gather, GatherInput, Message, Outcome, Prompt, Record, Redirect,
};

/// Studio's longest (and default) wait for control to come back, in seconds.
pub const MAX_REDIRECT_SECS: u32 = 14_400;

/// What the interpreter needs from the call. The voice channel implements it.
pub trait VoiceOps: Send {
    /// Speak/play a prompt; `AudioComplete`, `Hangup` or `Failed`.
    fn say_play(&mut self, p: &Prompt) -> impl Future<Output = Outcome> + Send;
    /// Prompt and collect input: `Digits` (empty when nothing was entered), `Speech`, `Timeout`,
    /// `Hangup` or `Failed`.
    fn gather(&mut self, g: &Gather) -> impl Future<Output = Outcome> + Send;
    /// Record the caller: `Recording`, `NoAudio`, `Hangup` or `Failed`.
    fn record(&mut self, r: &Record) -> impl Future<Output = Outcome> + Send;
    /// Silence for `d`; `Hangup` if the caller hangs up meanwhile, else anything else.
    fn pause(&mut self, d: Duration) -> impl Future<Output = Outcome> + Send;
    /// Connect the caller to another party (`<Dial>`): `Dial` when the dialled call ended or
    /// never connected, `Hangup` when the caller left, `Failed` when it cannot be placed at all.
    fn dial(&mut self, c: &Connect) -> impl Future<Output = Outcome> + Send;
    /// Send a text while the call goes on (`<Message>`, `<Sms>`): `MessageSent` or
    /// `DeliveryFailure`.
    fn send_message(&mut self, m: &Message) -> impl Future<Output = Outcome> + Send;
    /// Hand the call to `target` (`<Refer>`, SIP REFER) and report how it went.
    fn refer(&mut self, target: &str) -> impl Future<Output = Transfer> + Send;
    /// End the call from our side (`<Hangup/>`, `<Reject/>`, a document that ends).
    fn hangup(&mut self);
}

/// How a `<Refer>` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The caller's side reported the new call connected (NOTIFY 2xx).
    pub completed: bool,
    /// The last SIP status heard (the REFER's refusal or the NOTIFY's), 0 when none was sent.
    pub sip_code: u16,
    /// The caller's side hung up on us (as it does once transferred).
    pub hung_up: bool,
    /// Why no REFER was sent (a target no trunk may dial).
    pub error: Option<String>,
}

/// Bounds of one redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Documents fetched per redirect (loop guard).
    pub max_documents: u32,
    /// Each HTTP request.
    pub fetch_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_documents: 100,
            fetch_timeout: Duration::from_secs(15),
        }
    }
}

/// Everything a redirect needs besides the call's voice.
#[derive(Clone, Copy)]
pub struct RedirectEnv<'a> {
    /// The client that fetches the documents.
    pub http: &'a reqwest::Client,
    /// `trigger.call`: CallSid, AccountSid, From, To, CallStatus, Direction, ApiVersion…; sent
    /// with every request as Twilio's voice webhook does.
    pub call: &'a Map<String, Value>,
    /// The running flow: a request to a URL whose path ends with `/Flows/{flow_sid}` and whose
    /// query has `FlowEvent=return` returns control to the flow.
    pub flow_sid: &'a str,
    /// `(AccountSid, AuthToken)`: requests carry `X-Twilio-Signature` made with the token.
    pub auth: Option<(&'a str, &'a str)>,
    /// Bounds of this redirect.
    pub limits: Limits,
}

/// Run an `add-twiml-redirect` effect on a call.
///
/// Outcomes: `RedirectReturned { params }` when a request goes to the flow's return URL (params:
/// the form parameters that request carried, then its query parameters, e.g. `FlowEvent`, `foo`);
/// `Hangup` when the caller hung up or the TwiML ended the call (`<Hangup/>`, `<Reject/>`, or a
/// document that ends without redirecting back: Twilio then ends the call, and so do we, through
/// `ops.hangup()`); `Timeout` when the widget's `timeout` (0 or absent: 14,400 s) passes;
/// `Failed` for HTTP errors, invalid TwiML and the loop guard.
pub async fn run_redirect<V: VoiceOps>(
    ops: &mut V,
    env: &RedirectEnv<'_>,
    redirect: &Redirect,
) -> Outcome {
    let secs = match redirect.timeout_secs {
        0 => MAX_REDIRECT_SECS,
        s => s.min(MAX_REDIRECT_SECS),
    };
    let mut run = Run {
        ops,
        env,
        deadline: Instant::now() + Duration::from_secs(u64::from(secs)),
        fetched: 0,
        base_params: call_params(env),
    };
    match run.run(redirect).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(call_sid = %run.call_sid(), error = %e, "TwiML redirect failed");
            Outcome::Failed {
                error: e.to_string(),
            }
        }
    }
}

/// What a `<Dial>` asks the voice channel to do: several numbers ring at once; a `<Sip>` or
/// `<Client>` is dialled on its own (the first noun when nouns of different kinds are mixed).
fn dial_connect(d: &DialVerb) -> Connect {
    let mut c = Connect {
        noun: "number".into(),
        to: String::new(),
        caller_id: d.caller_id.clone(),
        timeout_secs: d.timeout_secs,
        time_limit_secs: d.time_limit_secs,
        record: d.record,
        sip_endpoint: None,
        sip_username: None,
        sip_password: None,
        send_digits: None,
        hangup_on_star: d.hangup_on_star,
    };
    let numbers: Vec<&str> = d
        .nouns
        .iter()
        .filter_map(|n| match n {
            DialNoun::Number { number, .. } => Some(number.as_str()),
            _ => None,
        })
        .collect();
    match d.nouns.first() {
        Some(DialNoun::Number { send_digits, .. }) if numbers.len() == d.nouns.len() => {
            c.noun = if numbers.len() > 1 {
                "number-multi".into()
            } else {
                "number".into()
            };
            c.to = numbers.join(",");
            c.send_digits = send_digits.clone();
        }
        Some(DialNoun::Number {
            number,
            send_digits,
        }) => {
            c.to = number.clone();
            c.send_digits = send_digits.clone();
        }
        Some(DialNoun::Sip {
            uri,
            username,
            password,
        }) => {
            c.noun = "sip".into();
            c.sip_endpoint = Some(uri.clone());
            c.sip_username = username.clone();
            c.sip_password = password.clone();
        }
        Some(DialNoun::Client(name)) => {
            c.noun = "client".into();
            c.to = name.clone();
        }
        None => {}
    }
    c
}

/// The call's parameters as strings (AccountSid from `auth` when the call has none).
fn call_params(env: &RedirectEnv<'_>) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = env
        .call
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect();
    if let Some((account, _)) = env.auth {
        if !params.iter().any(|(k, _)| k == "AccountSid") {
            params.push(("AccountSid".into(), account.to_string()));
        }
    }
    params
}

/// A request to make: the raw reference as written (to recognise `?FlowEvent=return`), the
/// resolved URL, and the parameters besides the call's.
struct Target {
    raw: String,
    url: Url,
    method: Method,
    extra: Vec<(String, String)>,
}

/// What a document led to.
enum Next {
    Fetch(Target),
    Done(Outcome),
}

struct Run<'a, 'e, V> {
    ops: &'a mut V,
    env: &'a RedirectEnv<'e>,
    deadline: Instant,
    fetched: u32,
    base_params: Vec<(String, String)>,
}

impl<V: VoiceOps> Run<'_, '_, V> {
    fn call_sid(&self) -> String {
        self.env
            .call
            .get("CallSid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    async fn run(&mut self, redirect: &Redirect) -> Result<Outcome, TwimlError> {
        let method = Method::parse(&redirect.method).ok_or_else(|| TwimlError::BadMethod {
            method: redirect.method.clone(),
            url: redirect.url.clone(),
        })?;
        let mut target = Target {
            raw: redirect.url.clone(),
            url: resolve(None, &redirect.url)?,
            method,
            extra: Vec::new(),
        };
        loop {
            if let Some(params) = self.returning(&target) {
                tracing::info!(call_sid = %self.call_sid(), url = %crate::redact::url(target.url.as_str()), "TwiML returned control to the flow");
                return Ok(Outcome::RedirectReturned { params });
            }
            if self.fetched >= self.env.limits.max_documents {
                return Err(TwimlError::TooManyDocuments {
                    limit: self.env.limits.max_documents,
                    url: target.url.to_string(),
                });
            }
            self.fetched += 1;
            let mut params = self.base_params.clone();
            params.extend(target.extra.iter().cloned());
            tracing::info!(call_sid = %self.call_sid(), url = %crate::redact::url(target.url.as_str()), method = target.method.as_str(), "fetching TwiML");
            let got = tokio::time::timeout_at(
                self.deadline,
                fetch(
                    self.env.http,
                    &target.url,
                    target.method,
                    &params,
                    self.env.auth.map(|(_, token)| token),
                    self.env.limits.fetch_timeout,
                ),
            )
            .await;
            let body = match got {
                Err(_) => return Ok(Outcome::Timeout),
                Ok(r) => r?,
            };
            let verbs = parse(&body).map_err(|source| TwimlError::Parse {
                url: target.url.to_string(),
                source: Box::new(source),
            })?;
            match self.run_document(&target.url, verbs).await? {
                Next::Fetch(t) => target = t,
                Next::Done(o) => return Ok(o),
            }
        }
    }

    /// The parameters of a request that returns control to the flow, or None.
    fn returning(&self, t: &Target) -> Option<Map<String, Value>> {
        let flagged = t
            .url
            .query_pairs()
            .any(|(k, v)| k == "FlowEvent" && v.eq_ignore_ascii_case("return"));
        if !flagged {
            return None;
        }
        let path = t.url.path().trim_end_matches('/');
        let sid = self.env.flow_sid.trim();
        let ours = !sid.is_empty() && path.ends_with(&format!("/Flows/{sid}"));
        let query_only = t.raw.trim_start().starts_with('?');
        // A Studio webhook URL of Twilio's own (an app written for the flow before it was
        // imported here, with the SID it had there): following it would reach Twilio.
        let twilio = t.url.host_str() == Some("webhooks.twilio.com") && {
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            segs.len() == 5 && segs[0] == "v1" && segs[1] == "Accounts" && segs[3] == "Flows"
        };
        if !(ours || query_only || twilio) {
            return None;
        }
        let mut params = Map::new();
        for (k, v) in self.base_params.iter().chain(t.extra.iter()) {
            params.insert(k.clone(), Value::String(v.clone()));
        }
        for (k, v) in t.url.query_pairs() {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        Some(params)
    }

    async fn run_document(&mut self, doc: &Url, verbs: Vec<Verb>) -> Result<Next, TwimlError> {
        for verb in verbs {
            let next = match verb {
                Verb::Say(s) => {
                    let p = say_prompt(&s);
                    let o = bounded(self.deadline, self.ops.say_play(&p)).await;
                    after_audio(o, "Say")
                }
                Verb::Play(p) => match play_prompt(doc, &p)? {
                    Some(prompt) => {
                        let o = bounded(self.deadline, self.ops.say_play(&prompt)).await;
                        after_audio(o, "Play")
                    }
                    None => None,
                },
                Verb::Pause(p) => {
                    let o = bounded(self.deadline, self.ops.pause(pause_duration(p))).await;
                    after_audio(o, "Pause")
                }
                Verb::Gather(g) => self.gather(doc, g).await?,
                Verb::Record(r) => self.record(doc, r).await?,
                Verb::Redirect(r) => Some(Next::Fetch(Target {
                    url: resolve(Some(doc), &r.url)?,
                    raw: r.url,
                    method: r.method,
                    extra: Vec::new(),
                })),
                Verb::Dial(d) => self.dial(doc, d).await?,
                Verb::Refer(r) => self.refer(doc, r).await?,
                Verb::Message(m) => self.message(doc, m).await?,
                Verb::Hangup | Verb::Reject { .. } => {
                    self.ops.hangup();
                    Some(Next::Done(Outcome::Hangup))
                }
            };
            if let Some(next) = next {
                return Ok(next);
            }
        }
        // The document ended without handing the call back: Twilio ends the call.
        tracing::info!(call_sid = %self.call_sid(), url = %crate::redact::url(doc.as_str()), "TwiML document ended: hanging up");
        self.ops.hangup();
        Ok(Next::Done(Outcome::Hangup))
    }

    async fn gather(&mut self, doc: &Url, g: GatherVerb) -> Result<Option<Next>, TwimlError> {
        let mut prompts = merge_says(g.prompts.clone());
        // The voice channel's gather takes one prompt: earlier ones play first (without
        // barge-in); a trailing <Pause> plays before listening starts.
        let last = match prompts.pop() {
            Some(GatherPrompt::Pause(p)) => {
                prompts.push(GatherPrompt::Pause(p));
                None
            }
            other => other,
        };
        for p in prompts {
            let o = match p {
                GatherPrompt::Say(s) => {
                    bounded(self.deadline, self.ops.say_play(&say_prompt(&s))).await
                }
                GatherPrompt::Play(p) => match play_prompt(doc, &p)? {
                    Some(prompt) => bounded(self.deadline, self.ops.say_play(&prompt)).await,
                    None => Some(Outcome::AudioComplete),
                },
                GatherPrompt::Pause(p) => {
                    bounded(self.deadline, self.ops.pause(pause_duration(p))).await
                }
            };
            if let Some(next) = after_audio(o, "Gather") {
                return Ok(Some(next));
            }
        }
        let prompt = match last {
            Some(GatherPrompt::Say(s)) => say_prompt(&s),
            Some(GatherPrompt::Play(p)) => play_prompt(doc, &p)?.unwrap_or_default(),
            _ => Prompt {
                loop_count: 1,
                ..Prompt::default()
            },
        };
        let effect = Gather {
            prompt,
            input: GatherInput {
                dtmf: g.dtmf,
                speech: g.speech,
            },
            timeout_secs: g.timeout_secs,
            finish_on_key: g.finish_on_key.clone(),
            number_of_digits: g.num_digits,
            stop_gather: true,
            gather_language: g.language.clone(),
            speech_timeout: g.speech_timeout.clone(),
            speech_model: g.speech_model.clone(),
            hints: g.hints.clone(),
            profanity_filter: g.profanity_filter,
        };
        let Some(outcome) = bounded(self.deadline, self.ops.gather(&effect)).await else {
            return Ok(timed_out());
        };
        let extra: Vec<(String, String)> = match outcome {
            Outcome::Digits { digits } if !digits.is_empty() => vec![("Digits".into(), digits)],
            Outcome::Speech { result, confidence } if !result.is_empty() => {
                let mut v = vec![("SpeechResult".into(), result)];
                if let Some(c) = confidence {
                    v.push(("Confidence".into(), c.to_string()));
                }
                v
            }
            Outcome::Hangup => return Ok(Some(Next::Done(Outcome::Hangup))),
            Outcome::Failed { error } => {
                return Ok(Some(Next::Done(Outcome::Failed {
                    error: format!("TwiML <Gather>: {error}"),
                })))
            }
            // Nothing entered: Twilio goes on with the next verb unless asked otherwise.
            _ if g.action_on_empty_result => vec![("Digits".into(), String::new())],
            _ => return Ok(None),
        };
        Ok(Some(Next::Fetch(self.action(
            doc,
            g.action.as_deref(),
            g.method,
            extra,
        )?)))
    }

    async fn dial(&mut self, doc: &Url, d: DialVerb) -> Result<Option<Next>, TwimlError> {
        let connect = dial_connect(&d);
        let Some(outcome) = bounded(self.deadline, self.ops.dial(&connect)).await else {
            return Ok(timed_out());
        };
        match outcome {
            // The caller left: there is no call for the action's TwiML to act on.
            Outcome::Dial(r) if r.caller_hung_up => Ok(Some(Next::Done(Outcome::Hangup))),
            Outcome::Dial(r) => {
                let mut extra = vec![("DialCallStatus".to_string(), r.status.clone())];
                if let Some(sid) = &r.sid {
                    extra.push(("DialCallSid".into(), sid.clone()));
                }
                if let Some(secs) = r.duration_secs {
                    extra.push(("DialCallDuration".into(), secs.to_string()));
                }
                if let Some(url) = &r.recording_url {
                    extra.push(("RecordingUrl".into(), url.clone()));
                }
                match d.action.as_deref() {
                    Some(action) => Ok(Some(Next::Fetch(self.action(
                        doc,
                        Some(action),
                        d.method,
                        extra,
                    )?))),
                    // Without `action`, Twilio goes on with the next verb.
                    None => Ok(None),
                }
            }
            Outcome::Hangup => Ok(Some(Next::Done(Outcome::Hangup))),
            Outcome::Failed { error } => Ok(Some(Next::Done(Outcome::Failed {
                error: format!("TwiML <Dial>: {error}"),
            }))),
            other => Ok(Some(Next::Done(Outcome::Failed {
                error: format!("TwiML <Dial>: unexpected outcome {other:?}"),
            }))),
        }
    }

    async fn message(&mut self, doc: &Url, m: MessageVerb) -> Result<Option<Next>, TwimlError> {
        let param = |k: &str| {
            self.env
                .call
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let msg = Message {
            to: m.to.clone().unwrap_or_else(|| param("From")),
            from: m.from.clone().unwrap_or_else(|| param("To")),
            body: m.body.clone(),
            media_url: None,
            service: None,
            channel: None,
        };
        let Some(outcome) = bounded(self.deadline, self.ops.send_message(&msg)).await else {
            return Ok(timed_out());
        };
        let (status, sid) = match &outcome {
            Outcome::MessageSent { fields } => (
                "sent",
                fields
                    .get("Sid")
                    .or_else(|| fields.get("sid"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            Outcome::DeliveryFailure { error } => {
                tracing::warn!(call_sid = %self.call_sid(), %error, "TwiML <Message> not sent");
                ("failed", String::new())
            }
            _ => ("failed", String::new()),
        };
        match m.action.as_deref() {
            Some(action) => Ok(Some(Next::Fetch(self.action(
                doc,
                Some(action),
                m.method,
                vec![
                    ("SmsSid".into(), sid.clone()),
                    ("MessageSid".into(), sid),
                    ("SmsStatus".into(), status.into()),
                ],
            )?))),
            None => Ok(None),
        }
    }

    async fn refer(&mut self, doc: &Url, r: ReferVerb) -> Result<Option<Next>, TwimlError> {
        let Some(t) = bounded(self.deadline, self.ops.refer(&r.target)).await else {
            return Ok(timed_out());
        };
        if let Some(error) = t.error {
            return Ok(Some(Next::Done(Outcome::Failed {
                error: format!("TwiML <Refer>: {error}"),
            })));
        }
        let extra = vec![
            (
                "ReferCallStatus".to_string(),
                if t.completed { "completed" } else { "failed" }.to_string(),
            ),
            ("ReferSipResponseCode".to_string(), t.sip_code.to_string()),
        ];
        match r.action.as_deref() {
            Some(action) => {
                let target = self.action(doc, Some(action), r.method, extra)?;
                if t.hung_up {
                    self.notify(&target).await;
                    return Ok(Some(Next::Done(Outcome::Hangup)));
                }
                Ok(Some(Next::Fetch(target)))
            }
            None if t.hung_up => Ok(Some(Next::Done(Outcome::Hangup))),
            None => Ok(None),
        }
    }

    async fn record(&mut self, doc: &Url, r: RecordVerb) -> Result<Option<Next>, TwimlError> {
        let max_length_secs = match r.max_length_secs {
            0 => 3600,
            n => n,
        };
        let effect = Record {
            timeout_secs: match r.timeout_secs {
                0 => max_length_secs,
                n => n,
            },
            finish_on_key: r.finish_on_key.clone(),
            max_length_secs,
            play_beep: r.play_beep,
            trim_silence: r.trim_silence,
            transcribe: r.transcribe,
            transcription_callback_url: r.transcribe_callback.clone(),
            recording_status_callback_url: r.recording_status_callback.clone(),
        };
        let Some(outcome) = bounded(self.deadline, self.ops.record(&effect)).await else {
            return Ok(timed_out());
        };
        match outcome {
            Outcome::Recording {
                url,
                sid,
                duration_secs,
                hung_up,
                ..
            } => {
                let mut extra = vec![
                    ("RecordingUrl".to_string(), url),
                    ("RecordingSid".to_string(), sid),
                    ("RecordingDuration".to_string(), duration_secs.to_string()),
                ];
                if hung_up {
                    extra.push(("Digits".into(), "hangup".into()));
                }
                let target = self.action(doc, r.action.as_deref(), r.method, extra)?;
                if hung_up {
                    // Twilio still tells the action URL about the recording; its TwiML is moot.
                    self.notify(&target).await;
                    return Ok(Some(Next::Done(Outcome::Hangup)));
                }
                Ok(Some(Next::Fetch(target)))
            }
            Outcome::Hangup => Ok(Some(Next::Done(Outcome::Hangup))),
            Outcome::Failed { error } => Ok(Some(Next::Done(Outcome::Failed {
                error: format!("TwiML <Record>: {error}"),
            }))),
            // Nothing recorded: go on with the next verb.
            _ => Ok(None),
        }
    }

    /// The request for a verb's `action` (the current document when absent).
    fn action(
        &self,
        doc: &Url,
        action: Option<&str>,
        method: Method,
        extra: Vec<(String, String)>,
    ) -> Result<Target, TwimlError> {
        let raw = action.unwrap_or(doc.as_str()).to_string();
        Ok(Target {
            url: resolve(Some(doc), &raw)?,
            raw,
            method,
            extra,
        })
    }

    /// Make a request whose answer does not matter (the caller is gone).
    async fn notify(&mut self, t: &Target) {
        if self.returning(t).is_some() || self.fetched >= self.env.limits.max_documents {
            return;
        }
        self.fetched += 1;
        let mut params = self.base_params.clone();
        params.extend(t.extra.iter().cloned());
        if let Err(e) = fetch(
            self.env.http,
            &t.url,
            t.method,
            &params,
            self.env.auth.map(|(_, token)| token),
            self.env.limits.fetch_timeout,
        )
        .await
        {
            tracing::warn!(call_sid = %self.call_sid(), error = %e, "record action after hang-up failed");
        }
    }
}

/// Await a voice operation unless the redirect's time is up (None).
async fn bounded<T>(deadline: Instant, op: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline, op).await.ok()
}

/// The redirect's time ran out.
fn timed_out() -> Option<Next> {
    Some(Next::Done(Outcome::Timeout))
}

/// What an audio verb's outcome means for the document: go on (None) or stop.
fn after_audio(o: Option<Outcome>, verb: &str) -> Option<Next> {
    match o {
        None => timed_out(),
        Some(Outcome::Hangup) => Some(Next::Done(Outcome::Hangup)),
        Some(Outcome::Failed { error }) => Some(Next::Done(Outcome::Failed {
            error: format!("TwiML <{verb}>: {error}"),
        })),
        Some(_) => None,
    }
}

fn say_prompt(s: &Say) -> Prompt {
    Prompt {
        say: Some(s.text.clone()),
        voice: s.voice.clone(),
        language: s.language.clone(),
        loop_count: s.loop_count,
        ..Prompt::default()
    }
}

/// A `<Play>` as a prompt (its URL resolved against the document); None when it has nothing.
fn play_prompt(doc: &Url, p: &Play) -> Result<Option<Prompt>, TwimlError> {
    let play = match p.url.as_deref() {
        Some(u) => Some(resolve(Some(doc), u)?.to_string()),
        None => None,
    };
    if play.is_none() && p.digits.is_none() {
        return Ok(None);
    }
    Ok(Some(Prompt {
        play,
        digits: p.digits.clone(),
        loop_count: p.loop_count,
        ..Prompt::default()
    }))
}

fn pause_duration(p: Pause) -> Duration {
    Duration::from_secs(u64::from(p.length_secs.min(MAX_REDIRECT_SECS)))
}

/// Adjacent `<Say>`s with the same voice and language, each played once, speak as one prompt
/// (so the caller can barge in on all of them).
fn merge_says(prompts: Vec<GatherPrompt>) -> Vec<GatherPrompt> {
    let mut out: Vec<GatherPrompt> = Vec::with_capacity(prompts.len());
    for p in prompts {
        if let (Some(GatherPrompt::Say(prev)), GatherPrompt::Say(s)) = (out.last_mut(), &p) {
            if prev.loop_count == 1
                && s.loop_count == 1
                && prev.voice == s.voice
                && prev.language == s.language
            {
                prev.text.push(' ');
                prev.text.push_str(&s.text);
                continue;
            }
        }
        out.push(p);
    }
    out
}

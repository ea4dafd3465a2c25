//! What the engine asks a channel to do ([`Effect`]) and what the channel
//! reports back ([`Outcome`]). All Liquid in an effect is already rendered.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Audio to play: text to speech, a URL, DTMF digits, or a mix (say-play).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Text to speak (Studio `say`).
    pub say: Option<String>,
    /// URL of audio to play (Studio `play`).
    pub play: Option<String>,
    /// DTMF digits to send (Studio `digits`).
    pub digits: Option<String>,
    /// TTS voice (Studio `voice`, e.g. `alice`, `Polly.Joanna`).
    pub voice: Option<String>,
    /// Language of the speech, e.g. `en-US`.
    pub language: Option<String>,
    /// How many times to repeat (Studio `loop`, default 1; 0 means "until interrupted").
    pub loop_count: u32,
}

/// Which inputs a gather listens for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatherInput {
    /// Listen for DTMF digits.
    pub dtmf: bool,
    /// Listen for speech.
    pub speech: bool,
}

/// gather-input-on-call: play a prompt and collect digits or speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gather {
    /// What to play while listening.
    pub prompt: Prompt,
    /// Which inputs to listen for.
    pub input: GatherInput,
    /// Seconds to wait for input after the prompt.
    pub timeout_secs: u32,
    /// The key that ends the input (`#` unless the widget names another).
    pub finish_on_key: String,
    /// Stop after this many digits.
    pub number_of_digits: Option<u32>,
    /// Barge-in: stop the prompt at the first input.
    pub stop_gather: bool,
    /// Language of the speech to recognise.
    pub gather_language: Option<String>,
    /// Studio `speech_timeout`: seconds of silence that end speech, or `auto`.
    pub speech_timeout: Option<String>,
    /// Studio `speech_model` (a name passed to the recogniser).
    pub speech_model: Option<String>,
    /// Words and phrases to expect (comma-separated), e.g. for a grammar.
    pub hints: Option<String>,
    /// Studio `profanity_filter`.
    pub profanity_filter: bool,
}

/// record-voicemail: record the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds of silence that end the recording.
    pub timeout_secs: u32,
    /// The key that ends the recording.
    pub finish_on_key: String,
    /// Longest recording in seconds.
    pub max_length_secs: u32,
    /// Play a beep before recording.
    pub play_beep: bool,
    /// Trim leading and trailing silence.
    pub trim_silence: bool,
    /// Ask for a transcription.
    pub transcribe: bool,
    /// Where to post the transcription.
    pub transcription_callback_url: Option<String>,
    /// Where to post recording status callbacks.
    pub recording_status_callback_url: Option<String>,
}

/// connect-call-to: bridge the call to another party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    /// `number`, `number-multi`, `client`, `sip` or `conference`.
    pub noun: String,
    /// The party to connect (a number, client, SIP URI or conference name).
    pub to: String,
    /// Caller ID shown to the other party.
    pub caller_id: Option<String>,
    /// Seconds to ring before giving up.
    pub timeout_secs: u32,
    /// Longest time connected, in seconds (Studio `time_limit`; 0: Studio's 4 hours).
    #[serde(default)]
    pub time_limit_secs: u32,
    /// Record the bridged call.
    pub record: bool,
    /// SIP URI to dial for `sip`.
    pub sip_endpoint: Option<String>,
    /// SIP digest username for `sip`.
    pub sip_username: Option<String>,
    /// SIP digest password for `sip`.
    pub sip_password: Option<String>,
    /// DTMF sent to the other party once it answers (TwiML `<Number sendDigits>`).
    #[serde(default)]
    pub send_digits: Option<String>,
    /// The caller pressing `*` ends the other leg, and the caller goes on (TwiML
    /// `hangupOnStar`).
    #[serde(default)]
    pub hangup_on_star: bool,
}

/// make-outgoing-call: place a call from a REST-triggered execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingCall {
    /// Caller ID of the call.
    pub from: String,
    /// Who to call.
    pub to: String,
    /// Seconds to ring before giving up.
    pub timeout_secs: u32,
    /// Record the call.
    pub record: bool,
    /// `recording_channels = dual`: the two directions apart, in two channels.
    #[serde(default)]
    pub record_dual: bool,
    /// `trim`: trim the recording's leading and trailing silence.
    #[serde(default)]
    pub record_trim: bool,
    /// `recording_status_callback`: told when the recording is saved.
    #[serde(default)]
    pub recording_status_callback: Option<String>,
    /// Studio `machine_detection` (`Enable`, `DetectMessageEnd`), when
    /// `detect_answering_machine` is on.
    pub machine_detection: Option<String>,
    /// DTMF digits to send once answered.
    pub send_digits: Option<String>,
    /// SIP digest username, for SIP destinations.
    pub sip_auth_username: Option<String>,
    /// SIP digest password, for SIP destinations.
    pub sip_auth_password: Option<String>,
}

/// record-call: start or stop a recording of the whole call (both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordCall {
    /// `record_call`: true starts, false stops.
    pub start: bool,
    /// `recording_channels = dual`.
    pub dual: bool,
    /// `trim = trim-silence`.
    pub trim: bool,
    /// `recording_status_callback`.
    pub recording_status_callback: Option<String>,
}

/// add-twiml-redirect: run the TwiML at a URL until it redirects back to the flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    /// The TwiML document's URL.
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
    /// Seconds the TwiML may run before the widget times out.
    pub timeout_secs: u32,
}

/// How a connected (connect-call-to) or outgoing (make-outgoing-call-v2) call went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DialResult {
    /// `DialCallStatus` (`completed`, `busy`, `no-answer`, `failed`, ...).
    pub status: String,
    /// The other leg's call SID.
    pub sid: Option<String>,
    /// How long the other leg was connected.
    pub duration_secs: Option<u32>,
    /// `AnsweredBy`, when machine detection ran.
    pub answered_by: Option<String>,
    /// The recording of the bridged call.
    pub recording_url: Option<String>,
    /// Why no call was connected (a refused target, an unreachable trunk), for the step.
    #[serde(default)]
    pub error: Option<String>,
    /// The caller hung up (while it rang: `canceled`; while bridged: `completed`), so the
    /// widget takes `hangup` and the call is over.
    #[serde(default)]
    pub caller_hung_up: bool,
}

/// Request body of an HTTP widget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum HttpBody {
    /// No body.
    None,
    /// `application/x-www-form-urlencoded` parameters.
    Form(Vec<(String, String)>),
    /// A rendered body (JSON or other text).
    Text(String),
}

/// make-http-request (and run-function): an HTTP request whose response is the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The URL to request.
    pub url: String,
    /// The body's content type.
    pub content_type: String,
    /// Query parameters (a GET's `parameters` go here).
    pub query: Vec<(String, String)>,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: HttpBody,
    /// Seconds before the request times out.
    pub timeout_secs: u32,
    /// How the request authenticates itself.
    pub auth: HttpAuth,
}

/// How an HTTP effect authenticates itself. The engine only states the intent; the driver
/// decides what, if anything, may be sent to the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// No credentials.
    None,
    /// make-http-request's `add_twilio_auth`: the account's Basic credentials, sent only to a
    /// URL that configuration names for them (the gateway's own API), never elsewhere.
    TwilioBasic,
    /// run-function: signed like Twilio's requests to Functions (`X-Twilio-Signature` over
    /// the URL and the POST parameters); the credentials themselves are never sent.
    TwilioSignature,
}

/// send-message (and the message of send-and-wait-for-reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Our address the message is sent from.
    pub from: String,
    /// The contact's address.
    pub to: String,
    /// The text.
    pub body: String,
    /// Media to attach (MMS).
    pub media_url: Option<String>,
    /// Messaging service SID, if the widget names one.
    pub service: Option<String>,
    /// Channel, e.g. `sms` or `whatsapp`.
    pub channel: Option<String>,
}

/// run-subflow: run another flow as a child execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSubflow {
    /// The child flow's SID.
    pub flow_sid: String,
    /// Studio `flow_revision`: `LatestPublished` unless the widget names one.
    pub revision: String,
    /// `flow.data` of the child.
    pub parameters: Map<String, Value>,
}

/// Why an execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndReason {
    /// The widget took an event with no next widget (the normal end).
    #[error("widget \"{widget}\" took event \"{event}\", which has no next widget")]
    Completed {
        /// The last widget.
        widget: String,
        /// The event it took.
        event: String,
    },
    /// The caller hung up.
    #[error("the caller hung up during widget \"{widget}\"")]
    Hangup {
        /// The widget that was running.
        widget: String,
    },
    /// The execution reached [`MAX_STEPS`](crate::flow::MAX_STEPS).
    #[error("execution stopped: it reached the limit of {limit} steps")]
    StepLimit {
        /// The limit reached.
        limit: u32,
    },
    /// One widget ran [`MAX_REPEATS`](crate::flow::MAX_REPEATS) times in a row.
    #[error("execution stopped: widget \"{widget}\" ran {limit} times in a row")]
    LoopLimit {
        /// The widget that repeated.
        widget: String,
        /// The limit reached.
        limit: u32,
    },
    /// A widget failed with no failure transition.
    #[error("execution failed in widget \"{widget}\": {message}")]
    Error {
        /// The widget that failed.
        widget: String,
        /// Why it failed.
        message: String,
    },
    /// The execution had already ended when it was resumed.
    #[error("execution was already ended")]
    AlreadyEnded,
}

/// The next thing the channel must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// say-play: play a prompt.
    SayPlay(Prompt),
    /// gather-input-on-call.
    Gather(Gather),
    /// record-voicemail.
    Record(Record),
    /// connect-call-to.
    Connect(Connect),
    /// make-outgoing-call.
    OutgoingCall(OutgoingCall),
    /// add-twiml-redirect.
    Redirect(Redirect),
    /// record-call: start or stop recording the whole call.
    RecordCall(RecordCall),
    /// Also used by `run-function` when it has a URL.
    HttpRequest(HttpRequest),
    /// send-message.
    SendMessage(Message),
    /// send-and-wait-for-reply: send, then wait for the contact's reply.
    SendAndWait {
        /// The message to send.
        message: Message,
        /// Seconds to wait for the reply.
        timeout_secs: u32,
    },
    /// The send-and-wait message went out; keep waiting for the reply.
    AwaitReply {
        /// Seconds still to wait.
        timeout_secs: u32,
    },
    /// run-subflow.
    RunSubflow(RunSubflow),
    /// The execution ended.
    End(EndReason),
}

/// What happened when the channel performed an effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// The prompt finished playing.
    AudioComplete,
    /// Digits were gathered.
    Digits {
        /// The digits (empty: nothing was pressed, which the engine takes as a timeout).
        digits: String,
    },
    /// Speech was recognised.
    Speech {
        /// The recognised text.
        result: String,
        /// The recogniser's confidence (0 to 1), when it gives one.
        confidence: Option<f64>,
    },
    /// No input before the timeout.
    Timeout,
    /// A recording was made.
    Recording {
        /// Where the recording can be fetched.
        url: String,
        /// The recording's SID (`RE...`).
        sid: String,
        /// Its length in seconds.
        duration_secs: u32,
        /// Its transcription, when one was made.
        transcription: Option<String>,
        /// The caller hung up while recording: the recording is kept and published, and the
        /// widget takes `hangup` instead of `recordingComplete`.
        hung_up: bool,
    },
    /// Nothing was recorded.
    NoAudio,
    /// Done, with nothing to report (record-call started or stopped its recording).
    Done,
    /// The caller hung up.
    Hangup,
    /// The HTTP response.
    Http {
        /// Its status code.
        status: u16,
        /// Its `Content-Type`.
        content_type: Option<String>,
        /// Its body as text.
        body: String,
    },
    /// The message was accepted by the provider.
    MessageSent {
        /// The provider's fields for the message (`Sid`, `Status`, ...).
        fields: Map<String, Value>,
    },
    /// The reply a send-and-wait-for-reply waited for.
    Reply {
        /// The inbound message's fields (`Body`, `From`, ...).
        fields: Map<String, Value>,
    },
    /// The message could not be sent.
    DeliveryFailure {
        /// Why.
        error: String,
    },
    /// The connected or outgoing call ended.
    Dial(Box<DialResult>),
    /// The TwiML redirected back to the flow.
    RedirectReturned {
        /// The parameters of the return request.
        params: Map<String, Value>,
    },
    /// The child execution ended.
    SubflowCompleted {
        /// Its flow variables.
        variables: Map<String, Value>,
    },
    /// The channel could not perform the effect (takes the failure event).
    Failed {
        /// What went wrong.
        error: String,
    },
}

//! What the engine asks a channel to do ([`Effect`]) and what the channel
//! reports back ([`Outcome`]). All Liquid in an effect is already rendered.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Audio to play: text to speech, a URL, DTMF digits, or a mix (say-play).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub say: Option<String>,
    pub play: Option<String>,
    pub digits: Option<String>,
    pub voice: Option<String>,
    pub language: Option<String>,
    /// How many times to repeat (Studio `loop`, default 1; 0 means "until interrupted").
    pub loop_count: u32,
}

/// Which inputs a gather listens for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatherInput {
    pub dtmf: bool,
    pub speech: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gather {
    pub prompt: Prompt,
    pub input: GatherInput,
    pub timeout_secs: u32,
    pub finish_on_key: String,
    pub number_of_digits: Option<u32>,
    /// Barge-in: stop the prompt at the first input.
    pub stop_gather: bool,
    pub gather_language: Option<String>,
    pub speech_timeout: Option<String>,
    pub speech_model: Option<String>,
    pub hints: Option<String>,
    pub profanity_filter: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds of silence that end the recording.
    pub timeout_secs: u32,
    pub finish_on_key: String,
    pub max_length_secs: u32,
    pub play_beep: bool,
    pub trim_silence: bool,
    pub transcribe: bool,
    pub transcription_callback_url: Option<String>,
    pub recording_status_callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    /// `number`, `number-multi`, `client`, `sip` or `conference`.
    pub noun: String,
    pub to: String,
    pub caller_id: Option<String>,
    pub timeout_secs: u32,
    pub record: bool,
    pub sip_endpoint: Option<String>,
    pub sip_username: Option<String>,
    pub sip_password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingCall {
    pub from: String,
    pub to: String,
    pub timeout_secs: u32,
    pub record: bool,
    pub machine_detection: Option<String>,
    pub send_digits: Option<String>,
    pub sip_auth_username: Option<String>,
    pub sip_auth_password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    pub url: String,
    pub method: String,
    pub timeout_secs: u32,
}

/// Request body of an HTTP widget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum HttpBody {
    None,
    /// `application/x-www-form-urlencoded` parameters.
    Form(Vec<(String, String)>),
    /// A rendered body (JSON or other text).
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub content_type: String,
    /// Query parameters (a GET's `parameters` go here).
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: HttpBody,
    pub timeout_secs: u32,
    pub auth: HttpAuth,
}

/// How an HTTP effect authenticates itself. The engine only states the intent; the driver
/// decides what, if anything, may be sent to the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    None,
    /// make-http-request's `add_twilio_auth`: the account's Basic credentials, sent only to a
    /// URL that configuration names for them (the gateway's own API), never elsewhere.
    TwilioBasic,
    /// run-function: signed like Twilio's requests to Functions (`X-Twilio-Signature` over
    /// the URL and the POST parameters); the credentials themselves are never sent.
    TwilioSignature,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub to: String,
    pub body: String,
    pub media_url: Option<String>,
    pub service: Option<String>,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSubflow {
    pub flow_sid: String,
    pub revision: String,
    pub parameters: Map<String, Value>,
}

/// Why an execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndReason {
    #[error("widget \"{widget}\" took event \"{event}\", which has no next widget")]
    Completed { widget: String, event: String },
    #[error("the caller hung up during widget \"{widget}\"")]
    Hangup { widget: String },
    #[error("execution stopped: it reached the limit of {limit} steps")]
    StepLimit { limit: u32 },
    #[error("execution stopped: widget \"{widget}\" ran {limit} times in a row")]
    LoopLimit { widget: String, limit: u32 },
    #[error("execution failed in widget \"{widget}\": {message}")]
    Error { widget: String, message: String },
    #[error("execution was already ended")]
    AlreadyEnded,
}

/// The next thing the channel must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    SayPlay(Prompt),
    Gather(Gather),
    Record(Record),
    Connect(Connect),
    OutgoingCall(OutgoingCall),
    Redirect(Redirect),
    /// Also used by `run-function` when it has a URL.
    HttpRequest(HttpRequest),
    SendMessage(Message),
    SendAndWait {
        message: Message,
        timeout_secs: u32,
    },
    /// The send-and-wait message went out; keep waiting for the reply.
    AwaitReply {
        timeout_secs: u32,
    },
    RunSubflow(RunSubflow),
    End(EndReason),
}

/// What happened when the channel performed an effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    AudioComplete,
    Digits {
        digits: String,
    },
    Speech {
        result: String,
        confidence: Option<f64>,
    },
    Timeout,
    Recording {
        url: String,
        sid: String,
        duration_secs: u32,
        transcription: Option<String>,
        /// The caller hung up while recording: the recording is kept and published, and the
        /// widget takes `hangup` instead of `recordingComplete`.
        hung_up: bool,
    },
    NoAudio,
    Hangup,
    Http {
        status: u16,
        content_type: Option<String>,
        body: String,
    },
    MessageSent {
        fields: Map<String, Value>,
    },
    Reply {
        fields: Map<String, Value>,
    },
    DeliveryFailure {
        error: String,
    },
    Dial {
        status: String,
        sid: Option<String>,
        duration_secs: Option<u32>,
        answered_by: Option<String>,
        recording_url: Option<String>,
    },
    RedirectReturned {
        params: Map<String, Value>,
    },
    SubflowCompleted {
        variables: Map<String, Value>,
    },
    /// The channel could not perform the effect (takes the failure event).
    Failed {
        error: String,
    },
}

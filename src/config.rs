//! Configuration: one optional TOML file plus `SWITCHBOARD_*` environment overrides
//! (`SWITCHBOARD_SIP__BIND=0.0.0.0:5070`). Every default works without a file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration (the file's top level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database, TTS cache and recordings live.
    pub data_dir: PathBuf,
    /// Flow that answers every number without a route. Empty: the bundled demo IVR.
    pub flow: Option<PathBuf>,
    /// `[[routes]]`: numbers answered by flows of their own.
    pub routes: Vec<Route>,
    /// Twilio Function SIDs mapped to URLs that serve them (run-function widgets in exported
    /// flows name Functions by SID only).
    pub functions: std::collections::HashMap<String, String>,
    /// `[subflows]`: child flows that exported parents name by a Twilio Flow SID that does not
    /// exist here, mapped to a flow file or to a flow SID of this gateway.
    pub subflows: std::collections::HashMap<String, String>,
    /// `[sip]`: the SIP listener and its limits.
    pub sip: SipConfig,
    /// `[http]`: the REST API, webhook and `/metrics` listener.
    pub http: HttpConfig,
    /// `[media]`: RTP ports and pacing threads.
    pub media: MediaSettings,
    /// `[tts]`: the text-to-speech command.
    pub tts: TtsConfig,
    /// Speech recognition for gather widgets with speech input.
    pub speech: SpeechConfig,
    /// `[database]`: where executions and stored flows live.
    pub database: DatabaseConfig,
    /// `[api]`: REST API credentials and public URL.
    pub api: ApiConfig,
    /// `[messaging]`: the inbound webhook and outbound providers.
    pub messaging: MessagingConfig,
    /// `[events]`: event-stream sinks.
    pub events: EventsConfig,
    /// `[retention]`: how long executions are kept.
    pub retention: RetentionConfig,
    /// `[shutdown]`: draining on SIGTERM.
    pub shutdown: ShutdownConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[[trunks]]`: carriers and PBXs (inbound by address, outbound, registration).
    pub trunks: Vec<TrunkConfig>,
    /// `[[users]]`: phones that register to the gateway and call in with digest auth.
    pub users: Vec<UserConfig>,
}

/// `srtp` policy of a trunk, or of `[sip]` for phones and other callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP only: an offer with only `RTP/SAVP` is answered 488.
    #[default]
    Off,
    /// SRTP (SDES keys) when the peer offers it, plain RTP otherwise; calls we place offer
    /// `RTP/AVP` with keys, which a peer that knows SDES answers encrypted.
    Optional,
    /// SRTP or no call: plain offers get 488, and calls we place offer `RTP/SAVP`.
    Required,
}

/// `[[trunks]]`: one carrier or PBX.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// The trunk's name (logs, `/v2/Trunks`).
    pub name: String,
    /// Where outbound requests (INVITE, REGISTER) go: `sip:host[:port][;transport=udp|tcp]`.
    pub uri: String,
    /// Sources (CIDR) that are this trunk: their requests are trusted without digest.
    #[serde(default)]
    pub inbound_from: Vec<String>,
    /// Digest credentials answering the trunk's 401/407 and for REGISTER.
    #[serde(default)]
    pub username: Option<String>,
    /// The digest password (never logged).
    #[serde(default)]
    pub password: Option<String>,
    /// Keep a registration (RFC 3261 §10) with this trunk.
    #[serde(default)]
    pub register: bool,
    /// Seconds of registration asked for (the registrar's grant is what counts).
    #[serde(default = "default_register_expires")]
    pub register_expires: u32,
    /// Default From user for calls out.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// E.164 patterns (`+1*`, exact numbers) this trunk may dial; empty: none.
    #[serde(default)]
    pub dial_allow: Vec<String>,
    /// Concurrent calls out through this trunk.
    #[serde(default = "default_max_outbound")]
    pub max_outbound: usize,
    /// New calls out through this trunk per second (a burst of as many); 0: no limit.
    #[serde(default = "default_calls_per_second")]
    pub calls_per_second: u32,
    /// Seconds between OPTIONS keep-alives to `uri` (its reachability is logged and shown in
    /// `/v2/Trunks`); 0: none.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// SRTP policy of calls with this trunk.
    #[serde(default)]
    pub srtp: SrtpPolicy,
    /// `transport=tls`: the CA (PEM) the trunk's certificate must chain to; unset: the
    /// system's roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

fn default_register_expires() -> u32 {
    600
}

fn default_max_outbound() -> usize {
    100
}

fn default_calls_per_second() -> u32 {
    10
}

fn default_keepalive_secs() -> u64 {
    30
}

impl std::fmt::Debug for TrunkConfig {
    // The digest password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("inbound_from", &self.inbound_from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("register", &self.register)
            .field("register_expires", &self.register_expires)
            .field("caller_id", &self.caller_id)
            .field("dial_allow", &self.dial_allow)
            .field("max_outbound", &self.max_outbound)
            .field("calls_per_second", &self.calls_per_second)
            .field("keepalive_secs", &self.keepalive_secs)
            .field("tls_ca", &self.tls_ca)
            .field("srtp", &self.srtp)
            .finish()
    }
}

/// `[[users]]`: a phone that authenticates with digest (and may register).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The digest username (and the user part of its address of record).
    pub username: String,
    /// The digest password (never logged).
    pub password: String,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A `[[trunks]]`/`[[users]]` entry that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    /// Two trunks of one name.
    #[error("trunk {0:?}: the name is used twice")]
    Duplicate(String),
    /// A `uri` that names no host.
    #[error("trunk {name:?}: uri {uri:?} is not sip:host[:port][;transport=udp|tcp]")]
    Uri {
        /// The trunk.
        name: String,
        /// Its `uri`.
        uri: String,
    },
    /// A transport we cannot speak (yet) for what the trunk asks.
    #[error("trunk {name:?}: transport {transport:?} is not supported (udp, tcp, tls)")]
    Transport {
        /// The trunk.
        name: String,
        /// The transport and what it was for.
        transport: String,
    },
    /// `register = true` without `username` and `password`.
    #[error("trunk {0:?}: register = true needs username and password")]
    RegisterWithoutCredentials(String),
    /// `register_expires` under 60.
    #[error("trunk {0:?}: register_expires must be at least 60 (RFC 3261 §10.2.8)")]
    ShortExpiry(String),
    /// A user with an empty or repeated username.
    #[error("user {0:?}: the username is used twice or is empty")]
    User(String),
}

impl TrunkConfig {
    /// The transport of `uri` (`;transport=`), UDP by default.
    pub fn transport(&self) -> String {
        self.uri
            .split(';')
            .skip(1)
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("transport")
                    .then(|| v.trim().to_ascii_lowercase())
            })
            .unwrap_or_else(|| "udp".into())
    }
}

impl Config {
    /// Checks of `[[trunks]]` and `[[users]]` that serde cannot make.
    pub fn check_trunks(&self) -> Result<(), TrunkError> {
        let mut names = std::collections::HashSet::new();
        for t in &self.trunks {
            if !names.insert(t.name.as_str()) {
                return Err(TrunkError::Duplicate(t.name.clone()));
            }
            let host = t
                .uri
                .trim()
                .strip_prefix("sip:")
                .map(|r| r.split([';', '?']).next().unwrap_or(""))
                .map(|r| r.rsplit('@').next().unwrap_or(""))
                .unwrap_or("");
            if host.is_empty() {
                return Err(TrunkError::Uri {
                    name: t.name.clone(),
                    uri: t.uri.clone(),
                });
            }
            let transport = t.transport();
            if !matches!(transport.as_str(), "udp" | "tcp" | "tls") {
                return Err(TrunkError::Transport {
                    name: t.name.clone(),
                    transport,
                });
            }
            if t.register && (t.username.is_none() || t.password.is_none()) {
                return Err(TrunkError::RegisterWithoutCredentials(t.name.clone()));
            }
            if t.register && t.register_expires < 60 {
                return Err(TrunkError::ShortExpiry(t.name.clone()));
            }
        }
        let mut users = std::collections::HashSet::new();
        for u in &self.users {
            if u.username.is_empty() || !users.insert(u.username.as_str()) {
                return Err(TrunkError::User(u.username.clone()));
            }
        }
        Ok(())
    }
}

/// `[metrics]`: the Prometheus endpoint `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` (default true).
    pub enabled: bool,
    /// A listener of its own for `/metrics`, without authentication (keep it on a private
    /// address). Unset: `/metrics` is served on the HTTP listener behind the API's Basic auth.
    pub bind: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: None,
        }
    }
}

/// `[shutdown]`: what SIGTERM or ctrl-c does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// New calls get 503 at once; calls in progress may run this many seconds before the
    /// gateway hangs them up (their executions end with the hangup, as a caller's would).
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_secs: 30 }
    }
}

/// `[events]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// URLs that receive batches of CloudEvents (a JSON array per POST). Empty: no events.
    pub sinks: Vec<String>,
    /// At most this many events per POST.
    pub batch_size: usize,
    /// How long a batch may wait to fill before it is sent (milliseconds).
    pub flush_ms: u64,
    /// Events queued per sink before the oldest are dropped.
    pub queue_capacity: usize,
    /// Attempts per batch (the first one included) before it is given up.
    pub max_attempts: u32,
    /// First retry delay (milliseconds); doubled on each retry, at most 30 s.
    pub retry_base_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            sinks: Vec::new(),
            batch_size: 100,
            flush_ms: 1000,
            queue_capacity: 10_000,
            max_attempts: 5,
            retry_base_ms: 250,
        }
    }
}

/// `[messaging]`: the inbound webhook and the outbound providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// Check `X-Twilio-Signature` on the inbound webhook against the API auth token.
    pub validate_signatures: bool,
    /// Outbound providers. A message goes out through the provider that lists its `from`
    /// number in `numbers`, else through the one named `default`.
    pub providers: Vec<ProviderConfig>,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            validate_signatures: true,
            providers: Vec::new(),
        }
    }
}

/// How a provider sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Twilio's Messages API or any compatible service.
    Twilio,
    /// SIP MESSAGE (RFC 3428) to a trunk.
    Sip,
    /// SMPP 3.4 (needs the `smpp` cargo feature).
    Smpp,
}

/// `[[messaging.providers]]`: one outbound provider. Fields not used by its kind are ignored.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `default` serves every number no other provider lists.
    pub name: String,
    /// How it sends (`twilio`, `sip` or `smpp`).
    pub kind: ProviderKind,
    /// Our numbers (message `from`) this provider sends for.
    #[serde(default)]
    pub numbers: Vec<String>,
    /// twilio: API base URL (default `https://api.twilio.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// twilio: HTTP Basic user (the account SID).
    #[serde(default)]
    pub account_sid: Option<String>,
    /// twilio: HTTP Basic password.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// smpp: SMSC host and port.
    #[serde(default)]
    pub host: Option<String>,
    /// smpp: SMSC port (default 2775).
    #[serde(default)]
    pub port: Option<u16>,
    /// smpp: bind credentials and system type.
    #[serde(default)]
    pub system_id: Option<String>,
    /// smpp: bind password.
    #[serde(default)]
    pub password: Option<String>,
    /// smpp: bind system type.
    #[serde(default)]
    pub system_type: Option<String>,
    /// smpp: type of number / numbering plan of addresses (default 1/1: international, E.164).
    #[serde(default)]
    pub ton: Option<u8>,
    /// smpp: numbering plan indicator of addresses (see `ton`).
    #[serde(default)]
    pub npi: Option<u8>,
    /// smpp: seconds between enquire_link keep-alives (default 30).
    #[serde(default)]
    pub enquire_link_secs: Option<u64>,
    /// sip: the trunk or URI messages go to.
    #[serde(default)]
    pub trunk: Option<String>,
}

impl std::fmt::Debug for ProviderConfig {
    // Auth tokens and SMPP passwords never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("numbers", &self.numbers)
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("system_type", &self.system_type)
            .field("trunk", &self.trunk)
            .finish()
    }
}

/// `[retention]`: how long executions and steps are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Executions (and their steps) created longer ago than this are deleted (default 30 days).
    pub max_age_secs: u64,
    /// Active executions created longer ago than this are ended first (default 30 days).
    pub max_active_secs: u64,
    /// How often the clean-up runs (it also runs once at start).
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_secs: 30 * 24 * 3600,
            max_active_secs: 30 * 24 * 3600,
            interval_secs: 3600,
        }
    }
}

/// The Studio REST API. Without credentials the gateway generates them on first start and
/// keeps them in `<data_dir>/api-credentials.toml`; the API is never served unauthenticated.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP Basic user name (`AC` + 32 hex digits, like a Twilio account SID).
    pub account_sid: Option<String>,
    /// HTTP Basic password.
    pub auth_token: Option<String>,
    /// Base URL written in `url` and `links` fields; default `http://<http.bind>`.
    pub public_url: Option<String>,
}

impl std::fmt::Debug for ApiConfig {
    // The token never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "***"))
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// Send calls and messages for one number to one flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The dialled number (the Request-URI user or the message's `To`).
    pub number: String,
    /// The flow file that answers it.
    pub flow: PathBuf,
}

/// `[sip]`: the SIP listener (UDP and TCP), its ACL and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP and TCP listen address.
    pub bind: SocketAddr,
    /// Source addresses (CIDR) allowed to send requests. Default: this machine only.
    pub acl: Vec<String>,
    /// Largest SIP message accepted, in bytes; larger ones are refused.
    pub max_message_bytes: usize,
    /// Concurrent calls beyond this get 503 with Retry-After.
    pub max_calls: usize,
    /// Sources (CIDR) whose SIP MESSAGE requests are inbound SMS, besides the hosts of the
    /// `kind = "sip"` messaging providers' trunks. Any other source gets 403.
    pub message_from: Vec<String>,
    /// TCP: a message must be complete this many seconds after its first byte, or the
    /// connection is closed (slow-header attacks).
    pub tcp_header_timeout_secs: u64,
    /// TCP: a connection that carries nothing for this many seconds is closed.
    pub tcp_idle_timeout_secs: u64,
    /// TCP: concurrent connections per source IP; more are closed at once.
    pub tcp_max_connections_per_ip: usize,
    /// Per-source rate limits, bans and scanner filtering.
    pub defence: DefenceConfig,
    /// SIP over TLS (RFC 3261 §26.2, `sips:`) listens here too; needs `tls_cert` and `tls_key`.
    pub tls_bind: Option<SocketAddr>,
    /// PEM certificate chain for `tls_bind` (leaf first).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The address (`host:port`) written in our Contact and Via headers instead of the local
    /// one, when the gateway is behind NAT (set `[media] public_ip` too for the SDP).
    pub public_addr: Option<SocketAddr>,
    /// Digest algorithms our challenges offer to `[[users]]`, in order of preference (one
    /// `WWW-Authenticate` each): `MD5`, `SHA-256`. MD5 alone by default: SIPp answers only
    /// the first challenge, and baresip 1.0 (Debian 12) gives up on the whole 401 when any
    /// challenge names an algorithm it lacks, so offering SHA-256 too would lock them out.
    pub digest_algorithms: Vec<String>,
    /// SRTP for calls that come from no trunk (`[[users]]` phones, or the ACL without trunks):
    /// `optional` by default, so a phone set to encrypt is answered encrypted.
    pub srtp: SrtpPolicy,
}

/// `[http]`: the HTTP listener (REST API, messaging webhook, `/metrics`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address (default 127.0.0.1:8080).
    pub bind: SocketAddr,
    /// A request head must arrive within this many seconds after the connection opens or goes
    /// idle between requests; slower clients are disconnected.
    pub header_timeout_secs: u64,
    /// A request must be answered (its body read) within this many seconds (408 otherwise).
    pub request_timeout_secs: u64,
    /// Open connections from one IP address; further ones are closed at once.
    pub max_connections_per_source: usize,
}

/// `[media]`: RTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Address RTP sockets bind to.
    pub rtp_bind: IpAddr,
    /// Address written into SDP; default: the local address the caller's SIP reached.
    pub public_ip: Option<IpAddr>,
    /// Lowest port of the range each call takes its RTP and RTCP ports from.
    pub rtp_port_min: u16,
    /// Highest port of that range.
    pub rtp_port_max: u16,
    /// Pacing threads; 0 means one per CPU core.
    pub workers: usize,
}

/// `[tts]`: text to speech for say-play without a recording.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    /// espeak-ng compatible command (`-v VOICE -s WPM -w FILE --stdin`).
    pub command: String,
    /// Speaking rate, in words per minute.
    pub speed_wpm: u32,
}

/// `[database]`: the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://...` or `postgres://...`; empty: SQLite at `<data_dir>/switchboard.db`.
    pub url: Option<String>,
    /// Free space (MB) the data directory's file system must keep: below it new calls get 503
    /// and `/healthz` says so, before the database or a recording fails half-way. 0: no floor.
    pub min_free_mb: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            min_free_mb: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            flow: None,
            routes: Vec::new(),
            functions: std::collections::HashMap::new(),
            subflows: std::collections::HashMap::new(),
            sip: SipConfig::default(),
            http: HttpConfig::default(),
            media: MediaSettings::default(),
            tts: TtsConfig::default(),
            speech: SpeechConfig::default(),
            database: DatabaseConfig::default(),
            api: ApiConfig::default(),
            messaging: MessagingConfig::default(),
            trunks: Vec::new(),
            users: Vec::new(),
            events: EventsConfig::default(),
            retention: RetentionConfig::default(),
            shutdown: ShutdownConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5060)),
            acl: vec!["127.0.0.0/8".into(), "::1".into()],
            max_message_bytes: 65_535,
            max_calls: 5_000,
            message_from: Vec::new(),
            tcp_header_timeout_secs: 10,
            tcp_idle_timeout_secs: 300,
            tcp_max_connections_per_ip: 32,
            defence: DefenceConfig::default(),
            digest_algorithms: vec!["MD5".into()],
            srtp: SrtpPolicy::Optional,
            public_addr: None,
            tls_bind: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            max_connections_per_source: 64,
        }
    }
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            rtp_bind: IpAddr::from([0, 0, 0, 0]),
            public_ip: None,
            rtp_port_min: 20_000,
            rtp_port_max: 39_999,
            workers: 0,
        }
    }
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            command: "espeak-ng".into(),
            speed_wpm: 165,
        }
    }
}

/// The configuration file or environment could not be read (figment's message names the key).
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Read the configuration: the defaults, then `file` (when given), then `SWITCHBOARD_*`
    /// variables of our sections (`SWITCHBOARD_SIP__BIND` sets `sip.bind`).
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only our own sections: other SWITCHBOARD_* variables (test switches) are not config.
        let ours = [
            "data_dir",
            "flow",
            "sip",
            "http",
            "media",
            "tts",
            "database",
            "api",
            "messaging",
            "events",
            "retention",
            "speech",
            "functions",
            "subflows",
            "shutdown",
            "metrics",
            "trunks",
            "users",
        ];
        // Keys keep the variable's case here (figment lowercases them later).
        let env = Env::prefixed("SWITCHBOARD_").split("__").filter(move |k| {
            let k = k.as_str().to_ascii_lowercase();
            ours.iter()
                .any(|o| k == *o || k.starts_with(&format!("{o}.")))
        });
        fig = fig.merge(env);
        fig.extract().map_err(|e| ConfigError(Box::new(e)))
    }

    /// The database URL: `[database] url`, else SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) if !u.is_empty() => u.clone(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("switchboard.db").display()
            ),
        }
    }
}

/// `[speech]`: speech recognition for gather widgets with speech input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechConfig {
    /// `none` (speech input times out) or `pocketsphinx`.
    pub engine: String,
    /// The recogniser's command (`pocketsphinx_continuous`).
    pub command: String,
    /// Acoustic model and dictionary (Debian's pocketsphinx-en-us paths by default).
    pub hmm: PathBuf,
    /// Pronunciation dictionary.
    pub dict: PathBuf,
    /// Language model (used when a gather has no `hints`).
    pub lm: PathBuf,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        let model = PathBuf::from("/usr/share/pocketsphinx/model/en-us");
        SpeechConfig {
            engine: "none".into(),
            command: "pocketsphinx_continuous".into(),
            hmm: model.join("en-us"),
            dict: model.join("cmudict-en-us.dict"),
            lm: model.join("en-us.lm.bin"),
        }
    }
}

/// `[sip.defence]`: on by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefenceConfig {
    /// Rate limits, bans and the scanner filter apply (default true).
    pub enabled: bool,
    /// Requests per second per source IP, by method; bursts of twice as many pass. ACK is never
    /// limited (dropping it only causes retransmissions).
    pub rate_invite: u32,
    /// REGISTER requests per second per source.
    pub rate_register: u32,
    /// OPTIONS requests per second per source.
    pub rate_options: u32,
    /// Requests of other methods per second per source.
    pub rate_other: u32,
    /// Over the rate: `reject` answers 503 with Retry-After, `drop` sends nothing.
    pub over_rate: OverRate,
    /// A source refused this many times (by the ACL, or for a scanner User-Agent) within
    /// `ban_window_secs` is banned: everything it sends is dropped for `ban_secs`.
    pub ban_after_failures: u32,
    /// The window `ban_after_failures` is counted in, in seconds.
    pub ban_window_secs: u64,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Requests whose User-Agent contains one of these (case-insensitive) are dropped.
    pub scanner_user_agents: Vec<String>,
    /// Sources (CIDR) exempt from rate limits and bans; the User-Agent check still applies.
    /// Default: this machine, so that local load tools are not throttled.
    pub exempt: Vec<String>,
}

/// What a source over its rate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverRate {
    /// 503 with Retry-After.
    Reject,
    /// Nothing.
    Drop,
}

impl Default for DefenceConfig {
    fn default() -> Self {
        DefenceConfig {
            enabled: true,
            rate_invite: 50,
            rate_register: 10,
            rate_options: 20,
            rate_other: 200,
            over_rate: OverRate::Reject,
            ban_after_failures: 10,
            ban_window_secs: 60,
            ban_secs: 600,
            scanner_user_agents: [
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "vaxsipuseragent",
                "sip-scan",
                "sundayddr",
                "iWar",
                "smap",
                "pplsip",
            ]
            .map(String::from)
            .to_vec(),
            exempt: vec!["127.0.0.0/8".into(), "::1".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_file_overrides() {
        let c = Config::default();
        assert_eq!(c.sip.bind.port(), 5060);
        assert_eq!(c.http.bind.to_string(), "127.0.0.1:8080");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sb.toml");
        std::fs::write(
            &f,
            "data_dir = \"/tmp/x\"\n[sip]\nbind = \"127.0.0.1:5999\"\nacl = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.sip.bind.port(), 5999);
        assert_eq!(c.sip.acl, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(c.http.bind.port(), 8080, "untouched sections keep defaults");
        std::fs::write(&f, "[sip]\nbnid = \"x\"\n").unwrap();
        assert!(Config::load(Some(&f))
            .unwrap_err()
            .to_string()
            .contains("bnid"));
    }

    #[test]
    fn sip_hardening_keys() {
        let c = Config::default();
        assert_eq!(c.sip.tcp_header_timeout_secs, 10);
        assert!(
            c.sip.defence.enabled,
            "the scanner defence is on by default"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sb.toml");
        std::fs::write(
            &f,
            "[sip]\ntcp_header_timeout_secs = 3\ntcp_idle_timeout_secs = 60\ntcp_max_connections_per_ip = 4\n\
             [sip.defence]\nrate_invite = 5\nover_rate = \"drop\"\nban_secs = 30\nexempt = []\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.sip.tcp_max_connections_per_ip, 4);
        assert_eq!(c.sip.defence.rate_invite, 5);
        assert_eq!(c.sip.defence.over_rate, OverRate::Drop);
        assert_eq!(
            c.sip.defence.ban_after_failures, 10,
            "defaults fill the rest"
        );
        let core =
            crate::sip::CoreConfig::from_sip(&c.sip, "x".into(), Default::default()).unwrap();
        assert_eq!(core.tcp.header_timeout, std::time::Duration::from_secs(3));
        std::fs::write(&f, "[sip.defence]\nexempt = [\"nonsense\"]\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert!(crate::sip::CoreConfig::from_sip(&c.sip, "x".into(), Default::default()).is_err());
        std::fs::write(&f, "[sip.defence]\nrate_invtie = 5\n").unwrap();
        assert!(Config::load(Some(&f)).is_err(), "typos are refused");
    }

    #[test]
    fn api_section_and_redacted_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sb.toml");
        std::fs::write(
            &f,
            "[api]\naccount_sid = \"AC1\"\nauth_token = \"sekrit\"\npublic_url = \"https://sb.example\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.api.account_sid.as_deref(), Some("AC1"));
        assert_eq!(c.api.public_url.as_deref(), Some("https://sb.example"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
    }

    #[test]
    fn messaging_events_and_retention_sections() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sb.toml");
        std::fs::write(
            &f,
            r#"
[messaging]
validate_signatures = false
[[messaging.providers]]
name = "default"
kind = "twilio"
base_url = "http://127.0.0.1:9"
account_sid = "AC1"
auth_token = "tok-sekrit"
[[messaging.providers]]
name = "smsc"
kind = "smpp"
numbers = ["+15550001"]
host = "127.0.0.1"
port = 2775
system_id = "sb"
password = "pw-sekrit"
[events]
sinks = ["http://127.0.0.1:9/events"]
batch_size = 10
[retention]
max_age_secs = 60
"#,
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert!(!c.messaging.validate_signatures);
        assert_eq!(c.messaging.providers.len(), 2);
        assert_eq!(c.messaging.providers[1].kind, ProviderKind::Smpp);
        assert_eq!(c.events.batch_size, 10);
        assert_eq!(c.events.flush_ms, 1000, "defaults fill the rest");
        assert_eq!(c.retention.max_age_secs, 60);
        assert_eq!(c.retention.interval_secs, 3600);
        let shown = format!("{c:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        std::fs::write(
            &f,
            "[[messaging.providers]]\nname = \"x\"\nkind = \"carrier-pigeon\"\n",
        )
        .unwrap();
        assert!(Config::load(Some(&f)).is_err());
    }

    #[test]
    fn environment_overrides_sections() {
        // Only this test sets these variables.
        std::env::set_var("SWITCHBOARD_API__AUTH_TOKEN", "from-env");
        std::env::set_var("SWITCHBOARD_TTS__SPEED_WPM", "99");
        let c = Config::load(None);
        std::env::remove_var("SWITCHBOARD_API__AUTH_TOKEN");
        std::env::remove_var("SWITCHBOARD_TTS__SPEED_WPM");
        let c = c.unwrap();
        assert_eq!(c.api.auth_token.as_deref(), Some("from-env"));
        assert_eq!(c.tts.speed_wpm, 99);
    }
}

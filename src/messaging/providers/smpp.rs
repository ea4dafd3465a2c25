//! `kind = "smpp"`: SMPP 3.4 as an ESME over TCP. One session per provider binds as a
//! transceiver (`bind_transceiver`), sends messages with `submit_sm` (the SMSC's
//! `message_id` becomes the message `Sid`), receives `deliver_sm` — inbound messages, handed to
//! the conversations, and delivery receipts, logged — keeps the link up with `enquire_link`,
//! and reconnects with back-off when the link drops. The PDU codec ([`pdu`]) is pure; the
//! session task is the thin I/O loop around it. The bind password is never logged.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::ProviderError;
use crate::config::ProviderConfig;
use crate::flow::Message;
use crate::messaging::{InboundMessage, MessageSink, SendFuture};
use crate::runner::params;
use crate::store::new_sid;

/// How long a submit may wait for the SMSC's answer.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub mod pdu {
    //! SMPP 3.4 PDUs: the 16-byte header, C-octet strings, the bodies this provider uses.

    use bytes::{Buf, BufMut, BytesMut};

    pub(crate) const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub(crate) const SUBMIT_SM: u32 = 0x0000_0004;
    pub(crate) const DELIVER_SM: u32 = 0x0000_0005;
    pub(crate) const UNBIND: u32 = 0x0000_0006;
    pub(crate) const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub(crate) const GENERIC_NACK: u32 = 0x8000_0000;
    pub(crate) const RESPONSE: u32 = 0x8000_0000;

    pub(crate) const ESME_ROK: u32 = 0x00;
    pub(crate) const ESME_RINVCMDID: u32 = 0x03;
    pub(crate) const ESME_RX_T_APPN: u32 = 0x64;
    pub(crate) const ESME_RX_P_APPN: u32 = 0x65;

    /// TLV tags.
    pub(crate) const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub(crate) const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub(crate) const MESSAGE_STATE: u16 = 0x0427;

    /// PDUs larger than this are refused (SMPP bodies are small; this bounds memory).
    pub const MAX_PDU: usize = 64 * 1024;

    /// Why bytes are not an SMPP PDU.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum PduError {
        /// The length field is below 16 or above [`MAX_PDU`] (the length).
        #[error("PDU length {0} out of range")]
        Length(usize),
        /// The body ends inside a field (the field).
        #[error("PDU body truncated in {0}")]
        Truncated(&'static str),
    }

    /// One SMPP PDU: the 16-byte header's fields and the body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Pdu {
        /// `command_id` (the high bit marks a response).
        pub command_id: u32,
        /// `command_status` (0: OK).
        pub status: u32,
        /// `sequence_number`, which pairs a response with its request.
        pub seq: u32,
        /// The body after the header.
        pub body: Vec<u8>,
    }

    impl Pdu {
        /// A request PDU (status 0).
        pub fn new(command_id: u32, seq: u32, body: Vec<u8>) -> Pdu {
            Pdu {
                command_id,
                status: ESME_ROK,
                seq,
                body,
            }
        }

        /// The response to this PDU.
        pub fn response(&self, status: u32, body: Vec<u8>) -> Pdu {
            Pdu {
                command_id: self.command_id | RESPONSE,
                status,
                seq: self.seq,
                body,
            }
        }

        /// The PDU on the wire (length, header, body).
        pub fn encode(&self) -> Vec<u8> {
            let mut out = Vec::with_capacity(16 + self.body.len());
            out.put_u32((16 + self.body.len()) as u32);
            out.put_u32(self.command_id);
            out.put_u32(self.status);
            out.put_u32(self.seq);
            out.extend_from_slice(&self.body);
            out
        }
    }

    /// Take one whole PDU off the front of `buf`, if it holds one.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(16..=MAX_PDU).contains(&len) {
            return Err(PduError::Length(len));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let mut frame = buf.split_to(len);
        frame.advance(4);
        let command_id = frame.get_u32();
        let status = frame.get_u32();
        let seq = frame.get_u32();
        Ok(Some(Pdu {
            command_id,
            status,
            seq,
            body: frame.to_vec(),
        }))
    }

    pub(crate) fn put_cstr(out: &mut Vec<u8>, s: &str, max: usize) {
        // A C-octet string holds no NUL and at most max-1 octets.
        let bytes: Vec<u8> = s
            .bytes()
            .filter(|&b| b != 0)
            .take(max.saturating_sub(1))
            .collect();
        out.extend_from_slice(&bytes);
        out.push(0);
    }

    /// Reads a body field by field.
    pub(crate) struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Reader<'a> {
            Reader { buf }
        }

        pub fn u8(&mut self, what: &'static str) -> Result<u8, PduError> {
            let (&b, rest) = self.buf.split_first().ok_or(PduError::Truncated(what))?;
            self.buf = rest;
            Ok(b)
        }

        pub fn cstr(&mut self, what: &'static str) -> Result<String, PduError> {
            let end = self
                .buf
                .iter()
                .position(|&b| b == 0)
                .ok_or(PduError::Truncated(what))?;
            let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf = &self.buf[end + 1..];
            Ok(s)
        }

        pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PduError> {
            if self.buf.len() < n {
                return Err(PduError::Truncated(what));
            }
            let (b, rest) = self.buf.split_at(n);
            self.buf = rest;
            Ok(b)
        }

        /// The remaining optional parameters (tag, value).
        pub fn tlvs(&mut self) -> Result<Vec<(u16, &'a [u8])>, PduError> {
            let mut out = Vec::new();
            while !self.buf.is_empty() {
                let head = self.bytes(4, "TLV header")?;
                let tag = u16::from_be_bytes([head[0], head[1]]);
                let len = u16::from_be_bytes([head[2], head[3]]) as usize;
                out.push((tag, self.bytes(len, "TLV value")?));
            }
            Ok(out)
        }
    }

    pub(crate) struct Bind<'a> {
        pub system_id: &'a str,
        pub password: &'a str,
        pub system_type: &'a str,
        pub ton: u8,
        pub npi: u8,
    }

    pub(crate) fn bind_body(b: &Bind<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        put_cstr(&mut out, b.system_id, 16);
        put_cstr(&mut out, b.password, 9);
        put_cstr(&mut out, b.system_type, 13);
        out.push(0x34); // interface_version 3.4
        out.push(b.ton);
        out.push(b.npi);
        put_cstr(&mut out, "", 41); // address_range
        out
    }

    /// The body shared by submit_sm and deliver_sm (the fields this provider uses).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct ShortMessage {
        /// `source_addr_ton`.
        pub source_ton: u8,
        /// `source_addr_npi`.
        pub source_npi: u8,
        /// `source_addr`.
        pub source: String,
        /// `dest_addr_ton`.
        pub dest_ton: u8,
        /// `dest_addr_npi`.
        pub dest_npi: u8,
        /// `destination_addr`.
        pub dest: String,
        /// `esm_class` (a delivery receipt has bit 2 set).
        pub esm_class: u8,
        /// `registered_delivery` (1: ask for a delivery receipt).
        pub registered_delivery: u8,
        /// `data_coding` (see [`super::text`]).
        pub data_coding: u8,
        /// The message octets (from short_message, or the message_payload TLV).
        pub payload: Vec<u8>,
        /// The `receipted_message_id` TLV of a delivery receipt.
        pub receipted_message_id: Option<String>,
        /// The `message_state` TLV of a delivery receipt.
        pub message_state: Option<u8>,
    }

    /// The body of a submit_sm or deliver_sm carrying `m` (long text in message_payload).
    pub fn short_message_body(m: &ShortMessage) -> Vec<u8> {
        let mut out = Vec::new();
        put_cstr(&mut out, "", 6); // service_type
        out.push(m.source_ton);
        out.push(m.source_npi);
        put_cstr(&mut out, &m.source, 21);
        out.push(m.dest_ton);
        out.push(m.dest_npi);
        put_cstr(&mut out, &m.dest, 21);
        out.push(m.esm_class);
        out.push(0); // protocol_id
        out.push(0); // priority_flag
        put_cstr(&mut out, "", 17); // schedule_delivery_time
        put_cstr(&mut out, "", 17); // validity_period
        out.push(m.registered_delivery);
        out.push(0); // replace_if_present_flag
        out.push(m.data_coding);
        out.push(0); // sm_default_msg_id
        if m.payload.len() <= 254 {
            out.push(m.payload.len() as u8);
            out.extend_from_slice(&m.payload);
        } else {
            // Longer text goes in message_payload (at most 64 KiB by the TLV length).
            let body = &m.payload[..m.payload.len().min(u16::MAX as usize)];
            out.push(0);
            out.extend_from_slice(&MESSAGE_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    /// Read a submit_sm or deliver_sm body.
    pub fn parse_short_message(body: &[u8]) -> Result<ShortMessage, PduError> {
        let mut r = Reader::new(body);
        r.cstr("service_type")?;
        let source_ton = r.u8("source_addr_ton")?;
        let source_npi = r.u8("source_addr_npi")?;
        let source = r.cstr("source_addr")?;
        let dest_ton = r.u8("dest_addr_ton")?;
        let dest_npi = r.u8("dest_addr_npi")?;
        let dest = r.cstr("destination_addr")?;
        let esm_class = r.u8("esm_class")?;
        r.u8("protocol_id")?;
        r.u8("priority_flag")?;
        r.cstr("schedule_delivery_time")?;
        r.cstr("validity_period")?;
        let registered_delivery = r.u8("registered_delivery")?;
        r.u8("replace_if_present_flag")?;
        let data_coding = r.u8("data_coding")?;
        r.u8("sm_default_msg_id")?;
        let len = r.u8("sm_length")? as usize;
        let mut payload = r.bytes(len, "short_message")?.to_vec();
        let mut m = ShortMessage {
            source_ton,
            source_npi,
            source,
            dest_ton,
            dest_npi,
            dest,
            esm_class,
            registered_delivery,
            data_coding,
            ..ShortMessage::default()
        };
        for (tag, value) in r.tlvs()? {
            match tag {
                MESSAGE_PAYLOAD if payload.is_empty() => payload = value.to_vec(),
                RECEIPTED_MESSAGE_ID => {
                    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                    m.receipted_message_id =
                        Some(String::from_utf8_lossy(&value[..end]).into_owned());
                }
                MESSAGE_STATE => m.message_state = value.first().copied(),
                _ => {}
            }
        }
        m.payload = payload;
        Ok(m)
    }

    /// The message_id of a submit_sm_resp (absent when the submit failed).
    pub fn message_id(body: &[u8]) -> String {
        Reader::new(body).cstr("message_id").unwrap_or_default()
    }

    /// A command status as its name, for error messages.
    pub fn status_name(status: u32) -> String {
        let name = match status {
            0x01 => "ESME_RINVMSGLEN",
            0x02 => "ESME_RINVCMDLEN",
            0x03 => "ESME_RINVCMDID",
            0x04 => "ESME_RINVBNDSTS",
            0x05 => "ESME_RALYBND",
            0x08 => "ESME_RSYSERR",
            0x0A => "ESME_RINVSRCADR",
            0x0B => "ESME_RINVDSTADR",
            0x0D => "ESME_RBINDFAIL",
            0x0E => "ESME_RINVPASWD",
            0x0F => "ESME_RINVSYSID",
            0x14 => "ESME_RMSGQFUL",
            0x45 => "ESME_RSUBMITFAIL",
            0x58 => "ESME_RTHROTTLED",
            0x64 => "ESME_RX_T_APPN",
            0x65 => "ESME_RX_P_APPN",
            0x66 => "ESME_RX_R_APPN",
            _ => "error",
        };
        format!("{name} (0x{status:08X})")
    }
}

pub mod text {
    //! Message text in SMPP data codings: GSM 03.38 (unpacked, data_coding 0 and 1),
    //! Latin-1 (3) and UCS-2 (8).

    const GSM: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const GSM_EXT: &[(u8, char)] = &[
        (0x0A, '\u{0c}'),
        (0x14, '^'),
        (0x28, '{'),
        (0x29, '}'),
        (0x2F, '\\'),
        (0x3C, '['),
        (0x3D, '~'),
        (0x3E, ']'),
        (0x40, '|'),
        (0x65, '€'),
    ];

    fn gsm_code(c: char) -> Option<Vec<u8>> {
        if c == '\u{1b}' {
            return None;
        }
        if let Some(i) = GSM.chars().position(|g| g == c) {
            return Some(vec![i as u8]);
        }
        GSM_EXT
            .iter()
            .find(|(_, e)| *e == c)
            .map(|(code, _)| vec![0x1B, *code])
    }

    /// `(data_coding, octets)`: GSM 03.38 when every character has a code, else UCS-2.
    pub fn encode(s: &str) -> (u8, Vec<u8>) {
        let gsm: Option<Vec<Vec<u8>>> = s.chars().map(gsm_code).collect();
        match gsm {
            Some(codes) => (0x00, codes.concat()),
            None => (
                0x08,
                s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect(),
            ),
        }
    }

    /// The text of `octets` in `data_coding` (GSM 03.38, Latin-1 or UCS-2).
    pub fn decode(data_coding: u8, octets: &[u8]) -> String {
        match data_coding & 0x0F {
            0x00 | 0x01 => {
                let table: Vec<char> = GSM.chars().collect();
                let mut out = String::new();
                let mut escape = false;
                for &b in octets {
                    let b = b & 0x7F;
                    if escape {
                        escape = false;
                        match GSM_EXT.iter().find(|(code, _)| *code == b) {
                            Some((_, c)) => out.push(*c),
                            None => out.push(table.get(b as usize).copied().unwrap_or('?')),
                        }
                    } else if b == 0x1B {
                        escape = true;
                    } else {
                        out.push(table.get(b as usize).copied().unwrap_or('?'));
                    }
                }
                out
            }
            0x03 => octets.iter().map(|&b| b as char).collect(),
            0x08 => {
                let units: Vec<u16> = octets
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            }
            _ => String::from_utf8_lossy(octets).into_owned(),
        }
    }
}

/// An address as E.164 for the flow: international numbers get their `+`.
fn from_smpp_address(ton: u8, addr: &str) -> String {
    if ton == 1 && !addr.starts_with('+') && addr.chars().all(|c| c.is_ascii_digit()) {
        format!("+{addr}")
    } else {
        addr.to_string()
    }
}

struct Addressing {
    ton: u8,
    npi: u8,
}

impl Addressing {
    /// `(ton, npi, address)` for an outgoing address: numbers without the `+`, alphanumeric
    /// senders as TON 5.
    fn to_smpp(&self, addr: &str) -> (u8, u8, String) {
        let a = addr.trim().trim_start_matches("tel:");
        let digits = a.trim_start_matches('+');
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            (self.ton, self.npi, digits.to_string())
        } else {
            (5, 0, a.to_string())
        }
    }
}

struct Submit {
    sm: pdu::ShortMessage,
    reply: oneshot::Sender<Result<String, String>>,
}

struct Settings {
    name: String,
    addr: String,
    system_id: String,
    password: String,
    system_type: String,
    ton: u8,
    npi: u8,
    enquire_link: Duration,
}

/// The SMPP provider: a handle to its session task.
pub(crate) struct SmppProvider {
    name: String,
    addressing: Addressing,
    tx: mpsc::Sender<Submit>,
}

impl SmppProvider {
    /// Check the configuration and start the session task (inside a tokio runtime).
    pub fn start(
        p: &ProviderConfig,
        inbound: mpsc::Sender<InboundMessage>,
    ) -> Result<SmppProvider, ProviderError> {
        let host = p
            .host
            .clone()
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| ProviderError::invalid(p, "kind \"smpp\" needs host"))?;
        let system_id = p
            .system_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProviderError::invalid(p, "kind \"smpp\" needs system_id"))?;
        if system_id.len() > 15 {
            return Err(ProviderError::invalid(
                p,
                "system_id is longer than 15 characters",
            ));
        }
        let password = p.password.clone().unwrap_or_default();
        if password.len() > 8 {
            return Err(ProviderError::invalid(
                p,
                "password is longer than 8 characters (SMPP 3.4)",
            ));
        }
        let settings = Settings {
            name: p.name.clone(),
            addr: format!("{host}:{}", p.port.unwrap_or(2775)),
            system_id,
            password,
            system_type: p.system_type.clone().unwrap_or_default(),
            ton: p.ton.unwrap_or(1),
            npi: p.npi.unwrap_or(1),
            enquire_link: Duration::from_secs(p.enquire_link_secs.unwrap_or(30).max(1)),
        };
        let (tx, rx) = mpsc::channel(256);
        let provider = SmppProvider {
            name: p.name.clone(),
            addressing: Addressing {
                ton: settings.ton,
                npi: settings.npi,
            },
            tx,
        };
        tokio::spawn(session(settings, rx, inbound));
        Ok(provider)
    }

    async fn deliver(&self, msg: &Message) -> Result<Map<String, Value>, String> {
        let (source_ton, source_npi, source) = self.addressing.to_smpp(&msg.from);
        let (dest_ton, dest_npi, dest) = self.addressing.to_smpp(&msg.to);
        if dest.is_empty() {
            return Err(format!(
                "messaging provider {:?}: no destination",
                self.name
            ));
        }
        let mut body = msg.body.clone();
        if let Some(media) = msg.media_url.as_deref().filter(|m| !m.is_empty()) {
            // SMS has no attachments: the media URLs travel as text.
            body = format!("{body}\n{media}");
        }
        let (data_coding, payload) = text::encode(&body);
        let (reply, answer) = oneshot::channel();
        let sm = pdu::ShortMessage {
            source_ton,
            source_npi,
            source,
            dest_ton,
            dest_npi,
            dest,
            registered_delivery: 1,
            data_coding,
            payload,
            ..pdu::ShortMessage::default()
        };
        self.tx
            .send(Submit { sm, reply })
            .await
            .map_err(|_| format!("messaging provider {:?}: SMPP session stopped", self.name))?;
        let message_id = match tokio::time::timeout(SUBMIT_TIMEOUT, answer).await {
            Ok(Ok(r)) => r.map_err(|e| format!("messaging provider {:?}: {e}", self.name))?,
            Ok(Err(_)) => {
                return Err(format!(
                    "messaging provider {:?}: SMPP link lost before the answer",
                    self.name
                ))
            }
            Err(_) => {
                return Err(format!(
                    "messaging provider {:?}: no submit_sm_resp within 10 s",
                    self.name
                ))
            }
        };
        Ok(params([
            ("Sid", message_id),
            ("To", msg.to.clone()),
            ("From", msg.from.clone()),
            ("Body", msg.body.clone()),
            ("Status", "sent".to_string()),
            ("NumSegments", "1".to_string()),
        ]))
    }
}

impl MessageSink for SmppProvider {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(msg))
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("bind refused: {0}")]
    BindRefused(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad PDU: {0}")]
    Pdu(#[from] pdu::PduError),
    #[error("the SMSC closed the link")]
    Closed,
    #[error("the SMSC unbound")]
    Unbound,
    #[error("no answer to enquire_link")]
    Silent,
    #[error("timed out binding")]
    BindTimeout,
}

/// The session task: connect, bind, serve; on any failure fail pending submits and reconnect
/// with back-off (1 s doubling to 30 s). While unbound, submits fail at once.
async fn session(
    s: Settings,
    mut rx: mpsc::Receiver<Submit>,
    inbound: mpsc::Sender<InboundMessage>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let result = async {
            let mut link = Link::connect(&s).await?;
            tracing::info!(provider = %s.name, smsc = %s.addr, "SMPP bound as transceiver");
            link.serve(&s, &mut rx, &inbound).await
        }
        .await;
        let reason = match result {
            Ok(()) => return, // every provider handle is gone
            Err(e) => e.to_string(),
        };
        tracing::warn!(provider = %s.name, smsc = %s.addr, error = %reason, retry_in = ?backoff, "SMPP link down");
        // Wait out the back-off, refusing submits meanwhile.
        let wake = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                submit = rx.recv() => match submit {
                    Some(sub) => {
                        let _ = sub.reply.send(Err(format!("SMPP link to {} is down: {reason}", s.addr)));
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

struct Link {
    stream: TcpStream,
    buf: BytesMut,
    seq: u32,
}

impl Link {
    fn next_seq(&mut self) -> u32 {
        self.seq = if self.seq >= 0x7FFF_FFFF {
            1
        } else {
            self.seq + 1
        };
        self.seq
    }

    async fn send(&mut self, p: &pdu::Pdu) -> Result<(), LinkError> {
        self.stream.write_all(&p.encode()).await?;
        Ok(())
    }

    async fn read_pdu(&mut self) -> Result<pdu::Pdu, LinkError> {
        loop {
            if let Some(p) = pdu::decode(&mut self.buf)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    async fn connect(s: &Settings) -> Result<Link, LinkError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&s.addr)).await
        {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => {
                return Err(LinkError::Connect {
                    addr: s.addr.clone(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(LinkError::Connect {
                    addr: s.addr.clone(),
                    reason: "timed out".into(),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let mut link = Link {
            stream,
            buf: BytesMut::with_capacity(4096),
            seq: 0,
        };
        let seq = link.next_seq();
        let body = pdu::bind_body(&pdu::Bind {
            system_id: &s.system_id,
            password: &s.password,
            system_type: &s.system_type,
            ton: 0,
            npi: 0,
        });
        link.send(&pdu::Pdu::new(pdu::BIND_TRANSCEIVER, seq, body))
            .await?;
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                let p = link.read_pdu().await?;
                if p.command_id == pdu::BIND_TRANSCEIVER | pdu::RESPONSE && p.seq == seq {
                    return Ok::<_, LinkError>(p);
                }
                if p.command_id == pdu::GENERIC_NACK {
                    return Err(LinkError::BindRefused(pdu::status_name(p.status)));
                }
            }
        })
        .await
        .map_err(|_| LinkError::BindTimeout)??;
        if answer.status != pdu::ESME_ROK {
            return Err(LinkError::BindRefused(pdu::status_name(answer.status)));
        }
        Ok(link)
    }

    /// Serve a bound link until it fails; Ok when every provider handle is gone.
    async fn serve(
        &mut self,
        s: &Settings,
        rx: &mut mpsc::Receiver<Submit>,
        inbound: &mpsc::Sender<InboundMessage>,
    ) -> Result<(), LinkError> {
        let mut pending: HashMap<u32, oneshot::Sender<Result<String, String>>> = HashMap::new();
        let mut keepalive = tokio::time::interval(s.enquire_link);
        keepalive.tick().await;
        let mut unanswered_links = 0u32;
        // PDUs that came in the same read as the bind answer (an SMSC may deliver_sm at once):
        // handle them now, not when more bytes happen to arrive.
        loop {
            let p = match pdu::decode(&mut self.buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return finish(pending, Err(e.into())),
            };
            if let Err(e) = self.handle(s, p, &mut pending, inbound).await {
                return finish(pending, Err(e));
            }
        }
        let result = loop {
            tokio::select! {
                submit = rx.recv() => {
                    let Some(sub) = submit else {
                        let seq = self.next_seq();
                        let _ = self.send(&pdu::Pdu::new(pdu::UNBIND, seq, Vec::new())).await;
                        break Ok(());
                    };
                    let seq = self.next_seq();
                    let p = pdu::Pdu::new(pdu::SUBMIT_SM, seq, pdu::short_message_body(&sub.sm));
                    pending.retain(|_, r| !r.is_closed());
                    pending.insert(seq, sub.reply);
                    if let Err(e) = self.send(&p).await {
                        break Err(e);
                    }
                }
                _ = keepalive.tick() => {
                    if unanswered_links >= 3 {
                        break Err(LinkError::Silent);
                    }
                    unanswered_links += 1;
                    let seq = self.next_seq();
                    if let Err(e) = self.send(&pdu::Pdu::new(pdu::ENQUIRE_LINK, seq, Vec::new())).await {
                        break Err(e);
                    }
                }
                read = read_more(&mut self.stream, &mut self.buf) => {
                    if let Err(e) = read {
                        break Err(e);
                    }
                    loop {
                        let p = match pdu::decode(&mut self.buf) {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => return finish(pending, Err(e.into())),
                        };
                        unanswered_links = 0;
                        match self.handle(s, p, &mut pending, inbound).await {
                            Ok(()) => {}
                            Err(e) => return finish(pending, Err(e)),
                        }
                    }
                }
            }
        };
        finish(pending, result)
    }

    async fn handle(
        &mut self,
        s: &Settings,
        p: pdu::Pdu,
        pending: &mut HashMap<u32, oneshot::Sender<Result<String, String>>>,
        inbound: &mpsc::Sender<InboundMessage>,
    ) -> Result<(), LinkError> {
        match p.command_id {
            id if id == pdu::SUBMIT_SM | pdu::RESPONSE => {
                if let Some(reply) = pending.remove(&p.seq) {
                    let _ = reply.send(if p.status == pdu::ESME_ROK {
                        Ok(pdu::message_id(&p.body))
                    } else {
                        Err(format!(
                            "SMSC refused submit_sm: {}",
                            pdu::status_name(p.status)
                        ))
                    });
                }
            }
            pdu::GENERIC_NACK => {
                if let Some(reply) = pending.remove(&p.seq) {
                    let _ = reply.send(Err(format!(
                        "SMSC answered generic_nack: {}",
                        pdu::status_name(p.status)
                    )));
                }
            }
            pdu::ENQUIRE_LINK => self.send(&p.response(pdu::ESME_ROK, Vec::new())).await?,
            id if id == pdu::ENQUIRE_LINK | pdu::RESPONSE => {}
            pdu::UNBIND => {
                self.send(&p.response(pdu::ESME_ROK, Vec::new())).await?;
                return Err(LinkError::Unbound);
            }
            pdu::DELIVER_SM => {
                let status = match pdu::parse_short_message(&p.body) {
                    Ok(sm) => deliver(s, sm, inbound),
                    Err(e) => {
                        tracing::warn!(provider = %s.name, error = %e, "SMPP deliver_sm not understood");
                        pdu::ESME_RX_P_APPN
                    }
                };
                self.send(&p.response(status, vec![0])).await?;
            }
            id if id & pdu::RESPONSE != 0 => {}
            _ => {
                self.send(&pdu::Pdu {
                    command_id: pdu::GENERIC_NACK,
                    status: pdu::ESME_RINVCMDID,
                    seq: p.seq,
                    body: Vec::new(),
                })
                .await?
            }
        }
        Ok(())
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), LinkError> {
    if stream.read_buf(buf).await? == 0 {
        return Err(LinkError::Closed);
    }
    Ok(())
}

fn finish(
    pending: HashMap<u32, oneshot::Sender<Result<String, String>>>,
    result: Result<(), LinkError>,
) -> Result<(), LinkError> {
    for (_, reply) in pending {
        let _ = reply.send(Err("SMPP link lost before the answer".into()));
    }
    result
}

/// A deliver_sm: a delivery receipt is logged; a message goes to the conversations. Returns
/// the command status to answer with.
fn deliver(s: &Settings, sm: pdu::ShortMessage, inbound: &mpsc::Sender<InboundMessage>) -> u32 {
    let text = text::decode(sm.data_coding, &sm.payload);
    // esm_class bits 2-5: 0x04 SMSC delivery receipt, 0x08/0x10/0x20 other acknowledgements.
    if sm.esm_class & 0x3C != 0 {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let id = sm
            .receipted_message_id
            .clone()
            .unwrap_or_else(|| field("id:"));
        tracing::info!(provider = %s.name, message_id = %id, stat = %field("stat:"), err = %field("err:"), "SMPP delivery receipt");
        return pdu::ESME_ROK;
    }
    let mut extra = Map::new();
    extra.insert("NumMedia".into(), Value::String("0".into()));
    extra.insert("SmsStatus".into(), Value::String("received".into()));
    let m = InboundMessage {
        from: from_smpp_address(sm.source_ton, &sm.source),
        to: from_smpp_address(sm.dest_ton, &sm.dest),
        body: text,
        message_sid: new_sid("SM"),
        extra,
        flow_data: Map::new(),
    };
    match inbound.try_send(m) {
        Ok(()) => pdu::ESME_ROK,
        Err(_) => {
            tracing::warn!(provider = %s.name, "inbound message queue full: SMSC asked to retry");
            pdu::ESME_RX_T_APPN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pdu::*;
    use super::*;

    #[test]
    fn gsm_table_is_complete_and_text_round_trips() {
        assert_eq!(
            super::text::decode(0, &(0..128).collect::<Vec<u8>>())
                .chars()
                .count(),
            127,
            "ESC is not a character"
        );
        for s in [
            "Hello, World! @£$",
            "braces {} [] ~ | € ^ \\",
            "naïve ☃ 日本",
        ] {
            let (dc, octets) = super::text::encode(s);
            assert_eq!(super::text::decode(dc, &octets), s);
        }
        assert_eq!(super::text::encode("abc").0, 0);
        assert_eq!(super::text::encode("日本").0, 8);
        assert_eq!(super::text::decode(3, &[0xE9]), "é");
    }

    #[test]
    fn pdus_encode_and_decode() {
        let sm = ShortMessage {
            source_ton: 1,
            source_npi: 1,
            source: "15550001".into(),
            dest_ton: 1,
            dest_npi: 1,
            dest: "15550002".into(),
            registered_delivery: 1,
            payload: b"hello".to_vec(),
            ..ShortMessage::default()
        };
        let p = Pdu::new(SUBMIT_SM, 7, short_message_body(&sm));
        let mut buf = BytesMut::from(&p.encode()[..]);
        buf.extend_from_slice(&[0, 0]); // the start of the next PDU stays
        let back = decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, p);
        assert_eq!(buf.len(), 2);
        assert_eq!(parse_short_message(&back.body).unwrap(), sm);
        // A long text travels in message_payload.
        let long = ShortMessage {
            payload: vec![b'x'; 400],
            ..sm.clone()
        };
        assert_eq!(
            parse_short_message(&short_message_body(&long)).unwrap(),
            long
        );
        // Garbage never panics.
        assert!(decode(&mut BytesMut::from(&[0u8, 0, 0, 3][..])).is_err());
        assert!(decode(&mut BytesMut::from(&[0u8, 0, 0, 20, 0][..]))
            .unwrap()
            .is_none());
        for n in 0..back.body.len() {
            let _ = parse_short_message(&back.body[..n]);
        }
        assert_eq!(message_id(b"abc\0"), "abc");
        assert!(status_name(0x0E).contains("ESME_RINVPASWD"));
    }

    /// An SMSC that answers bind_transceiver and submit_sm with the given statuses.
    async fn fake_smsc(bind_status: u32, submit_status: u32) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        let p = loop {
                            if let Some(p) = decode(&mut buf).unwrap() {
                                break p;
                            }
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        };
                        let (status, body) = match p.command_id {
                            BIND_TRANSCEIVER => (bind_status, b"smsc\0".to_vec()),
                            SUBMIT_SM if submit_status == ESME_ROK => {
                                let sm = parse_short_message(&p.body).unwrap();
                                assert_eq!(sm.dest, "15550002");
                                (ESME_ROK, b"m1\0".to_vec())
                            }
                            SUBMIT_SM => (submit_status, Vec::new()),
                            _ => (ESME_ROK, Vec::new()),
                        };
                        s.write_all(&p.response(status, body).encode())
                            .await
                            .unwrap();
                        if p.command_id == BIND_TRANSCEIVER && bind_status != ESME_ROK {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn provider(addr: std::net::SocketAddr) -> SmppProvider {
        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "smsc", "kind": "smpp", "host": "127.0.0.1", "port": addr.port(),
            "system_id": "sb", "password": "sekrit1"
        }))
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        SmppProvider::start(&cfg, tx).unwrap()
    }

    fn message() -> Message {
        Message {
            from: "+15550001".into(),
            to: "+15550002".into(),
            body: "hi".into(),
            media_url: None,
            service: None,
            channel: None,
        }
    }

    #[tokio::test]
    async fn submits_and_their_failures() {
        let ok = provider(fake_smsc(ESME_ROK, ESME_ROK).await);
        let fields = ok.send(&message()).await.unwrap();
        assert_eq!(fields["Sid"], "m1");
        assert_eq!(fields["To"], "+15550002");

        let refused = provider(fake_smsc(ESME_ROK, 0x45).await);
        let err = refused.send(&message()).await.unwrap_err();
        assert!(err.contains("ESME_RSUBMITFAIL"), "{err}");

        let bad_password = provider(fake_smsc(0x0E, ESME_ROK).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let err = bad_password.send(&message()).await.unwrap_err();
        assert!(err.contains("bind refused: ESME_RINVPASWD"), "{err}");
        assert!(!err.contains("sekrit1"), "{err}");

        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "smsc", "kind": "smpp", "host": "127.0.0.1", "system_id": "sb",
            "password": "longer-than-eight"
        }))
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        assert!(SmppProvider::start(&cfg, tx).is_err());
    }

    #[test]
    fn addresses() {
        let a = Addressing { ton: 1, npi: 1 };
        assert_eq!(a.to_smpp("+15550001"), (1, 1, "15550001".into()));
        assert_eq!(a.to_smpp("ACME"), (5, 0, "ACME".into()));
        assert_eq!(from_smpp_address(1, "15550001"), "+15550001");
        assert_eq!(from_smpp_address(0, "12345"), "12345");
    }
}

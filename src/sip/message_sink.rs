//! Outbound messages as SIP MESSAGE (RFC 3428) to a configured trunk: the flow's `to` becomes
//! the user part of the request URI on the trunk's host.

use serde_json::{Map, Value};

use super::endpoint::SipHandle;
use crate::flow::Message;
use crate::messaging::{MessageSink, SendFuture};
use crate::store::new_sid;

pub struct SipMessageSink {
    pub handle: SipHandle,
    /// The trunk, e.g. `sip:sms-gw.example.net:5060` or `sip:127.0.0.1:5070`.
    pub trunk: String,
}

/// `host:port` of a trunk URI (`sip:[user@]host[:port][;params]`), port 5060 by default.
pub fn hostport_of(trunk: &str) -> Option<String> {
    let rest = trunk.trim().strip_prefix("sip:")?;
    let rest = rest.split([';', '?']).next()?;
    let host = rest.rsplit('@').next()?;
    if host.is_empty() {
        return None;
    }
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    };
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:5060")
    })
}

impl SipMessageSink {
    pub fn request_uri(&self, to: &str) -> String {
        let host = self.trunk.strip_prefix("sip:").unwrap_or(&self.trunk);
        let host = host.rsplit('@').next().unwrap_or(host);
        let to: String = to
            .chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '<' | '>' | '@' | ';'))
            .collect();
        format!("sip:{to}@{host}")
    }
}

impl MessageSink for SipMessageSink {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let uri = self.request_uri(&msg.to);
            let from: String = msg
                .from
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
                .collect();
            self.handle
                .send_message(&uri, &from, &msg.body)
                .await
                .map_err(|e| e.to_string())?;
            let mut m = Map::new();
            for (k, v) in [
                ("Sid", new_sid("SM")),
                ("To", msg.to.clone()),
                ("From", msg.from.clone()),
                ("Body", msg.body.clone()),
                ("Status", "sent".into()),
            ] {
                m.insert(k.into(), Value::String(v));
            }
            Ok(m)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::hostport_of;

    #[test]
    fn trunk_host_and_port() {
        assert_eq!(
            hostport_of("sip:127.0.0.1:5070").as_deref(),
            Some("127.0.0.1:5070")
        );
        assert_eq!(
            hostport_of("sip:sms@gw.example.net;transport=udp").as_deref(),
            Some("gw.example.net:5060")
        );
        assert_eq!(hostport_of("sip:[::1]:5080").as_deref(), Some("[::1]:5080"));
        assert_eq!(hostport_of("sip:[::1]").as_deref(), Some("[::1]:5060"));
        assert_eq!(hostport_of("tel:+1555"), None);
        assert_eq!(hostport_of("sip:"), None);
    }
}

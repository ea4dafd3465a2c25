//! RFC 4475 torture messages against the real gateway, over UDP and TCP on loopback.
//!
//! The gateway runs with `max_calls = 0` (every INVITE that gets past the SIP layer is answered
//! 503, so nothing is ever answered 2xx) and no messaging provider, so that it never sends
//! anything to an address taken from inside a message. The fixtures (and their attribution)
//! are in `tests/fixtures/sip-torture/`; `INDEX.md` there says what the RFC expects of each.

mod sip_gateway;

use std::time::Duration;

use sip_gateway::*;

/// What the gateway must do with one message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A final response with one of these codes.
    Status(&'static [u16]),
    /// No answer at all (responses, or messages the RFC lets us discard).
    Silence,
    /// TCP: no answer, and the connection is closed (framing is unrecoverable, or the
    /// message never completes and the header timeout fires).
    Closed,
    /// TCP: one of these codes, then the connection is closed (unrecoverable framing).
    StatusThenClose(&'static [u16]),
}

use Expect::*;

/// (name, over UDP, over TCP). 503 is the answer to any INVITE the SIP layer accepts
/// (`max_calls = 0`); 405 is ours to REGISTER (we are not a registrar); where the RFC allows
/// a liberal reading, the liberal answer is listed beside 400.
const TABLE: &[(&str, Expect, Expect)] = &[
    // §3.1.1: valid messages.
    // Its To has a tag, so it names a dialog we do not have: 481 (RFC 3261 §12.2.2).
    ("wsinv", Status(&[481, 503]), Status(&[481, 503])),
    ("intmeth", Status(&[501]), Status(&[501])),
    ("esc01", Status(&[503]), Status(&[503])),
    ("escnull", Status(&[405]), Status(&[405])),
    ("esc02", Status(&[501]), Status(&[501])),
    ("lwsdisp", Status(&[200]), Status(&[200])),
    ("longreq", Status(&[503]), Status(&[503])),
    ("dblreq", Status(&[405]), Status(&[405])),
    ("semiuri", Status(&[200]), Status(&[200])),
    ("transports", Status(&[200]), Status(&[200])),
    // multipart/signed MESSAGE: framed right, refused because only text/plain is taken.
    // A MESSAGE from a source that is not an SMS trunk is refused before its body is looked at.
    ("mpart01", Status(&[403, 415]), Status(&[403, 415])),
    ("unreason", Silence, Silence),
    ("noreason", Silence, Silence),
    // §3.1.2: invalid messages.
    ("badinv01", Status(&[400]), Status(&[400])),
    // Content-Length beyond the body: UDP 400; TCP waits for the rest, then times out.
    ("clerr", Status(&[400]), Closed),
    ("ncl", Status(&[400]), StatusThenClose(&[400])),
    ("scalar02", Status(&[400]), Status(&[400])),
    ("scalarlg", Silence, Silence),
    ("quotbal", Status(&[400, 503]), Status(&[400, 503])),
    ("ltgtruri", Status(&[400]), Status(&[400])),
    ("lwsruri", Status(&[400, 503]), Status(&[400, 503])),
    ("lwsstart", Status(&[400, 503]), Status(&[400, 503])),
    ("trws", Status(&[400, 200]), Status(&[400, 200])),
    ("escruri", Status(&[400, 503]), Status(&[400, 503])),
    ("baddate", Status(&[400, 503]), Status(&[400, 503])),
    ("regbadct", Status(&[400, 405]), Status(&[400, 405])),
    ("badaspec", Status(&[400, 200]), Status(&[400, 200])),
    // No blank line after the headers: a datagram still ends; a stream never does.
    ("baddn", Status(&[400, 200]), Closed),
    ("badvers", Status(&[505]), Status(&[505])),
    ("mismatch01", Status(&[400]), Status(&[400])),
    ("mismatch02", Status(&[501]), Status(&[501])),
    ("bigcode", Silence, Silence),
    // §3.2
    ("badbranch", Status(&[400, 200]), Status(&[400, 200])),
    // §3.3: semantics.
    ("insuf", Status(&[400]), Status(&[400])),
    ("unkscm", Status(&[416]), Status(&[416])),
    ("novelsc", Status(&[416]), Status(&[416])),
    ("unksm2", Status(&[400, 405]), Status(&[400, 405])),
    ("bext01", Status(&[420]), Status(&[420])),
    ("invut", Status(&[415]), Status(&[415])),
    ("regaut01", Status(&[405]), Status(&[405])),
    ("multi01", Status(&[400]), Status(&[400])),
    ("mcl01", Status(&[400]), StatusThenClose(&[400])),
    ("bcast", Silence, Silence),
    // We are an endpoint, not a proxy: Max-Forwards 0 is processed normally.
    ("zeromf", Status(&[200]), Status(&[200])),
    ("cparam01", Status(&[405]), Status(&[405])),
    ("cparam02", Status(&[405]), Status(&[405])),
    ("regescrt", Status(&[405]), Status(&[405])),
    ("sdp01", Status(&[406, 400]), Status(&[406, 400])),
    // §3.4: RFC 2543 INVITE without Content-Length. On a stream its body is not framed, so
    // only the head is the message (no offer in it) and the rest never completes.
    ("inv2543", Status(&[503]), Status(&[488, 400, 415, 503])),
];

const WAIT: Duration = Duration::from_millis(2500);
/// Long enough for the test gateway's 2 s TCP header timeout.
const TCP_WAIT: Duration = Duration::from_millis(4500);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/sip-torture/rfc4475/{name}.sip",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn config() -> &'static str {
    "[sip]\nmax_calls = 0\nacl = [\"127.0.0.0/8\"]\ntcp_header_timeout_secs = 2\n\
     tcp_max_connections_per_ip = 128\n\
     [sip.defence]\nrate_invite = 1000\nrate_register = 1000\nrate_options = 1000\nrate_other = 1000\n"
}

/// None when the outcome matches, else a description of the mismatch.
fn judge(expect: Expect, responses: &[String], closed: Option<bool>) -> Option<String> {
    let got = final_status(responses);
    let ok = match expect {
        Status(codes) => got.is_some_and(|s| codes.contains(&s)),
        Silence => responses.is_empty(),
        Closed => responses.is_empty() && closed == Some(true),
        StatusThenClose(codes) => got.is_some_and(|s| codes.contains(&s)) && closed == Some(true),
    };
    (!ok).then(|| {
        format!(
            "expected {expect:?}, got {got:?} ({} messages, closed {closed:?}): {:?}",
            responses.len(),
            responses.first().map(|r| r.lines().next().unwrap_or(""))
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_torture_messages_over_udp_and_tcp() {
    assert_eq!(TABLE.len(), 49, "every message of RFC 4475 is in the table");
    let gw = SipGateway::start(config());
    let (udp, tcp) = (gw.sip, gw.sip_tcp);

    // Every message at once, each from its own socket, so the run takes one wait, not 49.
    let mut tasks = Vec::new();
    for &(name, on_udp, on_tcp) in TABLE {
        let data = fixture(name);
        tasks.push(tokio::spawn(async move {
            let u = udp_exchange("127.0.0.1:0", udp, &data, WAIT).await;
            let mut failures = Vec::new();
            if let Some(m) = judge(on_udp, &u, None) {
                failures.push(format!("{name} over UDP: {m}"));
            }
            // StatusThenClose: keep reading after the answer, for the close.
            let stop_at_final = !matches!(on_tcp, StatusThenClose(_));
            let t = tcp_exchange(tcp, &data, TCP_WAIT, stop_at_final).await;
            if let Some(m) = judge(on_tcp, &t.responses, Some(t.closed)) {
                failures.push(format!("{name} over TCP: {m}"));
            }
            (name, u, t, failures)
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        let (name, u, tcp_out, f) = t.await.expect("task");
        if name == "intmeth" || name == "esc02" {
            for r in u.iter().chain(tcp_out.responses.iter()) {
                if status_of(r) == Some(501) {
                    assert!(header(r, "allow").is_some(), "501 lists Allow: {r}");
                }
            }
        }
        if name == "bext01" {
            for r in u.iter().chain(tcp_out.responses.iter()) {
                if status_of(r) == Some(420) {
                    let unsupported = header(r, "unsupported").unwrap_or("");
                    assert!(unsupported.contains("nothingSupportsThis"), "{r}");
                }
            }
        }
        if name == "dblreq" {
            assert_eq!(
                u.len(),
                1,
                "the trailing INVITE in the datagram is ignored: {u:?}"
            );
        }
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The gateway survived the run: a normal OPTIONS and a normal call still get answers.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(options("after", me, "UDP").as_bytes(), udp)
        .await
        .unwrap();
    assert_eq!(final_status(&udp_collect(&sock, WAIT).await), Some(200));
    let t = tcp_exchange(tcp, options("aftertcp", me, "TCP").as_bytes(), WAIT, true).await;
    assert_eq!(final_status(&t.responses), Some(200));
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    sock.send_to(invite_with_sdp("aftercall", me, sdp).as_bytes(), udp)
        .await
        .unwrap();
    assert_eq!(
        final_status(&udp_collect(&sock, WAIT).await),
        Some(503),
        "max_calls = 0 answers a normal call 503"
    );
}

//! SIP MESSAGE (RFC 3428) in and out with SIPp: an inbound MESSAGE starts a conversation, and
//! the flow's reply leaves as a MESSAGE through the configured SIP trunk.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_message_in_and_out_with_sipp() {
    if !peer_available("sipp") {
        return;
    }
    // The trunk is SIPp itself: reserve a port for it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(
        &cfg,
        format!("[[messaging.providers]]\nname = \"default\"\nkind = \"sip\"\ntrunk = \"sip:127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let flow = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/sms-echo.json"
    ));
    let gw = Gateway::start_in(dir.path(), Some(flow), &["--config", cfg.to_str().unwrap()]);
    let sipp_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
    // The trunk: SIPp as a server that checks each reply's body.
    let mut trunk = Command::new("sipp")
        .current_dir(dir.path())
        .args([
            "-sf",
            &format!("{sipp_dir}/message-receive.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-m", "5", "-timeout", "60s", "-timeout_error", "-nostdin"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run sipp trunk");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The phone: SIPp sending five messages, one at a time.
    let phone = Command::new("sipp")
        .current_dir(dir.path())
        .args([
            "-sf",
            &format!("{sipp_dir}/message-send.xml"),
            &gw.sip.to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            "0",
        ])
        .args([
            "-m",
            "5",
            "-l",
            "1",
            "-r",
            "5",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
        ])
        .output()
        .expect("run sipp phone");
    assert_eq!(
        phone.status.code(),
        Some(0),
        "sipp phone: {}",
        String::from_utf8_lossy(&phone.stdout)
    );
    // The trunk saw all five replies (their bodies checked) and stops by itself.
    let mut status = None;
    for _ in 0..100 {
        status = trunk.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = trunk.kill();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the SIPp trunk did not get five good replies"
    );
    // Five conversations from one contact, one after another: each ended after its reply.
    let execs = executions(&gw, flow).await;
    assert_eq!(execs.len(), 5);
    for (e, steps) in &execs {
        assert_eq!(e.contact, "+15550100000");
        let echo = steps.iter().find(|s| s.name == "echo").expect("echo step");
        assert_eq!(echo.event, "sent", "{echo:?}");
    }
}

//! The gateway's life as an operator sees it: SIGTERM drains calls instead of dropping them,
//! and the HTTP listener does not let slow or greedy clients hold its descriptors.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use serde_json::Value;
use support::*;

/// An event-stream sink on loopback that keeps every event it is sent.
async fn event_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |Json(batch): Json<Vec<Value>>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().extend(batch);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_calls_drains_the_rest_and_exits_0() {
    let (sink, events) = event_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    // A long flush interval: only the shutdown's flush can deliver the last events in time.
    std::fs::write(
        &cfg,
        format!("[shutdown]\ndrain_secs = 2\n\n[events]\nsinks = [\"{sink}\"]\nflush_ms = 60000\n"),
    )
    .unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let mut gw = Gateway::start_in(
        &tmp.path().join("data"),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let phone = Phone::dial(gw.sip, "+15550005555", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: a plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(gw.pid() as i32, libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term = Instant::now();

    // A new call while draining: 503, not answered.
    let ua = Ua::new().await;
    let refused = ua
        .call(
            gw.sip,
            CallOptions {
                max_duration: Duration::from_secs(3),
                ..CallOptions::default()
            },
        )
        .await;
    assert_eq!(refused.final_status, 503);

    // The call in progress keeps its audio through the drain time, then gets a BYE.
    tokio::time::sleep_until((term + Duration::from_millis(1500)).into()).await;
    let heard_during = phone
        .heard
        .lock()
        .unwrap()
        .packets
        .iter()
        .filter(|(t, ..)| *t > term && *t < term + Duration::from_millis(1500))
        .count();
    assert!(heard_during >= 50, "{heard_during} packets while draining");
    let bye = phone.wait_bye(Duration::from_secs(6)).await;
    assert!(
        bye > term + Duration::from_millis(1200),
        "hung up only when the drain time was over"
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(10));
        (s, gw)
    })
    .await
    .unwrap();
    let (status, gw) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status");

    // Nothing lost: the execution is stored as ended, and its end reached the event sink.
    let ex = executions(&gw, &flow).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].0.status, "ended");
    let ended: Vec<Value> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_str().unwrap_or("").contains("execution.ended"))
        .cloned()
        .collect();
    assert_eq!(ended.len(), 1, "execution.ended delivered before exit");
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// GET /healthz from the loopback address `source`: whether it answered 200.
fn healthz_from(source: &str, http: SocketAddr) -> bool {
    let Ok(mut s) = socket2_connect(source, http) else {
        return false;
    };
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Connect to `http` from the loopback address `source`.
fn connect_from(source: &str, http: SocketAddr) -> TcpStream {
    let sock = socket2_connect(source, http);
    sock.unwrap_or_else(|e| panic!("connect from {source}: {e}"))
}

fn socket2_connect(source: &str, http: SocketAddr) -> std::io::Result<TcpStream> {
    // std has no bind-before-connect: bind a tokio socket, then hand it over.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(format!("{source}:0").parse().unwrap())?;
        let stream = s.connect(http).await?;
        stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_http_clients_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        "[http]\nheader_timeout_secs = 1\nmax_connections_per_source = 4\n",
    )
    .unwrap();
    let gw = Gateway::start_in(
        &tmp.path().join("data"),
        None,
        &["--config", cfg.to_str().unwrap()],
    );
    let http = gw.http;
    tokio::task::spawn_blocking(move || {
        // Half a request: disconnected once the header timeout passes, not held for minutes.
        let mut slow = connect_from("127.0.0.1", http);
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let start = Instant::now();
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)),
            "partial request held"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // Four idle connections from one source fill its share; a fifth is closed at once,
        // while another source is served.
        let mut idle: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", http)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut fifth = connect_from("127.0.0.1", http);
        assert!(
            closed_within(&mut fifth, Duration::from_millis(500)),
            "over the per-source cap"
        );
        assert!(healthz_from("127.0.0.2", http), "another source is served");
        // Idle connections are closed after the header timeout too, freeing the share.
        for s in &mut idle {
            assert!(
                closed_within(s, Duration::from_secs(3)),
                "idle connection held"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            healthz_from("127.0.0.1", http),
            "the source is served again"
        );
    })
    .await
    .unwrap();
}

async fn get(url: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let http = switchboard::web::plain_client();
    let mut req = http.get(url);
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The value of the sample line `name` (exact series, labels included) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_behind_the_api_auth_or_on_their_own_bind() {
    let tmp = tempfile::tempdir().unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(&tmp.path().join("a"), Some(&flow), &[]);
    let url = format!("{}/metrics", gw.base_url());
    assert_eq!(get(&url, None).await.0, 401, "behind auth by default");
    assert_eq!(get(&url, Some((ACCOUNT_SID, "wrong"))).await.0, 401);
    let (status, before) = get(&url, Some((ACCOUNT_SID, AUTH_TOKEN))).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&before, "switchboard_calls_answered_total"),
        Some(0.0)
    );

    let mut phone = Phone::dial(gw.sip, "+15550006666", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, during) = get(&url, Some((ACCOUNT_SID, AUTH_TOKEN))).await;
    assert_eq!(sample(&during, "switchboard_calls_active"), Some(1.0));
    phone.hangup().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = get(&url, Some((ACCOUNT_SID, AUTH_TOKEN))).await;
    assert_eq!(
        sample(&after, "switchboard_calls_answered_total"),
        Some(1.0)
    );
    assert_eq!(sample(&after, "switchboard_call_attempts_total"), Some(1.0));
    assert_eq!(sample(&after, "switchboard_calls_active"), Some(0.0));
    assert_eq!(
        sample(&after, "switchboard_call_setup_seconds_count"),
        Some(1.0)
    );
    let sent = sample(&after, "switchboard_rtp_packets_sent_total").unwrap_or(0.0);
    assert!(sent >= 10.0, "{sent} RTP packets counted");

    // On a bind of its own: open there, and not served on the API listener.
    let cfg = tmp.path().join("metrics.toml");
    std::fs::write(&cfg, "[metrics]\nbind = \"127.0.0.1:0\"\n").unwrap();
    let gw2 = Gateway::start_in(
        &tmp.path().join("b"),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let own = gw2
        .metrics
        .expect("the ready line names the metrics listener");
    let (status, text) = get(&format!("http://{own}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("switchboard_calls_active"));
    assert_eq!(
        get(
            &format!("{}/metrics", gw2.base_url()),
            Some((ACCOUNT_SID, AUTH_TOKEN))
        )
        .await
        .0,
        404
    );
}

/// Packets the phone heard in the last 0.9 s.
fn recent_packets(phone: &Phone) -> usize {
    phone
        .heard
        .lock()
        .unwrap()
        .packets
        .iter()
        .filter(|(t, ..)| t.elapsed() < Duration::from_millis(900))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_calls_keeps_the_call_in_progress_and_recovers() {
    // The free-space floor notices first.
    full_disk(8, "data directory low on disk space").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_floor_the_failing_database_write_refuses_new_calls_and_recovers() {
    // No floor: SQLite's own write fails (SQLITE_FULL) and the probe notices that.
    full_disk(0, "database unavailable").await;
}

async fn full_disk(min_free_mb: u64, noticed: &str) {
    // The data directory is a 24 MB tmpfs of the gateway's own (a user and mount namespace:
    // no root needed, and the mount goes away with the process); the test fills it through
    // /proc/PID/root, which shows the gateway's view of the file system.
    if !peer_available("unshare") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(&cfg, format!("[database]\nmin_free_mb = {min_free_mb}\n")).unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let data_str = data.to_str().unwrap();
    let gw = Gateway::start_wrapped(
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=24m tmpfs \"$0\" && exec \"$@\"",
            data_str,
        ],
        &data,
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let seen = PathBuf::from(format!("/proc/{}/root{data_str}", gw.pid()));
    assert!(
        seen.join("switchboard.db").exists(),
        "the database is on the gateway's tmpfs"
    );
    assert!(
        !data.join("switchboard.db").exists(),
        "and not on the test's file system"
    );
    let healthz = || async { get(&format!("{}/healthz", gw.base_url()), None).await };
    assert_eq!(healthz().await.0, 200);

    let mut phone = Phone::dial(gw.sip, "+15550008888", Offer::Rfc4733).await;
    let flow_sid = switchboard::routing::LoadedFlow::from_file(&flow)
        .unwrap()
        .sid;
    // Through the REST API: SQLite resolves /proc/PID/root as a symbolic link to the test's
    // own root, so the file cannot be opened from here.
    let base = gw.base_url();
    let stored = |want_ended: bool| {
        let url = format!("{base}/v2/Flows/{flow_sid}/Executions");
        async move {
            let auth = Some((ACCOUNT_SID, AUTH_TOKEN));
            let (status, body) = get(&url, auth).await;
            assert_eq!(status, 200, "{body}");
            let page: Value = serde_json::from_str(&body).unwrap();
            let ex = page["executions"].as_array().cloned().unwrap_or_default();
            let mut whole = 0;
            for e in &ex {
                let steps = format!("{url}/{}/Steps", e["sid"].as_str().unwrap_or(""));
                let (_, body) = get(&steps, auth).await;
                let steps: Value = serde_json::from_str(&body).unwrap();
                let has_steps = steps["steps"].as_array().is_some_and(|s| !s.is_empty());
                if has_steps && (!want_ended || e["status"] == "ended") {
                    whole += 1;
                }
            }
            (ex.len(), whole)
        }
    };
    let start = Instant::now();
    while stored(false).await != (1, 1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the call is stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Fill the disk to the last byte.
    let filler = seen.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let full = Instant::now();
    loop {
        let (status, body) = healthz().await;
        if status == 503 {
            assert_eq!(body.trim(), noticed);
            break;
        }
        assert!(
            full.elapsed() < Duration::from_secs(5),
            "the full disk is noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        short_call(gw.sip, Duration::from_secs(10)).await,
        503,
        "a new call is refused, not answered and dropped"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recent = recent_packets(&phone);
    assert!(
        recent >= 30,
        "{recent} packets in the last 0.9 s on a full disk"
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while healthz().await.0 != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "recovers by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        short_call(gw.sip, Duration::from_secs(10)).await,
        200,
        "calls are answered again"
    );
    phone.hangup().await;
    // The call that lived through it and the one after are stored whole and ended.
    let start = Instant::now();
    while stored(true).await != (2, 2) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            stored(true).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

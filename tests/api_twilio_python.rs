//! The official `twilio` Python helper library (PyPI `twilio`) against the gateway: the API is
//! compatible enough that Twilio's own client works when pointed at us. Skips when python3 or
//! the library is missing, unless SWITCHBOARD_REQUIRE_PEERS=1 (CI installs it in `.ci/run`).

mod support;

use std::process::Command;

use support::{twilio_library_available, Gateway, ACCOUNT_SID, AUTH_TOKEN};

#[test]
fn twilio_python_library_drives_the_studio_api() {
    if !twilio_library_available() {
        return;
    }
    let g = Gateway::start(None);
    // Accepts connections and never answers, so the flow's HTTP widget keeps it active.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{dir}/tests/python/studio_api.py"))
        .env("SWITCHBOARD_URL", g.base_url())
        .env("SWITCHBOARD_ACCOUNT_SID", ACCOUNT_SID)
        .env("SWITCHBOARD_AUTH_TOKEN", AUTH_TOKEN)
        .env(
            "SWITCHBOARD_FIXTURE",
            format!("{dir}/tests/fixtures/studio-flows/daily-sit-down-parent.json"),
        )
        .env(
            "SWITCHBOARD_SILENT_URL",
            format!("http://{}", silent.local_addr().unwrap()),
        )
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "python client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

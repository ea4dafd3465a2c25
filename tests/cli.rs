//! `switchboard flow validate` on the real corpus and on the flows Studio would refuse.

use std::process::Command;

const VALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/studio-flows");
const INVALID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/studio-flows-invalid"
);

fn files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".json"))
        .collect();
    v.sort();
    v
}

fn validate(files: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["flow", "validate"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_fixture_validates_with_the_cli() {
    let all = files(VALID);
    assert_eq!(all.len(), 62);
    let (ok, out) = validate(&all);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": valid")).count(),
        62,
        "{out}"
    );
    let (ok, _) = validate(&[format!(
        "{}/examples/demo-ivr.json",
        env!("CARGO_MANIFEST_DIR")
    )]);
    assert!(ok);
}

#[test]
fn invalid_flows_are_refused_naming_state_and_path() {
    for f in files(INVALID) {
        let (ok, out) = validate(std::slice::from_ref(&f));
        assert!(!ok, "{f} was accepted:\n{out}");
        assert!(out.contains(": invalid"), "{out}");
        assert!(out.contains("$."), "{f}: no JSON path in\n{out}");
    }
    // A mix exits non-zero even when some files are fine.
    let mut mix = files(VALID)[..2].to_vec();
    mix.extend(files(INVALID));
    assert!(!validate(&mix).0);
}

#[test]
fn a_broken_transition_names_state_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(
        &f,
        r#"{"states":[{"name":"Trigger","type":"trigger","properties":{},"transitions":[{"event":"incomingCall","next":"say"}]},
            {"name":"say","type":"say-play","properties":{"say":"hi"},"transitions":[{"event":"audioComplete","next":"nowhere"}]}],
            "initial_state":"Trigger","flags":{"allow_concurrent_calls":true}}"#,
    )
    .unwrap();
    let (ok, out) = validate(&[f.display().to_string()]);
    assert!(!ok);
    assert!(
        out.contains("\"say\"")
            && out.contains("$.states[1].transitions[0].next")
            && out.contains("nowhere"),
        "{out}"
    );
    let (ok, out) = validate(&[dir.path().join("missing.json").display().to_string()]);
    assert!(!ok && out.contains("invalid"), "{out}");
}

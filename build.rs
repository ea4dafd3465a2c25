//! Embeds the pre-rendered prompts in `voice-assets/tts/` so the demo flow talks even on a
//! machine without espeak-ng (they seed the content-addressed TTS cache).

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("voice-assets/tts");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.retain(|p| p.extension().is_some_and(|e| e == "wav"));
    entries.sort();
    let mut src = String::from("pub static SEEDS: &[(&str, &[u8])] = &[\n");
    for p in entries {
        let Some(key) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let _ = writeln!(
            src,
            "    ({key:?}, include_bytes!({:?})),",
            p.display().to_string()
        );
    }
    src.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("seeds.rs");
    if let Err(e) = std::fs::write(&out, src) {
        panic!("cannot write {}: {e}", out.display());
    }
}

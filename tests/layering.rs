//! The layering rules of docs/ARCHITECTURE.md ("Layers"), checked on the source: each top-level
//! module may name (`crate::x`) only the modules listed for it, the rules themselves have no
//! cycle, and every module has a rule (a new module must say where it sits). Test modules
//! (from `#[cfg(test)]` on) are not checked: a test may reach across layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it may import. Lower layers first.
const RULES: &[(&str, &[&str])] = &[
    ("redact", &[]),
    ("metrics", &[]),
    ("config", &[]),
    ("flow", &["redact", "metrics"]),
    ("media", &["metrics"]),
    ("store", &["redact", "metrics"]),
    ("web", &["store", "redact"]),
    ("speech", &["media", "config"]),
    ("sip", &["media", "config", "metrics", "redact"]),
    ("routing", &["config", "flow", "store"]),
    (
        "events",
        &["config", "flow", "store", "metrics", "redact", "web"],
    ),
    ("twiml", &["flow", "web", "redact", "media"]),
    ("retention", &["store", "events", "config"]),
    (
        "runner",
        &[
            "flow", "store", "routing", "events", "web", "metrics", "config", "redact",
        ],
    ),
    (
        "messaging",
        &[
            "runner", "flow", "store", "routing", "config", "web", "sip", "events", "metrics",
            "redact",
        ],
    ),
    (
        "call",
        &[
            "runner",
            "flow",
            "media",
            "sip",
            "store",
            "routing",
            "twiml",
            "speech",
            "messaging",
            "config",
            "metrics",
            "redact",
            "web",
        ],
    ),
    ("dialer", &["media", "sip", "config"]),
    (
        "chat",
        &[
            "runner",
            "flow",
            "messaging",
            "routing",
            "store",
            "config",
            "web",
        ],
    ),
    (
        "api",
        &[
            "runner",
            "call",
            "store",
            "flow",
            "routing",
            "messaging",
            "sip",
            "web",
            "config",
            "metrics",
            "redact",
        ],
    ),
    ("server", &["*"]),
];

fn rules() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    RULES
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect()
}

/// The `crate::<module>` names in a file's non-test code.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // `switchboard::crate::` does not occur; skip `$crate::` in macros.
        if code[..i].ends_with('$') {
            continue;
        }
        let name: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules = rules();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or_else(|| l.trim().strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    for m in &modules {
        assert!(
            rules.contains_key(m.as_str()),
            "src/{m}: no layering rule; add one to RULES and docs/ARCHITECTURE.md"
        );
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut faults = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(allowed) = rules.get(module.as_str()) else {
            continue; // lib.rs, main.rs
        };
        if allowed.contains("*") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for r in crate_refs(&text) {
            if r != module && modules.contains(&r) && !allowed.contains(r.as_str()) {
                faults.push(format!("src/{}: {module} imports {r}", rel.display()));
            }
        }
    }
    assert!(faults.is_empty(), "layering broken:\n{}", faults.join("\n"));
}

#[test]
fn the_layering_rules_have_no_cycle() {
    let rules = rules();
    // Depth-first search from every module for a path back to itself.
    fn reaches(
        rules: &BTreeMap<&str, BTreeSet<&str>>,
        from: &str,
        target: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for &d in rules.get(from).into_iter().flatten() {
            if d == "*" {
                continue;
            }
            if d == target || (seen.insert(d.to_string()) && reaches(rules, d, target, seen)) {
                return true;
            }
        }
        false
    }
    for m in rules.keys() {
        assert!(
            !reaches(&rules, m, m, &mut BTreeSet::new()),
            "{m} can reach itself"
        );
        for d in &rules[m] {
            assert!(
                *d == "*" || rules.contains_key(d),
                "{m} names unknown module {d}"
            );
        }
    }
}

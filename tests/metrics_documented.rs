//! Every metric the code records is listed in `docs/observability.md`.
//!
//! The names are read from the sources: the first string literal of each
//! `counter!`, `gauge!` and `histogram!` call, and the value of a `&str`
//! constant such a call names. A metric added without a
//! line in the table fails here, not in an operator's dashboard.

use std::{collections::BTreeSet, fs, path::Path};

const MACROS: [&str; 3] = ["counter!(", "gauge!(", "histogram!("];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `dynabase_…` literal at the start of `rest` (after whitespace).
fn leading_name(rest: &str) -> Option<&str> {
    let rest = rest.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    name.starts_with("dynabase_").then_some(name)
}

fn recorded_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("actors/src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("source file");
        for mac in MACROS {
            for (at, _) in text.match_indices(mac) {
                if let Some(name) = leading_name(&text[at + mac.len()..]) {
                    names.insert(name.to_owned());
                }
            }
        }
        // `const LOOKUPS: &str = "dynabase_…";` then `counter!(LOOKUPS, …)`.
        for (at, _) in text.match_indices("const ") {
            let rest = &text[at + "const ".len()..];
            let Some((ident, rest)) = rest.split_once(": &str =") else {
                continue;
            };
            let used = MACROS
                .iter()
                .any(|mac| text.contains(&format!("{mac}{ident},")));
            if let (Some(name), true) = (leading_name(rest), used) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_recorded_metric_is_in_the_observability_doc() {
    let names = recorded_metrics();
    assert!(names.len() > 50, "the scan found only {names:?}");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md"))
            .expect("docs/observability.md");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics recorded but not listed in docs/observability.md: {missing:?}"
    );
}

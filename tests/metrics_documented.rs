//! Every metric the code records is listed in `docs/observability.md`, with
//! each of its label keys in the row's labels column.
//!
//! The names and label keys are read from the sources: each `counter!`,
//! `gauge!` and `histogram!` call whose first argument is a `"dynabase_…"`
//! literal or a `&str` constant holding one, and the `"key" =>` pairs in
//! its arguments. A metric or label added without its line in the table
//! fails here, not in an operator's dashboard.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

const MACROS: [&str; 3] = ["counter!(", "gauge!(", "histogram!("];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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

/// A macro call's arguments: `text` starts right after its `(`; string
/// literals are skipped so a `)` inside one does not end the call.
fn call_args(text: &str) -> &str {
    let (mut depth, mut in_string, mut escaped) = (1usize, false, false);
    for (i, c) in text.char_indices() {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '"') | (false, '"') => in_string = !in_string,
            (false, '(') => depth += 1,
            (false, ')') => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

/// The label keys of `"key" => value` pairs.
fn label_keys(args: &str) -> Vec<String> {
    args.match_indices("=>")
        .filter_map(|(at, _)| {
            let before = args[..at].trim_end().strip_suffix('"')?;
            let start = before.rfind('"')?;
            Some(before[start + 1..].to_owned())
        })
        .collect()
}

/// `const LOOKUPS: &str = "dynabase_…";` → `LOOKUPS` → the name.
fn name_constants(text: &str) -> HashMap<String, String> {
    text.match_indices("const ")
        .filter_map(|(at, _)| {
            let (ident, rest) = text[at + "const ".len()..].split_once(": &str =")?;
            Some((ident.trim().to_owned(), leading_name(rest)?.to_owned()))
        })
        .collect()
}

/// Metric name → the label keys it is recorded with anywhere.
fn recorded_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("actors/src"), &mut files);
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("source file");
        let constants = name_constants(&text);
        for mac in MACROS {
            for (at, _) in text.match_indices(mac) {
                let args = call_args(&text[at + mac.len()..]);
                let first = args.split(',').next().unwrap_or("").trim();
                let name = leading_name(first)
                    .map(str::to_owned)
                    .or_else(|| constants.get(first).cloned());
                if let Some(name) = name {
                    metrics.entry(name).or_default().extend(label_keys(args));
                }
            }
        }
    }
    metrics
}

#[test]
fn the_source_scan_reads_names_and_labels() {
    let args =
        call_args(r#""dynabase_x_total", "tier" => t.as_str(), "why" => ")") .increment(1)"#);
    assert_eq!(label_keys(args), ["tier", "why"]);
    assert_eq!(leading_name(args), Some("dynabase_x_total"));
}

#[test]
fn every_recorded_metric_is_in_the_observability_doc_with_its_labels() {
    let metrics = recorded_metrics();
    assert!(metrics.len() > 50, "the scan found only {metrics:?}");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observability.md"))
            .expect("docs/observability.md");
    let mut problems = Vec::new();
    for (name, labels) in &metrics {
        let quoted = format!("`{name}`");
        let Some(row) = doc
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&quoted))
        else {
            problems.push(format!("{name}: not in the metrics table"));
            continue;
        };
        let labels_cell = row.split('|').nth(2).unwrap_or("");
        for label in labels {
            let listed = labels_cell
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == label);
            if !listed {
                problems.push(format!(
                    "{name}: label `{label}` not in its row's labels column"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/observability.md is missing:\n{}",
        problems.join("\n")
    );
}

/// The `dynabase_…` names a file mentions, histogram series reduced to
/// their metric (`_bucket`, `_sum`, `_count`).
fn names_in(text: &str) -> BTreeSet<String> {
    text.match_indices("dynabase_")
        .map(|(at, _)| {
            let tail = &text[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[test]
fn alerts_and_dashboards_name_only_metrics_the_code_records() {
    let metrics = recorded_metrics();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("deploy/prometheus/alerts.yml")];
    for entry in fs::read_dir(root.join("deploy/grafana/dashboards")).expect("dashboards") {
        files.push(entry.expect("dashboard").path());
    }
    let mut unknown = Vec::new();
    let mut checked = BTreeSet::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("alerts or dashboard");
        for name in names_in(&text) {
            checked.insert(name.clone());
            if !metrics.contains_key(&name) {
                unknown.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(checked.len() > 20, "the scan found only {checked:?}");
    assert!(
        unknown.is_empty(),
        "names no code records (an alert on them never fires):\n{}",
        unknown.join("\n")
    );
}

//! The crate's imports point one way: collect → track → records → sinks, with enrich and
//! inventory beside records, and the few cross-cutting modules (configuration, logging,
//! identifiers, HTTP plumbing) below everything. Read from the source: every `crate::X` a
//! module names (code, not comments) must be a lower layer or itself. A new top-level module
//! must be given its layer here.

use std::path::Path;

/// Layers, lowest first; a module may use its own layer's other modules only where listed
/// together on purpose (none today).
const LAYERS: &[&[&str]] = &[
    &["config", "logging", "identity", "http_client"],
    &["collect"],
    &["track"],
    &["records"],
    &["enrich", "inventory"],
    &["metrics"],
    &["sink"],
    &["map"],
    &["schedule", "service"],
    &["agent"],
    &["daemon", "report"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a source file belongs to (`src/sink/http.rs` → `sink`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap_or(path);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    first
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .to_string()
}

/// Every `crate::name` on lines that are not comments.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `crate::{a, b::c}`: every first name in the braces.
                let group = rest.strip_prefix('{').unwrap_or("");
                let group = group.split('}').next().unwrap_or("");
                for part in group.split(',') {
                    let first = part.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() {
                        out.push((i + 1, first.to_string()));
                    }
                }
            } else {
                out.push((i + 1, name));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(file, &src);
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary see everything
        }
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source");
        for (line, used) in uses(&text) {
            checked += 1;
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                _ => wrong.push(format!(
                    "{}:{line}: `{module}` uses `crate::{used}`",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
            }
        }
    }
    assert!(checked > 50, "the test read the sources ({checked} uses)");
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_wrong_import() {
    let text = "use crate::sink::http;\n// crate::agent in a comment\nlet x = crate::track::window::next_tick; // crate::daemon\nuse crate::{records::Record, metrics};\n";
    let found: Vec<String> = uses(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, vec!["sink", "track", "records", "metrics"]);
    assert!(
        layer("sink") > layer("collect"),
        "collect using sink is refused"
    );
}

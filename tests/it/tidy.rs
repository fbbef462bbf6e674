//! Rules the documentation states, kept true by a test (the structure
//! review's 2.7): every SQL statement the sidecar runs lives under
//! `src/db/` (`ARCHITECTURE.md`, `src/db/mod.rs`). `src/demo/` is exempt:
//! its statements are the demo *app's* writes, not the sidecar's.

use std::path::Path;

const STATEMENT_STARTS: &[&str] = &[
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    "SET ",
    "RESET ",
    "LISTEN ",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "CREATE ",
    "ALTER ",
    "DROP ",
    "TRUNCATE ",
    "WITH ",
    "CALL ",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_sql_statement_lives_under_src_db() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        if rel.starts_with("db") || rel.starts_with("demo") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // A string literal that opens with a statement.
            for (i, _) in line.match_indices('"') {
                let rest = &line[i + 1..];
                if STATEMENT_STARTS.iter().any(|s| rest.starts_with(s)) {
                    found.push(format!("src/{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files.len() > 40, "the walk saw the sources: {}", files.len());
    assert!(
        found.is_empty(),
        "SQL outside src/db/ (move it into a typed function there):\n{}",
        found.join("\n")
    );
}

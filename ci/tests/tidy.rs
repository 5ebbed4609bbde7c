//! Habits that keep the code readable, checked as ordinary tests so that
//! `cargo test` is what enforces them: every source file says what it is
//! for, every `unsafe` block says why it is sound, no function grows past
//! a screenful or two, and ARCHITECTURE.md names every module.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The longest a function outside tests may be, in lines from its
/// signature to its closing brace. Past this, a function does more than
/// one thing; split it by what it decides.
const FUNCTION_LINES_MAX: usize = 100;

/// Lines above an `unsafe` block in which its `SAFETY:` comment must be.
const SAFETY_COMMENT_LINES_ABOVE: usize = 4;

const CRATES: [&str; 6] = ["wire", "storage", "shard", "server", "loadgen", "ci"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ci sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under each crate's `src/`, as (path from the
/// workspace, text).
fn sources() -> Vec<(String, String)> {
    let root = workspace();
    let mut files = Vec::new();
    for krate in CRATES {
        collect(&root.join(krate).join("src"), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).expect("readable source");
            let shown = path.strip_prefix(&root).expect("under the workspace");
            (shown.display().to_string(), text)
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| {
            let first = text.lines().find(|l| !l.trim().is_empty());
            !first.is_some_and(|l| l.starts_with("//!"))
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:#?}"
    );
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let mut missing = Vec::new();
    for (path, text) in sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if !(code.contains("unsafe {") || code.trim_end().ends_with("unsafe")) {
                continue;
            }
            let from = at.saturating_sub(SAFETY_COMMENT_LINES_ABOVE);
            if !lines[from..=at].iter().any(|l| l.contains("SAFETY:")) {
                missing.push(format!("{path}:{}", at + 1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe blocks without a `SAFETY:` line: {missing:#?}"
    );
}

#[test]
fn no_function_outside_tests_is_longer_than_the_ceiling() {
    let mut long = Vec::new();
    for (path, text) in sources() {
        for (name, line, length) in functions_outside_tests(&text) {
            if length > FUNCTION_LINES_MAX {
                long.push(format!("{path}:{line} {name} ({length} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines: {long:#?}"
    );
}

#[test]
fn architecture_names_every_module() {
    let architecture =
        fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let missing: Vec<String> = sources()
        .into_iter()
        .filter_map(|(path, _)| {
            let file = path.rsplit('/').next().expect("a file name");
            if file == "lib.rs" || file == "main.rs" {
                return None;
            }
            // `a/b/mod.rs` is the module `b`; `a/b.rs` is `b`.
            let (module, file_name) = match file {
                "mod.rs" => {
                    let dir = path.rsplit('/').nth(1).expect("a directory");
                    (dir.to_owned(), format!("{dir}/"))
                }
                _ => (file.trim_end_matches(".rs").to_owned(), file.to_owned()),
            };
            let named = [file_name, format!("`{module}`"), format!("`{module}::")]
                .iter()
                .any(|name| architecture.contains(name.as_str()));
            (!named).then_some(path)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules ARCHITECTURE.md does not name: {missing:#?}"
    );
}

/// The functions of a source file outside `#[cfg(test)]` items, as
/// (name, first line, length in lines). A body ends at the first line that
/// closes a brace at its signature's indentation, which rustfmt'd code
/// always has.
fn functions_outside_tests(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        if lines[at].trim_start().starts_with("#[cfg(test)]") {
            at = end_of_item(&lines, at + 1).map_or(at + 1, |end| end + 1);
            continue;
        }
        if let Some(name) = function_name(lines[at]) {
            if let Some(end) = end_of_item(&lines, at) {
                found.push((name, at + 1, end - at + 1));
            }
        }
        at += 1;
    }
    found
}

/// The name of the function a line starts, if it starts one.
fn function_name(line: &str) -> Option<String> {
    let code = line.trim_start();
    let after = [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ]
    .iter()
    .fold(code, |rest, prefix| {
        rest.strip_prefix(prefix).unwrap_or(rest)
    });
    let name = after.strip_prefix("fn ")?;
    let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(name[..end].to_owned())
}

/// The line that closes the item starting at `start`, or `None` for an
/// item without a body (a trait method's signature, a `use`).
fn end_of_item(lines: &[&str], start: usize) -> Option<usize> {
    let indent = lines[start].len() - lines[start].trim_start().len();
    let close = format!("{}}}", " ".repeat(indent));
    let mut opened = false;
    for (at, line) in lines.iter().enumerate().skip(start) {
        let code = line.trim_end();
        if opened {
            if code == close {
                return Some(at);
            }
        } else if code.ends_with('{') {
            opened = true;
        } else if code.ends_with('}') && code.contains('{') {
            return Some(at);
        } else if code.ends_with(';') {
            return None;
        }
    }
    None
}

#[test]
fn the_function_scanner_measures_what_it_should() {
    let text = "//! doc\nfn short() {\n    1;\n}\n\n#[cfg(test)]\nmod tests {\n    \
                fn hidden() {\n    }\n}\ntrait T {\n    fn sig(&self);\n    \
                fn body(&self) {\n        2;\n    }\n    fn one(&self) {}\n}\n";
    let found = functions_outside_tests(text);
    let expected = [("short", 2, 3), ("body", 13, 3), ("one", 16, 1)];
    let expected: Vec<(String, usize, usize)> = expected
        .iter()
        .map(|&(name, line, length)| (name.to_owned(), line, length))
        .collect();
    assert_eq!(found, expected);
}

//! Nothing in the repository points outside it. A clone has only what is committed, so every
//! link, cited doc and named path must resolve inside the checkout. Scanned: every file git tracks
//! (or would track: untracked but not ignored), text only. It fails naming each file and line:
//!
//! - anywhere: a path into the directory the project was first written beside (`../shared`, its
//!   `reference` notes), or a `*.md` file named that does not exist (relative to the repository
//!   root or to the naming file's folder);
//! - in Markdown: a relative link (`[text](target)`, `[id]: target`) that resolves outside the
//!   repository or to nothing, and a code span naming a repository path (`stamp/src/run.rs`,
//!   `docs/`) that does not exist.
//!
//! Code blocks are not scanned for links; URLs (`scheme:`) are not followed.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Paths that only exist beside the repository on the machine it was first written on.
const OUTSIDE_MARKERS: [&str; 3] = ["../shared", "shared/reference", "/work/shared"];

/// This file names the markers above on purpose.
const THIS_FILE: &str = "tests/repo_links.rs";

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Problem {
    file: String,
    line: usize,
    what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// What the checks need to know about the checkout.
struct Repo {
    root: PathBuf,
    /// First path component of every listed file: what a code span must start with to be checked.
    top_level: BTreeSet<String>,
}

impl Repo {
    fn exists(&self, relative: &Path) -> bool {
        self.root.join(relative).exists()
    }
}

#[test]
fn nothing_in_the_repository_points_outside_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = listed_files(&root);
    let repo = Repo {
        top_level: files
            .iter()
            .filter_map(|f| f.split('/').next())
            .map(str::to_string)
            .collect(),
        root: root.clone(),
    };
    let mut problems = Vec::new();
    let mut scanned = 0;
    for file in &files {
        let Some(text) = read_text(&root.join(file)) else {
            continue;
        };
        scanned += 1;
        problems.extend(check_file(&repo, file, &text));
    }
    // A scan that found nothing to read would pass for the wrong reason.
    assert!(
        scanned > 100 && files.iter().any(|f| f == "README.md"),
        "only {scanned} text files were scanned from {}",
        root.display()
    );
    problems.sort();
    // A line that names the same path twice (link text and target) is one problem.
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} reference(s) leave the repository or name what is not in it:\n{}",
        problems.len(),
        problems.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
}

/// The checker itself, on text with one of each fault: it must find every one, and nothing in
/// the good lines.
#[test]
fn the_checker_finds_each_kind_of_outside_reference() {
    let dir = tempfile_dir();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::create_dir_all(dir.join("stamp/src")).unwrap();
    std::fs::write(dir.join("README.md"), "").unwrap();
    std::fs::write(dir.join("docs/a.md"), "").unwrap();
    std::fs::write(dir.join("stamp/src/run.rs"), "").unwrap();
    let repo = Repo {
        root: dir.clone(),
        top_level: ["README.md", "docs", "stamp"].map(String::from).into(),
    };
    let text = "\
good: [a](a.md), [top](../README.md#layout), [web](https://example.com/x.md), [here](#anchor)
good: `stamp/src/run.rs`, `docs/`, `hub/conn.rs`, `/v1/stats`, see README.md and docs/a.md
bad link up: [brief](../../shared/DESIGN.md)
bad link missing: [gone](b.md)
bad span: `stamp/src/gone.rs`
bad named: see DESIGN.md
bad marker: the vectors in shared/reference
```
[in a code block](nowhere) is not a link
```
[ref]: ../missing.md
";
    let found: Vec<String> = check_file(&repo, "docs/guide.md", text)
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    let lines: Vec<&str> = found
        .iter()
        .map(|p| p.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        lines,
        [
            "docs/guide.md:3", // the link leaves the repository
            "docs/guide.md:3", // ... and the named file is not in it
            "docs/guide.md:3", // ... and it is the outside marker
            "docs/guide.md:4",
            "docs/guide.md:4",
            "docs/guide.md:5",
            "docs/guide.md:6",
            "docs/guide.md:7",
            "docs/guide.md:11",
            "docs/guide.md:11",
        ],
        "{found:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iotstamp-repo-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// What git tracks or would track (untracked but not ignored), as repository-relative paths.
fn listed_files(root: &Path) -> Vec<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .unwrap_or_else(|e| panic!("this test lists the repository's files with `git ls-files`: {e}"));
    assert!(
        output.status.success(),
        "`git ls-files` in {} failed (the test needs a git checkout): {}",
        root.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let files: BTreeSet<String> = output
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    files.into_iter().collect()
}

/// The file's text, or `None` for binary files and files deleted from the working tree.
fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

fn check_file(repo: &Repo, file: &str, text: &str) -> Vec<Problem> {
    let dir = Path::new(file).parent().unwrap_or(Path::new("")).to_path_buf();
    let markdown = file.ends_with(".md");
    let mut problems = Vec::new();
    let mut in_code_block = false;
    for (index, line) in text.lines().enumerate() {
        let mut problem = |what: String| {
            problems.push(Problem {
                file: file.to_string(),
                line: index + 1,
                what,
            })
        };
        if file != THIS_FILE {
            for marker in OUTSIDE_MARKERS {
                if line.contains(marker) {
                    problem(format!("`{marker}` is outside the repository"));
                }
            }
            for named in named_markdown_files(line) {
                let found = [Path::new(""), dir.as_path()]
                    .iter()
                    .filter_map(|base| normalize(&base.join(&named)))
                    .any(|p| repo.exists(&p));
                if !found {
                    problem(format!("names `{named}`, which is not in the repository"));
                }
            }
        }
        if !markdown {
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        let (prose, spans) = split_code_spans(line);
        for target in link_targets(&prose) {
            let Some(path) = local_part(&target) else {
                continue;
            };
            let joined = match path.strip_prefix('/') {
                Some(from_root) => PathBuf::from(from_root),
                None => dir.join(path),
            };
            match normalize(&joined) {
                None => problem(format!("links `{target}`, which leaves the repository")),
                Some(p) if !repo.exists(&p) => {
                    problem(format!("links `{target}`, but {} does not exist", p.display()))
                }
                Some(_) => {}
            }
        }
        for span in spans {
            let Some(first) = repository_path(&span) else {
                continue;
            };
            // Relative to the repository root or to the naming file's folder (a crate's README
            // names `src/lib.rs`); checked only when it starts at an entry of one of them.
            let path = Path::new(span.trim_end_matches('/'));
            let starts_here = repo.top_level.contains(first) || repo.exists(&dir.join(first));
            if starts_here && !repo.exists(path) && !repo.exists(&dir.join(path)) {
                problem(format!("names `{span}`, which does not exist"));
            }
        }
    }
    problems
}

/// `*.md` paths named in a line, outside URLs.
fn named_markdown_files(line: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let bytes = line.as_bytes();
    let mut found = Vec::new();
    for (at, _) in line.match_indices(".md") {
        let after = bytes.get(at + 3).copied().map(char::from);
        if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let start = line[..at].rfind(|c: char| !is_path(c)).map_or(0, |i| i + 1);
        let name = &line[start..at + 3];
        let before_dot = line[..at].chars().last();
        if !before_dot.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            continue;
        }
        // Part of a URL: not a repository path.
        let word_start = line[..start].rfind(char::is_whitespace).map_or(0, |i| i + 1);
        if line[word_start..at].contains("://") {
            continue;
        }
        found.push(name.to_string());
    }
    found
}

/// The line with its inline code spans blanked out, and the spans' contents.
fn split_code_spans(line: &str) -> (String, Vec<String>) {
    let mut prose = String::with_capacity(line.len());
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        let ticks = rest[open..].chars().take_while(|c| *c == '`').count();
        let fence = &rest[open..open + ticks];
        let after = &rest[open + ticks..];
        let Some(close) = after.find(fence) else {
            break;
        };
        prose.push_str(&rest[..open]);
        prose.push(' ');
        spans.push(after[..close].trim().to_string());
        rest = &after[close + ticks..];
    }
    prose.push_str(rest);
    (prose, spans)
}

/// Targets of inline links `[text](target)` and of reference definitions `[id]: target`.
fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    if let Some(rest) = prose.trim_start().strip_prefix('[')
        && let Some(close) = rest.find("]:")
        && let Some(target) = rest[close + 2..].split_whitespace().next()
    {
        targets.push(target.to_string());
    }
    let mut rest = prose;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let inside = after[..end].trim();
        // A title after the target: `[a](b "title")`.
        let target = inside.split_whitespace().next().unwrap_or_default();
        targets.push(target.trim_start_matches('<').trim_end_matches('>').to_string());
        rest = &after[end..];
    }
    targets
}

/// The file part of a link target, or `None` for URLs and anchors within the page.
fn local_part(target: &str) -> Option<&str> {
    let path = target.split(['#', '?']).next().unwrap_or_default();
    let scheme = path.split('/').next().unwrap_or_default().contains(':');
    (!path.is_empty() && !scheme).then_some(path)
}

/// The first component of a code span that is a relative path (`a/b`, `a/`), else `None`.
fn repository_path(span: &str) -> Option<&str> {
    let pathlike = span.contains('/')
        && !span.starts_with(['/', '.', '~', '$'])
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
    if pathlike { span.split('/').next() } else { None }
}

/// `path` with `.` and `..` resolved, or `None` when it climbs above the repository root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

//! The documentation's scenario snippets hold: every fenced `toml` block of `README.md` and
//! `docs/*.md` is a whole scenario `drillrig validate` accepts, an excerpt whose every line is a
//! line of the shipped file it names, or a marked fragment that is TOML
//! (docs/development.md §4). No Docker needed.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{BIN, out_dir, repo};

/// What the HTML comment on the line before a block says it is.
#[derive(Debug, PartialEq)]
enum Kind {
    /// No comment: a whole scenario.
    Whole,
    /// `<!-- excerpt: PATH -->`: lines of the scenario file `PATH`.
    Excerpt(String),
    /// `<!-- partial -->`: a fragment.
    Partial,
}

#[derive(Debug)]
struct Snippet {
    /// The document, from the repository's root.
    doc: String,
    /// The line of the opening fence, from 1.
    line: usize,
    kind: Kind,
    text: String,
}

impl Snippet {
    /// `README.md:42`, for messages.
    fn at(&self) -> String {
        format!("{}:{}", self.doc, self.line)
    }
}

/// The documents the snippets live in: the README and every page of `docs/`.
fn documents() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut pages: Vec<String> = std::fs::read_dir(repo("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    pages.sort();
    names.extend(pages);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(repo(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, text)
        })
        .collect()
}

/// Every fenced `toml` block of `text`, with the marker on the line before it.
fn snippets(doc: &str, text: &str) -> Vec<Snippet> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```toml" {
            i += 1;
            continue;
        }
        let opened = i;
        let before = opened
            .checked_sub(1)
            .map_or("", |b| lines[b].trim())
            .to_string();
        let kind = if let Some(path) = before
            .strip_prefix("<!-- excerpt:")
            .and_then(|r| r.strip_suffix("-->"))
        {
            Kind::Excerpt(path.trim().to_string())
        } else if before == "<!-- partial -->" {
            Kind::Partial
        } else {
            assert!(
                !before.starts_with("<!--"),
                "{doc}:{}: unknown snippet marker {before:?}",
                opened + 1
            );
            Kind::Whole
        };
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && lines[i].trim() != "```" {
            body.push(lines[i]);
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{doc}:{}: the toml block is never closed",
            opened + 1
        );
        found.push(Snippet {
            doc: doc.to_string(),
            line: opened + 1,
            kind,
            text: body.join("\n") + "\n",
        });
        i += 1;
    }
    found
}

fn all_snippets() -> Vec<Snippet> {
    documents()
        .iter()
        .flat_map(|(doc, text)| snippets(doc, text))
        .collect()
}

/// A TOML line without its comment and surrounding blanks (a `#` inside a string stays).
fn code(line: &str) -> &str {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return line[..i].trim(),
            None => {}
        }
    }
    line.trim()
}

/// `drillrig validate` on `files`: its exit code and what it printed.
fn validate(files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("validate")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every unmarked block is a scenario `drillrig validate` accepts. Each is written to a file
/// named after where it stands (`README.md-L123.toml`), so an error names the block.
#[test]
fn every_whole_scenario_in_the_docs_validates() {
    let dir = out_dir("readme-snippets");
    std::fs::create_dir_all(&dir).unwrap();
    let whole: Vec<Snippet> = all_snippets()
        .into_iter()
        .filter(|s| s.kind == Kind::Whole)
        .collect();
    assert!(
        whole.iter().any(|s| s.doc == "README.md"),
        "the README shows no whole scenario: {whole:?}"
    );
    let files: Vec<PathBuf> = whole
        .iter()
        .map(|s| {
            let path = dir.join(format!("{}-L{}.toml", s.doc.replace('/', "-"), s.line));
            std::fs::write(&path, &s.text).unwrap();
            path
        })
        .collect();
    let (code, said) = validate(&files);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("ok: ").count(), files.len(), "{said}");
}

/// Every excerpt is TOML, every line of it (comments aside) is a line of the scenario it names,
/// and that scenario validates; every fragment marked partial is TOML.
#[test]
fn every_excerpt_is_in_its_scenario_and_every_partial_is_toml() {
    let snippets = all_snippets();
    let mut excerpted = Vec::new();
    for s in &snippets {
        if s.kind == Kind::Whole {
            continue;
        }
        if let Err(e) = s.text.parse::<toml::Table>() {
            panic!("{}: not TOML: {e}", s.at());
        }
        let Kind::Excerpt(path) = &s.kind else {
            continue;
        };
        let file = repo(path);
        let source = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: excerpt of {path}: {e}", s.at()));
        let lines: Vec<&str> = source.lines().map(code).collect();
        for line in s.text.lines().map(code).filter(|l| !l.is_empty()) {
            assert!(
                lines.contains(&line),
                "{}: `{line}` is not a line of {path}",
                s.at()
            );
        }
        excerpted.push(file);
    }
    assert!(
        !excerpted.is_empty(),
        "no excerpt found: the marker is read wrong"
    );
    excerpted.sort();
    excerpted.dedup();
    let (code, said) = validate(&excerpted);
    assert_eq!(code, Some(0), "{said}");
}

#[test]
fn markers_and_comments_are_read_as_documented() {
    let doc = "a\n```toml\nx = 1\n```\n<!-- excerpt: scenarios/a.toml -->\n```toml\ny = 2\n```\n<!-- partial -->\n```toml\nz = 3\n```\n";
    let found = snippets("d.md", doc);
    let kinds: Vec<&Kind> = found.iter().map(|s| &s.kind).collect();
    assert_eq!(
        kinds,
        [
            &Kind::Whole,
            &Kind::Excerpt("scenarios/a.toml".into()),
            &Kind::Partial
        ]
    );
    assert_eq!(found[1].at(), "d.md:6");
    assert_eq!(code(r#"at = "10s"   # after the start"#), r#"at = "10s""#);
    assert_eq!(code(r#"x = "a # b" # c"#), r#"x = "a # b""#);
    assert_eq!(code(r##"x = 'a"#b' # c"##), r##"x = 'a"#b'"##);
    assert_eq!(code("   # only a comment"), "");
}

//! The layering of ARCHITECTURE.md, checked over the source text: which layer may name which
//! (every `crate::` path, `use` groups over several lines included, and `super::` chains that climb
//! to the crate root), where processes are spawned and where `unsafe` may appear. Comments and
//! string literals are ignored; a violation is reported with its file and line.

use std::path::Path;

/// For each layer (a folder under `src/`, or a top-level file), the layers it must not name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "config",
            "workspace",
            "store",
            "audit",
            "auth",
            "agent",
            "relay",
            "webhooks",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    (
        "config",
        &[
            "workspace",
            "store",
            "audit",
            "auth",
            "agent",
            "relay",
            "webhooks",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    (
        "workspace",
        &[
            "store", "audit", "auth", "agent", "relay", "webhooks", "runtime", "sessions", "http", "app",
        ],
    ),
    (
        "store",
        &[
            "audit", "auth", "agent", "relay", "webhooks", "runtime", "sessions", "http", "app",
        ],
    ),
    (
        "audit",
        &[
            "config",
            "workspace",
            "auth",
            "agent",
            "relay",
            "webhooks",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    (
        "auth",
        &["agent", "relay", "webhooks", "runtime", "sessions", "http", "app"],
    ),
    (
        "agent",
        &[
            "config",
            "workspace",
            "store",
            "audit",
            "auth",
            "relay",
            "webhooks",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    // The relay holds the model credential and meters usage; it knows no session's life, process
    // or HTTP route of the service (the runtime asks it for tokens, app.rs wires it).
    (
        "relay",
        &[
            "workspace",
            "auth",
            "agent",
            "webhooks",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    // Webhooks know the store and their config sections: the runtime and the session service tell
    // them what happened.
    (
        "webhooks",
        &[
            "workspace",
            "audit",
            "auth",
            "agent",
            "relay",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
    ("runtime", &["config", "auth", "sessions", "http", "app"]),
    ("sessions", &["config", "auth", "agent", "http", "app"]),
    ("http", &["agent", "runtime", "app", "store", "workspace"]),
    // Metric names and recording functions, and the log format: a leaf every layer may call.
    (
        "telemetry",
        &[
            "domain",
            "config",
            "workspace",
            "store",
            "audit",
            "auth",
            "agent",
            "relay",
            "runtime",
            "sessions",
            "http",
            "app",
        ],
    ),
];

/// Exceptions to [`FORBIDDEN`]: the file, and the layers it may name after all. `http/error.rs` is
/// the one place that maps every layer's errors to a status.
const ALLOWED_IN_FILE: &[(&str, &[&str])] = &[("http/error.rs", &["store", "workspace"])];

/// The only files whose non-test code may call `Command::new`: agents, and npm / `--version`.
const SPAWNING_FILES: &[&str] = &["agent/launch.rs", "agent/cli.rs"];

/// The only files that may contain `unsafe`, and why.
const UNSAFE_FILES: &[(&str, &str)] = &[
    ("agent/launch.rs", "the pre_exec hook"),
    (
        "agent/sandbox/sys.rs",
        "the sandbox launcher's fork, execve, unshare, loopback ioctl, bounding-set prctl and \
         adopting inherited descriptors",
    ),
];

#[test]
fn the_source_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    assert!(
        files.iter().any(|(path, _)| path == "domain/session.rs") && files.len() > 20,
        "the walk found the source: {:?}",
        files.iter().map(|(path, _)| path).collect::<Vec<_>>()
    );
    let violations: Vec<String> = files.iter().flat_map(|(path, text)| check(path, text)).collect();
    assert!(
        violations.is_empty(),
        "{} layering violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// A merge that left its conflict markers in a document (the compiler catches them in code).
#[test]
fn the_documents_hold_no_merge_leftovers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents: Vec<_> = ["README.md", "ARCHITECTURE.md", "config.example.yaml"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    documents.extend(
        std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|entry| entry.unwrap().path()),
    );
    let markers = ["<<<<<<< ", ">>>>>>> ", "||||||| "];
    let leftovers: Vec<String> = documents
        .iter()
        .filter(|path| path.is_file())
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            text.lines()
                .enumerate()
                .filter(|(_, line)| markers.iter().any(|marker| line.starts_with(marker)))
                .map(|(index, _)| format!("{name}:{}", index + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(leftovers.is_empty(), "conflict markers at {leftovers:?}");
}

/// Every `.rs` file under `dir`, as (path relative to `src`, text), in a stable order.
fn rust_files(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(src, &path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The violations in one file, `path` relative to `src/`, each as `src/<path>:<line>: why`.
fn check(path: &str, text: &str) -> Vec<String> {
    let tokens = tokens(&blank_comments_and_literals(text));
    let layer = path.split(['/', '.']).next().unwrap();
    let forbidden = FORBIDDEN
        .iter()
        .find(|(name, _)| *name == layer)
        .map_or(&[][..], |(_, layers)| *layers);
    let allowed = ALLOWED_IN_FILE
        .iter()
        .find(|(file, _)| *file == path)
        .map_or(&[][..], |(_, layers)| *layers);
    let in_test = test_items(&tokens);
    let mod_depth = inline_module_depth(&tokens);
    let file_depth = match path {
        "lib.rs" | "main.rs" => 0,
        _ => path.split('/').count() - usize::from(path.ends_with("/mod.rs")),
    };
    let mut violations = Vec::new();
    let mut report = |line: usize, why: String| violations.push(format!("src/{path}:{line}: {why}"));
    for (i, token) in tokens.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| tokens[p].text.as_str());
        let next = |n: usize| tokens.get(i + n).map(|t| t.text.as_str());
        // Paths from the crate root: `crate::x`, and `super::...::x` when the supers reach it.
        let root_path_at = match token.text.as_str() {
            "crate" if previous != Some("$") && previous != Some("::") && next(1) == Some("::") => {
                Some(i + 2)
            }
            "super" if previous != Some("::") => {
                let mut end = i;
                let mut supers = 0;
                while tokens.get(end).is_some_and(|t| t.text == "super")
                    && tokens.get(end + 1).is_some_and(|t| t.text == "::")
                {
                    supers += 1;
                    end += 2;
                }
                (supers > 0 && supers >= file_depth + mod_depth[i]).then_some(end)
            }
            _ => None,
        };
        if let Some(start) = root_path_at {
            for (name, line) in top_level_names(&tokens, start) {
                if forbidden.contains(&name.as_str()) && !allowed.contains(&name.as_str()) {
                    report(line, format!("layer `{layer}` must not name `crate::{name}`"));
                }
            }
        }
        if token.text == "Command" && next(1) == Some("::") && next(2) == Some("new") {
            let allowed = path.starts_with("agent/") && (SPAWNING_FILES.contains(&path) || in_test[i]);
            if !allowed {
                report(
                    token.line,
                    format!(
                        "`Command::new` outside {} (and the test modules of agent/)",
                        SPAWNING_FILES.join(", ")
                    ),
                );
            }
        }
        if token.text == "unsafe" && !UNSAFE_FILES.iter().any(|(file, _)| *file == path) {
            let files: Vec<&str> = UNSAFE_FILES.iter().map(|(file, _)| *file).collect();
            report(token.line, format!("`unsafe` outside {}", files.join(", ")));
        }
    }
    violations
}

/// The first segments (with their lines) of the path starting at `tokens[start]`, just after a
/// root `crate::`: one name, or one per item of a `{...}` group.
fn top_level_names(tokens: &[Token], start: usize) -> Vec<(String, usize)> {
    let Some(first) = tokens.get(start) else {
        return Vec::new();
    };
    if first.text != "{" {
        return vec![(first.text.clone(), first.line)];
    }
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for token in &tokens[start..] {
        match token.text.as_str() {
            "{" => {
                depth += 1;
                item_start = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => item_start = true,
            _ if item_start => {
                names.push((token.text.clone(), token.line));
                item_start = false;
            }
            _ => {}
        }
    }
    names
}

/// A token of the source: an identifier, `::`, or one punctuation character.
#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

/// Identifiers, `::` and single punctuation characters; numbers and whitespace are dropped.
fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if !c.is_ascii_digit() {
                let text: String = chars[start..i].iter().collect();
                tokens.push(Token { text, line });
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// For each token, whether it belongs to an item marked `#[cfg(test)]` (a test module, usually).
fn test_items(tokens: &[Token]) -> Vec<bool> {
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let mut in_test = vec![false; tokens.len()];
    let mut i = 0;
    while i < tokens.len() {
        let attribute = ["#", "[", "cfg", "(", "test", ")", "]"];
        if !attribute
            .iter()
            .enumerate()
            .all(|(k, expected)| text(i + k) == *expected)
        {
            i += 1;
            continue;
        }
        let start = i;
        i += attribute.len();
        // The item ends at its first `;` outside brackets, or with the braces it opens.
        let mut depth = 0usize;
        while i < tokens.len() {
            match text(i) {
                "(" | "[" => depth += 1,
                ")" | "]" => depth = depth.saturating_sub(1),
                ";" if depth == 0 => break,
                "{" if depth == 0 => {
                    i = matching_brace(tokens, i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = i.min(tokens.len() - 1);
        in_test[start..=end].iter_mut().for_each(|flag| *flag = true);
        i = end + 1;
    }
    in_test
}

/// The index of the `}` closing the `{` at `open` (or the last token if it is never closed).
fn matching_brace(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len() - 1
}

/// For each token, how many inline `mod name { ... }` blocks enclose it (what `super` climbs).
fn inline_module_depth(tokens: &[Token]) -> Vec<usize> {
    let mut depths = Vec::with_capacity(tokens.len());
    let mut braces: Vec<bool> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "{" => braces.push(i >= 2 && tokens[i - 2].text == "mod"),
            "}" => {
                braces.pop();
            }
            _ => {}
        }
        depths.push(braces.iter().filter(|is_module| **is_module).count());
    }
    depths
}

/// The source with comments and string and character literals replaced by spaces (line breaks
/// kept, so lines still count), leaving only code.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
        let end = if at(i) == '/' && at(i + 1) == '/' {
            (i..chars.len())
                .find(|&k| chars[k] == '\n')
                .unwrap_or(chars.len())
        } else if at(i) == '/' && at(i + 1) == '*' {
            let (mut k, mut depth) = (i, 0);
            while k < chars.len() {
                if at(k) == '/' && at(k + 1) == '*' {
                    depth += 1;
                    k += 2;
                } else if at(k) == '*' && at(k + 1) == '/' {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            k
        } else if at(i) == 'r'
            && (i == 0 || !is_ident(at(i - 1)) || (at(i - 1) == 'b' && (i < 2 || !is_ident(at(i - 2)))))
            && matches!(at(i + 1), '"' | '#')
        {
            // A raw string r"..." or r#"..."#, unless it is a raw identifier like r#type.
            let hashes = (i + 1..chars.len()).take_while(|&k| chars[k] == '#').count();
            if at(i + 1 + hashes) != '"' {
                i += 1;
                continue;
            }
            let mut k = i + 2 + hashes;
            while k < chars.len() && !(chars[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#')) {
                k += 1;
            }
            k + 1 + hashes
        } else if at(i) == '"' {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                k += if chars[k] == '\\' { 2 } else { 1 };
            }
            k + 1
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            (i + 3..chars.len())
                .find(|&k| chars[k] == '\'')
                .map_or(chars.len(), |k| k + 1)
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            i + 3
        } else {
            // Code, or a lifetime.
            i += 1;
            continue;
        };
        let end = end.min(chars.len());
        for c in &mut out[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    out.into_iter().collect()
}

mod the_checker {
    //! The checker itself, on small made-up files: it must find what it is there to find.

    use super::check;

    fn lines(path: &str, text: &str) -> Vec<usize> {
        check(path, text)
            .iter()
            .map(|v| v.split(':').nth(1).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn finds_forbidden_names_in_paths_and_groups_over_several_lines() {
        let text = "use crate::{\n    config::Config,\n    domain::Ok,\n    store::{self, X},\n};\n\
                    fn f() { let _ = crate::runtime::Runtime::new(); }\n";
        assert_eq!(lines("domain/session.rs", text), vec![2, 4, 6]);
        assert_eq!(lines("config.rs", text), vec![4, 6]);
        assert_eq!(lines("runtime/live.rs", text), vec![2]);
        assert!(check("app.rs", text).is_empty(), "app may name anything");
    }

    #[test]
    fn finds_supers_that_climb_to_the_root_and_only_those() {
        let text = "use super::StoreError;\nuse super::super::http::ApiError;\n\
                    mod tests {\n    use super::super::agent::X;\n    use super::super::super::app::A;\n}\n";
        assert_eq!(lines("store/rows.rs", text), vec![2, 5]);
        assert_eq!(lines("store/mod.rs", "use super::agent::X;\n"), vec![1]);
    }

    #[test]
    fn ignores_comments_strings_and_macro_crate_paths() {
        let text = "// use crate::config::Config;\n/* crate::store::X /* nested */ crate::http::Y */\n\
                    const A: &str = \"crate::config::Config\";\nconst B: &str = r#\"crate::store \"# ;\n\
                    const C: char = '\"'; const D: char = '\\''; fn e<'a>(x: &'a str) {}\n\
                    macro_rules! m { () => { $crate::config::Config } }\nunsafe_code();\n";
        assert_eq!(check("domain/events.rs", text), Vec::<String>::new());
        let after = format!("{text}use crate::config::Config;\n");
        assert_eq!(lines("domain/events.rs", &after), vec![8]);
    }

    #[test]
    fn http_names_store_and_workspace_only_in_its_error_mapping() {
        let text = "use crate::store::StoreError;\nuse crate::workspace::WorkspaceError;\n\
                    use crate::sessions::Sessions;\nuse crate::agent::tree;\n";
        assert_eq!(lines("http/error.rs", text), vec![4]);
        assert_eq!(lines("http/health.rs", text), vec![1, 2, 4]);
    }

    #[test]
    fn spawning_only_in_agent_launch_and_cli_or_agent_tests() {
        let text = "fn f() { Command::new(\"x\"); }\n#[cfg(test)]\nmod tests {\n    \
                    fn g() { std::process::Command::new(\"sh\"); }\n}\n";
        assert_eq!(lines("agent/launch.rs", text), Vec::<usize>::new());
        assert_eq!(lines("agent/cli.rs", text), Vec::<usize>::new());
        assert_eq!(lines("agent/tree.rs", text), vec![1]);
        assert_eq!(lines("runtime/live.rs", text), vec![1, 4]);
    }

    #[test]
    fn unsafe_only_in_agent_launch() {
        let text = "fn f() {\n    unsafe { g() }\n}\n";
        assert!(check("agent/launch.rs", text).is_empty());
        assert_eq!(lines("agent/process.rs", text), vec![2]);
        assert_eq!(lines("main.rs", text), vec![2]);
    }
}

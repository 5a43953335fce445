//! The container files' key properties, read as text: CI has no Docker engine to build the image (it
//! lints the Dockerfile with hadolint and runs docker/build.sh, the image's build steps, outside
//! Docker). The Dockerfile has a healthcheck that runs `claude-agent-http healthcheck`; every base
//! image is pinned to a tag; the CLI's version comes from src/agent/cli.rs only (through build.sh);
//! no secret is baked in; the data lives in a volume at /data; the image's environment is understood
//! by the service; compose.yaml has its two profiles; .env.example holds placeholders only.
//!
//! Each property is a function from the text to what is wrong with it. `each_check_catches_*` feed
//! each one broken copies of the real files, so a check that stopped checking fails as well.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use claude_agent_http::agent::cli::TESTED_CLI_VERSION;

const IMAGE_BINARY: &str = "claude-agent-http";

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// `text` with `from` replaced by `to` (which must occur: a mutation that changes nothing proves
/// nothing).
fn broken(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the mutation needs {from:?} in the text");
    text.replacen(from, to, 1)
}

// --- A small Dockerfile reader: instructions (continuations joined, comments dropped) by stage.

#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug, Clone)]
struct Stage {
    name: Option<String>,
    image: String,
    instructions: Vec<Instruction>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        logical.push(current);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((line.trim(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
                _ => None,
            };
            stages.push(Stage {
                name,
                image: words.first().map(|w| w.to_string()).unwrap_or_default(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { keyword, args });
        }
    }
    stages
}

/// Splits on whitespace outside double quotes, dropping the quotes.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// `KEY=value ...` (or the old `KEY value`), as ENV and ARG take them; ARG may have no value.
fn assignments(args: &str) -> Vec<(String, Option<String>)> {
    let words = words(args);
    match words.first() {
        Some(first) if !first.contains('=') && words.len() > 1 => {
            vec![(first.clone(), Some(words[1..].join(" ")))]
        }
        _ => words
            .into_iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w, None),
            })
            .collect(),
    }
}

/// What a stage ends up with, its parent stages' settings included.
#[derive(Debug, Default, Clone)]
struct Effective {
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    user: Option<String>,
    healthcheck: Option<String>,
    entrypoint: Option<String>,
}

fn effective(stages: &[Stage], index: usize) -> Effective {
    let stage = &stages[index];
    let parent = stages[..index]
        .iter()
        .rposition(|s| s.name.as_deref() == Some(stage.image.to_ascii_lowercase().as_str()));
    let mut out = parent.map(|p| effective(stages, p)).unwrap_or_default();
    for i in &stage.instructions {
        match i.keyword.as_str() {
            "ENV" => {
                for (k, v) in assignments(&i.args) {
                    out.env.insert(k, v.unwrap_or_default());
                }
            }
            "VOLUME" => match serde_json::from_str::<Vec<String>>(&i.args) {
                Ok(list) => out.volumes.extend(list),
                Err(_) => out.volumes.extend(i.args.split_whitespace().map(str::to_string)),
            },
            "USER" => out.user = Some(i.args.clone()),
            "HEALTHCHECK" => out.healthcheck = Some(i.args.clone()),
            "ENTRYPOINT" => out.entrypoint = Some(i.args.clone()),
            _ => {}
        }
    }
    out
}

/// The targets that run the service (stages no other stage is built on, whose ENTRYPOINT is the
/// binary), with their names.
fn service_stages(stages: &[Stage]) -> Vec<(String, Effective)> {
    let is_parent = |i: usize| {
        let name = stages[i].name.as_deref();
        stages[i + 1..]
            .iter()
            .any(|s| name == Some(s.image.to_ascii_lowercase().as_str()))
    };
    (0..stages.len())
        .filter(|i| !is_parent(*i))
        .map(|i| {
            (
                stages[i].name.clone().unwrap_or_else(|| format!("stage {i}")),
                effective(stages, i),
            )
        })
        .filter(|(_, e)| {
            e.entrypoint
                .as_deref()
                .and_then(|a| serde_json::from_str::<Vec<String>>(a).ok())
                .is_some_and(|argv| argv.first().is_some_and(|p| p.ends_with(IMAGE_BINARY)))
        })
        .collect()
}

/// Seconds in a Docker duration (`30s`, `1m30s`, `500ms`).
fn seconds(duration: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut number = String::new();
    let mut rest = duration;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        number.clear();
        number.push_str(&rest[..digits]);
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * factor;
        rest = &rest[unit_len..];
    }
    Some(total)
}

// --- The properties.

/// Every stage that runs the service has a HEALTHCHECK that runs `claude-agent-http healthcheck`
/// (exec form), with an interval and a shorter timeout; the default target (the last stage) is one.
fn healthcheck_problems(dockerfile: &str) -> Vec<String> {
    let stages = parse_dockerfile(dockerfile);
    let services = service_stages(&stages);
    let mut problems = Vec::new();
    if services.is_empty() {
        problems.push(format!("no stage has ENTRYPOINT [\"{IMAGE_BINARY}\", ...]"));
    }
    let last = stages.len().checked_sub(1).map(|i| effective(&stages, i));
    if last.is_none_or(|l| l.entrypoint.is_none()) {
        problems.push("the default target (the last stage) does not run the service".into());
    }
    for (name, stage) in services {
        let Some(args) = stage.healthcheck else {
            problems.push(format!("{name}: no HEALTHCHECK"));
            continue;
        };
        let Some((flags, command)) = args.split_once("CMD") else {
            problems.push(format!("{name}: HEALTHCHECK {args} runs nothing"));
            continue;
        };
        let argv: Option<Vec<String>> = serde_json::from_str(command.trim()).ok();
        match argv.as_deref() {
            Some([program, subcommand])
                if (program == IMAGE_BINARY || program.ends_with(&format!("/{IMAGE_BINARY}")))
                    && subcommand == "healthcheck" => {}
            _ => problems.push(format!(
                "{name}: HEALTHCHECK runs {command:?}, not [\"{IMAGE_BINARY}\", \"healthcheck\"]"
            )),
        }
        let flag = |f: &str| {
            flags
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("--{f}=")))
                .and_then(seconds)
        };
        match (flag("interval"), flag("timeout")) {
            (Some(interval), Some(timeout)) if timeout > 0.0 && timeout < interval && interval <= 300.0 => {}
            found => problems.push(format!(
                "{name}: HEALTHCHECK needs --interval (at most 5m) and a shorter --timeout, found {found:?}"
            )),
        }
    }
    problems
}

/// Every FROM names an earlier stage or an image pinned to a tag (or a digest): not untagged, not
/// `latest`, no build-argument indirection. The Rust builder is at least Cargo.toml's rust-version.
fn base_image_problems(dockerfile: &str, cargo_toml: &str) -> Vec<String> {
    let stages = parse_dockerfile(dockerfile);
    let mut problems = Vec::new();
    if stages.is_empty() {
        problems.push("no FROM".into());
    }
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(version_numbers);
    for (i, stage) in stages.iter().enumerate() {
        let image = stage.image.to_ascii_lowercase();
        if stages[..i]
            .iter()
            .any(|s| s.name.as_deref() == Some(image.as_str()))
        {
            continue;
        }
        problems.extend(image_reference_problems(&stage.image));
        if let Some(tag) = image.strip_prefix("rust:") {
            let tag = tag.split('@').next().unwrap_or_default();
            match &rust_version {
                Some(min) if version_numbers(tag) >= *min => {}
                _ => problems.push(format!(
                    "FROM {}: the builder's Rust is older than Cargo.toml's rust-version",
                    stage.image
                )),
            }
        }
    }
    problems
}

fn version_numbers(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect()
}

/// An image reference pinned to a tag (other than `latest`) or to a digest.
fn image_reference_problems(reference: &str) -> Vec<String> {
    if reference.contains('$') {
        return vec![format!(
            "{reference}: an image named through a variable cannot be checked"
        )];
    }
    if reference.contains("@sha256:") {
        return Vec::new();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        None => vec![format!("{reference}: no tag (that is `latest`)")],
        Some((_, "latest")) => vec![format!("{reference}: `latest` is not a version")],
        Some((_, "")) => vec![format!("{reference}: an empty tag")],
        Some(_) => Vec::new(),
    }
}

/// The CLI's version is written once, in src/agent/cli.rs: the container files name no version of
/// the CLI package, the Dockerfile installs the CLI by running docker/build.sh, and build.sh reads
/// the version from src/agent/cli.rs.
fn cli_version_problems(files: &[(&str, &str)], version: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in files {
        if text.contains(version) {
            problems.push(format!("{name} spells out the CLI version {version} again"));
        }
        if let Some(at) = text.find("claude-code@") {
            let after = &text[at + "claude-code@".len()..];
            if !after.starts_with('$') {
                problems.push(format!("{name} names a version of the CLI package itself"));
            }
        }
    }
    let dockerfile = files
        .iter()
        .find(|(n, _)| *n == "Dockerfile")
        .map(|(_, t)| *t)
        .unwrap_or_default();
    let runs_build_script = parse_dockerfile(dockerfile)
        .iter()
        .flat_map(|s| &s.instructions)
        .any(|i| i.keyword == "RUN" && i.args.contains("docker/build.sh"));
    if !runs_build_script {
        problems.push("the Dockerfile does not RUN docker/build.sh".into());
    }
    let build_sh = files
        .iter()
        .find(|(n, _)| *n == "docker/build.sh")
        .map(|(_, t)| *t)
        .unwrap_or_default();
    if !(build_sh.contains("src/agent/cli.rs") && build_sh.contains("TESTED_CLI_VERSION")) {
        problems.push("docker/build.sh does not read TESTED_CLI_VERSION from src/agent/cli.rs".into());
    }
    problems
}

/// A name that usually carries a secret.
fn secret_like(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|word| name.contains(word))
}

/// No ENV or ARG gives a secret-looking name a value, and nothing copies a secret-holding file (an
/// `.env`, a `config.yaml`) into the image; the build context leaves them out.
fn baked_secret_problems(dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for stage in parse_dockerfile(dockerfile) {
        for i in &stage.instructions {
            match i.keyword.as_str() {
                "ENV" | "ARG" => {
                    for (name, value) in assignments(&i.args) {
                        if secret_like(&name) && value.is_some_and(|v| !v.is_empty()) {
                            problems.push(format!("{} {name}=... bakes a secret into the image", i.keyword));
                        }
                    }
                }
                "COPY" | "ADD" => {
                    let sources = words(&i.args);
                    let sources = sources.iter().filter(|w| !w.starts_with("--"));
                    for source in sources {
                        let file = source.rsplit('/').next().unwrap_or(source);
                        if file.starts_with(".env") || file == "config.yaml" {
                            problems.push(format!("{} {source}: a secret-holding file", i.keyword));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for needed in [".env", "config.yaml", "data", "target", ".git"] {
        if !ignored.contains(&needed) {
            problems.push(format!(".dockerignore does not leave out {needed}"));
        }
    }
    problems
}

/// Every stage that runs the service keeps its data in a volume at /data and points the data
/// folder there; the default target runs as root (strict isolation needs it) and a non-root target
/// exists that turns isolation off (it cannot have it).
fn data_and_user_problems(dockerfile: &str) -> Vec<String> {
    let stages = parse_dockerfile(dockerfile);
    let mut problems = Vec::new();
    for (name, stage) in service_stages(&stages) {
        if !stage.volumes.iter().any(|v| v.trim_end_matches('/') == "/data") {
            problems.push(format!("{name}: no VOLUME /data"));
        }
        if stage.env.get("CLAUDE_AGENT_DATA_DIR").map(String::as_str) != Some("/data") {
            problems.push(format!("{name}: CLAUDE_AGENT_DATA_DIR is not /data"));
        }
        let root = stage
            .user
            .as_deref()
            .is_none_or(|u| u == "root" || u == "0" || u.starts_with("0:"));
        let profile = stage
            .env
            .get("CLAUDE_AGENT_ISOLATION__PROFILE")
            .map(String::as_str);
        if !root && profile != Some("none") {
            problems.push(format!("{name}: not root, so its isolation profile must be none"));
        }
    }
    let last = stages
        .len()
        .checked_sub(1)
        .map(|i| effective(&stages, i))
        .unwrap_or_default();
    if last.user.as_deref().is_some_and(|u| u != "root" && u != "0") {
        problems.push("the default target does not run as root (strict isolation needs it)".into());
    }
    let nonroot = service_stages(&stages).into_iter().any(|(_, s)| {
        s.user
            .as_deref()
            .is_some_and(|u| u != "root" && u != "0" && !u.starts_with("0:"))
    });
    if !nonroot {
        problems.push("no target runs the service as a non-root user".into());
    }
    problems
}

fn compose_value(compose: &str) -> yaml_serde::Value {
    let mut value: yaml_serde::Value = yaml_serde::from_str(compose).expect("compose.yaml parses");
    value.apply_merge().expect("compose.yaml merges");
    value
}

fn strings(value: &yaml_serde::Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// A service's environment as name and value (`${...}` left as written).
fn compose_env(service: &yaml_serde::Value) -> BTreeMap<String, String> {
    let env = &service["environment"];
    let mut out = BTreeMap::new();
    if let Some(map) = env.as_mapping() {
        for (k, v) in map {
            let value = match v {
                yaml_serde::Value::String(s) => s.clone(),
                yaml_serde::Value::Null => String::new(),
                other => yaml_serde::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            out.insert(k.as_str().unwrap_or_default().to_string(), value);
        }
    }
    for item in strings(env) {
        let (k, v) = item.split_once('=').unwrap_or((&item, ""));
        out.insert(k.to_string(), v.to_string());
    }
    out
}

/// The services of compose.yaml that run this image (built here), by name.
fn agent_services(compose: &yaml_serde::Value) -> Vec<(String, yaml_serde::Value)> {
    compose["services"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(k, s)| (k.as_str().unwrap_or_default().to_string(), s.clone()))
        .collect()
}

/// compose.yaml: profile `sqlite` runs the service alone with a named volume at /data; profile
/// `postgres` runs it on PostgreSQL (DATABASE_URL) once a pinned postgres, with a healthcheck and a
/// volume, is healthy; secrets are interpolated from the environment (.env), never written.
fn compose_problems(compose: &str) -> Vec<String> {
    let value = compose_value(compose);
    let mut problems = Vec::new();
    let services = &value["services"];
    let volumes = value["volumes"].as_mapping().cloned().unwrap_or_default();
    let in_profile = |s: &yaml_serde::Value, p: &str| strings(&s["profiles"]).iter().any(|x| x == p);
    for profile in ["sqlite", "postgres"] {
        let agents: Vec<_> = agent_services(&value)
            .into_iter()
            .filter(|(_, s)| in_profile(s, profile))
            .collect();
        if agents.len() != 1 {
            problems.push(format!(
                "profile {profile}: {} services run the service, not 1",
                agents.len()
            ));
            continue;
        }
        let (name, agent) = &agents[0];
        let data = strings(&agent["volumes"]).into_iter().find_map(|v| {
            let (source, target) = v.split_once(':')?;
            (target.trim_end_matches(":rw") == "/data").then(|| source.to_string())
        });
        match data {
            Some(source) if volumes.contains_key(source.as_str()) => {}
            _ => problems.push(format!("{name}: /data is not a named volume")),
        }
        let env = compose_env(agent);
        let storage = env.get("CLAUDE_AGENT_SESSION_STORAGE").map(String::as_str);
        if profile == "sqlite" && storage.is_some_and(|s| s != "sqlite") {
            problems.push(format!("{name}: profile sqlite stores sessions in {storage:?}"));
        }
        if profile == "postgres" {
            if storage != Some("postgresql") {
                problems.push(format!(
                    "{name}: profile postgres does not set CLAUDE_AGENT_SESSION_STORAGE"
                ));
            }
            if !env
                .get("DATABASE_URL")
                .is_some_and(|u| u.starts_with("postgres://"))
            {
                problems.push(format!("{name}: no DATABASE_URL"));
            }
            let waits_for = agent["depends_on"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter(|(_, d)| d["condition"].as_str() == Some("service_healthy"))
                .filter_map(|(k, _)| k.as_str())
                .filter(|db| {
                    let db = &services[*db];
                    db["image"].as_str().is_some_and(|i| i.starts_with("postgres:"))
                        && in_profile(db, "postgres")
                })
                .collect::<Vec<_>>();
            match waits_for.as_slice() {
                [db] => {
                    let db = &services[*db];
                    if db["healthcheck"]["test"].is_null() {
                        problems.push("postgres: no healthcheck".into());
                    }
                    let keeps = strings(&db["volumes"]).iter().any(|v| {
                        v.split_once(':').is_some_and(|(source, target)| {
                            volumes.contains_key(source) && target == "/var/lib/postgresql/data"
                        })
                    });
                    if !keeps {
                        problems.push("postgres: its data is not in a named volume".into());
                    }
                }
                _ => problems.push(format!(
                    "{name}: does not wait for a healthy postgres of profile postgres"
                )),
            }
        }
    }
    for (name, service) in services.as_mapping().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if strings(&service["profiles"]).is_empty() {
            problems.push(format!("{name}: in no profile (it would start with either)"));
        }
        if let Some(image) = service["image"].as_str()
            && service["build"].is_null()
        {
            problems.extend(
                image_reference_problems(image)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
        }
        for (var, value) in compose_env(service) {
            if secret_like(&var) && !(value.starts_with("${") && value.ends_with('}')) {
                problems.push(format!(
                    "{name}: {var} is written in compose.yaml, not taken from .env"
                ));
            }
            if let Some((_, rest)) = value.split_once("://")
                && let Some((userinfo, _)) = rest.split_once('@')
                && let Some((_, password)) = userinfo.split_once(':')
                && !password.starts_with("${")
            {
                problems.push(format!("{name}: {var} holds a password written in compose.yaml"));
            }
        }
    }
    problems
}

/// `${NAME}`, `${NAME:-default}`, `${NAME:?message}` ... : the names compose.yaml takes from .env.
fn interpolated_names(compose: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = compose;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// .env.example: the secrets compose needs, each with an empty value (placeholders, how to make
/// them, in comments); every variable compose.yaml reads is mentioned.
fn env_example_problems(example: &str, compose: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut set = Vec::new();
    for line in example.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let assignment = line.trim_start_matches('#').trim();
        let Some((name, value)) = assignment.split_once('=') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        if !line.starts_with('#') {
            set.push(name.to_string());
        }
        if secret_like(name) && !value.trim().is_empty() {
            problems.push(format!("{name} has a value in .env.example, not a placeholder"));
        }
    }
    for needed in [
        "ANTHROPIC_API_KEY",
        "CLAUDE_AGENT_AUTH__ADMIN_KEY",
        "POSTGRES_PASSWORD",
    ] {
        if !set.iter().any(|s| s == needed) {
            problems.push(format!(".env.example does not list {needed}"));
        }
    }
    for name in interpolated_names(compose) {
        if !example.contains(&format!("{name}=")) {
            problems.push(format!(
                "compose.yaml reads {name}, which .env.example does not mention"
            ));
        }
    }
    problems
}

// --- The tests on the real files.

#[test]
fn the_image_has_a_healthcheck_that_runs_the_binary() {
    assert_none(
        "Dockerfile healthcheck",
        healthcheck_problems(&read("Dockerfile")),
    );
}

#[test]
fn every_base_image_is_pinned_to_a_tag() {
    assert_none(
        "Dockerfile FROM",
        base_image_problems(&read("Dockerfile"), &read("Cargo.toml")),
    );
}

#[test]
fn the_cli_version_is_written_only_in_the_source() {
    let files = [
        "Dockerfile",
        "docker/build.sh",
        "compose.yaml",
        ".env.example",
        ".dockerignore",
    ];
    let texts: Vec<(&str, String)> = files.iter().map(|f| (*f, read(f))).collect();
    let texts: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (*f, t.as_str())).collect();
    assert_none("CLI version", cli_version_problems(&texts, TESTED_CLI_VERSION));
    // And build.sh reads it right.
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build.sh"))
        .arg("--cli-version")
        .output()
        .expect("bash runs docker/build.sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), TESTED_CLI_VERSION);
}

#[test]
fn no_secret_is_baked_into_the_image() {
    assert_none(
        "secrets",
        baked_secret_problems(&read("Dockerfile"), &read(".dockerignore")),
    );
}

#[test]
fn the_data_lives_in_a_volume_and_the_users_fit_the_isolation() {
    assert_none("data and user", data_and_user_problems(&read("Dockerfile")));
}

#[test]
fn compose_has_both_profiles() {
    assert_none("compose.yaml", compose_problems(&read("compose.yaml")));
}

#[test]
fn the_env_example_holds_placeholders_only() {
    assert_none(
        ".env.example",
        env_example_problems(&read(".env.example"), &read("compose.yaml")),
    );
}

/// `print-config` of the real binary with exactly `env` (plus PATH): what it prints, and its
/// warnings (a variable that sets no key is named in one).
fn print_config(env: &BTreeMap<String, String>) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_claude-agent-http"))
        .arg("print-config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().filter(|(k, _)| *k != "PATH"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "print-config with {env:?}: {stderr}");
    (yaml_serde::from_slice(&output.stdout).unwrap(), stderr)
}

/// The service reads every variable the image and compose.yaml set (a misspelt one would set
/// nothing, silently but for a warning), and ends up where the image means it to.
#[test]
fn the_service_understands_the_image_and_compose_environment() {
    let stages = parse_dockerfile(&read("Dockerfile"));
    let services = service_stages(&stages);
    assert!(!services.is_empty());
    for (name, stage) in &services {
        let (config, warnings) = print_config(&stage.env);
        assert_eq!(warnings, "", "{name}");
        assert_eq!(config["data_dir"], "/data", "{name}");
        assert_eq!(config["api"]["host"], "0.0.0.0", "{name}");
        assert_eq!(
            config["auth"]["mode"], "on",
            "{name}: a public address needs authentication"
        );
        assert_eq!(
            config["defaults"]["cli_path"],
            stage.env["CLAUDE_AGENT_CLI_PATH"].as_str(),
            "{name}"
        );
        let profile = stage
            .env
            .get("CLAUDE_AGENT_ISOLATION__PROFILE")
            .map_or("auto", String::as_str);
        assert_eq!(config["isolation"]["profile"], profile, "{name}");
        assert!(
            stage.env["CLAUDE_AGENT_CLI_PATH"].starts_with("/opt/claude-agent-http/cli/"),
            "{name}: the CLI is where docker/build.sh installs it"
        );
    }

    let compose = compose_value(&read("compose.yaml"));
    let key = "k".repeat(64);
    for (name, service) in agent_services(&compose) {
        // The image's environment under compose's, with every `${...}` filled in.
        let image = &services.last().unwrap().1.env;
        let mut env = image.clone();
        for (var, value) in compose_env(&service) {
            let filled = match value.find("${") {
                Some(at) => {
                    let end = value[at..].find('}').map_or(value.len(), |e| at + e + 1);
                    let default = value[at..end]
                        .split_once(":-")
                        .map(|(_, d)| d.trim_end_matches('}'));
                    format!("{}{}{}", &value[..at], default.unwrap_or(&key), &value[end..])
                }
                None => value,
            };
            env.insert(var, filled);
        }
        let (config, warnings) = print_config(&env);
        assert_eq!(warnings, "", "{name}");
        let storage = env
            .get("CLAUDE_AGENT_SESSION_STORAGE")
            .cloned()
            .unwrap_or("sqlite".into());
        assert_eq!(config["session"]["storage"], storage.as_str(), "{name}");
        assert_eq!(config["isolation"]["profile"], "auto", "{name}");
        assert!(
            config["auth"]["admin_key"].is_string(),
            "{name}: the admin key is read"
        );
    }
}

// --- Each check fails on the property broken, and says so.

/// `problems` name `expected`: the property broken is the one reported, not some other.
fn caught(problems: Vec<String>, expected: &str, bad: &str) {
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "expected a problem with {expected:?}, found {problems:?}, in:\n{bad}"
    );
}

#[test]
fn each_check_catches_a_missing_or_wrong_healthcheck() {
    let good = read("Dockerfile");
    assert!(healthcheck_problems(&good).is_empty());
    let mut lines: Vec<&str> = good.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("HEALTHCHECK")).unwrap();
    lines.drain(start..start + 2);
    let no_healthcheck = lines.join("\n");
    for (bad, expected) in [
        (no_healthcheck, "no HEALTHCHECK"),
        (
            broken(&good, "\"healthcheck\"]", "\"print-config\"]"),
            "HEALTHCHECK runs",
        ),
        (
            broken(
                &good,
                "CMD [\"claude-agent-http\", \"healthcheck\"]",
                "CMD claude-agent-http healthcheck",
            ),
            "HEALTHCHECK runs",
        ),
        (
            broken(&good, "--timeout=10s", "--timeout=60s"),
            "shorter --timeout",
        ),
        (broken(&good, "--interval=30s ", ""), "--interval"),
        (format!("{good}\nHEALTHCHECK NONE\n"), "runs nothing"),
        (
            format!("{good}\nFROM debian:bookworm-slim AS tools\n"),
            "default target",
        ),
    ] {
        caught(healthcheck_problems(&bad), expected, &bad);
    }
}

#[test]
fn each_check_catches_an_unpinned_base_image() {
    let good = read("Dockerfile");
    let cargo = read("Cargo.toml");
    for (bad, expected) in [
        (broken(&good, "debian:bookworm-slim", "debian"), "debian: no tag"),
        (broken(&good, "debian:bookworm-slim", "debian:latest"), "`latest`"),
        (broken(&good, "debian:bookworm-slim", "${BASE}"), "variable"),
        (
            broken(&good, "rust:1.95.0-bookworm", "rust:1.80.0-bookworm"),
            "rust-version",
        ),
        (
            broken(
                &good,
                "FROM runtime-base AS runtime\n",
                "FROM runtime-bas AS runtime\n",
            ),
            "runtime-bas: no tag",
        ),
    ] {
        caught(base_image_problems(&bad, &cargo), expected, &bad);
    }
    let digest = broken(&good, "debian:bookworm-slim", "debian@sha256:0123");
    assert!(base_image_problems(&digest, &cargo).is_empty());
}

#[test]
fn each_check_catches_a_second_copy_of_the_cli_version() {
    let dockerfile = read("Dockerfile");
    let build_sh = read("docker/build.sh");
    let check = |dockerfile: &str, build_sh: &str| {
        cli_version_problems(
            &[("Dockerfile", dockerfile), ("docker/build.sh", build_sh)],
            TESTED_CLI_VERSION,
        )
    };
    assert!(check(&dockerfile, &build_sh).is_empty());
    let pinned_again =
        format!("{dockerfile}\nRUN npm install @anthropic-ai/claude-code@{TESTED_CLI_VERSION}\n");
    caught(
        check(&pinned_again, &build_sh),
        "Dockerfile spells out",
        &pinned_again,
    );
    let another = format!("{dockerfile}\nRUN npm install -g @anthropic-ai/claude-code@9.9.9\n");
    caught(check(&another, &build_sh), "names a version", &another);
    let not_run = dockerfile.replace("docker/build.sh", "scripts/other.sh");
    caught(check(&not_run, &build_sh), "does not RUN", &not_run);
    let typed = broken(
        &build_sh,
        "cli_version=$(sed",
        &format!("cli_version={TESTED_CLI_VERSION} # $(sed"),
    );
    caught(check(&dockerfile, &typed), "build.sh spells out", &typed);
    let elsewhere = build_sh.replace("src/agent/cli.rs", "VERSION");
    caught(check(&dockerfile, &elsewhere), "does not read", &elsewhere);
}

#[test]
fn each_check_catches_a_baked_secret() {
    let good = read("Dockerfile");
    let ignore = read(".dockerignore");
    assert!(baked_secret_problems(&good, &ignore).is_empty());
    for (bad, expected) in [
        (
            format!("{good}\nENV ANTHROPIC_API_KEY=sk-ant-api03-abc\n"),
            "ENV ANTHROPIC_API_KEY",
        ),
        (
            format!("{good}\nENV CLAUDE_AGENT_AUTH__ADMIN_KEY \"0123456789abcdef0123456789abcdef\"\n"),
            "ENV CLAUDE_AGENT_AUTH__ADMIN_KEY",
        ),
        (format!("{good}\nARG NPM_TOKEN=npm_abc\n"), "ARG NPM_TOKEN"),
        (
            broken(
                &good,
                "LANG=C.UTF-8 \\",
                "LANG=C.UTF-8 POSTGRES_PASSWORD=hunter2 \\",
            ),
            "ENV POSTGRES_PASSWORD",
        ),
        (
            format!("{good}\nCOPY .env /etc/claude-agent-http/.env\n"),
            "COPY .env",
        ),
        (
            format!("{good}\nCOPY --chown=0:0 config.yaml /etc/claude-agent-http/\n"),
            "COPY config.yaml",
        ),
    ] {
        caught(baked_secret_problems(&bad, &ignore), expected, &bad);
    }
    // A build argument without a value is not a secret in the image.
    assert!(baked_secret_problems(&format!("{good}\nARG NPM_TOKEN\n"), &ignore).is_empty());
    for (line, expected) in [
        (".env\n", "out .env"),
        ("target/\n", "out target"),
        ("data/\n", "out data"),
    ] {
        let bad = broken(&ignore, line, "");
        caught(baked_secret_problems(&good, &bad), expected, &bad);
    }
}

#[test]
fn each_check_catches_data_outside_the_volume_or_a_wrong_user() {
    let good = read("Dockerfile");
    let last = good.rfind("VOLUME /data").unwrap();
    let without_last_volume = format!("{}{}", &good[..last], &good[last + "VOLUME /data".len()..]);
    for (bad, expected) in [
        (without_last_volume, "runtime: no VOLUME /data"),
        (
            good.replace("VOLUME /data", "VOLUME /var/lib/claude-agent-http"),
            "runtime-nonroot: no VOLUME /data",
        ),
        (
            broken(&good, "CLAUDE_AGENT_DATA_DIR=/data", "CLAUDE_AGENT_DATA_DIR=/srv"),
            "CLAUDE_AGENT_DATA_DIR is not /data",
        ),
        (
            broken(&good, "ENV CLAUDE_AGENT_ISOLATION__PROFILE=none\n", ""),
            "must be none",
        ),
        (broken(&good, "USER 10001:10001\n", ""), "as a non-root user"),
        (format!("{good}\nUSER 10001\n"), "does not run as root"),
    ] {
        caught(data_and_user_problems(&bad), expected, &bad);
    }
}

#[test]
fn each_check_catches_a_broken_compose_file() {
    let good = read("compose.yaml");
    for (bad, expected) in [
        (
            broken(
                &good,
                "profiles: [postgres]\n    environment:\n      <<:",
                "profiles: [sqlite]\n    environment:\n      <<:",
            ),
            "profile postgres: 0 services",
        ),
        (broken(&good, "    profiles: [sqlite]\n", ""), "in no profile"),
        (
            broken(&good, "condition: service_healthy", "condition: service_started"),
            "does not wait for a healthy postgres",
        ),
        (
            broken(
                &good,
                "CLAUDE_AGENT_SESSION_STORAGE: postgresql",
                "CLAUDE_AGENT_SESSION_STORAGE: sqlite",
            ),
            "does not set CLAUDE_AGENT_SESSION_STORAGE",
        ),
        (
            broken(&good, "      - data:/data", "      - ./data:/data"),
            "/data is not a named volume",
        ),
        (
            broken(&good, "image: postgres:16-bookworm", "image: postgres"),
            "postgres: no tag",
        ),
        (
            broken(&good, "      - postgres-data:/var/lib/postgresql/data\n", ""),
            "its data is not in a named volume",
        ),
        (
            broken(&good, "${POSTGRES_PASSWORD}@postgres", "hunter2@postgres"),
            "DATABASE_URL holds a password",
        ),
        (
            broken(
                &good,
                "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}",
                "POSTGRES_PASSWORD: hunter2",
            ),
            "POSTGRES_PASSWORD is written",
        ),
        (
            broken(
                &good,
                "ANTHROPIC_API_KEY: ${ANTHROPIC_API_KEY:?set ANTHROPIC_API_KEY in .env}",
                "ANTHROPIC_API_KEY: sk-ant-x",
            ),
            "ANTHROPIC_API_KEY is written",
        ),
    ] {
        caught(compose_problems(&bad), expected, &bad);
    }
}

#[test]
fn each_check_catches_a_secret_in_the_env_example() {
    let good = read(".env.example");
    let compose = read("compose.yaml");
    for (bad, expected) in [
        (
            broken(
                &good,
                "ANTHROPIC_API_KEY=\n",
                "ANTHROPIC_API_KEY=sk-ant-api03-abc\n",
            ),
            "ANTHROPIC_API_KEY has a value",
        ),
        (
            broken(&good, "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=hunter2\n"),
            "POSTGRES_PASSWORD has a value",
        ),
        (
            broken(&good, "CLAUDE_AGENT_AUTH__ADMIN_KEY=\n", ""),
            "does not list CLAUDE_AGENT_AUTH__ADMIN_KEY",
        ),
        (
            broken(&good, "#CLAUDE_AGENT_PUBLISH=127.0.0.1:8000\n", ""),
            "reads CLAUDE_AGENT_PUBLISH",
        ),
    ] {
        caught(env_example_problems(&bad, &compose), expected, &bad);
    }
}

//! Configuration through the real binary: precedence, validation, redaction, healthcheck.

use std::process::Command;

use crate::support::TestServer;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_claude-agent-http"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("CLAUDE_AGENT_")) {
        command.env_remove(name);
    }
    command
}

fn print_config(yaml: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = binary()
        .arg("--config")
        .arg(&file)
        .arg("print-config")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn defaults_then_yaml_then_environment() {
    let (ok, out, err) = print_config("", &[]);
    assert!(ok, "{err}");
    let config: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(config["api"]["port"], 8000);
    assert_eq!(config["api"]["host"], "127.0.0.1");
    assert_eq!(config["session"]["storage"], "sqlite");
    assert_eq!(config["defaults"]["turn_timeout"], 1800);
    assert_eq!(config["defaults"]["turn_silence_timeout"], 600);
    assert_eq!(config["api"]["prewarm"], true);
    assert_eq!(config["api"]["max_concurrent_starts"], 2);
    assert_eq!(config["api"]["stream_buffer_events"], 4096);
    assert_eq!(config["api"]["header_read_timeout_seconds"], 10);
    assert_eq!(config["api"]["max_connections"], 1024);

    let yaml =
        "api:\n  port: 9100\n  max_sessions: 9\n  max_concurrent_starts: 5\nsession:\n  storage: memory\n";
    let (ok, out, err) = print_config(yaml, &[]);
    assert!(ok, "{err}");
    let config: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(config["api"]["port"], 9100);
    assert_eq!(config["session"]["storage"], "memory");

    let env = [
        ("CLAUDE_AGENT_API_PORT", "9200"),
        ("CLAUDE_AGENT_SESSION_STORAGE", "sqlite"),
        ("CLAUDE_AGENT_USER_BASE_DIR", "/srv/users"),
        ("CLAUDE_AGENT_IDLE_SESSION_TIMEOUT", "42"),
        ("CLAUDE_AGENT_API__MAX_LIVE_AGENTS", "3"),
        ("CLAUDE_AGENT_DEFAULTS__PERMISSION_MODE", "acceptEdits"),
        ("CLAUDE_AGENT_DEFAULTS__TURN_TIMEOUT", "0"),
        ("CLAUDE_AGENT_API__PREWARM", "false"),
        ("CLAUDE_AGENT_API__STREAM_BUFFER_EVENTS", "64"),
        ("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS", "3"),
        ("CLAUDE_AGENT_API__MAX_CONNECTIONS", "100"),
    ];
    let (ok, out, err) = print_config(yaml, &env);
    assert!(ok, "{err}");
    let config: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(config["api"]["port"], 9200);
    assert_eq!(
        config["api"]["max_sessions"], 9,
        "YAML value kept where env is silent"
    );
    assert_eq!(config["session"]["storage"], "sqlite");
    assert_eq!(config["user"]["base_dir"], "/srv/users");
    assert_eq!(config["api"]["idle_session_timeout"], 42);
    assert_eq!(config["api"]["max_live_agents"], 3);
    assert_eq!(config["defaults"]["permission_mode"], "acceptEdits");
    assert_eq!(config["defaults"]["turn_timeout"], 0);
    assert_eq!(config["api"]["prewarm"], false);
    assert_eq!(config["api"]["stream_buffer_events"], 64);
    assert_eq!(config["api"]["max_concurrent_starts"], 5, "from the YAML");
    assert_eq!(config["api"]["header_read_timeout_seconds"], 3);
    assert_eq!(config["api"]["max_connections"], 100);
}

#[test]
fn secrets_never_print() {
    let (ok, out, _) = print_config(
        "session:\n  pg_password: hunter2\n",
        &[("CLAUDE_AGENT_SESSION_PG_PASSWORD", "s3cret")],
    );
    assert!(ok);
    assert!(!out.contains("hunter2") && !out.contains("s3cret"), "{out}");
}

#[test]
fn webhook_secrets_never_print_from_the_file_or_the_environment() {
    let yaml = "webhooks:\n  - url: https://hooks.example/in\n    events: [turn.completed]\n    secret: whsec-file-0123456789\n";
    let (ok, out, err) = print_config(yaml, &[]);
    assert!(ok, "{err}");
    assert!(!out.contains("whsec-file-0123456789"), "{out}");
    let config: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(config["webhooks"][0]["url"], "https://hooks.example/in");
    assert_eq!(config["webhooks"][0]["events"][0], "turn.completed");
    let env = [(
        "CLAUDE_AGENT_WEBHOOKS",
        r#"[{"url": "http://127.0.0.1:9/h", "events": ["session.deleted"], "secret": "whsec-env-0123456789"}]"#,
    )];
    let (ok, out, err) = print_config("", &env);
    assert!(ok, "{err}");
    assert!(!out.contains("whsec-env-0123456789"), "{out}");
    let config: serde_json::Value = yaml_serde::from_str(&out).unwrap();
    assert_eq!(config["webhooks"][0]["events"][0], "session.deleted");
    // A list that does not parse is refused without being quoted.
    let broken = [(
        "CLAUDE_AGENT_WEBHOOKS",
        r#"[{"url": "http://127.0.0.1:9/h", "secret": "whsec-env-0123456789""#,
    )];
    let (ok, _, err) = print_config("", &broken);
    assert!(!ok && err.contains("CLAUDE_AGENT_WEBHOOKS"), "{err}");
    assert!(!err.contains("whsec-env-0123456789"), "{err}");
}

#[test]
fn a_bad_webhook_names_its_key() {
    let entry = |url: &str, events: &str, secret: &str| {
        format!("webhooks:\n  - url: {url}\n    events: {events}\n    secret: {secret}\n")
    };
    let good_secret = "0123456789abcdef";
    for (yaml, key) in [
        (
            entry("ftp://hooks.example/in", "[turn.completed]", good_secret),
            "webhooks[0].url",
        ),
        (
            entry("not a url", "[turn.completed]", good_secret),
            "webhooks[0].url",
        ),
        (
            entry("https://hooks.example/in", "[turn.done]", good_secret),
            "webhooks[0].events",
        ),
        (
            entry("https://hooks.example/in", "[]", good_secret),
            "webhooks[0].events",
        ),
        (
            entry("https://hooks.example/in", "[turn.failed]", "short"),
            "webhooks[0].secret",
        ),
        (
            "webhook_delivery:\n  max_attempts: 0\n".to_string(),
            "webhook_delivery.max_attempts",
        ),
    ] {
        let (ok, out, err) = print_config(&yaml, &[]);
        assert!(!ok, "{yaml} should fail: {out}");
        assert!(err.contains(key), "error {err:?} should name {key}");
        assert!(!err.contains(good_secret), "{err}");
    }
    let (ok, _, err) = print_config("", &[("CLAUDE_AGENT_WEBHOOK_DELIVERY__TIMEOUT_SECONDS", "0")]);
    assert!(!ok && err.contains("webhook_delivery.timeout_seconds"), "{err}");
}

#[test]
fn bad_config_fails_at_startup_naming_the_key() {
    for (yaml, env, key) in [
        ("api:\n  portt: 1\n", vec![], "portt"),
        ("session:\n  ttl: -1\n", vec![], "session.ttl"),
        ("api:\n  port: 0\n", vec![], "api.port"),
        ("api:\n  port: 'x'\n", vec![], "api.port"),
        (
            "",
            vec![("CLAUDE_AGENT_SESSION_TTL", "soon")],
            "CLAUDE_AGENT_SESSION_TTL",
        ),
        (
            "defaults:\n  permission_mode: yolo\n",
            vec![],
            "defaults.permission_mode",
        ),
        (
            "api:\n  cors_origins: [\"https://ok.example\", \"https://app.example/\"]\n",
            vec![],
            "entry \"https://app.example/\" has a path",
        ),
        (
            "",
            vec![("CLAUDE_AGENT_API__MAX_CONCURRENT_STARTS", "0")],
            "api.max_concurrent_starts",
        ),
        ("api:\n  max_connections: 0\n", vec![], "api.max_connections"),
        (
            "isolation:\n  egress_allow: [registry.npmjs.org, \"https://x.example.org\"]\n",
            vec![],
            "isolation.egress_allow",
        ),
        (
            "",
            vec![("CLAUDE_AGENT_ISOLATION__EGRESS_ALLOW", "['*']")],
            "isolation.egress_allow",
        ),
        (
            "",
            vec![("CLAUDE_AGENT_API__HEADER_READ_TIMEOUT_SECONDS", "0")],
            "api.header_read_timeout_seconds",
        ),
    ] {
        let (ok, _, err) = print_config(yaml, &env);
        assert!(!ok, "{yaml} should fail");
        assert!(err.contains(key), "error {err:?} should name {key}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let (ok, _, err) = print_config(&format!("user:\n  base_dir: {}\n", file.path().display()), &[]);
    assert!(!ok && err.contains("user.base_dir"), "{err}");
    let output = binary()
        .arg("--config")
        .arg("/nonexistent/c.yaml")
        .arg("print-config")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/c.yaml"));
}

#[tokio::test]
async fn healthcheck_subcommand_follows_the_server() {
    let mut server = TestServer::start("").await;
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let check = || {
        binary()
            .arg("healthcheck")
            .env("CLAUDE_AGENT_API_PORT", &port)
            .output()
            .unwrap()
    };
    assert!(
        check().status.success(),
        "{}",
        String::from_utf8_lossy(&check().stderr)
    );
    assert_eq!(server.stop(), Some(0), "SIGTERM is a clean shutdown");
    assert!(!check().status.success());
}

#[tokio::test]
async fn sigint_is_a_clean_shutdown_too() {
    let mut server = TestServer::start("").await;
    assert_eq!(server.stop_with("-INT"), Some(0));
}

/// `config.example.yaml` documents every key with its default: loading it changes nothing, and
/// every key the service knows is in it.
#[test]
fn the_example_config_holds_every_key_at_its_default() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml")).unwrap();
    let (ok, from_example, err) = print_config(&example, &[]);
    assert!(ok, "{err}");
    let (ok, defaults, err) = print_config("", &[]);
    assert!(ok, "{err}");
    // Each ran in a folder of its own: the (absolute) data folder differs by that alone.
    let loaded = |text: &str| {
        let mut value: serde_json::Value = yaml_serde::from_str(text).unwrap();
        value.as_object_mut().unwrap().remove("data_dir");
        value
    };
    assert_eq!(
        loaded(&from_example),
        loaded(&defaults),
        "the example sets something other than the default"
    );
    let example: serde_json::Value = yaml_serde::from_str(&example).unwrap();
    let defaults: serde_json::Value = yaml_serde::from_str(&defaults).unwrap();
    fn missing(path: &str, defaults: &serde_json::Value, example: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(keys) = defaults.as_object() {
            for (key, value) in keys {
                let path = format!("{path}{key}");
                match example.get(key) {
                    None => out.push(path),
                    Some(inner) => missing(&format!("{path}."), value, inner, out),
                }
            }
        }
    }
    let mut absent = Vec::new();
    missing("", &defaults, &example, &mut absent);
    assert!(absent.is_empty(), "config.example.yaml lacks {absent:?}");
}

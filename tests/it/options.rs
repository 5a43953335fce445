//! The session's agent options reach the real CLI and, through it, the model: system prompts, the
//! model, MCP servers and plugins; and the agent's environment is the allow-list, nothing more.

use serde_json::json;

use crate::support::agent::{AgentServer, cli_path};
use crate::support::procs;

/// Parses `system: <n> chars, marker <yes|no>`.
fn system_reply(text: &str) -> (usize, bool) {
    let rest = text.strip_prefix("system: ").unwrap_or_else(|| panic!("{text}"));
    let (chars, marker) = rest.split_once(" chars, marker ").unwrap();
    (chars.parse().unwrap(), marker == "yes")
}

#[tokio::test]
async fn system_prompt_replaces_and_append_system_prompt_extends_claude_codes_prompt() {
    let plain = AgentServer::start("").await;
    let (id, _) = plain.session("alice").await;
    let (default_chars, _) = system_reply(plain.chat_ok(&id, "system none").await["text"].as_str().unwrap());
    assert!(
        default_chars > 2000,
        "Claude Code's own prompt is kept by default ({default_chars} chars)"
    );

    let replaced = AgentServer::start("  system_prompt: You are TESTBOT-7.\n").await;
    let (id, _) = replaced.session("alice").await;
    let (chars, marker) = system_reply(
        replaced.chat_ok(&id, "system TESTBOT-7").await["text"]
            .as_str()
            .unwrap(),
    );
    assert!(marker, "the configured prompt reaches the model");
    assert!(
        chars < default_chars / 2,
        "it replaces Claude Code's prompt ({chars} chars)"
    );

    let appended = AgentServer::start("  append_system_prompt: APPENDED-42\n").await;
    let (id, _) = appended.session("alice").await;
    let (chars, marker) = system_reply(
        appended.chat_ok(&id, "system APPENDED-42").await["text"]
            .as_str()
            .unwrap(),
    );
    assert!(marker, "the appended text reaches the model");
    assert!(
        chars > default_chars,
        "and Claude Code's prompt is kept ({chars} chars)"
    );
}

#[tokio::test]
async fn the_configured_model_reaches_the_api() {
    let app = AgentServer::start("  model: claude-stand-in-model\n").await;
    let (id, _) = app.session("alice").await;
    assert_eq!(
        app.chat_ok(&id, "model").await["text"],
        "model: claude-stand-in-model"
    );
}

#[tokio::test]
async fn the_agent_sees_only_the_allowed_environment_and_its_own_config_dir() {
    let env = vec![("SERVICE_SECRET".to_string(), "hunter2".to_string())];
    let app = AgentServer::start_with_env("", env).await;
    let (id, cwd) = app.session("alice").await;
    let command =
        "echo S=$SERVICE_SECRET; echo C=$CLAUDE_CONFIG_DIR; echo H=$HOME; echo K=${ANTHROPIC_API_KEY:+set}";
    let answer = app
        .chat_ok(&id, &format!("tool Bash {}", json!({"command": command})))
        .await;
    let output = answer["tool_calls"][0]["result"].to_string();
    assert!(
        !output.contains("hunter2"),
        "the service's environment leaked: {output}"
    );
    assert!(output.contains("S=\\n") || output.contains("S=\n"), "{output}");
    let config_dir = app.server.data_dir().join("agents/alice");
    assert!(
        output.contains(&format!("C={}", config_dir.canonicalize().unwrap().display())),
        "{output}"
    );
    assert!(
        output.contains(&format!("H={}", cwd.display())),
        "HOME is the user's directory: {output}"
    );
    assert!(output.contains("K=set"), "ANTHROPIC_* pass through: {output}");
    // The CLI keeps its state in the user's config dir, outside every workspace.
    assert!(config_dir.join("projects").is_dir());
    assert!(!cwd.join(".claude.json").exists() && !cwd.join("projects").exists());
}

/// A minimal MCP server (stdio, newline-delimited JSON-RPC) with one tool, `ping`, that answers
/// `pong <$PROBE_TOKEN>`: the token proves the configured environment reached the server too.
const PROBE_MCP_SERVER: &str = r#"
import json, os, sys
for line in sys.stdin:
    message = json.loads(line)
    method, id = message.get("method"), message.get("id")
    if id is None:
        continue
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "probe", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "ping", "description": "Answers pong.",
                             "inputSchema": {"type": "object", "properties": {}}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "pong " + os.environ.get("PROBE_TOKEN", "")}]}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": method}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": id, "result": result}), flush=True)
"#;

#[tokio::test]
async fn configured_mcp_servers_and_plugins_reach_the_cli() {
    let folder = tempfile::tempdir().unwrap();
    let server = folder.path().join("probe_mcp.py");
    std::fs::write(&server, PROBE_MCP_SERVER).unwrap();
    // A plugin with one command: the CLI expands `/probe-plugin:hello` into the command's text.
    let plugin = folder.path().join("probe-plugin");
    std::fs::create_dir_all(plugin.join(".claude-plugin")).unwrap();
    std::fs::create_dir_all(plugin.join("commands")).unwrap();
    std::fs::write(
        plugin.join(".claude-plugin/plugin.json"),
        json!({"name": "probe-plugin", "version": "1.0.0", "description": "test probe"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        plugin.join("commands/hello.md"),
        "---\ndescription: Says the plugin's marker.\n---\nPLUGIN-MARKER-31\n",
    )
    .unwrap();
    let yaml = format!(
        "  allowed_tools: [mcp__probe__ping]\nmcp_servers:\n  probe:\n    command: python3\n    args: [{}]\n    env:\n      PROBE_TOKEN: probe-token-77\nplugins: [{}]\n",
        server.display(),
        plugin.display()
    );
    let app = AgentServer::start(&yaml).await;
    let (id, _) = app.session("alice").await;

    // The agent can call the MCP server's tool, and the server saw its configured environment.
    let answer = app.chat_ok(&id, "tool mcp__probe__ping {}").await;
    let call = &answer["tool_calls"][0];
    assert_eq!(call["tool"], "mcp__probe__ping", "{answer}");
    assert_eq!(call["is_error"], false, "{answer}");
    assert!(
        call["result"].to_string().contains("pong probe-token-77"),
        "{answer}"
    );

    // The plugin reaches the CLI (by folder, as the CLI takes it).
    let cli = *procs::clis(&id).first().expect("the session's CLI");
    assert!(
        procs::cmdline(cli).contains(&format!("--plugin-dir={}", plugin.display())),
        "{}",
        procs::cmdline(cli)
    );
    // A tenant's message is never run as a slash command (CLIs from 2.1.332 honour
    // `client_composed`): the command's name reaches the model as plain text.
    let version = claude_agent_http::agent::cli::version(&cli_path()).unwrap_or_default();
    if claude_agent_http::agent::cli::version_at_least(&version, (2, 1, 332)) {
        let answer = app.chat_ok(&id, "/probe-plugin:hello").await;
        assert_eq!(answer["text"], "echo: /probe-plugin:hello", "{answer}");
    }
}

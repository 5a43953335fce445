//! Who may use which tool: the service's answer to the CLI's `can_use_tool` requests, and to the
//! other requests the CLI may send us. Decided from the session's options alone.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::protocol;
use crate::domain::{AgentOptions, PermissionMode};

/// The permission policy of one session.
#[derive(Debug, Clone)]
pub struct Policy {
    bypass: bool,
    allowed: HashSet<String>,
}

impl Policy {
    /// The policy the options describe.
    pub fn new(options: &AgentOptions) -> Self {
        Policy {
            bypass: options.permission_mode == PermissionMode::BypassPermissions,
            // Rules with arguments ("Bash(git *)") are applied by the CLI itself; a request that
            // reaches us fell outside them, so only bare tool names grant here.
            allowed: options
                .allowed_tools
                .iter()
                .filter(|t| !t.contains('('))
                .cloned()
                .collect(),
        }
    }

    /// The answer to one `can_use_tool` request.
    pub fn answer(&self, request: &Value) -> Value {
        let tool = request["tool_name"].as_str().unwrap_or_default();
        if self.bypass || self.allowed.contains(tool) {
            json!({"behavior": "allow", "updatedInput": request["input"]})
        } else {
            let mut allowed: Vec<&str> = self.allowed.iter().map(String::as_str).collect();
            allowed.sort_unstable();
            json!({
                "behavior": "deny",
                "message": format!(
                    "The tool {tool} is not allowed by this service's policy (allowed: {}).",
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                ),
                "interrupt": false,
            })
        }
    }

    /// The stdin line answering a control request from the CLI.
    pub fn answer_line(&self, request_id: &str, request: &Value) -> String {
        match request["subtype"].as_str().unwrap_or_default() {
            "can_use_tool" => protocol::control_success_line(request_id, self.answer(request)),
            // No hooks are registered; answering "continue" keeps a hook from hanging the turn.
            "hook_callback" => protocol::control_success_line(request_id, json!({})),
            other => {
                protocol::control_error_line(request_id, &format!("unsupported control request: {other}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_allows_listed_tools_and_explains_denials() {
        let mut options = AgentOptions {
            allowed_tools: vec!["Read".into(), "Bash(git *)".into()],
            ..AgentOptions::default()
        };
        let policy = Policy::new(&options);
        let allow = policy.answer(&json!({"tool_name": "Read", "input": {"file_path": "x"}}));
        assert_eq!(allow["behavior"], "allow");
        assert_eq!(allow["updatedInput"], json!({"file_path": "x"}));
        let deny = policy.answer(&json!({"tool_name": "Bash", "input": {"command": "rm -rf /"}}));
        assert_eq!(deny["behavior"], "deny");
        assert!(deny["message"].as_str().unwrap().contains("Bash"));
        options.permission_mode = PermissionMode::BypassPermissions;
        assert_eq!(
            Policy::new(&options).answer(&json!({"tool_name": "Bash"}))["behavior"],
            "allow"
        );
    }
}

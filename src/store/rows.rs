//! The stored forms of a session's parts, private to the store: the database format is not the
//! serde form of a domain type, so domain types can change without breaking old rows. Every field
//! has a default, so a row written before a field existed still reads; the version says how to
//! read the rest. Secrets are never part of a stored form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{AgentOptions, BudgetOverride, PermissionMode, PluginSpec};

/// The version of [`StoredOptions`] this code writes.
const OPTIONS_VERSION: u32 = 1;

/// `AgentOptions` at rest, as JSON in the `options` column.
///
/// Version 0 is a row written before rows were versioned: the serde form of `AgentOptions` of
/// that time, which also held `mcp_servers` (ignored when read). Version 1 is the same without
/// `mcp_servers`: MCP servers carry credentials (`env`, `headers`) and are taken from the
/// configuration when an agent starts.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct StoredOptions {
    v: u32,
    system_prompt: Option<String>,
    append_system_prompt: Option<String>,
    permission_mode: PermissionMode,
    allowed_tools: Vec<String>,
    setting_sources: Option<Vec<String>>,
    model: Option<String>,
    max_turns: Option<u32>,
    max_budget_usd: Option<f64>,
    plugins: Vec<PluginSpec>,
}

impl StoredOptions {
    /// Parses the `options` column.
    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("options: {e}")))
    }

    /// The `options` column.
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stored options serialize")
    }
}

impl From<&AgentOptions> for StoredOptions {
    fn from(options: &AgentOptions) -> Self {
        // Destructured so that a new field in `AgentOptions` is a compile error here until it is
        // given a stored form (or deliberately left out).
        let AgentOptions {
            system_prompt,
            append_system_prompt,
            permission_mode,
            allowed_tools,
            setting_sources,
            model,
            max_turns,
            max_budget_usd,
            plugins,
        } = options;
        StoredOptions {
            v: OPTIONS_VERSION,
            system_prompt: system_prompt.clone(),
            append_system_prompt: append_system_prompt.clone(),
            permission_mode: *permission_mode,
            allowed_tools: allowed_tools.clone(),
            setting_sources: setting_sources.clone(),
            model: model.clone(),
            max_turns: *max_turns,
            max_budget_usd: *max_budget_usd,
            plugins: plugins.clone(),
        }
    }
}

impl TryFrom<StoredOptions> for AgentOptions {
    type Error = StoreError;

    fn try_from(stored: StoredOptions) -> Result<Self, StoreError> {
        if stored.v > OPTIONS_VERSION {
            return Err(StoreError::Corrupt(format!(
                "options version {} is newer than this service reads ({OPTIONS_VERSION})",
                stored.v
            )));
        }
        Ok(AgentOptions {
            system_prompt: stored.system_prompt,
            append_system_prompt: stored.append_system_prompt,
            permission_mode: stored.permission_mode,
            allowed_tools: stored.allowed_tools,
            setting_sources: stored.setting_sources,
            model: stored.model,
            max_turns: stored.max_turns,
            max_budget_usd: stored.max_budget_usd,
            plugins: stored.plugins,
        })
    }
}

/// The version of [`StoredBudget`] this code writes.
const BUDGET_VERSION: u32 = 1;

/// A `BudgetOverride` at rest, as JSON in the `limits` column: the keys the admin set, each a
/// number or `null` (the limit lifted); a key that is not there keeps the service's default.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct StoredBudget {
    v: u32,
    set: BTreeMap<String, Option<serde_json::Number>>,
}

impl StoredBudget {
    /// Parses the `limits` column.
    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("budget: {e}")))
    }

    /// The `limits` column.
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stored budgets serialize")
    }
}

impl From<&BudgetOverride> for StoredBudget {
    fn from(budget: &BudgetOverride) -> Self {
        // Destructured so that a new limit is a compile error here until it is given a stored form.
        let BudgetOverride {
            user_daily_usd,
            user_monthly_usd,
            session_usd,
            turn_usd,
            user_daily_tokens,
            user_monthly_tokens,
            session_tokens,
            turn_tokens,
        } = budget;
        let mut set = BTreeMap::new();
        let mut usd = |key: &str, value: &Option<Option<f64>>| {
            if let Some(limit) = value {
                set.insert(key.to_string(), limit.and_then(serde_json::Number::from_f64));
            }
        };
        usd("user_daily_usd", user_daily_usd);
        usd("user_monthly_usd", user_monthly_usd);
        usd("session_usd", session_usd);
        usd("turn_usd", turn_usd);
        let mut tokens = |key: &str, value: &Option<Option<u64>>| {
            if let Some(limit) = value {
                set.insert(key.to_string(), limit.map(serde_json::Number::from));
            }
        };
        tokens("user_daily_tokens", user_daily_tokens);
        tokens("user_monthly_tokens", user_monthly_tokens);
        tokens("session_tokens", session_tokens);
        tokens("turn_tokens", turn_tokens);
        StoredBudget {
            v: BUDGET_VERSION,
            set,
        }
    }
}

impl TryFrom<StoredBudget> for BudgetOverride {
    type Error = StoreError;

    fn try_from(stored: StoredBudget) -> Result<Self, StoreError> {
        if stored.v > BUDGET_VERSION {
            return Err(StoreError::Corrupt(format!(
                "budget version {} is newer than this service reads ({BUDGET_VERSION})",
                stored.v
            )));
        }
        let corrupt = |key: &str| StoreError::Corrupt(format!("budget: {key} is not a limit"));
        let usd = |key: &str| -> Result<Option<Option<f64>>, StoreError> {
            match stored.set.get(key) {
                None => Ok(None),
                Some(None) => Ok(Some(None)),
                Some(Some(n)) => n.as_f64().map(|v| Some(Some(v))).ok_or_else(|| corrupt(key)),
            }
        };
        let tokens = |key: &str| -> Result<Option<Option<u64>>, StoreError> {
            match stored.set.get(key) {
                None => Ok(None),
                Some(None) => Ok(Some(None)),
                Some(Some(n)) => n.as_u64().map(|v| Some(Some(v))).ok_or_else(|| corrupt(key)),
            }
        };
        Ok(BudgetOverride {
            user_daily_usd: usd("user_daily_usd")?,
            user_monthly_usd: usd("user_monthly_usd")?,
            session_usd: usd("session_usd")?,
            turn_usd: usd("turn_usd")?,
            user_daily_tokens: tokens("user_daily_tokens")?,
            user_monthly_tokens: tokens("user_monthly_tokens")?,
            session_tokens: tokens("session_tokens")?,
            turn_tokens: tokens("turn_tokens")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_everything() {
        let options = AgentOptions {
            system_prompt: Some("Be brief.".into()),
            permission_mode: PermissionMode::AcceptEdits,
            allowed_tools: vec!["Bash".into()],
            model: Some("claude-x".into()),
            max_turns: Some(3),
            plugins: vec![PluginSpec::Path("/opt/p".into())],
            ..AgentOptions::default()
        };
        let text = StoredOptions::from(&options).to_json();
        assert!(text.contains(r#""v":1"#), "{text}");
        let read = AgentOptions::try_from(StoredOptions::parse(&text).unwrap()).unwrap();
        assert_eq!(read, options);
    }

    #[test]
    fn an_unversioned_row_with_mcp_servers_reads_without_them() {
        let text = r#"{"model":"claude-x","mcp_servers":{"s":{"command":"x","env":{"TOKEN":"tok-123"}}}}"#;
        let stored = StoredOptions::parse(text).unwrap();
        assert!(!stored.to_json().contains("tok-123"));
        let read = AgentOptions::try_from(stored).unwrap();
        assert_eq!(read.model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn missing_fields_take_defaults_and_unknown_ones_are_ignored() {
        let read = AgentOptions::try_from(StoredOptions::parse(r#"{"v":1,"later":true}"#).unwrap()).unwrap();
        assert_eq!(read.permission_mode, PermissionMode::Default);
        assert!(read.allowed_tools.is_empty() && read.plugins.is_empty());
    }

    #[test]
    fn a_newer_version_or_a_bad_value_is_corrupt() {
        for text in [
            r#"{"v":2}"#,
            r#"{"permission_mode":"yolo"}"#,
            r#"{"max_turns":-1}"#,
            "null",
            "42",
            "{",
        ] {
            let read = StoredOptions::parse(text).and_then(AgentOptions::try_from);
            assert!(matches!(read, Err(StoreError::Corrupt(_))), "{text}: {read:?}");
        }
    }
}

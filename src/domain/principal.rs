//! Who is calling: the principal every request acts as, and what it may reach.

use serde::{Deserialize, Serialize};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acts as one user only.
    User,
    /// Acts for any user: the trusted backend.
    Admin,
}

impl Role {
    /// The role as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The role named `text`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// Nobody: authentication is off (`auth.mode: none`), every caller may act for anyone.
    Anonymous,
    /// An API key (its public id).
    ApiKey(String),
    /// The first admin key from the environment.
    EnvironmentKey,
    /// A JWT from the configured issuer (its subject).
    Jwt(String),
    /// The operator at the command line (`claude-agent-http keys ...`).
    CommandLine,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// What it may do.
    pub role: Role,
    /// The user it is, for a `User`.
    pub user_id: Option<String>,
    /// How it proved it.
    pub credential: Credential,
}

impl Principal {
    /// The caller when authentication is off: may act for anyone, as the seed's API allowed.
    pub fn anonymous() -> Principal {
        Principal {
            role: Role::Admin,
            user_id: None,
            credential: Credential::Anonymous,
        }
    }

    /// A principal acting as `user_id` only.
    pub fn user(user_id: impl Into<String>, credential: Credential) -> Principal {
        Principal {
            role: Role::User,
            user_id: Some(user_id.into()),
            credential,
        }
    }

    /// A principal acting for any user.
    pub fn admin(credential: Credential) -> Principal {
        Principal {
            role: Role::Admin,
            user_id: None,
            credential,
        }
    }

    /// Whether it may act for anyone (an admin, or anyone while authentication is off).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether it may reach what belongs to `user_id`.
    pub fn may_act_for(&self, user_id: &str) -> bool {
        self.is_admin() || self.user_id.as_deref() == Some(user_id)
    }

    /// The key's public id, when an API key proved it.
    pub fn key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey(id) => Some(id),
            _ => None,
        }
    }

    /// A short stable name for logs, audit records and rate limits: `user:<id>`, `admin:<key id>`,
    /// `admin:env`, `admin:jwt:<sub>`, `anonymous`.
    pub fn label(&self) -> String {
        match (&self.role, &self.credential) {
            (_, Credential::Anonymous) => "anonymous".into(),
            (Role::User, _) => format!("user:{}", self.user_id.as_deref().unwrap_or_default()),
            (Role::Admin, Credential::ApiKey(id)) => format!("admin:{id}"),
            (Role::Admin, Credential::EnvironmentKey) => "admin:env".into(),
            (Role::Admin, Credential::Jwt(sub)) => format!("admin:jwt:{sub}"),
            (Role::Admin, Credential::CommandLine) => "admin:cli".into(),
        }
    }
}

/// One request's caller: its principal and where the request came from (for audit records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who it is.
    pub principal: Principal,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// The request's id (`x-request-id`).
    pub request_id: Option<String>,
}

impl Caller {
    /// A caller with no request behind it (the service itself, tests): may act for anyone.
    pub fn internal() -> Caller {
        Caller {
            principal: Principal::anonymous(),
            remote_addr: None,
            request_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_reaches_only_its_own_and_an_admin_everyones() {
        let alice = Principal::user("alice", Credential::ApiKey("k1".into()));
        assert!(alice.may_act_for("alice"));
        assert!(!alice.may_act_for("bob"));
        assert!(!alice.may_act_for(""));
        let admin = Principal::admin(Credential::EnvironmentKey);
        assert!(admin.may_act_for("bob"));
        assert!(Principal::anonymous().may_act_for("bob"));
        assert_eq!(alice.label(), "user:alice");
        assert_eq!(admin.label(), "admin:env");
        assert_eq!(Principal::anonymous().label(), "anonymous");
    }
}

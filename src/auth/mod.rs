//! Who is calling: turns a presented credential (an API key or a JWT) into a [`Principal`], and
//! manages API keys. It knows nothing of HTTP (headers are parsed by `http`) and nothing of
//! sessions (scoping is done where sessions are looked up, in `sessions`).

pub mod jwt;
pub mod keys;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::audit::AuditLog;
use crate::config::{AuthConfig, AuthMode};
use crate::domain::{Caller, Credential, Principal, Role};
use crate::store::{KeyStore, StoreError};

pub use crate::store::ApiKeyRecord;
pub use jwt::{JwtConfigError, JwtVerifier};
pub use rate::RateLimits;

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Why a request is not authenticated. The caller is told only "unauthorized"; the reason is for
/// the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("no credential")]
    Missing,
    /// The credential is malformed, unknown, revoked, expired or fails a check.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// The key store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A user key needs a valid user id; an admin key must have none.
    #[error("{0}")]
    BadRequest(String),
    /// No key has this id.
    #[error("no API key {0}")]
    NotFound(String),
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Establishes the principal of each request.
pub struct Authenticator {
    required: bool,
    keys: Arc<dyn KeyStore>,
    /// The hash of `auth.admin_key`, if one is configured.
    environment_key: Option<String>,
    jwt: Option<JwtVerifier>,
    touched: Mutex<HashMap<String, Instant>>,
    audit: AuditLog,
}

impl Authenticator {
    /// An authenticator for `config` with `mode` in force, finding keys in `keys`, recording key
    /// changes in `audit`.
    pub fn new(
        config: &AuthConfig,
        mode: AuthMode,
        keys: Arc<dyn KeyStore>,
        audit: AuditLog,
    ) -> Result<Self, JwtConfigError> {
        let jwt = match config.jwt.enabled() {
            true => Some(JwtVerifier::new(&config.jwt)?),
            false => None,
        };
        Ok(Authenticator {
            required: mode == AuthMode::On,
            keys,
            environment_key: config.admin_key.as_deref().map(|key| keys::hash(key.trim())),
            jwt,
            touched: Mutex::new(HashMap::new()),
            audit,
        })
    }

    /// Whether requests must authenticate (`auth.mode: on`).
    pub fn required(&self) -> bool {
        self.required
    }

    /// The principal of a request that presented `credential` (the bearer token or API key), or
    /// nothing. With authentication off, everyone is [`Principal::anonymous`].
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Principal, AuthError> {
        if !self.required {
            return Ok(Principal::anonymous());
        }
        let credential = credential
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Missing)?;
        // The environment's admin key first: it may have any shape, a JWT's included.
        if let Some(environment) = &self.environment_key
            && keys::same_hash(environment, &keys::hash(credential))
        {
            return Ok(Principal::admin(Credential::EnvironmentKey));
        }
        if keys::looks_like_key(credential) || self.jwt.is_none() || !JwtVerifier::looks_like_jwt(credential)
        {
            return self.api_key(credential).await;
        }
        let jwt = self.jwt.as_ref().expect("checked above");
        jwt.verify(credential).await
    }

    /// The principal of an API key (a stored one, or the environment's admin key).
    async fn api_key(&self, presented: &str) -> Result<Principal, AuthError> {
        if !keys::looks_like_key(presented) {
            return Err(AuthError::Invalid("not an API key".into()));
        }
        let hash = keys::hash(presented);
        let key = self
            .keys
            .key_by_hash(&hash)
            .await?
            .filter(|key| keys::same_hash(&key.hash, &hash))
            .ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
        if key.revoked_at.is_some() {
            return Err(AuthError::Invalid(format!("API key {} is revoked", key.id)));
        }
        self.touch(&key.id);
        let credential = Credential::ApiKey(key.id.clone());
        match (key.role, key.user_id) {
            (Role::Admin, _) => Ok(Principal::admin(credential)),
            (Role::User, Some(user)) => Ok(Principal::user(user, credential)),
            (Role::User, None) => Err(AuthError::Invalid(format!("API key {} has no user", key.id))),
        }
    }

    /// Records a key's use, at most once a minute per key, off the request's path.
    fn touch(&self, id: &str) {
        let now = Instant::now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            if touched
                .get(id)
                .is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY)
            {
                return;
            }
            if touched.len() > 10_000 {
                touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
            }
            touched.insert(id.to_string(), now);
        }
        let keys = self.keys.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = keys.touch_key(&id, Utc::now()).await {
                tracing::debug!(key.id = %id, error = %e, "cannot record the key's use");
            }
        });
    }

    /// Creates a key: a `User` key for `user_id`, or an `Admin` key (no user). Returns what is
    /// stored and the secret, which exists nowhere else and is shown once.
    pub async fn create_key(
        &self,
        caller: &Caller,
        role: Role,
        user_id: Option<&str>,
        name: Option<String>,
    ) -> Result<(ApiKeyRecord, String), KeyError> {
        let user_id = match (role, user_id) {
            (Role::User, Some(user)) => {
                crate::workspace::check_user_id(user).map_err(|e| KeyError::BadRequest(e.to_string()))?;
                Some(user.to_string())
            }
            (Role::User, None) => return Err(KeyError::BadRequest("a user key needs a user_id".into())),
            (Role::Admin, Some(_)) => {
                return Err(KeyError::BadRequest(
                    "an admin key acts for every user: give no user_id".into(),
                ));
            }
            (Role::Admin, None) => None,
        };
        if let Some(name) = &name
            && (name.chars().count() > 200 || name.chars().any(char::is_control))
        {
            return Err(KeyError::BadRequest(
                "name must be at most 200 characters, without control characters".into(),
            ));
        }
        let new = keys::generate();
        let record = ApiKeyRecord {
            id: keys::new_id(),
            name,
            role,
            user_id,
            hash: new.hash,
            prefix: new.prefix,
            created_at: Utc::now(),
            revoked_at: None,
            last_used_at: None,
        };
        self.keys.insert_key(&record).await?;
        let mut entry = AuditLog::entry("key.created", caller);
        entry.user_id = record.user_id.clone();
        entry.detail =
            serde_json::json!({"key_id": record.id, "role": record.role.as_str(), "name": record.name});
        self.audit.record(entry);
        Ok((record, new.secret))
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, KeyError> {
        Ok(self.keys.list_keys().await?)
    }

    /// Revokes a key: from now on it authenticates nothing, on every instance sharing the store.
    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<ApiKeyRecord, KeyError> {
        let key = self
            .keys
            .revoke_key(id, Utc::now())
            .await?
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        let mut entry = AuditLog::entry("key.revoked", caller);
        entry.user_id = key.user_id.clone();
        entry.detail = serde_json::json!({"key_id": key.id, "role": key.role.as_str()});
        self.audit.record(entry);
        Ok(key)
    }

    /// Records a failed authentication (never the credential).
    pub fn record_failure(&self, caller: &Caller, reason: &str) {
        let mut entry = AuditLog::entry("auth.failed", caller);
        entry.principal = None;
        entry.user_id = None;
        entry.detail = serde_json::json!({"reason": reason});
        self.audit.record(entry);
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }
}

//! JWTs from an identity provider: signature (a shared HS256 secret, a PEM public key, or the
//! issuer's JWKS by `kid`), `exp`, `nbf`, `iss` and `aud`; the user from a claim, admin from another.
//! `alg: none` never parses, and the accepted algorithms follow the key, never the token: a public
//! key is never used as an HMAC secret (algorithm confusion).

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::AuthError;
use crate::config::JwtConfig;
use crate::domain::{Credential, Principal};

/// How often the JWKS may be fetched again for a token with an unknown `kid`.
const JWKS_REFRESH: Duration = Duration::from_secs(60);

/// How long fetching the JWKS may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where signing keys come from.
enum Keys {
    /// HS256 with a shared secret.
    Secret(DecodingKey),
    /// One PEM public key and the algorithms its type allows.
    Pem(DecodingKey, Vec<Algorithm>),
    /// The issuer's published keys, fetched and cached.
    Jwks {
        url: String,
        client: reqwest::Client,
        cache: Mutex<JwksCache>,
    },
}

#[derive(Default)]
struct JwksCache {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// Checks JWTs as configured.
pub struct JwtVerifier {
    keys: Keys,
    issuer: String,
    audience: String,
    user_claim: String,
    admin: Option<(String, String)>,
    leeway: u64,
}

/// A JWT setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.jwt: {0}")]
pub struct JwtConfigError(String);

impl JwtVerifier {
    /// A verifier for `config` (which must be `enabled`).
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, JwtConfigError> {
        let keys = if let Some(secret) = &config.hs256_secret {
            Keys::Secret(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| JwtConfigError(format!("hs256_secret: {e}")))?,
            )
        } else if let Some(pem) = &config.public_key_pem {
            let pem = pem.as_bytes();
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                Keys::Pem(key, rsa_algorithms())
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                Keys::Pem(key, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                Keys::Pem(key, vec![Algorithm::EdDSA])
            } else {
                return Err(JwtConfigError(
                    "public_key_pem is not an RSA, EC or Ed25519 public key in PEM".into(),
                ));
            }
        } else if let Some(url) = &config.jwks_url {
            crate::tls::install_crypto_provider();
            let client = reqwest::Client::builder()
                .timeout(JWKS_TIMEOUT)
                .build()
                .map_err(|e| JwtConfigError(format!("cannot build the JWKS client: {e}")))?;
            Keys::Jwks {
                url: url.clone(),
                client,
                cache: Mutex::new(JwksCache::default()),
            }
        } else {
            return Err(JwtConfigError(
                "set one of jwks_url, hs256_secret, public_key_pem".into(),
            ));
        };
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            user_claim: config.user_claim.clone(),
            admin: config.admin_claim.clone().zip(config.admin_value.clone()),
            leeway: config.leeway_seconds,
        })
    }

    /// Whether `token` looks like a JWT at all (three dot-separated parts), before any checking.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// The principal a valid token names.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(format!("JWT header: {e}")))?;
        let (key, algorithms) = match &self.keys {
            Keys::Secret(key) => (key.clone(), vec![Algorithm::HS256]),
            Keys::Pem(key, algorithms) => (key.clone(), algorithms.clone()),
            Keys::Jwks { url, client, cache } => {
                let jwk = self.jwk(url, client, cache, header.kid.as_deref()).await?;
                let algorithms = jwk_algorithms(&jwk)?;
                let key =
                    DecodingKey::from_jwk(&jwk).map_err(|e| AuthError::Invalid(format!("JWKS key: {e}")))?;
                (key, algorithms)
            }
        };
        if !algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "JWT algorithm {:?} is not one this key signs with",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud"].map(String::from).into_iter().collect();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(format!("JWT: {e}")))?;
        self.principal(&data.claims)
    }

    /// The principal of verified claims.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some((claim, value)) = &self.admin {
            let admin = match claims.get(claim) {
                Some(Value::String(text)) => text == value,
                Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(value)),
                _ => false,
            };
            if admin {
                // An admin is named in the audit log by its subject: one without is refused.
                if subject.is_empty() {
                    return Err(AuthError::Invalid("an admin JWT has no `sub`".into()));
                }
                return Ok(Principal::admin(Credential::Jwt(subject)));
            }
        }
        let user = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid(format!("JWT has no string claim {:?}", self.user_claim)))?;
        crate::workspace::check_user_id(user)
            .map_err(|e| AuthError::Invalid(format!("JWT user claim: {e}")))?;
        Ok(Principal::user(user, Credential::Jwt(subject)))
    }

    /// The JWKS key for `kid`, fetching the set on first use and again (at most once a minute)
    /// when a token names a key the cached set lacks (the issuer rotated its keys).
    async fn jwk(
        &self,
        url: &str,
        client: &reqwest::Client,
        cache: &Mutex<JwksCache>,
        kid: Option<&str>,
    ) -> Result<Jwk, AuthError> {
        let unknown = || AuthError::Invalid(format!("no JWKS key for kid {kid:?}"));
        {
            let mut cache = cache.lock().await;
            if let Some(jwk) = cache.set.as_ref().and_then(|set| find(set, kid)) {
                return Ok(jwk);
            }
            // The `kid` is read before any signature is checked, so anyone can ask for a refetch:
            // at most one a minute, claimed here so concurrent requests do not fetch as well.
            if cache.fetched.is_some_and(|at| at.elapsed() < JWKS_REFRESH) {
                return Err(unknown());
            }
            cache.fetched = Some(Instant::now());
        }
        // Fetched without the lock: other tokens are checked against the cached set meanwhile.
        let fetched = fetch(client, url).await;
        let mut cache = cache.lock().await;
        match fetched {
            Ok(set) => cache.set = Some(set),
            Err(e) => tracing::warn!(jwks.url = %url, error = %e, "cannot fetch the JWKS"),
        }
        cache
            .set
            .as_ref()
            .and_then(|set| find(set, kid))
            .ok_or_else(unknown)
    }
}

/// The key named `kid`, or the only key when the token names none.
fn find(set: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => set.find(kid).cloned(),
        None if set.keys.len() == 1 => set.keys.first().cloned(),
        None => None,
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json::<JwkSet>().await.map_err(|e| e.to_string())
}

fn rsa_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ]
}

/// The algorithms a JWKS key signs with: its `alg` if it names one, else its type's. A symmetric
/// key in a JWKS is refused (a published key must be public).
fn jwk_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, AuthError> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => rsa_algorithms(),
        AlgorithmParameters::EllipticCurve(_) => vec![Algorithm::ES256, Algorithm::ES384],
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        _ => {
            return Err(AuthError::Invalid(
                "a JWKS key that is not RSA, EC or OKP (a symmetric key, say) is not used".into(),
            ));
        }
    };
    match jwk
        .common
        .key_algorithm
        .and_then(|alg| alg.to_string().parse::<Algorithm>().ok())
    {
        Some(alg) if family.contains(&alg) => Ok(vec![alg]),
        Some(_) => Err(AuthError::Invalid(
            "JWKS key's alg does not match its type".into(),
        )),
        None => Ok(family),
    }
}

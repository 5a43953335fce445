//! The TLS crypto provider of the service's HTTP clients (the issuer's JWKS, the healthcheck):
//! rustls on `ring`, the provider sqlx's TLS already uses, so no second crypto library is built.
//! reqwest is built without a provider of its own and refuses to build a client until one is
//! installed: call [`install_crypto_provider`] first.

/// Installs `ring` as the process's default rustls provider; later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

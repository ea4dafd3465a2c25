//! HTTP support shared by the REST API, the messaging webhook and the HTTP widgets: request
//! parameters, Twilio-shaped error bodies, `X-Twilio-Signature`, and the HTTP client's crypto
//! set-up. Nothing here knows a route or a flow.

pub(crate) mod errors;
pub mod params;
pub mod signature;

pub use errors::ApiError;

/// Secrets are compared in constant time (the function lives with the other secret handling,
/// where SIP digest can use it too).
pub(crate) use crate::redact::constant_time_eq;

/// A plain client with the crypto provider installed (tests and tools that need no settings).
pub fn plain_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

/// Install rustls's ring provider as the process default (before any TLS client is built).
pub fn install_crypto_provider() {
    // One crypto stack (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

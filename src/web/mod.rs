//! HTTP support shared by the REST API, the messaging webhook and the HTTP widgets: request
//! parameters, Twilio-shaped error bodies, `X-Twilio-Signature`, and the HTTP client's crypto
//! set-up. Nothing here knows a route or a flow.

pub(crate) mod errors;
pub mod params;
pub mod signature;

pub use errors::ApiError;

/// Compare without an early exit on the first differing byte (lengths are not secret).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

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

//! TLS for every HTTP client diskforge builds: rustls with the ring provider, installed
//! process-wide once, before the first client (reqwest and oci-client are built without
//! a provider of their own).

/// A reqwest client builder with the TLS provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // A provider installed earlier by an embedding program is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

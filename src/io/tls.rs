//! TLS and name resolution for every HTTP client diskforge builds: rustls with the ring
//! provider, installed process-wide once, before the first client (reqwest and
//! oci-client are built without a provider of their own); names resolved by the system
//! resolver, with a failure as a typed error ([`NameNotResolved`]) that the retry loops
//! recognise: a name that does not resolve fails at once instead of being retried.

/// A reqwest client builder with the TLS provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // A provider installed earlier by an embedding program is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().dns_resolver(std::sync::Arc::new(SystemResolver))
}

/// A host name the system resolver could not resolve (no network, no DNS server, a
/// misspelt or unknown name). Retrying does not help within a build's time scale.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve the host name {host}: {reason} (no network or DNS, or a misspelt host; with --offline only the cache is used)")]
pub struct NameNotResolved {
    pub host: String,
    pub reason: String,
}

/// The system resolver (getaddrinfo, on a blocking thread), as reqwest's default.
struct SystemResolver;

impl reqwest::dns::Resolve for SystemResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: std::io::Result<Vec<std::net::SocketAddr>> =
                match tokio::net::lookup_host((host.as_str(), 0)).await {
                    Ok(addrs) => Ok(addrs.collect()),
                    Err(e) => Err(e),
                };
            match found {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(e) => Err(Box::new(NameNotResolved {
                    host,
                    reason: e.to_string(),
                })
                    as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// The name-resolution failure behind `err`, if that is what it is.
pub fn name_not_resolved<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a NameNotResolved> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(n) = e.downcast_ref::<NameNotResolved>() {
            return Some(n);
        }
        cur = e.source();
    }
    None
}

/// Whether `err` comes from a host name that does not resolve.
pub fn is_name_not_resolved(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<NameNotResolved>().is_some())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unresolvable_name_is_a_typed_error() {
        crate::sys::rt::init().ok();
        let err = crate::sys::rt::block_on(async {
            let client = super::client_builder().build()?;
            client
                .get("http://name-that-does-not-exist.invalid/")
                .send()
                .await
                .map_err(anyhow::Error::from)
        })
        .unwrap_err();
        let e: &(dyn std::error::Error + 'static) = err.as_ref();
        let n = super::name_not_resolved(e).expect("a NameNotResolved in the chain");
        assert_eq!(n.host, "name-that-does-not-exist.invalid");
    }
}

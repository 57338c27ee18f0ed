//! Which host a registry image is read from or written to, as registries.conf says
//! ([`conf`](super::conf)): a write goes to the name as given; a read tries the
//! mirrors in order, then the location. Every command that reads a `docker://` image
//! starts here, so the candidates are walked in this one place: the first that has the
//! manifest serves the whole read (its blobs, attachments and config), the way
//! containers/image picks one pull source. Each candidate has its own [`Client`], so the
//! credential found for its host goes to that host only, and `--creds` (which names no
//! registry) never goes to a mirror on another host than the location.

use anyhow::{bail, Result};

use super::conf::Source;
use super::{Client, RegistryOptions, RemoteRef};

/// A registry image as diskforge reaches it.
pub struct Reached {
    /// The client for the host that serves it.
    pub client: Client,
    /// The reference on that host (rewritten by registries.conf; the one requests use).
    pub image: RemoteRef,
}

/// Connects to `source`, with its own TLS allowance, and `--creds` only for the
/// location's host.
async fn connect(source: &Source, primary: &str, opts: &RegistryOptions) -> Result<Client> {
    let host = &source.image.registry;
    if !source.insecure && (source.image.registry == primary || opts.creds.is_none()) {
        return Client::connect(host, opts).await;
    }
    let mut o = opts.clone();
    if source.insecure {
        o.insecure_registries.push(host.clone());
    }
    if source.image.registry != primary {
        o.creds = None;
    }
    Client::connect(host, &o).await
}

/// Where `r` is written: the name as given (never rewritten, never a mirror), with its
/// registries.conf entry's `insecure`; a blocked registry is refused.
pub async fn for_push(r: &RemoteRef, opts: &RegistryOptions) -> Result<Reached> {
    let s = opts.conf.push_target(r)?;
    Ok(Reached {
        client: connect(&s, &s.image.registry, opts).await?,
        image: s.image,
    })
}

/// Where `r` is read: the first of its mirrors that has its manifest, else its
/// location. A mirror that cannot be reached, refuses access, fails after the client's
/// retries or does not have the manifest is passed over. When the location does not
/// have it either, the location is returned (its reader then says the image does not
/// exist); when the location fails too, the error names every candidate and why.
pub async fn for_pull(r: &RemoteRef, opts: &RegistryOptions) -> Result<Reached> {
    let sources = opts.conf.pull_sources(r)?;
    let Some(primary) = sources.last().map(|s| s.image.registry.clone()) else {
        bail!("{r}: no source to read it from");
    };
    if let [only] = sources.as_slice() {
        if only.image != *r {
            tracing::debug!("{r}: read from {} (registries.conf)", only.image);
        }
        return Ok(Reached {
            client: connect(only, &primary, opts).await?,
            image: only.image.clone(),
        });
    }
    let mut tried = Vec::new();
    for s in &sources {
        let what = if s.mirror { "mirror" } else { "location" };
        let outcome = async {
            let client = connect(s, &primary, opts).await?;
            let found = client
                .manifest(&s.image.repository, s.image.reference())
                .await?
                .is_some();
            anyhow::Ok((client, found))
        }
        .await;
        match outcome {
            Ok((client, true)) => {
                if s.mirror {
                    tracing::info!("{r}: pulling from mirror {}", s.image);
                }
                crate::progress::event(
                    "pull_source",
                    serde_json::json!({"reference": r.to_string(), "source": s.image.to_string(),
                                       "mirror": s.mirror, "passed_over": tried.join("; ")}),
                );
                return Ok(Reached {
                    client,
                    image: s.image.clone(),
                });
            }
            Ok((client, false)) if !s.mirror => {
                tracing::info!(
                    "{r}: neither its mirrors nor its location have it ({})",
                    tried.join("; ")
                );
                return Ok(Reached {
                    client,
                    image: s.image.clone(),
                });
            }
            Ok((_, false)) => {
                tracing::info!("{r}: mirror {} does not have it", s.image);
                tried.push(format!("{what} {}: manifest unknown", s.image));
            }
            Err(e) if e.is::<crate::sys::interrupt::Interrupted>() => return Err(e),
            Err(e) => {
                let e = crate::redact::apply(&format!("{e:#}"), &[]);
                tracing::info!("{r}: {what} {} failed: {e}", s.image);
                tried.push(format!("{what} {}: {e}", s.image));
            }
        }
    }
    bail!("reading {r}: every source failed: {}", tried.join("; "))
}

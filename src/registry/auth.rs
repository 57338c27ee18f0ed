//! Registry credentials: `--creds`/`DISKFORGE_CREDS`, then the auth files Docker and
//! Podman write (`REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`), including credential helpers.
//! Values are returned with the list of strings to redact from every message.

use std::path::PathBuf;

use anyhow::{Context, Result};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

use super::RegistryOptions;

fn auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(f) = std::env::var("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(f));
    }
    if let Ok(d) = std::env::var("XDG_RUNTIME_DIR") {
        v.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Ok(d) = std::env::var("DOCKER_CONFIG") {
        v.push(PathBuf::from(d).join("config.json"));
    }
    if let Ok(h) = std::env::var("HOME") {
        v.push(PathBuf::from(h).join(".docker/config.json"));
    }
    v
}

/// The credentials for `registry` and the secret strings to redact.
pub fn for_registry(registry: &str, opts: &RegistryOptions) -> Result<(RegistryAuth, Vec<String>)> {
    if let Some(c) = &opts.creds {
        let (u, p) = c
            .expose()
            .split_once(':')
            .context("--creds / DISKFORGE_CREDS must be USER:PASSWORD")?;
        let secrets = vec![p.to_string(), c.expose().to_string(), b64(c.expose())];
        return Ok((RegistryAuth::Basic(u.to_string(), p.to_string()), secrets));
    }
    for f in auth_files() {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let v: Value = serde_json::from_slice(&text)
            .with_context(|| format!("parsing auth file {}", f.display()))?;
        for key in [
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ] {
            if let Some(auth) = v["auths"][&key]["auth"].as_str() {
                let decoded =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, auth.trim())
                        .with_context(|| {
                            format!(
                                "the auth entry for {registry} in {} is not base64",
                                f.display()
                            )
                        })?;
                let decoded = String::from_utf8(decoded).context("auth entry is not UTF-8")?;
                let (u, p) = decoded.split_once(':').with_context(|| {
                    format!(
                        "the auth entry for {registry} in {} is not USER:PASSWORD",
                        f.display()
                    )
                })?;
                let secrets = vec![p.to_string(), auth.to_string(), decoded.clone()];
                return Ok((RegistryAuth::Basic(u.to_string(), p.to_string()), secrets));
            }
        }
        let helper = v["credHelpers"][registry]
            .as_str()
            .or(v["credsStore"].as_str());
        if let Some(h) = helper {
            let out = crate::exec::Cmd::new(
                format!("docker-credential-{h}"),
                format!("asking credential helper {h} for {registry}"),
            )
            .arg("get")
            .input(registry.as_bytes().to_vec())
            .run()?;
            let c: Value = serde_json::from_slice(&out.stdout)
                .context("parsing the credential helper's answer")?;
            let u = c["Username"].as_str().unwrap_or_default().to_string();
            let p = c["Secret"].as_str().unwrap_or_default().to_string();
            let secrets = vec![p.clone()];
            if u == "<token>" {
                return Ok((RegistryAuth::Bearer(p), secrets));
            }
            return Ok((RegistryAuth::Basic(u, p), secrets));
        }
    }
    Ok((RegistryAuth::Anonymous, Vec::new()))
}

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

//! Registry credentials, found in the order podman and skopeo use: `--creds` /
//! `DISKFORGE_CREDS`; then `--authfile FILE` alone when given; else `REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`
//! (`~/.config/containers/auth.json`), `$DOCKER_CONFIG/config.json`,
//! `~/.docker/config.json` — the first file with an entry for the registry wins, and a
//! `credHelpers`/`credsStore` entry runs `docker-credential-NAME get`. Values are
//! returned with the list of strings to redact from every message.
//!
//! Hand-written rather than taken from a crate: the maintained docker-credential crates
//! read only Docker's config, not the containers auth files and their order.

use std::path::PathBuf;

use anyhow::{Context, Result};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

use super::RegistryOptions;

/// The auth files to read, in order.
pub fn auth_files(authfile: Option<&std::path::Path>) -> Vec<PathBuf> {
    if let Some(f) = authfile {
        return vec![f.to_path_buf()];
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut v = Vec::new();
    v.extend(var("REGISTRY_AUTH_FILE"));
    v.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match var("XDG_CONFIG_HOME") {
        Some(d) => v.push(d.join("containers/auth.json")),
        None => v.extend(var("HOME").map(|h| h.join(".config/containers/auth.json"))),
    }
    v.extend(var("DOCKER_CONFIG").map(|d| d.join("config.json")));
    v.extend(var("HOME").map(|h| h.join(".docker/config.json")));
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
    for f in auth_files(opts.authfile.as_deref()) {
        let text = match std::fs::read(&f) {
            Ok(t) => t,
            Err(e) if opts.authfile.is_some() => {
                return Err(e).with_context(|| format!("reading --authfile {}", f.display()))
            }
            Err(_) => continue,
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
            let out = crate::sys::exec::Cmd::new(
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

//! Registry tokens: the Bearer challenge of `WWW-Authenticate`, the token request to the
//! realm it names (with the Basic credential, where [`credential_allowed`] lets it go),
//! and the tokens cached per repository and action. Every token is registered with the
//! redactor the moment it is read.
//!
//! [`credential_allowed`]: super::client

use anyhow::{bail, Context, Result};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Url};

use super::client::{Action, AuthError, Client, Scope};
use super::request::Request;

/// The largest token response read (registries answer a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// The realm and service of a `WWW-Authenticate: Bearer …` challenge (the scope is the
/// repository asked for).
#[derive(Debug, Default, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// Parses a Bearer challenge (`Bearer realm="…",service="…",scope="…"`); `None` for any
/// other scheme (Basic: the credential goes to the registry itself).
fn bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let rest = header.trim();
    let (scheme, mut rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut c = BearerChallenge::default();
    loop {
        rest = rest.trim_start_matches(|ch: char| ch == ',' || ch.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(q) => {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => value.extend(chars.next().map(|(_, e)| e)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        _ => value.push(ch),
                    }
                }
                (value, &q[end?..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => c.realm = value,
            "service" => c.service = Some(value),
            _ => {}
        }
        rest = after;
    }
    (!c.realm.is_empty()).then_some(c)
}

impl Client {
    /// The Authorization header a request for `scope` carries (only where
    /// [`credential_allowed`](super::client) lets the credential go): for a repository,
    /// the token from the handshake, cached per repository and action, or the Basic
    /// credential when the registry issues no tokens; for the token realm, the Basic
    /// credential.
    pub(super) async fn authorization(&self, scope: &Scope) -> Result<Option<HeaderValue>> {
        let token = match scope {
            Scope::Probe => return Ok(None),
            Scope::TokenRealm => None,
            Scope::Repository { repo, action } => self.token(repo, *action).await?,
        };
        let value = match (token, &self.auth) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, RegistryAuth::Basic(u, p)) => format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{u}:{p}")
                )
            ),
            (None, _) => return Ok(None),
        };
        let mut v = HeaderValue::from_str(&value).context("building the Authorization header")?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// The cached token for `repo` and `action`, fetched on first use.
    async fn token(&self, repo: &str, action: Action) -> Result<Option<String>> {
        let key = (repo.to_string(), action);
        if let Some(t) = self.tokens.lock().expect("token lock").get(&key) {
            return Ok(t.clone());
        }
        // Boxed: the handshake sends its requests through `send`, which asks here.
        let fetch = Box::pin(self.fetch_token(repo, action));
        let t = match tokio::time::timeout(self.idle * 2, fetch).await {
            Err(_) => bail!(
                "authenticating to {}: no answer within {}s",
                self.registry,
                (self.idle * 2).as_secs()
            ),
            Ok(t) => t?,
        };
        self.tokens
            .lock()
            .expect("token lock")
            .insert(key, t.clone());
        Ok(t)
    }

    /// The token handshake: the registry's challenge names a Bearer realm, which issues a
    /// token for `repo` (with the Basic credential when there is one). `None`: no Bearer
    /// challenge, so the Basic credential (if any) goes to the registry itself.
    async fn fetch_token(&self, repo: &str, action: Action) -> Result<Option<String>> {
        if let RegistryAuth::Bearer(t) = &self.auth {
            return Ok(Some(t.clone()));
        }
        let probe = self
            .send(Request::new(Method::GET, self.url("/v2/"), Scope::Probe))
            .await?;
        let Some(challenge) = probe
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer_challenge)
        else {
            return Ok(None);
        };
        let realm = Url::parse(&challenge.realm).with_context(|| {
            format!(
                "{} named the token realm {:?}, which is not a URL",
                self.registry, challenge.realm
            )
        })?;
        let mut url = realm.clone();
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
        };
        url.query_pairs_mut()
            .append_pair("scope", &format!("repository:{repo}:{actions}"));
        if let Some(s) = &challenge.service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let resp = self
            .send(Request::new(Method::GET, url.as_str(), Scope::TokenRealm))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let detail = self.error_detail(resp).await;
            return Err(AuthError {
                had_credentials: self.has_credentials(),
                registry: self.registry.clone(),
                detail: format!("token request to {realm}: HTTP {status}: {detail}"),
            }
            .into());
        }
        let body = crate::io::limits::read_body_capped(
            resp,
            MAX_TOKEN_RESPONSE,
            self.idle,
            self.idle,
            "the token response",
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("the token response of {realm} is not JSON"))?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("the token response of {realm} holds no token"))?;
        crate::redact::register(token);
        Ok(Some(token.to_string()))
    }

    /// Drops the token a request for `scope` used (a 401 says it expired).
    pub(super) fn forget_token(&self, scope: &Scope) {
        if let Scope::Repository { repo, action } = scope {
            self.tokens
                .lock()
                .expect("token lock")
                .remove(&(repo.clone(), *action));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed_and_others_ignored() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull""#
            ),
            Some(BearerChallenge {
                realm: "https://auth.example/token".into(),
                service: Some("reg.example".into()),
            })
        );
        assert_eq!(
            bearer_challenge(r#"bearer service="a, b" , realm="https://x/t?a=\"q\"""#),
            Some(BearerChallenge {
                realm: r#"https://x/t?a="q""#.into(),
                service: Some("a, b".into()),
            })
        );
        assert_eq!(
            bearer_challenge("Bearer realm=https://x/t,service=s"),
            Some(BearerChallenge {
                realm: "https://x/t".into(),
                service: Some("s".into()),
            })
        );
        for other in [
            r#"Basic realm="registry""#,
            "Bearer",
            r#"Bearer service="s""#,
            r#"Bearer realm="unterminated"#,
            "",
        ] {
            assert_eq!(bearer_challenge(other), None, "{other}");
        }
    }
}

//! Credentials, `WWW-Authenticate` challenges, bearer tokens and Docker's `config.json`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache_core::{Error, ErrorKind};
use serde::Deserialize;

/// Where a [`crate::Registry`] gets its credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
    /// `credHelpers`, `auths` (`auth`, `username`/`password`, `identitytoken`) and `credsStore`,
    /// in Docker's order. No file or no entry for the registry means anonymous access.
    #[default]
    FromDockerConfig,
    /// A user name and password (or personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// No credentials.
    Anonymous,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::FromDockerConfig => f.write_str("FromDockerConfig"),
            Credentials::Basic { .. } => f.write_str("Basic(<redacted>)"),
            Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Resolved credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    /// User name and password: sent as Basic auth, or to the token realm.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken` in `config.json`), exchanged at the token realm.
    IdentityToken(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The `Authorization` value for Basic auth, if these are a user name and password.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Secret::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Secret::IdentityToken(_) => None,
        }
    }
}

/// Resolves `credentials` for registry `host` (as written in references), reading Docker's
/// config and running credential helpers. Blocking: call it on a blocking thread.
pub(crate) fn resolve(credentials: &Credentials, host: &str) -> Result<Option<Secret>, Error> {
    match credentials {
        Credentials::Anonymous => Ok(None),
        Credentials::Basic { username, password } => Ok(Some(Secret::Basic {
            username: username.clone(),
            password: password.clone(),
        })),
        Credentials::FromDockerConfig => from_docker_config(host),
    }
}

/// The path of Docker's `config.json`, as Docker finds it.
fn docker_config_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

fn from_docker_config(host: &str) -> Result<Option<Secret>, Error> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    // Docker stores Docker Hub credentials under its legacy index address.
    let server = if host == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        host
    };
    match docker_credential::get_credential(server) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Secret::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(Some(Secret::IdentityToken(token))),
        Err(E::NoCredentialConfigured | E::ConfigNotFound) => Ok(None),
        // Helper output is not shown: it may contain the secret.
        Err(E::HelperFailure { helper, .. }) => Err(Error::new(
            ErrorKind::Unauthorized,
            format!(
                "credential helper docker-credential-{helper} failed for registry {host} \
                 (configured in {}); run `docker-credential-{helper} get` to see why",
                path.display()
            ),
        )),
        Err(err) => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cannot read credentials for registry {host} from {}: {err}; fix the file or \
                 point DOCKER_CONFIG at another directory",
                path.display()
            ),
        )),
    }
}

/// An authentication challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP Basic auth on every request.
    Basic,
    /// Token auth: fetch a bearer token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the challenges of `WWW-Authenticate` values, preferring Bearer over Basic.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for value in values {
        let value = value.trim();
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(params);
            let realm = params.get("realm")?.clone();
            return Some(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            });
        }
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Parses `key="value", key=token` pairs; keys are lowercased, quotes and escapes removed.
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        let key = key.trim().to_ascii_lowercase();
        if !key.is_empty() {
            out.insert(key, value.trim().to_string());
        }
        if chars.peek().is_none() {
            return out;
        }
    }
}

/// A token endpoint's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The lifetime the token spec assumes when `expires_in` is missing.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire, so a request never starts with a token
/// about to die.
const RENEW_MARGIN: Duration = Duration::from_secs(15);

/// A bearer token and when it should be renewed.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) renew_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

impl TokenResponse {
    /// The token, renewed a margin before its expiry (at half its life for short-lived ones).
    pub(crate) fn into_token(self, now: Instant) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let life = self
            .expires_in
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let usable = if life > RENEW_MARGIN * 2 {
            life - RENEW_MARGIN
        } else {
            life / 2
        };
        Some(Token {
            value,
            renew_at: now + usable,
        })
    }
}

/// The token cache key for a set of scopes.
pub(crate) fn scope_key(scopes: &[String]) -> String {
    let mut sorted: Vec<&str> = scopes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.join(" ")
}

/// The scope to pull from `repository`.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The scope to pull from and push to `repository`.
pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let challenge = parse_challenges([
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="invalid_token""#,
        ]);
        assert_eq!(
            challenge,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_challenge_and_preference() {
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert!(matches!(
            parse_challenges([r#"Basic realm="x""#, r#"bearer realm="https://t""#]),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(parse_challenges(["Negotiate abc"]), None);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let creds = Credentials::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let secret = resolve(&creds, "h").expect("basic").expect("some");
        for text in [format!("{creds:?}"), format!("{secret:?}")] {
            assert!(
                !text.contains("hunter2") && !text.contains("alice"),
                "{text}"
            );
            assert!(text.contains("<redacted>"), "{text}");
        }
        assert_eq!(
            secret.basic_header().as_deref(),
            Some("Basic YWxpY2U6aHVudGVyMg==")
        );
    }

    #[test]
    fn token_lifetimes() {
        let now = Instant::now();
        let parse = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .expect("valid json")
                .into_token(now)
        };
        let token = parse(r#"{"token":"t1","expires_in":300}"#).expect("token");
        assert_eq!(token.value, "t1");
        assert_eq!(token.renew_at, now + Duration::from_secs(285));
        let token = parse(r#"{"access_token":"t2"}"#).expect("token");
        assert_eq!(token.renew_at, now + Duration::from_secs(45));
        let token = parse(r#"{"token":"t3","expires_in":2}"#).expect("token");
        assert_eq!(token.renew_at, now + Duration::from_secs(1));
        assert!(parse(r#"{"token":""}"#).is_none());
        assert_eq!(
            scope_key(&[push_scope("b"), pull_scope("a"), pull_scope("a")]),
            "repository:a:pull repository:b:pull,push"
        );
    }
}

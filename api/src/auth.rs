//! Bearer tokens with scopes: `server.auth.tokens` in the project file, each given as the SHA-256
//! of the token (hex) or as the token itself read from `env:NAME` or `file:/path` — never as
//! plain text in the file. Health endpoints stay open; every other route needs a token whose
//! scopes include the route's (`admin` includes every scope). Tokens are hashed on arrival and
//! compared in constant time; neither they nor their hashes are logged.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use fathom_project::auth::{parse_hex, AuthConfig, Scope};

use crate::error::ApiError;

struct Entry {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// The accepted tokens, resolved.
pub struct Tokens {
    entries: Vec<Entry>,
}

fn sha256(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Resolves `env:`/`file:` tokens; the error names the entry, never the secret.
    pub fn load(config: &AuthConfig) -> anyhow::Result<Tokens> {
        let mut entries = Vec::new();
        for token in &config.tokens {
            let hash = match (&token.sha256, &token.token) {
                (Some(hex), _) => parse_hex(hex).ok_or_else(|| {
                    anyhow::anyhow!("server.auth token {:?}: sha256 is not 64 hex digits", token.name)
                })?,
                (None, Some(secret)) => sha256(resolve(secret, &token.name)?.as_bytes()),
                (None, None) => anyhow::bail!("server.auth token {:?}: no sha256 and no token", token.name),
            };
            entries.push(Entry { name: token.name.clone(), hash, scopes: token.scopes.clone() });
        }
        Ok(Tokens { entries })
    }

    /// The name of the holder of `header`'s token if it grants `needed`.
    fn authorize(&self, header: Option<&str>, needed: Scope) -> Result<&str, ApiError> {
        let token = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError::Unauthorized("a bearer token is required (Authorization: Bearer <token>)".into()));
        };
        let hash = sha256(token.as_bytes());
        // every entry compared, each in constant time: timing says nothing about the token
        let found = self.entries.iter().fold(None, |found, e| if same(&e.hash, &hash) { Some(e) } else { found });
        let entry = found.ok_or_else(|| ApiError::Unauthorized("the bearer token is not valid".into()))?;
        if entry.scopes.iter().any(|s| *s == needed || *s == Scope::Admin) {
            Ok(&entry.name)
        } else {
            Err(ApiError::Forbidden(format!("this token lacks the `{}` scope", needed.name())))
        }
    }
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn resolve(secret: &str, name: &str) -> anyhow::Result<String> {
    fathom_ingest::config::resolve_secret(secret)
        .map_err(|message| anyhow::anyhow!("server.auth token {name:?}: {message}"))
}

/// Middleware state: the tokens (none: open) and the scope a route group needs.
#[derive(Clone)]
pub struct Guard {
    /// Accepted tokens; `None` when auth is off.
    pub tokens: Option<std::sync::Arc<Tokens>>,
    /// Scope needed.
    pub scope: Scope,
}

/// Refuses a request without a token granting the guard's scope (401/403, JSON).
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if let Some(tokens) = &guard.tokens {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
        match tokens.authorize(header, guard.scope) {
            Ok(holder) => tracing::debug!(holder, scope = guard.scope.name(), "authorized"),
            Err(refusal) => return refusal.into_response(),
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use fathom_project::auth::TokenConfig;

    fn tokens() -> Tokens {
        let hash = |t: &str| sha256(t.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
        let config = AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "reader".into(),
                    sha256: Some(hash("r-token")),
                    token: None,
                    scopes: vec![Scope::Read],
                },
                TokenConfig {
                    name: "ops".into(),
                    sha256: Some(hash("a-token")),
                    token: None,
                    scopes: vec![Scope::Admin],
                },
            ],
        };
        Tokens::load(&config).unwrap()
    }

    #[test]
    fn scopes_decide_and_admin_grants_everything() {
        let t = tokens();
        assert_eq!(t.authorize(Some("Bearer r-token"), Scope::Read).unwrap(), "reader");
        assert!(matches!(t.authorize(Some("Bearer r-token"), Scope::Push), Err(ApiError::Forbidden(_))));
        assert_eq!(t.authorize(Some("Bearer a-token"), Scope::Push).unwrap(), "ops");
        assert!(matches!(t.authorize(Some("Bearer nope"), Scope::Read), Err(ApiError::Unauthorized(_))));
        assert!(matches!(t.authorize(Some("Basic r-token"), Scope::Read), Err(ApiError::Unauthorized(_))));
        assert!(matches!(t.authorize(None, Scope::Read), Err(ApiError::Unauthorized(_))));
    }
}

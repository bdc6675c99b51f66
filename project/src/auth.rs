//! `server.auth`: bearer tokens with scopes, each given as the SHA-256 of the token (hex) or as the
//! token itself read from `env:NAME` or `file:/path` — never as plain text in the file. The API
//! crate resolves and checks them on each request.

use serde::Deserialize;

/// `server.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted tokens. With none, every route is open.
    pub tokens: Vec<TokenConfig>,
}

/// One accepted token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (appears in logs instead of the token).
    pub name: String,
    /// SHA-256 of the token, hex (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The token from `env:NAME` or `file:/path` (trailing newline trimmed).
    #[serde(default)]
    pub token: Option<String>,
    /// What it may do: `read` (lookups, enrichment, predict, OpenAPI), `push` (ingest),
    /// `admin` (everything, including `/metrics`).
    pub scopes: Vec<Scope>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Lookups, enrichment, predictions, the OpenAPI document.
    Read,
    /// Pushing events.
    Push,
    /// Everything, including metrics.
    Admin,
}

impl Scope {
    /// Stable name, as in the project file.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Push => "push",
            Scope::Admin => "admin",
        }
    }
}

/// Problems with one token entry, for validation (`None`: fine). Secrets are not resolved here.
pub fn check(token: &TokenConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    match (&token.sha256, &token.token) {
        (Some(hash), None) if parse_hex(hash).is_none() => {
            problems.push(("sha256", "must be 64 hex digits (the SHA-256 of the token)".into()))
        }
        (None, Some(secret)) if !(secret.starts_with("env:") || secret.starts_with("file:")) => problems.push((
            "token",
            "must be env:NAME or file:/path (a token never sits in the file; or give its sha256)".into(),
        )),
        (Some(_), None) | (None, Some(_)) => {}
        _ => problems.push(("sha256", "set exactly one of `sha256` and `token`".into())),
    }
    if token.scopes.is_empty() {
        problems.push(("scopes", "list at least one of read, push, admin".into()));
    }
    problems
}

/// The 32 bytes a `sha256` entry spells (64 hex digits), if it does.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.trim().as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_without_resolving_secrets() {
        let entry = |sha256: Option<&str>, token: Option<&str>| TokenConfig {
            name: "x".into(),
            sha256: sha256.map(String::from),
            token: token.map(String::from),
            scopes: vec![],
        };
        let fields = |e: TokenConfig| check(&e).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(fields(entry(Some("abc"), None)), ["sha256", "scopes"]);
        assert_eq!(fields(entry(None, Some("plain-secret"))), ["token", "scopes"]);
        assert_eq!(fields(entry(None, Some("env:NOT_SET_ANYWHERE"))), ["scopes"]);
        assert_eq!(fields(entry(None, None)), ["sha256", "scopes"]);
    }
}

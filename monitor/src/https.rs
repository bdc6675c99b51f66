//! Outbound HTTP clients — alert and retraining webhooks, Kubeflow Pipelines, model servers,
//! InfluxDB — with TLS for `https://` URLs: rustls (ring), trusting the system's root
//! certificates (rustls-native-certs: the OS store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when
//! set) plus the target's own `ca`, and presenting a client certificate when `cert` and `key`
//! are set (mutual TLS).

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use serde::Deserialize;

/// `tls:` of an outbound target. Each value is `file:/path` (or a bare path) of a PEM file, or
/// `env:NAME` holding the PEM text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificate(s) to trust besides the system's roots (a private CA).
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate, then its chain, for mutual TLS; needs `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<String>,
}

/// A `tls` setting that cannot be used: the field (e.g. `models.fraud.alerts[0].tls.ca`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// Path of the setting in the project file.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A client builder for one target: plain `http://` as before, `https://` verified against the
/// system's roots and `tls.ca`, with `tls.cert` + `tls.key` as client certificate. `field` is
/// where `tls` sits in the project file, for errors.
pub fn client(tls: Option<&ClientTls>, field: &str) -> Result<reqwest::ClientBuilder, TlsError> {
    let at = |name: &str| {
        let field = if name.is_empty() { field.to_string() } else { format!("{field}.{name}") };
        move |message: String| TlsError { field, message }
    };
    let tls = tls.cloned().unwrap_or_default();
    let mut roots = RootCertStore::clone(system_roots());
    if let Some(ca) = &tls.ca {
        let (added, _) = roots.add_parsable_certificates(certificates(ca).map_err(at("ca"))?);
        if added == 0 {
            return Err(at("ca")(format!("{ca} holds no usable CA certificate")));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| at("")(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert).map_err(at("cert"))?;
            let key = PrivateKeyDer::from_pem_slice(&pem(key).map_err(at("key"))?)
                .map_err(|e| at("key")(format!("{key}: no private key ({e})")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| at("key")(format!("does not fit the certificate: {e}")))?
        }
        _ => return Err(at("")("give both `cert` and `key` for a client certificate, or neither".into())),
    };
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}

/// A client for plain `http://` and public `https://` (the system's roots only).
pub fn default_client() -> reqwest::Client {
    client(None, "").ok().and_then(|b| b.build().ok()).expect("a client without TLS settings")
}

/// An error with its causes (`error sending request: client error (Connect): invalid peer
/// certificate: UnknownIssuer`), without the URL (which may carry a token).
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The system's root certificates, read once (unreadable ones are skipped: they could not be
/// trusted anyway; a target with a private CA names it in `tls.ca`).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system's root certificates");
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        roots
    })
}

/// The PEM text `value` points to (`env:NAME`, `file:/path` or a path).
fn pem(value: &str) -> Result<Vec<u8>, String> {
    if let Some(name) = value.strip_prefix("env:") {
        return std::env::var(name)
            .map(String::into_bytes)
            .map_err(|_| format!("environment variable {name} is not set"));
    }
    let path = value.strip_prefix("file:").unwrap_or(value);
    std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))
}

fn certificates(value: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&pem(value)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{value}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{value} holds no certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem").display().to_string();
        let tls = ClientTls { ca: Some(format!("file:{missing}")), ..ClientTls::default() };
        let e = client(Some(&tls), "models.m.alerts[0].tls").unwrap_err();
        assert_eq!(e.field, "models.m.alerts[0].tls.ca");
        assert!(e.message.starts_with("reading") && e.message.contains("missing.pem"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let tls = ClientTls { ca: Some(junk.display().to_string()), ..ClientTls::default() };
        let e = client(Some(&tls), "t").unwrap_err();
        assert!(e.field == "t.ca" && e.message.contains("holds no certificate"), "{e}");

        let tls = ClientTls { cert: Some("file:/x".into()), ..ClientTls::default() };
        assert!(client(Some(&tls), "t").unwrap_err().message.contains("both `cert` and `key`"));

        let tls = ClientTls { ca: Some("env:FATHOM_HTTPS_TEST_UNSET".into()), ..ClientTls::default() };
        assert!(client(Some(&tls), "t").unwrap_err().message.contains("FATHOM_HTTPS_TEST_UNSET is not set"));
    }

    #[test]
    fn without_settings_a_client_builds() {
        default_client();
        client(None, "t").unwrap().build().unwrap();
    }
}

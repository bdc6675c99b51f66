//! Certificates from a private CA (openssl CLI) and an HTTPS server of the test's own
//! (`https_receiver.py`: Python's ssl, OpenSSL underneath) that records what it is sent.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Guarded;

/// PEM files: a CA, a server certificate for 127.0.0.1 (also good as a client certificate:
/// Redis cluster nodes present theirs on the cluster bus) and a client certificate (CN
/// `fathom-client`), both signed by it, and their keys.
pub struct Certificates {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// Makes [`Certificates`] in `dir`.
pub fn certificates(dir: &Path) -> Certificates {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key) = (path("ca.pem"), path("ca-key.pem"));
    openssl(
        &[&["req", "-x509"], &ec[..], &["-days", "1", "-subj", "/CN=fathom test CA", "-keyout", &ca_key, "-out", &ca]]
            .concat(),
    );
    let signed = |name: &str, subject: &str, extensions: &str| {
        let (cert, key, request, ext) = (
            path(&format!("{name}.pem")),
            path(&format!("{name}-key.pem")),
            path(&format!("{name}.csr")),
            path(&format!("{name}.cnf")),
        );
        openssl(&[&["req"], &ec[..], &["-subj", subject, "-keyout", &key, "-out", &request]].concat());
        std::fs::write(&ext, extensions).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &request,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        (cert, key)
    };
    let (cert, key) = signed(
        "cert",
        "/CN=127.0.0.1",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    let (client_cert, client_key) =
        signed("client", "/CN=fathom-client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
    Certificates { ca, cert, key, client_cert, client_key }
}

/// An HTTPS server on 127.0.0.1 with `certs.cert`; with `mutual`, it requires a client
/// certificate signed by `certs.ca`. Killed on drop.
pub struct HttpsReceiver {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    log: PathBuf,
    _server: Guarded,
}

impl HttpsReceiver {
    pub fn start(dir: &Path, certs: &Certificates, mutual: bool) -> HttpsReceiver {
        let log = dir.join(format!("https-{}.ndjson", super::unique("receiver")));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/https_receiver.py");
        let mut command = Command::new("python3");
        command.arg(script).args([&certs.cert, &certs.key]).arg(&log);
        if mutual {
            command.arg(&certs.ca);
        }
        let mut child = command.stdout(Stdio::piped()).spawn().expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("https_receiver.py printed {line:?}"));
        HttpsReceiver { url: format!("https://127.0.0.1:{port}"), log, _server: Guarded(child) }
    }

    /// The requests received so far: {"path", "headers", "body", "client" (the client
    /// certificate's subject, or null)}.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

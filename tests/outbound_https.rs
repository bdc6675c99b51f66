//! Outbound HTTPS to model servers, against HTTPS servers the test starts on 127.0.0.1 with a CA
//! of its own (Python's ssl, i.e. OpenSSL, on the other end): delivered when the target's
//! `tls.ca` trusts that CA, refused with the certificate error in the answer and in `/readyz`
//! without it; with mutual TLS, accepted with the client certificate of `tls.cert`/`tls.key` (the
//! key from the environment) and refused without one. Alert and retraining webhooks over HTTPS:
//! tests/monitoring_rules.rs.

mod common;

use std::sync::Arc;

use common::tls::{certificates, HttpsReceiver};
use fathom_api::{self as http, serve};
use fathom_project as config;
use fathom_runtime::pipeline;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_go_over_https_trusting_the_targets_ca_and_presenting_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let server = HttpsReceiver::start(dir.path(), &certs, false);
    let mutual = HttpsReceiver::start(dir.path(), &certs, true);
    std::env::set_var("FATHOM_TEST_CLIENT_KEY", std::fs::read_to_string(&certs.client_key).unwrap());
    let (ca, client_cert) = (&certs.ca, &certs.client_cert);
    let yaml = format!(
        r#"
project: {project}
stores:
  offline: {{ parquet: {{ path: "{d}/offline" }} }}
  dead_letters: {{ path: "{d}/dlq" }}
sources:
  tx: {{ key: card_id, timestamp: ts }}
entities:
  card: {{ key: card_id }}
feature_sets:
  cards: {{ entity: card, source: tx, features: [amount] }}
models:
  trusted:
    features: [cards.amount]
    endpoint: {{ url: "{server}/trusted", protocol: json, tls: {{ ca: "file:{ca}" }} }}
  untrusted:
    features: [cards.amount]
    endpoint: {{ url: "{server}/untrusted", protocol: json }}
  mutual:
    features: [cards.amount]
    endpoint:
      url: "{mutual}/mutual"
      protocol: json
      tls: {{ ca: "{ca}", cert: "file:{client_cert}", key: "env:FATHOM_TEST_CLIENT_KEY" }}
  anonymous:
    features: [cards.amount]
    endpoint: {{ url: "{mutual}/anonymous", protocol: json, tls: {{ ca: "{ca}" }} }}
"#,
        project = common::unique("https"),
        d = dir.path().display(),
        server = server.url,
        mutual = mutual.url,
    );
    let project = Arc::new(config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}")));
    let running = pipeline::start(project.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = http::app(serve::state(project.clone(), &running).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = fathom_monitor::https::default_client();
    let predict = |model: &str| {
        let request = client
            .post(format!("{base}/v1/models/{model}/predict"))
            .json(&json!({"entities": {"card_id": "c1"}, "request_id": format!("{model}-1")}));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // the server's certificate, signed by the CA in `tls.ca`: delivered
    let (status, body) = predict("trusted").await;
    assert_eq!((status, &body["prediction"]), (200, &json!(0.5)), "{body}");
    let received = server.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["path"], "/trusted");
    let sent: Value = serde_json::from_str(received[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["request_id"], "trusted-1", "{sent}");

    // the same server without `tls.ca`: its CA is not among the system's roots
    let (status, body) = predict("untrusted").await;
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, 502, "{body}");
    assert!(message.contains("invalid peer certificate") && message.contains("UnknownIssuer"), "{body}");
    let ready: Value = client.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
    let warning = ready["warnings"]["model:untrusted"].as_str().unwrap_or_default();
    assert!(warning.contains("UnknownIssuer"), "{ready}");
    assert_eq!(server.requests().len(), 1, "nothing reached the server");

    // mutual TLS: the server sees the client certificate of `tls.cert`
    let (status, body) = predict("mutual").await;
    assert_eq!((status, &body["prediction"]), (200, &json!(0.5)), "{body}");
    let received = mutual.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["client"]["commonName"], "fathom-client", "{received:?}");

    // mutual TLS without a client certificate: the server ends the handshake
    let (status, body) = predict("anonymous").await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("error sending request") && message.len() > "error sending request".len(), "{body}");
    assert_eq!(mutual.requests().len(), 1, "nothing reached the server");
}

//! Serving a running pipeline: the router's state, the listener (HTTP or HTTPS) until
//! SIGINT/SIGTERM, then the runtime's final checkpoints.

use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use fathom_project::Project;
use fathom_runtime::models::{ModelClient, PredictionLog, Sink};
use fathom_runtime::pipeline::Running;

use crate::auth::Tokens;
use crate::AppState;

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // a second recorder (tests running several servers) keeps the first one
            let _ = metrics::set_global_recorder(recorder);
            fathom_runtime::telemetry::describe();
            // histogram samples wait in the recorder until upkeep folds them in: without it a
            // process nobody scrapes would keep every sample
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// The router's state for a running pipeline (bearer tokens resolved from env/files).
pub fn state(project: Arc<Project>, running: &Running) -> anyhow::Result<AppState> {
    let tokens = match &project.server.auth {
        Some(auth) if !auth.tokens.is_empty() => Some(Arc::new(Tokens::load(auth)?)),
        _ => None,
    };
    let mut models = std::collections::BTreeMap::new();
    for (name, config) in &project.models {
        let resolved =
            fathom_runtime::models::resolve_imputations(name, config.clone(), &project.reference_path(name))?;
        let client = ModelClient::new(name, resolved, project.model_timeout_ms(config))
            .with_context(|| format!("models.{name}: building the HTTP client"))?;
        models.insert(name.clone(), Arc::new(client));
    }
    let files = project.stores.dead_letters.path.with_file_name("predictions");
    let sink = match (&project.stores.kafka, &running.monitor) {
        (Some(kafka), _) => Sink::Kafka(fathom_ingest::kafka::producer(kafka)?),
        (None, Some(monitor)) => {
            let monitored = project.models.iter().filter(|(_, m)| m.monitoring.is_some()).map(|(n, _)| n.clone());
            Sink::Monitor(monitor.push.clone(), files, monitored.collect())
        }
        (None, None) => Sink::Files(files),
    };
    Ok(AppState {
        store: running.store.clone(),
        push: running.push.clone(),
        health: running.health.clone(),
        monitor: running.monitor.as_ref().map(|m| (m.push.clone(), m.health.clone())),
        metrics: metrics(),
        tokens,
        models: Arc::new(models),
        predictions: PredictionLog::start(sink, 100_000),
        api: true,
        project,
    })
}

/// Serves the API on the configured address until a shutdown signal.
pub async fn serve_until_signal(project: Arc<Project>, running: Running) -> anyhow::Result<()> {
    serve_roles(project, running, true).await
}

/// [`serve_until_signal`], with the API routes only when `api` (health and metrics always).
pub async fn serve_roles(project: Arc<Project>, running: Running, api: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(project.server.listen)
        .await
        .with_context(|| format!("binding {}", project.server.listen))?;
    let tls = project.server.tls.is_some();
    tracing::info!(address = %listener.local_addr()?, project = %project.name, api, tls, "serving");
    let mut app_state = state(project.clone(), &running)?;
    app_state.api = api;
    let app = crate::app(app_state);
    serve_app(listener, project.server.tls.as_ref(), app, signal()).await?;
    stop(running).await
}

/// Serves `app` on `listener`, over HTTPS when `tls` is set, until `shutdown` completes.
async fn serve_app(
    listener: tokio::net::TcpListener,
    tls: Option<&fathom_project::tls::TlsConfig>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTP"),
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, crate::tls::acceptor(tls)?)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("serving HTTPS")
        }
    }
}

pub use fathom_runtime::stop;

/// Until the online store (Redis) accepts a connection: the API's address answers `/healthz` 200,
/// `/readyz` 503 `{"status": "starting", "online_store": "<why>"}` and every other path 503
/// (`unavailable`), over HTTPS when `server.tls` is set, while the connection is retried with
/// back-off (1 s doubling to 30 s) and each failure logged — a wrong password, an untrusted
/// certificate or an unreachable Redis is reported and waited out, not a crash loop. Without
/// Redis it returns at once. `Ok(false)`: SIGINT/SIGTERM came first.
pub async fn until_online_store_answers(project: &Project) -> anyhow::Result<bool> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use axum::Json;
    use fathom_featurestore::online::RedisStore;
    use serde_json::json;

    let Some(topology) = project.redis()? else { return Ok(true) };
    let mut error = match RedisStore::connect(&topology).await {
        Ok(_) => return Ok(true),
        Err(e) => e,
    };
    let why = Arc::new(std::sync::Mutex::new(String::new()));
    let reason = why.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(crate::operations::healthz))
        .route(
            "/readyz",
            axum::routing::get({
                let why = why.clone();
                move || async move {
                    let why = why.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting", "online_store": why})))
                }
            }),
        )
        .fallback(move || async move {
            let why = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let body = json!({"error": {"code": "unavailable", "message": format!("starting: {why}")}});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        });
    let listener = tokio::net::TcpListener::bind(project.server.listen)
        .await
        .with_context(|| format!("binding {}", project.server.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let tls = project.server.tls.clone();
    let server = tokio::spawn(async move { serve_app(listener, tls.as_ref(), app, stopped).await });
    let mut delay = std::time::Duration::from_secs(1);
    let shutdown = signal();
    tokio::pin!(shutdown);
    let answered = loop {
        let message = format!("connecting to Redis: {:#}", anyhow::Error::from(error));
        tracing::error!(error = %message, retry_in_s = delay.as_secs(), "the online store does not answer; not ready");
        *why.lock().unwrap_or_else(|e| e.into_inner()) = message;
        tokio::select! {
            () = &mut shutdown => break false,
            () = tokio::time::sleep(delay) => {}
        }
        match RedisStore::connect(&topology).await {
            Ok(_) => break true,
            Err(e) => error = e,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    };
    let _ = stop_tx.send(());
    server.await.context("the starting server's task")??;
    if answered {
        tracing::info!("the online store answers; starting");
    }
    Ok(answered)
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

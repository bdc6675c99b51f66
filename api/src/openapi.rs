//! The OpenAPI document, generated from the handlers and their types.

use axum::Json;

/// The OpenAPI document, generated from the handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Fathom", description = "Streaming feature store and model monitoring: ingest, lookups, serving enrichment."),
    paths(
        crate::push::push, crate::push::push_predictions, crate::push::push_labels, crate::features::features,
        crate::features::batch_features, crate::feast::feast_online_features, crate::models::enrich,
        crate::models::predict, crate::operations::healthz, crate::operations::readyz, crate::operations::metrics,
        openapi
    ),
    modifiers(&BearerAuth),
    tags((name = "ingest"), (name = "features"), (name = "serving"), (name = "operations"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document")), security(("bearer" = ["read"])))]
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

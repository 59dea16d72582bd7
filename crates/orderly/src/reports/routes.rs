//! Report endpoints.

use axum::extract::{FromRef, State};
use http::HeaderMap;
use orderly_kit::conditional::{CacheControl, conditional_response};
use orderly_kit::contract::Params;
use orderly_kit::docs::{Forbidden, Unauthorized, ValidationFailed};
use orderly_kit::fields::select;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accounts::auth::{Admin, Authenticator};
use crate::error::ApiResult;
use crate::listing::FieldsQuery;

use super::Reports;
use super::stats::Stats;

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Reports: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(get_stats))
}

/// Counts and revenue (admin), computed at most a few seconds ago (`ORDERLY_STATS_CACHE_TTL`).
#[utoipa::path(
    get, path = "/stats", tag = "reports", params(FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = Stats, description = "The figures", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_stats(
    State(reports): State<Reports>,
    _admin: Admin,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let stats = reports.stats.get(&reports.db).await?;
    let value = select(fields.as_ref(), serde_json::to_value(&stats).expect("representations serialize"));
    let max_age = u32::try_from(reports.stats.ttl().as_secs()).unwrap_or(u32::MAX);
    let cache = if max_age == 0 { CacheControl::Private } else { CacheControl::PrivateFor { max_age } };
    Ok(conditional_response(&headers, &value, stats.generated_at, cache))
}

//! Report endpoints: `GET /stats`, and exports (`POST /reports`, `GET /reports/{id}`,
//! `GET /reports/{id}/download`).

use axum::Json;
use axum::extract::{FromRef, State};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use orderly_kit::Problem;
use orderly_kit::conditional::{CacheControl, conditional_response};
use orderly_kit::contract::{Body, Params};
use orderly_kit::docs::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, ValidationFailed,
};
use orderly_kit::extract::Id;
use orderly_kit::fields::select;
use orderly_kit::problem::ProblemBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::auth::{Admin, Authenticator, Principal};
use crate::error::{ApiResult, Code};
use crate::listing::FieldsQuery;

use super::Reports;
use super::export::{self, Request};
use super::stats::Stats;
use super::store::{self, Report, ReportKind, ReportStatus};

pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Reports: FromRef<S>,
    Authenticator: FromRef<S>,
    std::sync::Arc<orderly_kit::contract::Contract>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(get_stats))
        .routes(routes!(request_report))
        .routes(routes!(get_report))
        .routes(routes!(download_report))
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

/// Body of `POST /reports`.
#[derive(Deserialize, ToSchema)]
pub struct ReportRequest {
    kind: ReportKind,
    /// Only orders created strictly after this instant (RFC 3339).
    created_after: Option<DateTime<Utc>>,
    /// Only orders created strictly before this instant (RFC 3339); at most the moment of the
    /// request, so a report is a snapshot.
    created_before: Option<DateTime<Utc>>,
}

/// A report: generated in the background; `download_url` once it has `succeeded`.
#[derive(Serialize, ToSchema)]
pub struct ReportBody {
    pub id: Uuid,
    pub kind: ReportKind,
    pub status: ReportStatus,
    /// Percent of the rows written, 0–100.
    pub progress: i64,
    /// Rows written so far (all of them once it has succeeded).
    pub row_count: i64,
    /// Where the CSV is, once it has succeeded; `null` before.
    pub download_url: Option<String>,
    /// Whose orders it covers: the caller's own, or `null` for everyone's (an admin's report).
    pub user_id: Option<Uuid>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_after: Option<DateTime<Utc>>,
    /// The end of the period: the one asked for, or the moment of the request if earlier.
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_before: DateTime<Utc>,
    /// Why it failed, when it has.
    pub error: Option<String>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "orderly_kit::timestamp::serialize_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<DateTime<Utc>>,
    /// After this it is deleted (`ORDERLY_REPORT_TTL` after it finished).
    #[serde(serialize_with = "orderly_kit::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

fn report_body(report: &Report) -> ReportBody {
    let progress = match (report.status, report.total_rows) {
        (ReportStatus::Succeeded, _) => 100,
        (_, Some(total)) if total > 0 => (report.row_count * 100 / total).min(99),
        _ => 0,
    };
    ReportBody {
        id: report.id,
        kind: report.kind,
        status: report.status,
        progress,
        row_count: report.row_count,
        download_url: (report.status == ReportStatus::Succeeded)
            .then(|| format!("/api/v1/reports/{}/download", report.id)),
        user_id: report.scope_user_id,
        created_after: report.created_after,
        created_before: report.created_before,
        error: report.error.clone(),
        created_at: report.created_at,
        finished_at: report.finished_at,
        expires_at: report.expires_at,
    }
}

/// Seconds a client should wait before looking at a report again.
const POLL_AFTER: &str = "1";

/// Ask for a report. A customer's covers their own orders; an admin's, everyone's. Answered at
/// once with 202 and the report's `Location`: poll it (`Retry-After`) until it has succeeded.
#[utoipa::path(
    post, path = "/reports", tag = "reports", request_body = ReportRequest, security(("bearer" = [])),
    responses(
        (status = 202, body = ReportBody, description = "Accepted: the report is generated in the background", headers(("Location" = String), ("Retry-After" = u64, description = "Seconds before polling"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
    )
)]
async fn request_report(
    State(reports): State<Reports>,
    principal: Principal,
    Body(ReportRequest { kind, created_after, created_before }): Body<ReportRequest>,
) -> ApiResult {
    let request = Request {
        user_id: principal.user_id,
        kind,
        scope_user_id: principal.owner_scope(),
        created_after,
        created_before,
    };
    let report = export::request(&reports.db, &reports.jobs, reports.report_ttl, request).await?;
    let mut response = (StatusCode::ACCEPTED, Json(report_body(&report))).into_response();
    let headers = response.headers_mut();
    let location = format!("/api/v1/reports/{}", report.id);
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).expect("an id is a valid header"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(POLL_AFTER));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Get a report (the caller's own; any for an admin): its status and progress.
#[utoipa::path(
    get, path = "/reports/{id}", tag = "reports", params(("id" = Uuid, Path), FieldsQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = ReportBody, description = "The report", headers(("ETag" = String), ("Last-Modified" = String))),
        (status = 304, description = "Not modified"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed),
    )
)]
async fn get_report(
    State(reports): State<Reports>,
    principal: Principal,
    Id(id): Id,
    headers: HeaderMap,
    Params(FieldsQuery { fields }): Params<FieldsQuery>,
) -> ApiResult {
    let viewer = principal.owner_scope();
    let report = reports
        .db
        .current()
        .run(async move |conn| store::find_report(conn, id, viewer).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    let value = select(fields.as_ref(), serde_json::to_value(report_body(&report)).expect("representations serialize"));
    let mut response = conditional_response(&headers, &value, report.updated_at, CacheControl::Private);
    if matches!(report.status, ReportStatus::Queued | ReportStatus::Running) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(POLL_AFTER));
    }
    Ok(response)
}

/// Download a report's CSV (RFC 4180, a header row, money in minor units), streamed from the
/// database. 409 `report_not_ready` (with `Retry-After`) until it has succeeded; 409
/// `report_failed` when it failed.
#[utoipa::path(
    get, path = "/reports/{id}/download", tag = "reports", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses(
        (status = 200, description = "The CSV", content_type = "text/csv", body = String, headers(("Content-Disposition" = String))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "`report_not_ready` (with `Retry-After`) or `report_failed`", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait, for `report_not_ready`"))),
    )
)]
async fn download_report(State(reports): State<Reports>, principal: Principal, Id(id): Id) -> ApiResult {
    let viewer = principal.owner_scope();
    let report = reports
        .db
        .current()
        .run(async move |conn| store::find_report(conn, id, viewer).await)
        .await?
        .ok_or_else(Problem::not_found)?;
    match report.status {
        ReportStatus::Succeeded => {}
        ReportStatus::Failed => {
            return Err(Problem::conflict(Code::ReportFailed, "the report failed; ask for a new one").into());
        }
        ReportStatus::Queued | ReportStatus::Running => {
            let problem = Problem::conflict(Code::ReportNotReady, "the report is not ready yet")
                .with_header(header::RETRY_AFTER, HeaderValue::from_static(POLL_AFTER));
            return Err(problem.into());
        }
    }
    // One chunk in memory at a time, read when the client is ready for it.
    let db = reports.db.clone();
    let chunks = futures_util::stream::unfold(0_i64, move |seq| {
        let db = db.clone();
        async move {
            if seq >= report.chunk_count {
                return None;
            }
            let chunk = db.current().run(async move |conn| store::chunk(conn, id, seq).await).await;
            let chunk = match chunk {
                Ok(Some(data)) => Ok(bytes::Bytes::from(data)),
                Ok(None) => Err(std::io::Error::other(format!("report {id} lacks chunk {seq}"))),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            Some((chunk, seq + 1))
        }
    });
    let mut response = axum::body::Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8; header=present"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(report.byte_count));
    let disposition = format!("attachment; filename=\"orders-{id}.csv\"");
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("an id is a valid header"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}

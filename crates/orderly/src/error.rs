//! The one application error type and its mapping to problem responses.
//!
//! Expected failures are [`Problem`]s: services answer with domain errors (`AccountError`,
//! `CatalogError`, …) that their routes turn into problems, and extractors and handlers build
//! theirs where they decide. Everything else (database faults, broken invariants) becomes an
//! opaque 500 whose cause is logged here and never sent; a database that is out of connections
//! or unreachable is a 503 with `Retry-After`, not a hang and not a 500.

use axum::response::{IntoResponse, Response};
use orderly_kit::{Problem, problem_codes};

use crate::db::DbError;

problem_codes! {
    /// The problem codes of Orderly's own rules (the HTTP mechanics' codes are
    /// [`orderly_kit::problem::Code`]).
    pub enum Code {
        /// Missing, malformed, expired or revoked credentials; carries `WWW-Authenticate: Bearer`.
        Unauthorized = "unauthorized",
        /// The caller's role may not use this operation.
        Forbidden = "forbidden",
        /// An account with this email already exists.
        EmailTaken = "email_taken",
        /// A product with this SKU already exists.
        SkuTaken = "sku_taken",
        /// Not enough stock for a product of the order; the detail names it.
        InsufficientStock = "insufficient_stock",
        /// The order or payment is not in a state that allows this.
        InvalidState = "invalid_state",
        /// A payment of this order is being processed; retry after `Retry-After` seconds.
        PaymentInProgress = "payment_in_progress",
        /// The payment method was declined.
        CardDeclined = "card_declined",
        /// The payment provider did not answer in time; retrying with the same `Idempotency-Key` is safe.
        PaymentProviderUnavailable = "payment_provider_unavailable",
        /// The database is busy or unreachable; retry after `Retry-After` seconds.
        DatabaseUnavailable = "database_unavailable",
        /// A grant outside the token endpoint was refused.
        InvalidGrant = "invalid_grant",
        /// The report is still being generated; retry after `Retry-After` seconds.
        ReportNotReady = "report_not_ready",
        /// The report failed; ask for a new one.
        ReportFailed = "report_failed",
        /// The webhook URL is not https, carries credentials, or resolves to an address webhooks may not reach.
        UnsafeUrl = "unsafe_url",
    }
}

pub type ApiResult<T = Response> = Result<T, AppError>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Problem(#[from] Problem),
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Database(DbError::Unavailable { cause, detail }) => {
                metrics::counter!("orderly_db_unavailable_total", "cause" => cause).increment(1);
                tracing::warn!(error = %detail, cause, "database unavailable");
                Problem::unavailable(
                    Code::DatabaseUnavailable,
                    "The database is busy or unreachable; retry shortly.",
                    1,
                )
                .into_response()
            }
            Self::Database(error) => {
                tracing::error!(error = %error, "database error");
                Problem::internal().into_response()
            }
            Self::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                Problem::internal().into_response()
            }
        }
    }
}

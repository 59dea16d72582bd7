//! RFC 9457 problem details: the one error body every endpoint returns.
//!
//! A [`Problem`] carries a stable snake_case `code` that clients can branch on, a human
//! `detail`, and per-field `errors` for validation failures. It never carries internals: the
//! constructor for unexpected failures takes no detail at all.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::context::RequestContext;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A stable problem code. Every code the API can answer is a variant of an enum declared with
/// [`problem_codes!`](crate::problem_codes): the kit's own [`Code`], and one per application, so
/// the documented list of codes is complete by construction.
pub trait ProblemCode: Copy {
    fn as_str(self) -> &'static str;
}

/// Declares an enum of problem codes: each variant's doc comment is its documented meaning and
/// its string its wire name. The enum implements [`ProblemCode`], and `DOCUMENTED` lists every
/// `(code, meaning)`.
#[macro_export]
macro_rules! problem_codes {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[doc = $doc:literal])+ $variant:ident = $wire:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl $name {
            /// Every code with its meaning, for the API document.
            pub const DOCUMENTED: &'static [(&'static str, &'static str)] = &[$(($wire, concat!($($doc),+)),)+];
        }

        impl $crate::problem::ProblemCode for $name {
            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }
    };
}

problem_codes! {
    /// The problem codes of the HTTP mechanics in this crate.
    pub enum Code {
        /// The input breaks its schema or a rule; `errors` lists every offending field.
        ValidationFailed = "validation_failed",
        /// The body is not valid JSON.
        InvalidJson = "invalid_json",
        /// The body could not be read.
        InvalidBody = "invalid_body",
        /// The body is not of a media type the operation takes.
        UnsupportedMediaType = "unsupported_media_type",
        /// The body is larger than the server accepts.
        PayloadTooLarge = "payload_too_large",
        /// No such resource, or one the caller may not see.
        NotFound = "not_found",
        /// The method is not allowed on this path; see `Allow`.
        MethodNotAllowed = "method_not_allowed",
        /// The request took too long to arrive.
        RequestTimeout = "request_timeout",
        /// The request is malformed in a way no other code names.
        BadRequest = "bad_request",
        /// `If-Match` does not match the resource's current ETag.
        PreconditionFailed = "precondition_failed",
        /// An unexpected failure; the request id finds it in the logs.
        InternalError = "internal_error",
        /// Over the rate limit; retry after `Retry-After` seconds.
        RateLimited = "rate_limited",
        /// The instance is at capacity; retry after `Retry-After` seconds.
        Overloaded = "overloaded",
        /// The request did not complete within its deadline; retry after `Retry-After` seconds.
        DeadlineExceeded = "deadline_exceeded",
        /// The cursor is malformed, was not issued here, or belongs to other filters or sort.
        InvalidCursor = "invalid_cursor",
        /// `Idempotency-Key` is not 1–255 printable ASCII characters.
        InvalidIdempotencyKey = "invalid_idempotency_key",
        /// The operation requires an `Idempotency-Key`.
        IdempotencyKeyRequired = "idempotency_key_required",
        /// The `Idempotency-Key` was used before with another request body.
        IdempotencyKeyReused = "idempotency_key_reused",
        /// The first request with this `Idempotency-Key` still runs; retry after `Retry-After` seconds.
        IdempotencyRequestInProgress = "idempotency_request_in_progress",
        /// Idempotency keys cannot be checked right now; retry after `Retry-After` seconds.
        IdempotencyUnavailable = "idempotency_unavailable",
        /// The operation was deprecated and is past its sunset; its `Link` header says what replaces it.
        Gone = "gone",
    }
}

/// One offending input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where the problem is: a body field (`email`, `items[2].quantity`), a query parameter or a
    /// header.
    pub field: String,
    /// Stable snake_case reason, e.g. `required`, `too_long`, `unknown_field`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.to_owned(), message: message.into() }
    }
}

/// An error response in the RFC 9457 format. Boxed so `Result<T, Problem>` stays small.
#[derive(Debug, Clone)]
pub struct Problem(Box<Details>);

#[derive(Debug, Clone)]
struct Details {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    headers: HeaderMap,
}

/// The serialized form; `type`, `title`, `instance` and `request_id` are derived.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// URI reference identifying the problem type: `/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type (the status reason phrase).
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// The request path this occurrence concerns.
    pub instance: String,
    /// Stable snake_case error code.
    pub code: String,
    /// The request id, also sent as `X-Request-ID`.
    pub request_id: String,
    /// Every offending field, on validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: StatusCode, code: impl ProblemCode, detail: impl Into<String>) -> Self {
        Self(Box::new(Details {
            status,
            code: code.as_str(),
            detail: detail.into(),
            errors: Vec::new(),
            headers: HeaderMap::new(),
        }))
    }

    /// 422 `validation_failed` listing every offending field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("`{}`: {}", errors[0].field, errors[0].message),
            n => format!("{n} fields are invalid; see `errors`"),
        };
        let mut problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY, Code::ValidationFailed, detail);
        problem.0.errors = errors;
        problem
    }

    pub fn bad_request(code: impl ProblemCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, "The requested resource does not exist.")
    }

    pub fn conflict(code: impl ProblemCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            Code::PreconditionFailed,
            "The resource has changed: its current ETag does not match `If-Match`.",
        )
    }

    /// 500 with no detail: the cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::InternalError, "An unexpected error occurred.")
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: impl ProblemCode, detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            .with_header(header::RETRY_AFTER, retry_after_secs.into())
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.0.errors
    }

    pub fn body(&self) -> ProblemBody {
        let context = RequestContext::current();
        let problem = &self.0;
        ProblemBody {
            problem_type: format!("/problems/{}", problem.code),
            title: problem.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: problem.status.as_u16(),
            detail: problem.detail.clone(),
            instance: context.as_ref().map(|c| c.path.clone()).unwrap_or_default(),
            code: problem.code.to_owned(),
            request_id: context.map(|c| c.request_id.clone()).unwrap_or_default(),
            errors: problem.errors.clone(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("a problem body always serializes");
        let mut response = (self.0.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.extend(self.0.headers);
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.0.status.as_u16(), self.0.code, self.0.detail)
    }
}

impl std::error::Error for Problem {}

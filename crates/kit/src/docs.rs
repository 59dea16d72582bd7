//! OpenAPI building blocks for the conventions in this crate: the problem schema, the shared
//! error responses and the parameters every list or read takes.

use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, response::Response};
use utoipa::{ToResponse, ToSchema};

use crate::problem::ProblemBody;

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            crate::problem::PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(ProblemBody::name()))))
                .build(),
        )
        .build()
}

macro_rules! problem_response {
    ($name:ident, $description:literal) => {
        #[doc = $description]
        pub struct $name;

        impl<'a> ToResponse<'a> for $name {
            fn response() -> (&'a str, RefOr<Response>) {
                (stringify!($name), RefOr::T(problem($description)))
            }
        }
    };
}

problem_response!(BadRequest, "Malformed request: `invalid_json`, `invalid_cursor`, or a malformed header.");
problem_response!(Unauthorized, "Missing or invalid credentials (`unauthorized`); carries `WWW-Authenticate: Bearer`.");
problem_response!(Forbidden, "The caller's role may not use this endpoint (`forbidden`).");
problem_response!(NotFound, "No such resource, or one the caller may not see (`not_found`).");
problem_response!(Conflict, "The request conflicts with the current state (for example `email_taken`, `sku_taken`).");
problem_response!(PreconditionFailed, "`If-Match` does not match the current ETag (`precondition_failed`).");
problem_response!(PayloadTooLarge, "The body is over the size limit (`payload_too_large`).");
problem_response!(UnsupportedMediaType, "The body is not `application/json` (`unsupported_media_type`).");
problem_response!(
    ValidationFailed,
    "The input breaks a rule (`validation_failed`); `errors` lists every offending field, including unknown ones."
);
problem_response!(
    ServiceUnavailable,
    "Overloaded, past the request deadline, or a dependency is down; carries `Retry-After`."
);

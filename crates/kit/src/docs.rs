//! OpenAPI building blocks for the conventions in this crate: the problem schema, the shared
//! error responses and the parameters every list or read takes.

use serde_json::Value;
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

problem_response!(
    BadRequest,
    "Malformed request: `invalid_json`, `invalid_body`, `invalid_cursor`, `invalid_idempotency_key`, `idempotency_key_required` or `bad_request`."
);
problem_response!(Unauthorized, "Missing or invalid credentials (`unauthorized`); carries `WWW-Authenticate: Bearer`.");
problem_response!(Forbidden, "The caller's role may not use this endpoint (`forbidden`).");
problem_response!(NotFound, "No such resource, or one the caller may not see (`not_found`).");
problem_response!(
    Conflict,
    "`idempotency_request_in_progress` (with `Retry-After`): the first request with this `Idempotency-Key` still runs."
);
problem_response!(PaymentRequired, "The payment method was declined (`card_declined`).");
problem_response!(PreconditionFailed, "`If-Match` does not match the current ETag (`precondition_failed`).");
problem_response!(PayloadTooLarge, "The body is over the size limit (`payload_too_large`).");
problem_response!(UnsupportedMediaType, "The body is not `application/json` (`unsupported_media_type`).");
problem_response!(
    ValidationFailed,
    "The input breaks its schema or a rule (`validation_failed`; `errors` lists every offending field, including unknown ones), or an `Idempotency-Key` was reused with another body (`idempotency_key_reused`)."
);
problem_response!(
    ServiceUnavailable,
    "`overloaded`, `deadline_exceeded`, or a dependency is down (`database_unavailable`, `idempotency_unavailable`, `payment_provider_unavailable`); carries `Retry-After`."
);
problem_response!(
    TooManyRequests,
    "Over the rate limit (`rate_limited`); carries `Retry-After` and the `RateLimit` headers."
);
problem_response!(InternalError, "An unexpected failure (`internal_error`); the request id finds it in the logs.");

/// Makes a generated OpenAPI document say exactly what the API accepts:
///
/// - JSON-only request bodies forbid unknown properties and `null` values (both are 422);
/// - query and header parameters are never `null`;
/// - every `fields` query parameter is a comma-separated list (`style: form`, `explode: false`)
///   of the property names of the operation's 200 response (of its items, for lists), so the
///   documented choices cannot drift from the representation; and that response may then be
///   any subset of the object (a `…Selection` schema with nothing required).
pub fn tighten(openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = serde_json::to_value(&openapi).expect("an OpenAPI document serializes");
    let schemas = document["components"]["schemas"].clone();
    let mut strict_bodies = Vec::new();
    let mut selections = Vec::new();
    if let Some(paths) = document["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
            if let Some(content) = operation["requestBody"]["content"].as_object()
                && content.len() == 1
                && let Some(name) = content.get("application/json").and_then(|c| schema_name(&c["schema"]))
            {
                strict_bodies.push(name.to_owned());
            }
            let properties = response_properties(operation, &schemas);
            let selectable = !properties.is_empty()
                && operation["parameters"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "fields"));
            if selectable {
                let response = &mut operation["responses"]["200"]["content"]["application/json"]["schema"];
                if let Some(name) = schema_name(response).map(str::to_owned) {
                    *response = serde_json::json!({"anyOf": [
                        {"$ref": format!("#/components/schemas/{name}")},
                        {"$ref": format!("#/components/schemas/{name}Selection")},
                    ]});
                    selections.push(name);
                }
            }
            if let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
                for parameter in parameters {
                    strip_null(&mut parameter["schema"]);
                    if parameter["name"] == "fields" && parameter["in"] == "query" && !properties.is_empty() {
                        parameter["style"] = "form".into();
                        parameter["explode"] = false.into();
                        parameter["schema"] = serde_json::json!({
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "enum": properties},
                        });
                    }
                }
            }
        }
    }
    // A strict body's nested objects are as strict as the body.
    let mut closed = Vec::new();
    while let Some(name) = strict_bodies.pop() {
        if closed.contains(&name) {
            continue;
        }
        let schema = document["components"]["schemas"].get_mut(&name);
        if let Some(object) = schema.and_then(Value::as_object_mut).filter(|o| o.contains_key("properties")) {
            object.insert("additionalProperties".into(), false.into());
            if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
                properties.values_mut().for_each(strip_null);
                for property in properties.values() {
                    let nested = schema_name(property).or_else(|| schema_name(&property["items"]));
                    strict_bodies.extend(nested.map(str::to_owned));
                }
            }
        }
        closed.push(name);
    }
    for name in selections {
        let selection = selection_schema(&document["components"]["schemas"], &name);
        document["components"]["schemas"][format!("{name}Selection")] = selection;
    }
    serde_json::from_value(document).expect("a tightened OpenAPI document deserializes")
}

/// `name` with no property required (and, for a list envelope, its items likewise), as a
/// response under `fields=` may hold any subset of the fields.
fn selection_schema(schemas: &Value, name: &str) -> Value {
    let mut schema = schemas[name].clone();
    let items = schema.pointer_mut("/properties/data/items");
    match items {
        Some(items) if schema_name(items).is_some() => {
            let item = schema_name(items).expect("a reference").to_owned();
            *items = selection_schema(schemas, &item);
        }
        Some(items) if items.get("properties").is_some() => optional_properties(items),
        _ => optional_properties(&mut schema),
    }
    schema
}

/// Makes every property of an object schema optional, saying so in its description.
fn optional_properties(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        object.remove("required");
        let description = object.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
        object.insert("description".into(), format!("{description} (the fields chosen with `fields=`)").trim().into());
    }
}

fn schema_name(schema: &Value) -> Option<&str> {
    schema["$ref"].as_str()?.strip_prefix("#/components/schemas/")
}

/// Property names of the 200 response body, or of its `data` items for a list envelope.
fn response_properties(operation: &Value, schemas: &Value) -> Vec<Value> {
    let Some(name) = schema_name(&operation["responses"]["200"]["content"]["application/json"]["schema"]) else {
        return Vec::new();
    };
    let mut schema = &schemas[name];
    let items = &schema["properties"]["data"]["items"];
    if let Some(item) = schema_name(items) {
        schema = &schemas[item];
    } else if items.get("properties").is_some() {
        schema = items;
    }
    schema["properties"].as_object().map(|p| p.keys().map(|k| Value::String(k.clone())).collect()).unwrap_or_default()
}

/// `{"type": ["string", "null"]}` → `{"type": "string"}`; `oneOf: [{"type": "null"}, X]` → `X`.
fn strip_null(schema: &mut Value) {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    if let Some(alternatives) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        alternatives.retain(|a| a["type"] != "null");
        if alternatives.len() == 1 {
            let only = alternatives[0].clone();
            let description = schema.get("description").cloned();
            *schema = only;
            if let (Some(description), Some(object)) = (description, schema.as_object_mut()) {
                object.entry("description").or_insert(description);
            }
        }
    }
}

/// Documents the `Idempotency-Key` header on every POST except those under `exempt` paths,
/// with the responses it can cause (409 while the first request runs, 422 when reused with
/// another body).
pub fn document_idempotency(
    openapi: utoipa::openapi::OpenApi,
    exempt: &[&str],
    required: &[&str],
) -> utoipa::openapi::OpenApi {
    let mut document = serde_json::to_value(&openapi).expect("an OpenAPI document serializes");
    if let Some(paths) = document["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut().filter(|(path, _)| !exempt.contains(&path.as_str())) {
            let Some(operation) = item.get_mut("post") else { continue };
            let header = serde_json::json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": required.contains(&path.as_str()),
                "description": "Makes the request safe to retry: 1–255 printable ASCII characters, scoped to the caller, \
                    method and path. The first request runs and its response is kept; a retry with the same key and body \
                    replays it with `Idempotent-Replayed: true`; the same key with another body is 422 \
                    `idempotency_key_reused`; while the first still runs, 409 `idempotency_request_in_progress`.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"},
            });
            match operation.get_mut("parameters").and_then(Value::as_array_mut) {
                Some(parameters) => parameters.push(header),
                None => operation["parameters"] = Value::Array(vec![header]),
            }
            let responses = &mut operation["responses"];
            let replayed = serde_json::json!({
                "description": "`true` when this is the kept response of an earlier request with the same key.",
                "schema": {"type": "string", "enum": ["true"]},
            });
            // Any kept answer may be replayed: successes, and refusals that are final (402, 409).
            for response in responses.as_object_mut().into_iter().flat_map(|r| r.values_mut()) {
                if response.get("$ref").is_none() {
                    response["headers"]["Idempotent-Replayed"] = replayed.clone();
                }
            }
            for (status, response) in [("409", "Conflict"), ("422", "ValidationFailed"), ("400", "BadRequest")] {
                if responses.get(status).is_none() {
                    responses[status] = serde_json::json!({"$ref": format!("#/components/responses/{response}")});
                }
            }
        }
    }
    document["components"]["responses"]["PaymentRequired"]["headers"]["Idempotent-Replayed"] = serde_json::json!({"description": "`true` when this is a kept answer replayed.", "schema": {"type": "string", "enum": ["true"]}});
    serde_json::from_value(document).expect("a documented OpenAPI document deserializes")
}

/// How the HTTP mechanics answer any operation, for [`document_conventions`].
pub struct Conventions<'a> {
    /// Every problem code with its meaning.
    pub codes: &'a [&'a [(&'a str, &'a str)]],
    /// Paths under this prefix are rate-limited.
    pub rate_limited: &'a str,
    /// Paths never shed under load.
    pub never_shed: &'a [&'a str],
}

/// Documents what every operation can answer besides its own outcomes, so each lists every
/// status and header it can send: the problem codes as one enum, `X-Request-ID` on every
/// response, the `RateLimit` headers and 429 on rate-limited operations, 503 with `Retry-After`
/// on those that may be shed, time out or lose a dependency, 500 everywhere, and the input
/// failures (400, 413, 415, 422) of operations that take input.
pub fn document_conventions(openapi: utoipa::openapi::OpenApi, conventions: &Conventions) -> utoipa::openapi::OpenApi {
    let mut document = serde_json::to_value(&openapi).expect("an OpenAPI document serializes");
    let codes: Vec<&(&str, &str)> = conventions.codes.iter().flat_map(|codes| codes.iter()).collect();
    let table: String = codes.iter().map(|(code, meaning)| format!("\n- `{code}`: {}", meaning.trim())).collect();
    document["components"]["schemas"]["Problem"]["properties"]["code"] = serde_json::json!({
        "type": "string",
        "enum": codes.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        "description": format!("Stable snake_case error code:{table}"),
    });
    let request_id = header("The request id: the caller's `X-Request-ID` when well-formed, else a generated one.");
    let rate_limit = header("This request's standing under its rate limits: `\"<policy>\";r=<remaining>;t=<seconds>`.");
    let rate_limit_policy = header("The rate limits that apply: `\"<policy>\";q=<quota>;w=<window seconds>`.");
    let retry_after = serde_json::json!({"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}});
    let cache_control = header("How caches may keep the response: `no-store` unless the operation says otherwise.");
    let vary = header("The request headers the response depends on (`Accept-Encoding`, `Authorization`).");
    let responses = &mut document["components"]["responses"];
    for name in ["TooManyRequests", "ServiceUnavailable", "Conflict"] {
        responses[name]["headers"]["Retry-After"] = retry_after.clone();
    }
    responses["Unauthorized"]["headers"]["WWW-Authenticate"] =
        header("`Bearer`, with `error=\"invalid_token\"` when a token was sent but is not valid.");
    if let Some(responses) = responses.as_object_mut() {
        for response in responses.values_mut() {
            response["headers"]["X-Request-ID"] = request_id.clone();
            response["headers"]["Cache-Control"] = cache_control.clone();
            response["headers"]["RateLimit"] = rate_limit.clone();
            response["headers"]["RateLimit-Policy"] = rate_limit_policy.clone();
        }
    }
    let reference = |name: &str| serde_json::json!({"$ref": format!("#/components/responses/{name}")});
    for (path, item) in document["paths"].as_object_mut().into_iter().flatten() {
        let rate_limited = path.starts_with(conventions.rate_limited);
        let shed = !conventions.never_shed.contains(&path.as_str());
        for operation in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            let takes_query = operation["parameters"].as_array().is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            let takes_body = operation.get("requestBody").is_some();
            // Bodies of other media types (OAuth's token endpoint) answer in their own terms.
            let content = operation["requestBody"]["content"].as_object();
            let takes_checked_body = content.is_some_and(|c| c.len() == 1 && c.contains_key("application/json"));
            let secured = operation.get("security").is_some();
            let responses = &mut operation["responses"];
            let mut add = |status: &str, name: &str| {
                if responses.get(status).is_none() {
                    responses[status] = reference(name);
                }
            };
            if takes_body {
                add("400", "BadRequest");
                add("413", "PayloadTooLarge");
                add("415", "UnsupportedMediaType");
            }
            if takes_checked_body || takes_query {
                add("422", "ValidationFailed");
            }
            if secured {
                add("401", "Unauthorized");
            }
            if path.contains('{') {
                add("404", "NotFound");
            }
            if rate_limited {
                add("429", "TooManyRequests");
            }
            if shed {
                add("503", "ServiceUnavailable");
            }
            add("500", "InternalError");
            for response in responses.as_object_mut().into_iter().flat_map(|r| r.values_mut()) {
                if response.get("$ref").is_some() {
                    continue;
                }
                response["headers"]["X-Request-ID"] = request_id.clone();
                let headers = response["headers"].as_object_mut().expect("headers are an object");
                headers.entry("Cache-Control").or_insert_with(|| cache_control.clone());
                headers.entry("Vary").or_insert_with(|| vary.clone());
                if rate_limited {
                    response["headers"]["RateLimit"] = rate_limit.clone();
                    response["headers"]["RateLimit-Policy"] = rate_limit_policy.clone();
                }
            }
        }
    }
    serde_json::from_value(document).expect("a documented OpenAPI document deserializes")
}

fn header(description: &str) -> Value {
    serde_json::json!({"description": description, "schema": {"type": "string"}})
}

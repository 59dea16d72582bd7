//! OpenAPI schemas for request fields whose rules go beyond a type, written once so the
//! documented patterns match what the parsers in `domain` modules accept.

use utoipa::openapi::schema::Type;
use utoipa::openapi::{Object, ObjectBuilder};

/// Trimmed text: at least one visible character, no control characters but newline and tab.
const TEXT: &str = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$";
/// As [`TEXT`], but may be empty.
const OPTIONAL_TEXT: &str = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$";
/// An email address as `accounts::domain::Email` accepts it (it also trims and lower-cases).
const EMAIL: &str = r#"^[^@\s\u0000-\u001f\u007f-\u009f<>()\[\]\\,;:"]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"#;

fn text(min: usize, max: usize, pattern: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .build()
}

/// Names of people and API keys: 1–100 characters.
pub fn name_100() -> Object {
    text(1, 100, TEXT)
}

/// Product names and other labels: 1–200 characters.
pub fn name_200() -> Object {
    text(1, 200, TEXT)
}

/// Free text: up to 2000 characters, may be empty.
pub fn description() -> Object {
    text(0, 2000, OPTIONAL_TEXT)
}

/// Opaque tokens sent back to the server.
pub fn token() -> Object {
    text(1, 512, TEXT)
}

pub fn email() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        // Internationalised local parts are accepted (RFC 6531).
        .format(Some(utoipa::openapi::SchemaFormat::Custom("idn-email".into())))
        .max_length(Some(254))
        .pattern(Some(EMAIL))
        .examples(["ada@example.com"])
        .build()
}

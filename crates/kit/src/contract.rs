//! Requests checked against the published OpenAPI document before a handler sees them.
//!
//! The document is generated from the very types handlers receive (`ToSchema`/`IntoParams`
//! beside `Deserialize`), so each request shape is declared once. [`Contract`] compiles the
//! document's request bodies and query parameters into checkers; the [`Body`] and [`Params`]
//! extractors, given the contract by the router's state, run them against the operation the
//! router matched. Every offending field is reported in one 422 (unknown fields and parameters
//! included) and only input the document allows reaches `serde`, so the published contract and
//! the server cannot disagree.
//!
//! The checker understands the JSON Schema the document uses (types, `enum`, lengths, ranges,
//! patterns, `uuid`/`date-time` formats, arrays, closed objects, `$ref`, `anyOf`/`oneOf`);
//! building a [`Contract`] from a document that uses anything else panics, so a schema the
//! server would not enforce cannot be published.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequest, FromRequestParts, MatchedPath, Request};
use http::{Method, request::Parts};
use regex::Regex;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::extract::{BodyKind, parse_json, read_body, unsupported_media_type};
use crate::problem::{FieldError, Problem};

/// What a pattern means, for the error message of a value that does not match it.
#[derive(Debug, Clone, Copy)]
pub struct PatternMeaning {
    pub pattern: &'static str,
    pub code: &'static str,
    pub message: &'static str,
}

/// The request rules of every operation of a document, by method and path template.
#[derive(Debug, Default)]
pub struct Contract {
    operations: HashMap<Box<str>, Vec<(Method, Operation)>>,
}

#[derive(Debug, Default)]
struct Operation {
    /// The JSON body's schema, when the operation takes `application/json` only.
    body: Option<Schema>,
    query: Vec<Parameter>,
}

#[derive(Debug)]
struct Parameter {
    name: String,
    required: bool,
    schema: Schema,
}

impl Contract {
    /// Compiles the request rules of `document`. Patterns listed in `meanings` are reported
    /// with their code and message; any other mismatch is `invalid_format`.
    ///
    /// # Panics
    /// When the document uses a schema keyword the checker does not enforce.
    pub fn new(document: &utoipa::openapi::OpenApi, meanings: &[PatternMeaning]) -> Self {
        let document = serde_json::to_value(document).expect("an OpenAPI document serializes");
        let compiler = Compiler { components: &document["components"]["schemas"], meanings };
        let mut operations: HashMap<Box<str>, Vec<(Method, Operation)>> = HashMap::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else { continue };
                let content = &operation["requestBody"]["content"];
                let body = match content.as_object() {
                    Some(content) if content.len() == 1 => {
                        content.get("application/json").map(|json| compiler.compile(&json["schema"], 0))
                    }
                    _ => None,
                };
                let query = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|parameter| parameter["in"] == "query")
                    .map(|parameter| Parameter {
                        name: parameter["name"].as_str().expect("a parameter has a name").to_owned(),
                        required: parameter["required"] == true,
                        schema: compiler.compile(&parameter["schema"], 0),
                    })
                    .collect();
                operations.entry(path.as_str().into()).or_default().push((method, Operation { body, query }));
            }
        }
        Self { operations }
    }

    fn operation(&self, method: &Method, path: Option<&MatchedPath>) -> Option<&Operation> {
        let operations = self.operations.get(path?.as_str())?;
        operations.iter().find(|(m, _)| m == method).map(|(_, operation)| operation)
    }

    /// Checks a JSON body against the operation's schema, normalising what it accepts
    /// (`34.0` where an integer is expected becomes `34`).
    fn check_body(&self, method: &Method, path: Option<&MatchedPath>, body: &mut Value) -> Result<(), Problem> {
        let schema = self
            .operation(method, path)
            .and_then(|operation| operation.body.as_ref())
            .ok_or_else(|| undocumented(method, path, "body"))?;
        let mut errors = Vec::new();
        if !body.is_object() {
            errors.push(FieldError::new("body", "invalid_type", "must be a JSON object"));
        } else {
            schema.check(body, &Location::Root, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(Problem::validation(errors)) }
    }

    /// Reads the query string into an object of typed values (as the parameters' schemas say:
    /// integers, booleans, comma-separated arrays) and checks it.
    fn check_query(&self, method: &Method, path: Option<&MatchedPath>, query: Option<&str>) -> Result<Value, Problem> {
        let operation = self.operation(method, path).ok_or_else(|| undocumented(method, path, "query"))?;
        let mut values = Map::new();
        let mut errors = Vec::new();
        for (name, raw) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let Some(parameter) = operation.query.iter().find(|p| p.name == name) else {
                errors.push(FieldError::new(name.as_ref(), "unknown_parameter", "is not a recognised parameter"));
                continue;
            };
            if values.contains_key(name.as_ref()) {
                errors.push(FieldError::new(name.as_ref(), "duplicate_parameter", "must be given at most once"));
                continue;
            }
            let mut value = parameter.schema.read_text(&raw);
            parameter.schema.check(&mut value, &Location::Field(&name), &mut errors);
            values.insert(name.into_owned(), value);
        }
        for parameter in operation.query.iter().filter(|p| p.required && !values.contains_key(&p.name)) {
            errors.push(FieldError::new(&parameter.name, "required", "is required"));
        }
        if errors.is_empty() { Ok(Value::Object(values)) } else { Err(Problem::validation(errors)) }
    }
}

fn undocumented(method: &Method, path: Option<&MatchedPath>, part: &str) -> Problem {
    let path = path.map_or("an unmatched path", MatchedPath::as_str);
    tracing::error!(%method, path, part, "a handler reads input its operation does not document");
    Problem::internal()
}

/// A failure to deserialize input the contract accepted: the type and its schema disagree. It
/// is still the client's input, so it is a 422 naming the whole input.
fn undeserializable(part: &str, error: serde_json::Error) -> Problem {
    Problem::validation(vec![FieldError::new(part, "invalid_value", error.to_string())])
}

/// A JSON request body of type `T`, checked against the operation's documented schema first.
///
/// Rejects a non-JSON content type (415), unreadable or oversized bodies (400/413), malformed
/// JSON (400 `invalid_json`) and anything the schema does not allow (422, every field).
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    Arc<Contract>: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if BodyKind::of(request.headers()) != Some(BodyKind::Json) {
            return Err(unsupported_media_type("application/json"));
        }
        let contract = Arc::<Contract>::from_ref(state);
        let method = request.method().clone();
        let path = request.extensions().get::<MatchedPath>().cloned();
        let mut body = parse_json(&read_body(request).await?)?;
        contract.check_body(&method, path.as_ref(), &mut body)?;
        serde_json::from_value(body).map(Self).map_err(|e| undeserializable("body", e))
    }
}

/// The query parameters as `T`, checked against the operation's documented parameters first:
/// unknown, repeated and invalid parameters are one 422 listing each.
///
/// Several `Params` of one request share one check.
pub struct Params<T>(pub T);

/// The checked query of a request, kept for the next [`Params`] of the same request.
#[derive(Clone)]
struct CheckedQuery(Arc<Value>);

impl<S, T> FromRequestParts<S> for Params<T>
where
    S: Send + Sync,
    Arc<Contract>: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let checked = match parts.extensions.get::<CheckedQuery>() {
            Some(checked) => checked.clone(),
            None => {
                let contract = Arc::<Contract>::from_ref(state);
                let path = parts.extensions.get::<MatchedPath>();
                let checked = CheckedQuery(Arc::new(contract.check_query(&parts.method, path, parts.uri.query())?));
                parts.extensions.insert(checked.clone());
                checked
            }
        };
        T::deserialize(checked.0.as_ref()).map(Self).map_err(|e| undeserializable("query", e))
    }
}

/// Where a value sits in its input, rendered only when an error names it.
enum Location<'a> {
    Root,
    Field(&'a str),
    Property(&'a Location<'a>, &'a str),
    Index(&'a Location<'a>, usize),
}

impl Location<'_> {
    fn render(&self) -> String {
        match self {
            Self::Root => "body".to_owned(),
            Self::Field(name) => (*name).to_owned(),
            Self::Property(Self::Root, name) => (*name).to_owned(),
            Self::Property(parent, name) => format!("{}.{name}", parent.render()),
            Self::Index(parent, index) => format!("{}[{index}]", parent.render()),
        }
    }
}

/// JSON types a schema allows, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const NULL: u8 = 1;
    const BOOLEAN: u8 = 2;
    const INTEGER: u8 = 4;
    const NUMBER: u8 = 8;
    const STRING: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;
    const ANY: Types = Types(127);

    fn named(name: &str) -> u8 {
        match name {
            "null" => Self::NULL,
            "boolean" => Self::BOOLEAN,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER | Self::INTEGER,
            "string" => Self::STRING,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            other => panic!("unknown JSON type `{other}` in the OpenAPI document"),
        }
    }

    fn allows(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// "must be a string", "must be an integer or null", …
    fn expectation(self) -> String {
        let names: Vec<&str> = [
            (Self::BOOLEAN, "a boolean"),
            (Self::INTEGER, "an integer"),
            (Self::NUMBER, "a number"),
            (Self::STRING, "a string"),
            (Self::ARRAY, "an array"),
            (Self::OBJECT, "an object"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.allows(*bit) && !(*bit == Self::INTEGER && self.allows(Self::NUMBER)))
        .map(|(_, name)| name)
        .collect();
        format!("must be {}", names.join(" or "))
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Uuid,
    DateTime,
}

#[derive(Debug)]
struct Pattern {
    regex: Regex,
    code: &'static str,
    message: String,
}

/// One compiled schema: only the rules the document states are set.
#[derive(Debug)]
struct Schema {
    types: Types,
    enumeration: Option<Vec<Value>>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<Pattern>,
    format: Option<Format>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    items: Option<Box<Schema>>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    unique_items: bool,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    closed: bool,
    alternatives: Vec<Schema>,
}

impl Schema {
    fn any() -> Self {
        Self {
            types: Types::ANY,
            enumeration: None,
            min_length: None,
            max_length: None,
            pattern: None,
            format: None,
            minimum: None,
            maximum: None,
            items: None,
            min_items: None,
            max_items: None,
            unique_items: false,
            properties: Vec::new(),
            required: Vec::new(),
            closed: false,
            alternatives: Vec::new(),
        }
    }

    /// A query parameter's text as the JSON value it stands for; text that is not of the
    /// parameter's type stays a string, for [`Schema::check`] to report.
    fn read_text(&self, raw: &str) -> Value {
        let types = self.types;
        if types.allows(Types::INTEGER)
            && let Ok(n) = raw.parse::<i64>()
        {
            return Value::from(n);
        }
        if types.allows(Types::NUMBER)
            && let Some(n) = raw.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
        if types.allows(Types::BOOLEAN) && matches!(raw, "true" | "false") {
            return Value::Bool(raw == "true");
        }
        if types.allows(Types::ARRAY) && !types.allows(Types::STRING) {
            let items = self.items.as_deref();
            return Value::Array(raw.split(',').map(|item| items.map_or(item.into(), |s| s.read_text(item))).collect());
        }
        Value::String(raw.to_owned())
    }

    /// Appends an error for each rule `value` breaks; integral numbers where integers are
    /// expected are rewritten as integers.
    fn check(&self, value: &mut Value, at: &Location<'_>, errors: &mut Vec<FieldError>) {
        if !self.alternatives.is_empty() {
            return self.check_alternatives(value, at, errors);
        }
        let types = self.types;
        let fits = match value {
            Value::Null => types.allows(Types::NULL),
            Value::Bool(_) => types.allows(Types::BOOLEAN),
            Value::Number(n) if types.allows(Types::NUMBER) => n.as_f64().is_some(),
            Value::Number(n) if types.allows(Types::INTEGER) => match integral(n) {
                Some(integer) => {
                    *value = integer;
                    true
                }
                None => false,
            },
            Value::Number(_) => false,
            Value::String(_) => types.allows(Types::STRING),
            Value::Array(_) => types.allows(Types::ARRAY),
            Value::Object(_) => types.allows(Types::OBJECT),
        };
        let field = || at.render();
        if !fits {
            let (code, message) = if value.is_null() {
                ("null_not_allowed", "must not be null; omit the field instead".to_owned())
            } else {
                ("invalid_type", types.expectation())
            };
            return errors.push(FieldError::new(field(), code, message));
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.contains(value)
        {
            let message = if allowed.len() > 12 {
                format!("must be one of the {} values the schema lists", allowed.len())
            } else {
                let names: Vec<String> =
                    allowed.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_owned)).collect();
                format!("must be one of: {}", names.join(", "))
            };
            return errors.push(FieldError::new(field(), "invalid_value", message));
        }
        match value {
            Value::String(text) => {
                if let Some((code, message)) = self.string_error(text) {
                    errors.push(FieldError::new(field(), code, message));
                }
            }
            Value::Number(n) => {
                let n = n.as_f64().unwrap_or(f64::NAN);
                let below = self.minimum.is_some_and(|min| n < min);
                let above = self.maximum.is_some_and(|max| n > max);
                if below || above {
                    errors.push(FieldError::new(field(), "out_of_range", self.range()));
                }
            }
            Value::Array(items) => self.check_array(items, at, errors),
            Value::Object(object) => self.check_object(object, at, errors),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn string_error(&self, text: &str) -> Option<(&'static str, String)> {
        let length = text.chars().count();
        if let Some(max) = self.max_length
            && length > max
        {
            return Some(("too_long", format!("must be at most {max} characters")));
        }
        if let Some(min) = self.min_length
            && length < min
        {
            let message =
                if min == 1 { "must not be empty".to_owned() } else { format!("must be at least {min} characters") };
            return Some(("too_short", message));
        }
        if let Some(pattern) = &self.pattern
            && !pattern.regex.is_match(text)
        {
            return Some((pattern.code, pattern.message.clone()));
        }
        match self.format {
            Some(Format::Uuid) if !is_uuid(text) => Some(("invalid_format", "must be a UUID".to_owned())),
            Some(Format::DateTime) if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                Some(("invalid_format", "must be an RFC 3339 timestamp".to_owned()))
            }
            _ => None,
        }
    }

    fn range(&self) -> String {
        match (self.minimum, self.maximum) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            (None, None) => unreachable!("a range error needs a bound"),
        }
    }

    fn check_array(&self, items: &mut [Value], at: &Location<'_>, errors: &mut Vec<FieldError>) {
        if let Some(min) = self.min_items
            && items.len() < min
        {
            let message =
                if min == 1 { "must not be empty".to_owned() } else { format!("must hold at least {min} items") };
            return errors.push(FieldError::new(at.render(), "too_few", message));
        }
        if let Some(max) = self.max_items
            && items.len() > max
        {
            return errors.push(FieldError::new(at.render(), "too_many", format!("must hold at most {max} items")));
        }
        if let Some(schema) = &self.items {
            for (index, item) in items.iter_mut().enumerate() {
                schema.check(item, &Location::Index(at, index), errors);
            }
        }
        if self.unique_items && (1..items.len()).any(|i| items[..i].contains(&items[i])) {
            errors.push(FieldError::new(at.render(), "duplicate_items", "must not repeat an item"));
        }
    }

    fn check_object(&self, object: &mut Map<String, Value>, at: &Location<'_>, errors: &mut Vec<FieldError>) {
        for (name, value) in object.iter_mut() {
            match self.properties.iter().find(|(property, _)| property == name) {
                Some((_, schema)) => schema.check(value, &Location::Property(at, name), errors),
                None if self.closed => {
                    errors.push(FieldError::new(
                        Location::Property(at, name).render(),
                        "unknown_field",
                        "is not a recognised field",
                    ));
                }
                None => {}
            }
        }
        for name in self.required.iter().filter(|name| !object.contains_key(*name)) {
            errors.push(FieldError::new(Location::Property(at, name).render(), "required", "is required"));
        }
    }

    /// `anyOf`/`oneOf`: the first alternative the value meets; otherwise the errors of the
    /// alternative it comes closest to.
    fn check_alternatives(&self, value: &mut Value, at: &Location<'_>, errors: &mut Vec<FieldError>) {
        let mut closest: Option<(Vec<FieldError>, Value)> = None;
        for alternative in &self.alternatives {
            let mut candidate = value.clone();
            let mut found = Vec::new();
            alternative.check(&mut candidate, at, &mut found);
            if found.is_empty() {
                *value = candidate;
                return;
            }
            if closest.as_ref().is_none_or(|(fewest, _)| found.len() < fewest.len()) {
                closest = Some((found, candidate));
            }
        }
        if let Some((found, _)) = closest {
            errors.extend(found);
        }
    }
}

/// An integral JSON number as an integer (`34.0` → `34`), if it is one that fits.
fn integral(n: &serde_json::Number) -> Option<Value> {
    if n.is_i64() || n.is_u64() {
        return Some(Value::Number(n.clone()));
    }
    let f = n.as_f64()?;
    // Bounds checked in f64: the largest f64 below 2^63 converts exactly.
    (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
        .then(|| Value::from(f as i64))
}

/// The hyphenated form RFC 9562 defines (either case), as JSON Schema's `uuid` format means.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

struct Compiler<'a> {
    components: &'a Value,
    meanings: &'a [PatternMeaning],
}

/// Keywords that describe a schema without constraining it.
const ANNOTATIONS: &[&str] =
    &["description", "title", "example", "examples", "default", "deprecated", "readOnly", "writeOnly", "discriminator"];

impl Compiler<'_> {
    fn compile(&self, schema: &Value, depth: usize) -> Schema {
        assert!(depth < 32, "the OpenAPI document's request schemas nest too deeply (a cycle?)");
        let Some(keywords) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Schema::any(),
                other => panic!("unsupported schema `{other}` in the OpenAPI document"),
            };
        };
        let mut compiled = Schema::any();
        for (keyword, value) in keywords {
            let as_usize = || value.as_u64().and_then(|n| usize::try_from(n).ok()).expect("a count");
            match keyword.as_str() {
                "$ref" => {
                    let name =
                        value.as_str().and_then(|r| r.strip_prefix("#/components/schemas/")).expect("a local $ref");
                    assert!(
                        keywords.len() == 1
                            || keywords.keys().all(|k| k == "$ref" || ANNOTATIONS.contains(&k.as_str()))
                    );
                    return self.compile(&self.components[name], depth + 1);
                }
                "type" => {
                    compiled.types = Types(match value {
                        Value::String(name) => Types::named(name),
                        Value::Array(names) => {
                            names.iter().map(|n| Types::named(n.as_str().expect("a type name"))).fold(0, |a, b| a | b)
                        }
                        other => panic!("unsupported `type: {other}`"),
                    });
                }
                "enum" => compiled.enumeration = Some(value.as_array().expect("an enum array").clone()),
                "const" => compiled.enumeration = Some(vec![value.clone()]),
                "minLength" => compiled.min_length = Some(as_usize()),
                "maxLength" => compiled.max_length = Some(as_usize()),
                "pattern" => compiled.pattern = Some(self.pattern(value.as_str().expect("a pattern string"))),
                "format" => {
                    compiled.format = match value.as_str() {
                        Some("uuid") => Some(Format::Uuid),
                        Some("date-time") => Some(Format::DateTime),
                        // Integer widths are enforced by the bounds every integer states;
                        // the others are documented by their pattern.
                        _ => None,
                    }
                }
                "minimum" => compiled.minimum = value.as_f64(),
                "maximum" => compiled.maximum = value.as_f64(),
                "items" => compiled.items = Some(Box::new(self.compile(value, depth + 1))),
                "minItems" => compiled.min_items = Some(as_usize()),
                "maxItems" => compiled.max_items = Some(as_usize()),
                "uniqueItems" => compiled.unique_items = value == true,
                "properties" => {
                    compiled.properties = value
                        .as_object()
                        .expect("properties")
                        .iter()
                        .map(|(name, schema)| (name.clone(), self.compile(schema, depth + 1)))
                        .collect();
                }
                "required" => {
                    compiled.required = value
                        .as_array()
                        .expect("required")
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect();
                }
                "additionalProperties" => {
                    compiled.closed = match value {
                        Value::Bool(allowed) => !allowed,
                        other => panic!("unsupported `additionalProperties: {other}` in a request schema"),
                    }
                }
                "anyOf" | "oneOf" => {
                    compiled.alternatives =
                        value.as_array().expect("alternatives").iter().map(|s| self.compile(s, depth + 1)).collect();
                }
                keyword if ANNOTATIONS.contains(&keyword) => {}
                other => panic!("the request schema keyword `{other}` is not enforced by the contract checker"),
            }
        }
        compiled
    }

    fn pattern(&self, pattern: &str) -> Pattern {
        let regex = Regex::new(pattern).unwrap_or_else(|e| panic!("pattern `{pattern}` does not compile: {e}"));
        match self.meanings.iter().find(|m| m.pattern == pattern) {
            Some(meaning) => Pattern { regex, code: meaning.code, message: meaning.message.to_owned() },
            None => Pattern { regex, code: "invalid_format", message: format!("must match `{pattern}`") },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: Value) -> Schema {
        let components = json!({"Line": {"type": "object", "additionalProperties": false, "required": ["quantity"],
            "properties": {"quantity": {"type": "integer", "minimum": 1, "maximum": 10}}}});
        Compiler { components: &components, meanings: &[] }.compile(&value, 0)
    }

    fn errors(schema: &Schema, mut value: Value) -> (Vec<(String, String)>, Value) {
        let mut errors = Vec::new();
        schema.check(&mut value, &Location::Root, &mut errors);
        (errors.into_iter().map(|e| (e.field, e.code)).collect(), value)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn every_offending_field_is_reported_with_its_path() {
        let body = schema(json!({"type": "object", "additionalProperties": false, "required": ["name", "lines"],
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 5},
                "lines": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Line"}}}}));
        let (found, _) =
            errors(&body, json!({"name": "toolong", "lines": [{"quantity": 0}, {"extra": 1}], "admin": true}));
        assert_eq!(
            found,
            pairs(&[
                ("name", "too_long"),
                ("lines[0].quantity", "out_of_range"),
                ("lines[1].extra", "unknown_field"),
                ("lines[1].quantity", "required"),
                ("admin", "unknown_field"),
            ])
        );
    }

    #[test]
    fn integral_numbers_are_integers_and_become_them() {
        let quantity = schema(json!({"type": "integer", "minimum": 1, "maximum": 10}));
        assert_eq!(errors(&quantity, json!(3.0)), (vec![], json!(3)));
        assert_eq!(errors(&quantity, json!(3.5)).0, pairs(&[("body", "invalid_type")]));
        assert_eq!(errors(&quantity, json!(1e300)).0, pairs(&[("body", "invalid_type")]));
        assert_eq!(errors(&quantity, json!(11)).0, pairs(&[("body", "out_of_range")]));
        assert_eq!(errors(&quantity, json!("3")).0, pairs(&[("body", "invalid_type")]));
    }

    #[test]
    fn null_is_refused_unless_the_schema_allows_it() {
        assert_eq!(errors(&schema(json!({"type": "string"})), Value::Null).0, pairs(&[("body", "null_not_allowed")]));
        assert_eq!(errors(&schema(json!({"type": ["string", "null"]})), Value::Null).0, vec![]);
    }

    #[test]
    fn strings_are_measured_in_characters_and_matched_whole() {
        let name = schema(json!({"type": "string", "maxLength": 3, "pattern": "^[a-zé]+$"}));
        assert_eq!(errors(&name, json!("éé")).0, vec![]);
        assert_eq!(errors(&name, json!("éééé")).0, pairs(&[("body", "too_long")]));
        assert_eq!(errors(&name, json!("a1")).0, pairs(&[("body", "invalid_format")]));
        let id = schema(json!({"type": "string", "format": "uuid"}));
        assert_eq!(errors(&id, json!("0193b1e8-0000-7000-8000-00000000000A")).0, vec![]);
        assert_eq!(errors(&id, json!("0193b1e800007000800000000000000a")).0, pairs(&[("body", "invalid_format")]));
    }

    #[test]
    fn query_text_is_read_as_the_parameter_type() {
        let limit = schema(json!({"type": "integer", "minimum": 1}));
        assert_eq!(limit.read_text("20"), json!(20));
        assert_eq!(limit.read_text("2.0"), json!("2.0"));
        let fields = schema(json!({"type": "array", "items": {"type": "string"}}));
        assert_eq!(fields.read_text("id,name"), json!(["id", "name"]));
        assert_eq!(schema(json!({"type": "boolean"})).read_text("true"), json!(true));
    }

    #[test]
    #[should_panic(expected = "multipleOf")]
    fn a_rule_the_checker_would_not_enforce_cannot_be_published() {
        schema(json!({"type": "integer", "multipleOf": 2}));
    }
}

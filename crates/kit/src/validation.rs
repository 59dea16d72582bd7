//! Strict input parsing that reports every offending field at once.
//!
//! A [`Fields`] reader wraps a JSON object (a request body) or the query parameters. Each
//! `required`/`optional` call takes one named field and a parser for it; failures are collected
//! rather than returned, so `finish` can answer 422 with all of them, including every field the
//! endpoint does not accept (the mass-assignment guard).

use ordered::OrderedMap;
use serde_json::{Map, Value};

use crate::problem::{FieldError, Problem};

/// Why one value was rejected. `path` is appended to the field name for nested values
/// (`[2].quantity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub errors: Vec<(String, &'static str, String)>,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { errors: vec![(String::new(), code, message.into())] }
    }

    /// An error about a nested element, e.g. `Invalid::at("[0].quantity", ...)`.
    pub fn at(path: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self { errors: vec![(path.into(), code, message.into())] }
    }

    /// Nests every error of `self` under `prefix`.
    pub fn under(mut self, prefix: &str) -> Self {
        for (path, _, _) in &mut self.errors {
            *path = format!("{prefix}{path}");
        }
        self
    }

    pub fn merge(&mut self, other: Invalid) {
        self.errors.extend(other.errors);
    }
}

/// Reads named fields from a body object or query string, collecting every error.
pub struct Fields<V> {
    values: OrderedMap<V>,
    errors: Vec<FieldError>,
}

impl Fields<Value> {
    pub fn from_body(object: Map<String, Value>) -> Self {
        Self { values: object.into_iter().collect(), errors: Vec::new() }
    }
}

impl Fields<String> {
    /// Query parameters; a parameter given twice is an error.
    pub fn from_query(pairs: Vec<(String, String)>) -> Self {
        let mut fields = Self { values: OrderedMap::default(), errors: Vec::new() };
        for (name, value) in pairs {
            if fields.values.contains(&name) {
                fields.push(&name, "duplicate_parameter", "must be given at most once");
            } else {
                fields.values.insert(name, value);
            }
        }
        fields
    }
}

impl<V> Fields<V> {
    /// A field that must be present (and, for bodies, not `null`).
    pub fn required<T>(&mut self, name: &str, parse: impl FnOnce(&V) -> Result<T, Invalid>) -> Option<T>
    where
        V: Presence,
    {
        match self.values.take(name) {
            Some(value) if !value.is_null() => self.parse(name, &value, parse),
            _ => {
                self.push(name, "required", "is required");
                None
            }
        }
    }

    /// A field that may be absent: `Some(None)` when absent, `None` when present but invalid.
    pub fn optional<T>(&mut self, name: &str, parse: impl FnOnce(&V) -> Result<T, Invalid>) -> Option<Option<T>>
    where
        V: Presence,
    {
        match self.values.take(name) {
            None => Some(None),
            Some(value) if value.is_null() => {
                self.push(name, "null_not_allowed", "must not be null; omit the field instead");
                None
            }
            Some(value) => self.parse(name, &value, parse).map(Some),
        }
    }

    /// Records an error not tied to one parser, e.g. a rule across two fields.
    pub fn push(&mut self, field: &str, code: &str, message: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_owned(), code: code.to_owned(), message: message.into() });
    }

    /// Fails with 422 listing every error, including every field nobody asked for; otherwise
    /// returns the parsed values.
    pub fn finish<P: AllParsed>(mut self, parsed: P) -> Result<P::Output, Problem> {
        for name in self.values.names() {
            self.errors.push(FieldError {
                field: name.clone(),
                code: "unknown_field".into(),
                message: "is not a recognised field".into(),
            });
        }
        if !self.errors.is_empty() {
            return Err(Problem::validation(self.errors));
        }
        Ok(parsed.all().expect("every field parsed when no error was recorded"))
    }

    fn parse<T>(&mut self, name: &str, value: &V, parse: impl FnOnce(&V) -> Result<T, Invalid>) -> Option<T> {
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(invalid) => {
                for (path, code, message) in invalid.errors {
                    self.errors.push(FieldError { field: format!("{name}{path}"), code: code.into(), message });
                }
                None
            }
        }
    }
}

/// Whether a value counts as absent (`null` in JSON; query values are never null).
pub trait Presence {
    fn is_null(&self) -> bool;
}

impl Presence for Value {
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
}

impl Presence for String {
    fn is_null(&self) -> bool {
        false
    }
}

/// A tuple of parse results that is complete only when every element parsed.
pub trait AllParsed {
    type Output;
    fn all(self) -> Option<Self::Output>;
}

impl AllParsed for () {
    type Output = ();
    fn all(self) -> Option<()> {
        Some(())
    }
}

macro_rules! all_parsed {
    ($($name:ident),+) => {
        impl<$($name),+> AllParsed for ($(Option<$name>,)+) {
            type Output = ($($name,)+);
            #[allow(non_snake_case)]
            fn all(self) -> Option<Self::Output> {
                let ($($name,)+) = self;
                Some(($($name?,)+))
            }
        }
    };
}
all_parsed!(A);
all_parsed!(A, B);
all_parsed!(A, B, C);
all_parsed!(A, B, C, D);
all_parsed!(A, B, C, D, E);
all_parsed!(A, B, C, D, E, F);
all_parsed!(A, B, C, D, E, F, G);
all_parsed!(A, B, C, D, E, F, G, H);
all_parsed!(A, B, C, D, E, F, G, H, I);
all_parsed!(A, B, C, D, E, F, G, H, I, J);

/// Parsers for JSON body values.
pub mod json {
    use super::Invalid;
    use serde_json::Value;

    pub fn string(value: &Value) -> Result<&str, Invalid> {
        value.as_str().ok_or_else(|| Invalid::new("invalid_type", "must be a string"))
    }

    pub fn boolean(value: &Value) -> Result<bool, Invalid> {
        value.as_bool().ok_or_else(|| Invalid::new("invalid_type", "must be a boolean"))
    }

    /// An integer within `min..=max` (JSON numbers with a fraction or exponent are rejected).
    pub fn integer(value: &Value, min: i64, max: i64) -> Result<i64, Invalid> {
        let number = value.as_i64().filter(|_| value.is_i64() || value.is_u64());
        match number {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(_) => Err(Invalid::new("out_of_range", format!("must be between {min} and {max}"))),
            None if value.is_number() => Err(if value.as_u64().is_some() {
                Invalid::new("out_of_range", format!("must be between {min} and {max}"))
            } else {
                Invalid::new("invalid_type", "must be an integer")
            }),
            None => Err(Invalid::new("invalid_type", "must be an integer")),
        }
    }

    /// A string of `min..=max` characters after trimming surrounding whitespace.
    pub fn text(value: &Value, min: usize, max: usize) -> Result<String, Invalid> {
        super::text(string(value)?, min, max)
    }
}

/// Parsers for query parameter values.
pub mod query {
    use super::Invalid;

    pub fn integer(value: &str, min: i64, max: i64) -> Result<i64, Invalid> {
        match value.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(_) => Err(Invalid::new("out_of_range", format!("must be between {min} and {max}"))),
            Err(_) => Err(Invalid::new("invalid_type", "must be an integer")),
        }
    }

    pub fn boolean(value: &str) -> Result<bool, Invalid> {
        match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Invalid::new("invalid_type", "must be `true` or `false`")),
        }
    }

    pub fn timestamp(value: &str) -> Result<chrono::DateTime<chrono::Utc>, Invalid> {
        chrono::DateTime::parse_from_rfc3339(value)
            .map(|t| t.to_utc())
            .map_err(|_| Invalid::new("invalid_format", "must be an RFC 3339 timestamp"))
    }

    /// One of the listed values.
    pub fn one_of<'a>(value: &str, allowed: &[&'a str]) -> Result<&'a str, Invalid> {
        allowed
            .iter()
            .find(|a| **a == value)
            .copied()
            .ok_or_else(|| Invalid::new("invalid_value", format!("must be one of: {}", allowed.join(", "))))
    }
}

/// Checks `raw` holds at most `max` characters and no control characters, and at least `min`
/// once surrounding whitespace is trimmed; returns it trimmed.
pub fn text(raw: &str, min: usize, max: usize) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    let length = trimmed.chars().count();
    if raw.chars().count() > max {
        return Err(Invalid::new("too_long", format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Invalid::new("invalid_characters", "must not contain control characters"));
    }
    if length < min {
        return Err(if min == 1 {
            Invalid::new("blank", "must not be blank")
        } else {
            Invalid::new("too_short", format!("must be at least {min} characters"))
        });
    }
    if length > max {
        return Err(Invalid::new("too_long", format!("must be at most {max} characters")));
    }
    Ok(trimmed.to_owned())
}

/// A tiny insertion-ordered map so unknown fields are reported in the order they were sent.
mod ordered {
    pub struct OrderedMap<V>(Vec<(String, V)>);

    impl<V> Default for OrderedMap<V> {
        fn default() -> Self {
            Self(Vec::new())
        }
    }

    impl<V> OrderedMap<V> {
        pub fn contains(&self, name: &str) -> bool {
            self.0.iter().any(|(n, _)| n == name)
        }
        pub fn insert(&mut self, name: String, value: V) {
            self.0.push((name, value));
        }
        pub fn take(&mut self, name: &str) -> Option<V> {
            let index = self.0.iter().position(|(n, _)| n == name)?;
            Some(self.0.remove(index).1)
        }
        pub fn names(&self) -> Vec<String> {
            self.0.iter().map(|(n, _)| n.clone()).collect()
        }
    }

    impl<V> FromIterator<(String, V)> for OrderedMap<V> {
        fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
            Self(iter.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Fields<Value> {
        Fields::from_body(value.as_object().unwrap().clone())
    }

    #[test]
    fn every_offending_field_is_reported_at_once() {
        let mut fields = body(json!({"name": "", "age": "x", "admin": true}));
        let name = fields.required("name", |v| json::text(v, 1, 10));
        let age = fields.required("age", |v| json::integer(v, 0, 200));
        let email = fields.required("email", |v| json::text(v, 1, 10));
        let problem = fields.finish((name, age, email)).unwrap_err();
        let reported: Vec<_> = problem.errors().iter().map(|e| (e.field.as_str(), e.code.as_str())).collect();
        assert_eq!(
            reported,
            [("name", "blank"), ("age", "invalid_type"), ("email", "required"), ("admin", "unknown_field")]
        );
    }

    #[test]
    fn valid_input_yields_every_value() {
        let mut fields = body(json!({"name": " Ada ", "age": 36}));
        let name = fields.required("name", |v| json::text(v, 1, 10));
        let age = fields.required("age", |v| json::integer(v, 0, 200));
        let nick = fields.optional("nick", |v| json::text(v, 1, 10));
        assert_eq!(fields.finish((name, age, nick)).unwrap(), ("Ada".to_owned(), 36, None));
    }

    #[test]
    fn null_is_not_an_omission() {
        let mut fields = body(json!({"nick": null}));
        let nick = fields.optional("nick", |v| json::text(v, 1, 10));
        assert_eq!(fields.finish((nick,)).unwrap_err().errors()[0].code, "null_not_allowed");
    }

    #[test]
    fn integers_reject_fractions_and_out_of_range_values() {
        assert_eq!(json::integer(&json!(5), 0, 10), Ok(5));
        assert_eq!(json::integer(&json!(5.5), 0, 10).unwrap_err().errors[0].1, "invalid_type");
        assert_eq!(json::integer(&json!(11), 0, 10).unwrap_err().errors[0].1, "out_of_range");
        assert_eq!(json::integer(&json!(u64::MAX), 0, 10).unwrap_err().errors[0].1, "out_of_range");
        assert_eq!(json::integer(&json!("5"), 0, 10).unwrap_err().errors[0].1, "invalid_type");
    }

    #[test]
    fn repeated_query_parameters_are_rejected() {
        let fields = Fields::from_query(vec![("limit".into(), "1".into()), ("limit".into(), "2".into())]);
        let mut fields = fields;
        let limit = fields.optional("limit", |v| query::integer(v, 1, 100));
        assert_eq!(fields.finish((limit,)).unwrap_err().errors()[0].code, "duplicate_parameter");
    }

    #[test]
    fn text_is_trimmed_and_measured_in_characters() {
        assert_eq!(text("  héllo ", 1, 8), Ok("héllo".to_owned()));
        assert_eq!(text("   ", 1, 5).unwrap_err().errors[0].1, "blank");
        assert_eq!(text("abcdef", 1, 5).unwrap_err().errors[0].1, "too_long");
        assert_eq!(text(" abcde ", 1, 5).unwrap_err().errors[0].1, "too_long", "padding counts toward the limit");
        assert_eq!(text("a\u{0}b", 1, 5).unwrap_err().errors[0].1, "invalid_characters");
    }
}

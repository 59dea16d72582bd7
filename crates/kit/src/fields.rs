//! `fields=a,b,c` selection: each returned object keeps only the named top-level fields.

use serde_json::Value;

use crate::validation::Invalid;

/// A validated set of field names to keep, in the resource's own order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSelection(Vec<&'static str>);

impl FieldSelection {
    /// Parses a comma-separated list against the fields the resource has. Unknown names fail
    /// (422 once reported); an empty list or an empty element is malformed.
    pub fn parse(raw: &str, available: &[&'static str]) -> Result<Self, Invalid> {
        let mut unknown = Vec::new();
        let mut chosen = Vec::new();
        for name in raw.split(',') {
            let name = name.trim();
            if name.is_empty() {
                return Err(Invalid::new("invalid_format", "must be a comma-separated list of field names"));
            }
            match available.iter().find(|a| **a == name) {
                Some(known) if !chosen.contains(known) => chosen.push(*known),
                Some(_) => {}
                None => unknown.push(name.to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(Invalid::new(
                "unknown_field",
                format!("unknown field(s) {}; available: {}", unknown.join(", "), available.join(", ")),
            ));
        }
        chosen.sort_by_key(|name| available.iter().position(|a| a == name));
        Ok(Self(chosen))
    }

    /// Keeps only the selected top-level fields of an object.
    pub fn apply(&self, value: Value) -> Value {
        match value {
            Value::Object(mut object) => {
                Value::Object(self.0.iter().filter_map(|name| object.remove_entry(*name)).collect())
            }
            other => other,
        }
    }
}

/// Applies an optional selection.
pub fn select(selection: Option<&FieldSelection>, value: Value) -> Value {
    match selection {
        Some(selection) => selection.apply(value),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AVAILABLE: &[&str] = &["id", "name", "price"];

    #[test]
    fn keeps_only_selected_fields_in_resource_order() {
        let selection = FieldSelection::parse("price, id,price", AVAILABLE).unwrap();
        let value = selection.apply(json!({"id": 1, "name": "n", "price": 3}));
        assert_eq!(serde_json::to_string(&value).unwrap(), r#"{"id":1,"price":3}"#);
    }

    #[test]
    fn unknown_or_empty_names_are_rejected() {
        assert_eq!(FieldSelection::parse("id,secret", AVAILABLE).unwrap_err().errors[0].1, "unknown_field");
        assert_eq!(FieldSelection::parse("", AVAILABLE).unwrap_err().errors[0].1, "invalid_format");
        assert_eq!(FieldSelection::parse("id,,name", AVAILABLE).unwrap_err().errors[0].1, "invalid_format");
    }
}

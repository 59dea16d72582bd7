//! `fields=a,b,c` selection: each returned object keeps only the named top-level fields.

use serde_json::Value;

/// The names of the fields to keep. The request contract has checked each against the
/// resource's representation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "Vec<String>")]
pub struct FieldSelection(Vec<String>);

impl From<Vec<String>> for FieldSelection {
    fn from(names: Vec<String>) -> Self {
        Self(names)
    }
}

impl FieldSelection {
    /// Keeps only the selected top-level fields of an object, in the object's own order.
    pub fn apply(&self, value: Value) -> Value {
        match value {
            Value::Object(mut object) => {
                object.retain(|name, _| self.0.iter().any(|chosen| chosen == name));
                Value::Object(object)
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

    #[test]
    fn keeps_only_selected_fields_in_resource_order() {
        let selection = FieldSelection::from(vec!["price".to_owned(), "id".to_owned(), "price".to_owned()]);
        let value = selection.apply(json!({"id": 1, "name": "n", "price": 3}));
        assert_eq!(serde_json::to_string(&value).unwrap(), r#"{"id":1,"price":3}"#);
    }
}

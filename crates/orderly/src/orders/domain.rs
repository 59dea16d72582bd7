//! Order value types: the status machine, the parsed item list of a new order, and the items
//! an order keeps.

use orderly_kit::validation::{Invalid, json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 1000;

/// `pending` → `paid` → `refunded`, or `pending` → `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Refunded,
    Cancelled,
}

impl OrderStatus {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw {
            "pending" => Ok(Self::Pending),
            "paid" => Ok(Self::Paid),
            "refunded" => Ok(Self::Refunded),
            "cancelled" => Ok(Self::Cancelled),
            _ => Err(Invalid::new("invalid_value", "must be one of: pending, paid, refunded, cancelled")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Refunded => "refunded",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One line of a placed order: the product as it was when ordered, and how many units. Stored
/// with the order exactly as it is served (items never change once placed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    /// Price of one unit when the order was placed, in minor units.
    pub unit_price: i64,
    pub quantity: i64,
    /// `unit_price × quantity`.
    pub line_total: i64,
}

/// One requested line: a product and how many units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// Parses `items`: 1–50 lines of distinct products, each with a quantity of 1–1000. Every
/// problem is reported with its path (`[2].quantity`).
pub fn parse_items(value: &Value) -> Result<Vec<OrderLine>, Invalid> {
    let elements = value.as_array().ok_or_else(|| Invalid::new("invalid_type", "must be an array of items"))?;
    if elements.is_empty() {
        return Err(Invalid::new("too_few", "must hold at least one item"));
    }
    if elements.len() > MAX_ITEMS {
        return Err(Invalid::new("too_many", format!("must hold at most {MAX_ITEMS} items")));
    }
    let mut lines = Vec::with_capacity(elements.len());
    let mut errors: Option<Invalid> = None;
    let mut fail = |invalid: Invalid| match &mut errors {
        Some(all) => all.merge(invalid),
        None => errors = Some(invalid),
    };
    for (index, element) in elements.iter().enumerate() {
        let at = format!("[{index}]");
        let Some(object) = element.as_object() else {
            fail(Invalid::at(at, "invalid_type", "must be an object with `product_id` and `quantity`"));
            continue;
        };
        let product_id = match object.get("product_id") {
            None | Some(Value::Null) => Err(Invalid::new("required", "is required")),
            Some(value) => json::string(value).and_then(|raw| {
                Uuid::try_parse(raw).map_err(|_| Invalid::new("invalid_format", "must be a product id"))
            }),
        };
        let quantity = match object.get("quantity") {
            None | Some(Value::Null) => Err(Invalid::new("required", "is required")),
            Some(value) => json::integer(value, 1, MAX_QUANTITY),
        };
        for name in object.keys().filter(|k| !matches!(k.as_str(), "product_id" | "quantity")) {
            fail(Invalid::at(format!("{at}.{name}"), "unknown_field", "is not a recognised field"));
        }
        match (product_id, quantity) {
            (Ok(product_id), Ok(quantity)) => {
                if lines.iter().any(|line: &OrderLine| line.product_id == product_id) {
                    fail(Invalid::at(
                        format!("{at}.product_id"),
                        "duplicate_product",
                        "each product may appear once; combine the quantities",
                    ));
                } else {
                    lines.push(OrderLine { product_id, quantity });
                }
            }
            (product_id, quantity) => {
                if let Err(invalid) = product_id {
                    fail(invalid.under(&format!("{at}.product_id")));
                }
                if let Err(invalid) = quantity {
                    fail(invalid.under(&format!("{at}.quantity")));
                }
            }
        }
    }
    match errors {
        Some(errors) => Err(errors),
        None => Ok(lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(invalid: Invalid) -> Vec<(String, &'static str)> {
        invalid.errors.into_iter().map(|(path, code, _)| (path, code)).collect()
    }

    #[test]
    fn valid_items_parse_in_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let lines =
            parse_items(&json!([{"product_id": a, "quantity": 2}, {"quantity": 1000, "product_id": b}])).unwrap();
        assert_eq!(lines, [OrderLine { product_id: a, quantity: 2 }, OrderLine { product_id: b, quantity: 1000 }]);
    }

    #[test]
    fn every_bad_item_is_reported_with_its_path() {
        let a = Uuid::now_v7();
        let invalid = parse_items(&json!([
            {"product_id": a, "quantity": 0},
            {"product_id": "nope", "quantity": 1, "price": 1},
            "text",
            {"product_id": a, "quantity": 1},
            {},
        ]))
        .unwrap_err();
        assert_eq!(
            paths(invalid),
            [
                ("[0].quantity".to_owned(), "out_of_range"),
                ("[1].price".to_owned(), "unknown_field"),
                ("[1].product_id".to_owned(), "invalid_format"),
                ("[2]".to_owned(), "invalid_type"),
                ("[4].product_id".to_owned(), "required"),
                ("[4].quantity".to_owned(), "required"),
            ]
        );
    }

    #[test]
    fn a_product_may_appear_once() {
        let a = Uuid::now_v7();
        let invalid =
            parse_items(&json!([{"product_id": a, "quantity": 1}, {"product_id": a, "quantity": 2}])).unwrap_err();
        assert_eq!(paths(invalid), [("[1].product_id".to_owned(), "duplicate_product")]);
    }

    #[test]
    fn the_item_count_is_bounded() {
        assert_eq!(paths(parse_items(&json!([])).unwrap_err())[0].1, "too_few");
        let many: Vec<Value> = (0..51).map(|_| json!({"product_id": Uuid::now_v7(), "quantity": 1})).collect();
        assert_eq!(paths(parse_items(&Value::Array(many)).unwrap_err())[0].1, "too_many");
        assert_eq!(paths(parse_items(&json!({"a": 1})).unwrap_err())[0].1, "invalid_type");
    }
}

//! The rules of request fields that go beyond a type, each written once: as the OpenAPI schema
//! of a type (which the request contract enforces on HTTP input) and, for rules other input must
//! also meet (the CLI), as a check built from the same pattern and bounds.
//!
//! [`text_type!`] and [`integer_type!`] declare such types: a request field of type
//! `ProductName` is documented and checked as 1–200 characters of text, and arrives trimmed.

use std::sync::LazyLock;

use orderly_kit::contract::PatternMeaning;
use regex::Regex;
use utoipa::openapi::ObjectBuilder;
use utoipa::openapi::schema::Type;

/// Text: at least one visible character, no control characters but newline and tab. Values are
/// stored trimmed.
const TEXT: &str = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$";
/// As [`TEXT`], but may be empty or blank.
const OPTIONAL_TEXT: &str = r"^[^\u0000-\u0008\u000b-\u001f\u007f-\u009f]*$";
/// An email address: a local part of dot-separated runs of characters other than spaces,
/// controls and `@ . < > ( ) [ ] \ , ; : "` (internationalised ones included, RFC 6531), and a
/// domain of at least two dot-separated labels of ASCII letters, digits and inner hyphens.
/// Stored lower-cased.
const EMAIL: &str = r#"^[^@.\s\u0000-\u001f\u007f-\u009f<>()\[\]\\,;:"]+(\.[^@.\s\u0000-\u001f\u007f-\u009f<>()\[\]\\,;:"]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"#;
const EMAIL_MAX: usize = 254;
/// A stock-keeping unit: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
const SKU: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// A payment method token: printable ASCII without spaces.
const PAYMENT_METHOD: &str = r"^[\x21-\x7e]+$";

pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// How a value that misses each pattern is reported.
pub const MEANINGS: &[PatternMeaning] = &[
    PatternMeaning {
        pattern: TEXT,
        code: "invalid_text",
        message: "must hold a visible character and no control characters",
    },
    PatternMeaning { pattern: OPTIONAL_TEXT, code: "invalid_text", message: "must not hold control characters" },
    PatternMeaning { pattern: EMAIL, code: "invalid_email", message: "must be an email address like name@example.com" },
    PatternMeaning {
        pattern: SKU,
        code: "invalid_format",
        message: "must be 1-64 characters of letters, digits, `.`, `_` or `-`, starting with a letter or digit",
    },
    PatternMeaning {
        pattern: PAYMENT_METHOD,
        code: "invalid_format",
        message: "must be printable ASCII without spaces",
    },
];

/// Declares a text type: a `String` newtype whose schema is `min..=max` characters matching
/// `pattern`, kept without its surrounding whitespace.
macro_rules! text_type {
    ($(#[doc = $doc:literal])+ $name:ident, $min:expr, $max:expr, $pattern:expr) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Ok(Self(if raw.trim().len() == raw.len() { raw } else { raw.trim().to_owned() }))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let description = [$($doc),+].map(str::trim).join("\n");
                $crate::schemas::string($min, $max, $pattern).description(Some(description)).build().into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// Declares an integer type: an `i64` newtype whose schema is `min..=max`.
macro_rules! integer_type {
    ($(#[doc = $doc:literal])+ $name:ident, $min:expr, $max:expr) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let description = [$($doc),+].map(str::trim).join("\n");
                $crate::schemas::integer_object($min, $max).description(Some(description)).build().into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use integer_type;

pub(crate) fn string(min: usize, max: usize, pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).min_length(Some(min)).max_length(Some(max)).pattern(Some(pattern))
}

text_type!(
    /// A name of 1–100 characters.
    Name,
    1,
    100,
    TEXT
);
text_type!(
    /// A product name of 1–200 characters.
    ProductName,
    1,
    200,
    TEXT
);
text_type!(
    /// Free text of up to 2000 characters.
    Description,
    0,
    2000,
    OPTIONAL_TEXT
);
text_type!(
    /// An opaque token the server issued.
    Token,
    1,
    512,
    TEXT
);
text_type!(
    /// A stock-keeping unit: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    Sku,
    1,
    64,
    SKU
);
text_type!(
    /// The payment method to charge: 1–255 printable ASCII characters without spaces (sandbox:
    /// `pm_card_visa` succeeds, others are declined).
    PaymentMethod,
    1,
    255,
    PAYMENT_METHOD
);

pub(crate) fn email() -> ObjectBuilder {
    // No `format`: validators disagree on what `email`/`idn-email` admit; the pattern is the rule.
    string(3, EMAIL_MAX, EMAIL).examples(["ada@example.com"])
}

pub(crate) fn password() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Password)))
        .min_length(Some(PASSWORD_MIN))
        .max_length(Some(PASSWORD_MAX))
}

/// An integer in `min..=max`.
pub(crate) fn integer_object(min: i64, max: i64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
}

/// Whether `raw` is text of 1–`max` characters as [`Name`] accepts it.
pub fn is_name(raw: &str, max: usize) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| Regex::new(TEXT).expect("the text pattern compiles"));
    raw.chars().count() <= max && PATTERN.is_match(raw)
}

/// Whether `raw` is an email address as [`email`] describes it.
pub fn is_email(raw: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| Regex::new(EMAIL).expect("the email pattern compiles"));
    raw.chars().count() <= EMAIL_MAX && PATTERN.is_match(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_has_a_meaning() {
        for pattern in [TEXT, OPTIONAL_TEXT, EMAIL, SKU, PAYMENT_METHOD] {
            Regex::new(pattern).unwrap();
            assert!(MEANINGS.iter().any(|m| m.pattern == pattern), "{pattern}");
        }
    }

    #[test]
    fn text_needs_a_visible_character_and_no_control_characters() {
        assert!(is_name(" Ada\tLovelace\n", 100));
        for bad in ["", "   ", "a\u{0}b", "a\u{7f}", "a\u{85}"] {
            assert!(!is_name(bad, 100), "{bad:?}");
        }
        assert!(!is_name(&"n".repeat(101), 100));
    }

    #[test]
    fn implausible_emails_are_rejected() {
        assert!(is_email("ada.lovelace+x@example.co.uk"));
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@.com",
            "ada@example..com",
            "ada@example.com.",
            "ada@-example.com",
            "ada@example-.com",
            "a b@example.com",
            "ada@exa mple.com",
            "a@b@example.com",
            " ada@example.com",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
        ] {
            assert!(!is_email(bad), "{bad:?} should be rejected");
        }
        assert!(is_email("ädä.lövelace@example.com"));
        let long_in_bytes = format!("{}@example.com", "é".repeat(200));
        assert!(is_email(&long_in_bytes), "the limit counts characters, as the schema's maxLength does");
        assert!(!is_email(&format!("{}@example.com", "a".repeat(250))));
    }
}

//! Account value types, checked once at the edge: an [`Email`], [`Password`] or [`UserName`]
//! that exists is valid. Their rules are the schemas in [`crate::schemas`]: the request contract
//! enforces them on HTTP input, and `parse` applies the same ones to the CLI's input.

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::schemas;

/// A syntactically plausible email address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if schemas::is_email(raw) {
            Ok(Self(raw.to_lowercase()))
        } else {
            Err("must be an email address like name@example.com")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for Email {
    fn schema() -> RefOr<Schema> {
        schemas::email().description(Some("An email address; compared and stored in lower case.")).build().into()
    }
}

impl ToSchema for Email {}

impl TryFrom<String> for Email {
    type Error = &'static str;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

/// A password of 8–128 characters, kept only until it is hashed.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        match raw.chars().count() {
            n if n < schemas::PASSWORD_MIN => Err("must be at least 8 characters"),
            n if n > schemas::PASSWORD_MAX => Err("must be at most 128 characters"),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialSchema for Password {
    fn schema() -> RefOr<Schema> {
        schemas::password().description(Some("A password of 8–128 characters.")).build().into()
    }
}

impl ToSchema for Password {}

impl TryFrom<String> for Password {
    type Error = &'static str;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A display name of 1–100 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if schemas::is_name(raw, 100) {
            Ok(Self(raw.trim().to_owned()))
        } else {
            Err("must be 1-100 characters with a visible one and no control characters")
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl PartialSchema for UserName {
    fn schema() -> RefOr<Schema> {
        schemas::Name::schema()
    }
}

impl ToSchema for UserName {}

impl TryFrom<String> for UserName {
    type Error = &'static str;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "customer" => Some(Self::Customer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_to_lower_case() {
        assert_eq!(Email::parse("Ada@Example.COM").unwrap().as_str(), "ada@example.com");
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"é".repeat(128)).is_ok());
        assert!(Password::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn names_are_1_to_100_characters_after_trimming() {
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"n".repeat(100)).is_ok());
        assert!(UserName::parse(&"n".repeat(101)).is_err());
    }

    #[test]
    fn password_debug_output_hides_the_secret() {
        assert_eq!(format!("{:?}", Password::parse("hunter2hunter2").unwrap()), "Password(***)");
    }
}

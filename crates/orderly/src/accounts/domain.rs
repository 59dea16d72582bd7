//! Account value types, parsed once at the edge: an [`Email`], [`Password`] or [`UserName`]
//! that exists is valid.

use orderly_kit::validation::{Invalid, json, text};
use serde::Serialize;
use serde_json::Value;

/// A lower-cased, syntactically plausible email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = raw.trim().to_lowercase();
        let invalid = || Invalid::new("invalid_email", "must be an email address like name@example.com");
        if email.len() > 254 {
            return Err(Invalid::new("too_long", "must be at most 254 characters"));
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let valid = !local.is_empty()
            && local.len() <= 64
            && domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
            && email.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[]\\,;:\"".contains(c))
            && domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        if valid { Ok(Self(email)) } else { Err(invalid()) }
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of 8–128 characters, kept only until it is hashed.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw.chars().count() {
            0..8 => Err(Invalid::new("too_short", "must be at least 8 characters")),
            8..=128 => Ok(Self(raw.to_owned())),
            _ => Err(Invalid::new("too_long", "must be at most 128 characters")),
        }
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A display name of 1–100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        text(raw, 1, 100).map(Self)
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub const ALL: &[&str] = &["customer", "admin"];

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw {
            "customer" => Ok(Self::Customer),
            "admin" => Ok(Self::Admin),
            _ => Err(Invalid::new("invalid_value", "must be one of: customer, admin")),
        }
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
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
        assert_eq!(Email::parse("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
    }

    #[test]
    fn implausible_emails_are_rejected() {
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
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
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

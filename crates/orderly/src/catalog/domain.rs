//! Catalog value types: [`Sku`], [`Currency`] and the bounds on prices and stock.

use orderly_kit::validation::{Invalid, json};
use serde_json::Value;

/// Largest unit price in minor units. With at most 50 lines of at most 1000 units an order
/// total stays far below `i64::MAX`.
pub const MAX_UNIT_PRICE: i64 = 1_000_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

/// A stock-keeping unit: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let valid = (1..=64).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::new(
                "invalid_format",
                "must be 1-64 characters of letters, digits, `.`, `_` or `-`, starting with a letter or digit",
            ))
        }
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An active ISO 4217 currency code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(&'static str);

/// Active ISO 4217 codes.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD \
CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL \
HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD \
MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR \
SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND \
VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

impl Currency {
    /// Accepts a code in either case; stores and returns it upper case.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let upper = raw.to_ascii_uppercase();
        ISO_4217
            .split_whitespace()
            .find(|code| *code == upper)
            .map(Self)
            .ok_or_else(|| Invalid::new("invalid_currency", "must be an ISO 4217 currency code such as USD or EUR"))
    }

    pub fn from_json(value: &Value) -> Result<Self, Invalid> {
        Self::parse(json::string(value)?)
    }

    pub fn code(self) -> &'static str {
        self.0
    }
}

/// OpenAPI schema of a currency code: the ISO 4217 list (lower case is accepted too).
pub fn currency_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("ISO 4217 currency code"))
        .enum_values(Some(ISO_4217.split_whitespace()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_restricted_to_a_safe_alphabet() {
        assert!(Sku::parse("TSHIRT-RED_L.2").is_ok());
        for bad in ["", "-lead", "has space", "ünï", &"a".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn currencies_are_iso_4217_codes_normalised_to_upper_case() {
        assert_eq!(Currency::parse("usd").unwrap().code(), "USD");
        assert_eq!(Currency::parse("EUR").unwrap().code(), "EUR");
        for bad in ["", "US", "USDD", "XYZ", "us d"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }
}

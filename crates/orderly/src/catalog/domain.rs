//! Catalog value types: [`Currency`], [`Price`] and [`Stock`], each with the schema the request
//! contract enforces.

use serde::Deserialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::schemas::integer_type;

/// Largest unit price in minor units. With at most 50 lines of at most 1000 units an order
/// total stays far below `i64::MAX`.
pub const MAX_UNIT_PRICE: i64 = 1_000_000_000_000;

integer_type!(
    /// A price of one unit in minor units of its currency (cents for USD).
    Price,
    0,
    MAX_UNIT_PRICE
);
integer_type!(
    /// Units in stock.
    Stock,
    0,
    1_000_000_000
);

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
    pub fn parse(raw: &str) -> Option<Self> {
        ISO_4217.split_whitespace().find(|code| *code == raw).map(Self)
    }

    pub fn code(self) -> &'static str {
        self.0
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw)
            .ok_or_else(|| serde::de::Error::custom("must be an ISO 4217 currency code such as USD or EUR"))
    }
}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("An active ISO 4217 currency code, upper case."))
            .enum_values(Some(ISO_4217.split_whitespace()))
            .build()
            .into()
    }
}

impl ToSchema for Currency {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_active_iso_4217_codes_in_upper_case() {
        assert_eq!(Currency::parse("EUR").unwrap().code(), "EUR");
        for bad in ["", "usd", "US", "USDD", "XYZ", "US D"] {
            assert!(Currency::parse(bad).is_none(), "{bad:?}");
        }
    }
}

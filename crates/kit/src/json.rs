//! JSON objects written straight into a buffer, for the representations served most often
//! (a page of orders is dozens of ids, timestamps and keys).
//!
//! `serde_json` checks every byte of every key and string for characters to escape; ids,
//! timestamps, numbers and the keys a representation names never hold one, so [`Object`]
//! writes them as they are and escapes only free text. The output is byte for byte what
//! `serde_json` writes for the same fields in the same order; each user tests that against
//! its `Serialize` implementation, which stays the documented shape.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::timestamp;

/// An object being written into `out`, one member at a time, in the order the calls come.
/// Keys are the representation's own field names (ASCII letters and `_`), never input.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Writes `{`; [`Object::end`] writes the `}`.
    pub fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{key:?} needs escaping");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A string, escaped as JSON requires.
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        push_str(self.key(key), value);
        self
    }

    /// An id, in its hyphenated lower-case form.
    pub fn uuid(&mut self, key: &'static str, value: Uuid) -> &mut Self {
        let out = self.key(key);
        out.push(b'"');
        out.extend_from_slice(value.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
        out.push(b'"');
        self
    }

    pub fn i64(&mut self, key: &'static str, value: i64) -> &mut Self {
        self.key(key).extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// A time as [`timestamp::serialize`] writes it.
    pub fn timestamp(&mut self, key: &'static str, at: &DateTime<Utc>) -> &mut Self {
        let out = self.key(key);
        out.push(b'"');
        timestamp::push(out, at);
        out.push(b'"');
        self
    }

    /// JSON text that is already valid (checked when it was read), copied as it is.
    pub fn raw(&mut self, key: &'static str, json: &str) -> &mut Self {
        self.key(key).extend_from_slice(json.as_bytes());
        self
    }

    /// Writes the closing `}`.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Whether `value` goes into a JSON string as it is: it holds no quote, backslash or control
/// character (the only characters JSON requires escaped, and the only ones `serde_json` escapes).
pub fn is_plain(value: &str) -> bool {
    value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Appends `value` as a JSON string.
fn push_str(out: &mut Vec<u8>, value: &str) {
    if is_plain(value) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, value).expect("writing to a buffer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Sample<'a> {
        id: Uuid,
        note: &'a str,
        total: i64,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
        items: &'a serde_json::value::RawValue,
    }

    fn written(sample: &Sample<'_>) -> String {
        let mut out = Vec::new();
        let mut object = Object::begin(&mut out);
        object
            .uuid("id", sample.id)
            .str("note", sample.note)
            .i64("total", sample.total)
            .timestamp("at", &sample.at)
            .raw("items", sample.items.get());
        object.end();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let items = serde_json::value::RawValue::from_string(r#"[{"a":"\u00e9"}]"#.into()).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 10, 1, 2).unwrap() + chrono::TimeDelta::microseconds(120);
        for note in ["EUR", "", "quote \" and \\ and \n and \u{1f} and é and \u{7f}", "tab\there"] {
            for total in [0, -1, i64::MAX, i64::MIN, 4_200] {
                let sample = Sample { id: Uuid::now_v7(), note, total, at, items: &items };
                assert_eq!(written(&sample), serde_json::to_string(&sample).unwrap());
            }
        }
    }
}

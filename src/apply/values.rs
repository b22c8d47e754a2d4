//! Column text (as Postgres prints it, with the session settings pinned by
//! `source`: DateStyle=ISO, IntervalStyle=iso_8601, TimeZone=UTC,
//! extra_float_digits=3) to typed JSON values. The rules, type by type, are in
//! docs/types.md. A value that does not parse as its type is kept as text:
//! an odd value never stops the stream.

use crate::model::Datum;

/// Built-in type OIDs (from `pg_type.dat`).
pub mod type_oid {
    pub const BOOL: u32 = 16;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

use type_oid::*;

/// The element type of a built-in array type, if `oid` is one we know.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1009 => TEXT,
        1028 => OID,
        199 => JSON,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1182 => DATE,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        1231 => NUMERIC,
        2951 => UUID,
        3807 => JSONB,
        _ => return None,
    })
}

/// Converts one column's text form to its typed value.
pub fn text_to_datum(type_oid: u32, text: &str) -> Datum {
    match type_oid {
        BOOL => match text {
            "t" => Datum::Bool(true),
            "f" => Datum::Bool(false),
            _ => Datum::Text(text.to_owned()),
        },
        INT2 | INT4 | INT8 | OID => text
            .parse::<i64>()
            .map(Datum::Int)
            .unwrap_or_else(|_| Datum::Text(text.to_owned())),
        FLOAT4 | FLOAT8 => match text.parse::<f64>() {
            // NaN and ±Infinity have no JSON number: keep Postgres's spelling.
            Ok(f) if f.is_finite() => Datum::Float(f),
            _ => Datum::Text(text.to_owned()),
        },
        // Postgres only sends valid JSON here, but bytes that are not (a
        // corrupted stream; found by fuzzing) would break the event's own
        // JSON: keep those as text.
        JSON | JSONB if is_json(text) => Datum::Json(text.to_owned()),
        TIMESTAMP => Datum::Text(iso_timestamp(text, false)),
        TIMESTAMPTZ => Datum::Text(iso_timestamp(text, true)),
        // numeric stays text so that no digit is lost (docs/types.md).
        _ => match array_element(type_oid) {
            Some(element) => {
                parse_array(text, element).unwrap_or_else(|| Datum::Text(text.to_owned()))
            }
            None => Datum::Text(text.to_owned()),
        },
    }
}

/// Whether `text` is one well-formed JSON value.
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// `2026-11-28 03:14:02.123456+00` (DateStyle ISO, TimeZone UTC) to
/// `2026-11-28T03:14:02.123456Z`; `infinity`, `-infinity` and BC dates are
/// left as Postgres prints them.
fn iso_timestamp(text: &str, with_zone: bool) -> String {
    if text.len() < 19 || text.ends_with(" BC") || text.as_bytes()[10] != b' ' {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 1);
    out.push_str(&text[..10]);
    out.push('T');
    let rest = &text[11..];
    if with_zone {
        // With TimeZone=UTC the offset is always +00.
        match rest.strip_suffix("+00") {
            Some(time) => {
                out.push_str(time);
                out.push('Z');
            }
            None => out.push_str(rest),
        }
    } else {
        out.push_str(rest);
    }
    out
}

/// Parses an array literal such as `{a,"b c",NULL}` or `{{1,2},{3,4}}` (with
/// an optional `[1:2]=` bounds prefix) into nested arrays of typed elements.
/// `None` when the text is not a well-formed array literal.
fn parse_array(text: &str, element: u32) -> Option<Datum> {
    // Only a literal with explicit bounds starts with '[': search for "={"
    // in those alone (the search showed in profiles of plain arrays).
    let body = match text.starts_with('[').then(|| text.find("={")).flatten() {
        Some(eq) => &text[eq + 1..],
        None => text,
    };
    let mut parser = ArrayParser {
        bytes: body.as_bytes(),
        text: body,
        pos: 0,
        element,
    };
    let value = parser.array()?;
    (parser.pos == body.len()).then_some(value)
}

struct ArrayParser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    element: u32,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn array(&mut self) -> Option<Datum> {
        if self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Datum::Array(items));
        }
        loop {
            let item = match self.peek()? {
                b'{' => self.array()?,
                b'"' => {
                    let s = self.quoted()?;
                    text_to_datum(self.element, &s)
                }
                _ => {
                    let start = self.pos;
                    while !matches!(self.peek()?, b',' | b'}') {
                        self.pos += 1;
                    }
                    let raw = self.text[start..self.pos].trim();
                    if raw.eq_ignore_ascii_case("NULL") {
                        Datum::Null
                    } else {
                        text_to_datum(self.element, raw)
                    }
                }
            };
            items.push(item);
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(Datum::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<String> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    self.pos += 1;
                    out.push(self.peek()?);
                    self.pos += 1;
                }
                b => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    #[test]
    fn scalars() {
        assert_eq!(text_to_datum(BOOL, "t"), Datum::Bool(true));
        assert_eq!(text_to_datum(BOOL, "f"), Datum::Bool(false));
        assert_eq!(
            text_to_datum(INT8, "-9223372036854775808"),
            Datum::Int(i64::MIN)
        );
        assert_eq!(text_to_datum(INT2, "7"), Datum::Int(7));
        assert_eq!(text_to_datum(FLOAT8, "0.1"), Datum::Float(0.1));
        assert_eq!(text_to_datum(FLOAT4, "NaN"), t("NaN"));
        assert_eq!(text_to_datum(FLOAT8, "-Infinity"), t("-Infinity"));
        assert_eq!(
            text_to_datum(NUMERIC, "12345678901234567890.000000000001"),
            t("12345678901234567890.000000000001")
        );
        assert_eq!(
            text_to_datum(JSONB, "{\"a\": 1}"),
            Datum::Json("{\"a\": 1}".into())
        );
        assert_eq!(
            text_to_datum(UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(text_to_datum(DATE, "2026-11-28"), t("2026-11-28"));
        assert_eq!(text_to_datum(12345, "whatever"), t("whatever"));
    }

    #[test]
    fn timestamps_become_iso_8601() {
        assert_eq!(
            text_to_datum(TIMESTAMPTZ, "2026-11-28 03:14:02.123456+00"),
            t("2026-11-28T03:14:02.123456Z")
        );
        assert_eq!(
            text_to_datum(TIMESTAMPTZ, "2026-11-28 03:14:02+00"),
            t("2026-11-28T03:14:02Z")
        );
        assert_eq!(
            text_to_datum(TIMESTAMP, "2026-11-28 03:14:02.5"),
            t("2026-11-28T03:14:02.5")
        );
        assert_eq!(text_to_datum(TIMESTAMPTZ, "infinity"), t("infinity"));
        assert_eq!(text_to_datum(TIMESTAMPTZ, "-infinity"), t("-infinity"));
    }

    #[test]
    fn arrays() {
        assert_eq!(
            text_to_datum(1009, r#"{a,"b c",NULL,"NULL","x\"y\\z","{,}"}"#),
            Datum::Array(vec![
                t("a"),
                t("b c"),
                Datum::Null,
                t("NULL"),
                t("x\"y\\z"),
                t("{,}")
            ])
        );
        assert_eq!(
            text_to_datum(1007, "{{1,2},{3,NULL}}"),
            Datum::Array(vec![
                Datum::Array(vec![Datum::Int(1), Datum::Int(2)]),
                Datum::Array(vec![Datum::Int(3), Datum::Null])
            ])
        );
        assert_eq!(text_to_datum(1007, "{}"), Datum::Array(vec![]));
        assert_eq!(
            text_to_datum(1007, "[0:1]={5,6}"),
            Datum::Array(vec![Datum::Int(5), Datum::Int(6)])
        );
        // malformed: kept as text
        assert_eq!(text_to_datum(1007, "{1,2"), t("{1,2"));
    }
}

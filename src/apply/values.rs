//! Column values to typed JSON values: the text form as Postgres prints it
//! (with the session settings pinned by `source`: DateStyle=ISO,
//! IntervalStyle=iso_8601, TimeZone=UTC, extra_float_digits=3,
//! bytea_output=hex), or the binary send format when a tenant sets
//! `binary = true`. The rules, type by type, are in docs/events.md ("Types").
//!
//! A value that does not parse as its type is kept as text (in binary mode as
//! `{"binary_base64": …}`): an odd value never stops the stream.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use super::json::{is_json, one_line};
use crate::model::{base64_encode, civil_from_days, Datum, TypeShape};

/// Built-in type OIDs (from `pg_type.dat`).
pub mod type_oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const TID: u32 = 27;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const BOX: u32 = 603;
    pub const CIDR: u32 = 650;
    pub const MACADDR8: u32 = 774;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const PG_LSN: u32 = 3220;
    pub const JSONB: u32 = 3802;
    pub const XID8: u32 = 5069;
}

use type_oid::*;

/// Nesting deeper than this (a domain over an array of a composite of …) is
/// kept as text; it also guards against a cycle in a corrupt catalog answer.
const MAX_DEPTH: u8 = 16;

/// Days from 1970-01-01 (Unix) to 2000-01-01 (the Postgres epoch).
const PG_EPOCH_DAYS: i64 = 10_957;

/// Built-in scalar types: their values are typed by `scalar_text` (or kept
/// as text), and the catalog never needs to be asked about them. Every base
/// type of pg_catalog in PostgreSQL 15. One bit test: this runs for every
/// value and array element.
fn is_builtin_scalar(oid: u32) -> bool {
    let word = (oid / 64) as usize;
    word < SCALAR_BITS.len() && SCALAR_BITS[word] & (1 << (oid % 64)) != 0
}

/// `builtin_scalar_oid` as a bit set: every such OID is below 6,400.
const SCALAR_BITS: [u64; 100] = {
    let mut bits = [0u64; 100];
    let mut oid = 0;
    while oid < 6_400 {
        if builtin_scalar_oid(oid) {
            bits[(oid / 64) as usize] |= 1 << (oid % 64);
        }
        oid += 1;
    }
    bits
};

/// The list of built-in scalar type OIDs (see [`is_builtin_scalar`]).
const fn builtin_scalar_oid(oid: u32) -> bool {
    matches!(
        oid,
        16..=30
            | 114
            | 142
            | 194
            | 600..=604
            | 628
            | 650
            | 700
            | 701
            | 718
            | 774
            | 790
            | 829
            | 869
            | 1033
            | 1042
            | 1043
            | 1082
            | 1083
            | 1114
            | 1184
            | 1186
            | 1266
            | 1560
            | 1562
            | 1700
            | 1790
            | 2202..=2206
            | 2950
            | 2970
            | 3220
            | 3361
            | 3402
            | 3614
            | 3615
            | 3642
            | 3734
            | 3769
            | 3802
            | 4072
            | 4089
            | 4096
            | 4191
            | 4600
            | 4601
            | 5017
            | 5038
            | 5069
    )
}

/// The element type of a built-in array type (pg_type.typelem, PostgreSQL 15).
fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        143 => 142,
        199 => 114,
        271 => 5069,
        629 => 628,
        651 => 650,
        719 => 718,
        775 => 774,
        791 => 790,
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1021 => 700,
        1022 => 701,
        1027 => 604,
        1028 => 26,
        1034 => 1033,
        1040 => 829,
        1041 => 869,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        2201 => 1790,
        2207..=2211 => oid - 5,
        2949 => 2970,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3644 => 3642,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        3905 | 3907 | 3909 | 3911 | 3913 | 3927 => oid - 1,
        4073 => 4072,
        4090 => 4089,
        4097 => 4096,
        4192 => 4191,
        5039 => 5038,
        6150 => 4451,
        6151..=6153 => oid - 1619,
        6155 => 4535,
        6157 => 4536,
        _ => return None,
    })
}

/// The shape of a type: built-in knowledge first, then what the catalog said.
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    Scalar,
    Domain(u32),
    Array { element: u32, delimiter: u8 },
    Composite(&'a [(Arc<str>, u32)]),
    Range(u32),
    Multirange(u32),
    Enum,
    Text,
}

/// What walcast knows about a built-in type without asking the catalog, in
/// the catalog's terms (`TypeShape::Text` for a scalar); `None` when `oid`
/// is not a built-in type it knows.
pub fn builtin_shape(oid: u32) -> Option<TypeShape> {
    Some(match TypeMap::default().shape(oid)? {
        Shape::Scalar | Shape::Text | Shape::Composite(_) => TypeShape::Text,
        Shape::Enum => TypeShape::Enum,
        Shape::Domain(base) => TypeShape::Domain { base },
        Shape::Array { element, delimiter } => TypeShape::Array { element, delimiter },
        Shape::Range(subtype) => TypeShape::Range { subtype },
        Shape::Multirange(range) => TypeShape::Multirange { range },
    })
}

/// What is known about the types of a tenant's columns beyond the built-in
/// ones: domains, enums, composites, ranges and arrays of them, filled from
/// the catalog by the pipeline (`source::catalog`) when a Relation names a
/// type it does not know. An OID that is in neither is converted as text.
#[derive(Debug, Default, Clone)]
pub struct TypeMap {
    shapes: HashMap<u32, TypeShape>,
}

impl TypeMap {
    pub fn insert(&mut self, oid: u32, shape: TypeShape) {
        self.shapes.insert(oid, shape);
    }

    /// Whether converting values of `oid` needs nothing from the catalog.
    pub fn knows(&self, oid: u32) -> bool {
        self.shape(oid).is_some()
    }

    /// Forgets `oid` and every type reached from it, so that the next
    /// Relation using it looks them up again: Postgres sends a Type message
    /// when it (re)describes a type, which may have changed (ALTER TYPE).
    pub fn forget(&mut self, oid: u32) {
        let mut stack = vec![oid];
        while let Some(oid) = stack.pop() {
            if let Some(shape) = self.shapes.remove(&oid) {
                stack.extend(shape.referenced());
            }
        }
    }

    /// The types reached from `oids` (through domains, arrays, composites,
    /// ranges) that are neither built in nor in the map: what the catalog
    /// must be asked about before values of `oids` can be typed.
    pub fn missing(&self, oids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut stack: Vec<u32> = oids.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let mut missing = Vec::new();
        while let Some(oid) = stack.pop() {
            if !seen.insert(oid) {
                continue;
            }
            match self.shape(oid) {
                None => missing.push(oid),
                Some(Shape::Domain(t)) | Some(Shape::Range(t)) | Some(Shape::Multirange(t)) => {
                    stack.push(t)
                }
                Some(Shape::Array { element, .. }) => stack.push(element),
                Some(Shape::Composite(fields)) => stack.extend(fields.iter().map(|(_, t)| *t)),
                Some(Shape::Scalar) | Some(Shape::Enum) | Some(Shape::Text) => {}
            }
        }
        missing
    }

    fn shape(&self, oid: u32) -> Option<Shape<'_>> {
        if is_builtin_scalar(oid) {
            return Some(Shape::Scalar);
        }
        if let Some(element) = builtin_array_element(oid) {
            // box is the only built-in type whose array text uses ';'.
            let delimiter = if element == BOX { b';' } else { b',' };
            return Some(Shape::Array { element, delimiter });
        }
        match oid {
            // int4range, numrange, tsrange, tstzrange, daterange, int8range
            3904 => return Some(Shape::Range(INT4)),
            3906 => return Some(Shape::Range(NUMERIC)),
            3908 => return Some(Shape::Range(TIMESTAMP)),
            3910 => return Some(Shape::Range(TIMESTAMPTZ)),
            3912 => return Some(Shape::Range(DATE)),
            3926 => return Some(Shape::Range(INT8)),
            // their multiranges
            4451 => return Some(Shape::Multirange(3904)),
            4532..=4535 => return Some(Shape::Multirange(3906 + 2 * (oid - 4532))),
            4536 => return Some(Shape::Multirange(3926)),
            _ => {}
        }
        Some(match self.shapes.get(&oid)? {
            TypeShape::Domain { base } => Shape::Domain(*base),
            TypeShape::Array { element, delimiter } => Shape::Array {
                element: *element,
                delimiter: *delimiter,
            },
            TypeShape::Composite { fields } => Shape::Composite(fields),
            TypeShape::Range { subtype } => Shape::Range(*subtype),
            TypeShape::Multirange { range } => Shape::Multirange(*range),
            TypeShape::Enum => Shape::Enum,
            TypeShape::Text => Shape::Text,
        })
    }

    /// Converts one value's text form to its typed value.
    pub fn text_to_datum(&self, oid: u32, text: &str) -> Datum {
        self.text_value(oid, text, 0, &Cell::new(None))
    }

    /// Like [`TypeMap::text_to_datum`], and sets `stale` to the OID of a
    /// composite type whose value has another number of fields than the map
    /// says: the type changed (`ALTER TYPE … ADD ATTRIBUTE`, after which
    /// Postgres does not describe it again) and must be looked up anew.
    pub fn text_to_datum_checked(&self, oid: u32, text: &str, stale: &Cell<Option<u32>>) -> Datum {
        self.text_value(oid, text, 0, stale)
    }

    fn text_value(&self, oid: u32, text: &str, depth: u8, stale: &Cell<Option<u32>>) -> Datum {
        if depth > MAX_DEPTH {
            return Datum::Text(text.to_owned());
        }
        let depth = depth + 1;
        let parsed = match self.shape(oid) {
            Some(Shape::Scalar) => return scalar_text(oid, text),
            Some(Shape::Domain(base)) => return self.text_value(base, text, depth, stale),
            Some(Shape::Array { element, delimiter }) => parse_array(text, delimiter, &|s| {
                self.text_value(element, s, depth, stale)
            }),
            Some(Shape::Composite(fields)) => {
                let parsed =
                    parse_composite(text, fields, &|t, s| self.text_value(t, s, depth, stale));
                if parsed.is_none() && composite_arity(text).is_some_and(|n| n != fields.len()) {
                    stale.set(Some(oid));
                }
                parsed
            }
            Some(Shape::Range(subtype)) => {
                parse_range_only(text, &|s| self.text_value(subtype, s, depth, stale))
            }
            Some(Shape::Multirange(range)) => {
                let subtype = match self.shape(range) {
                    Some(Shape::Range(subtype)) => Some(subtype),
                    _ => None,
                };
                subtype.and_then(|subtype| {
                    parse_multirange(text, &|s| self.text_value(subtype, s, depth, stale))
                })
            }
            Some(Shape::Enum) | Some(Shape::Text) | None => None,
        };
        parsed.unwrap_or_else(|| Datum::Text(text.to_owned()))
    }

    /// Converts one value in its type's binary send format (binary mode) to
    /// the same typed value its text form gives. Types without a binary
    /// decoder here become `{"binary_base64": "<the bytes>"}`.
    pub fn binary_to_datum(&self, oid: u32, bytes: &[u8]) -> Datum {
        self.binary_to_datum_checked(oid, bytes, &Cell::new(None))
    }

    /// Like [`TypeMap::binary_to_datum`], and sets `stale` like
    /// [`TypeMap::text_to_datum_checked`].
    pub fn binary_to_datum_checked(
        &self,
        oid: u32,
        bytes: &[u8],
        stale: &Cell<Option<u32>>,
    ) -> Datum {
        self.binary_value(oid, bytes, 0, stale)
            .unwrap_or_else(|| undecoded_binary(bytes))
    }

    fn binary_value(
        &self,
        oid: u32,
        bytes: &[u8],
        depth: u8,
        stale: &Cell<Option<u32>>,
    ) -> Option<Datum> {
        if depth > MAX_DEPTH {
            return None;
        }
        let depth = depth + 1;
        let value = |oid: u32, b: &[u8]| self.binary_value(oid, b, depth, stale);
        match self.shape(oid)? {
            Shape::Scalar => binary_scalar(oid, bytes),
            Shape::Domain(base) => value(base, bytes),
            // enum_send sends the label as text.
            Shape::Enum => std::str::from_utf8(bytes)
                .ok()
                .map(|s| Datum::Text(s.to_owned())),
            // An extension's send format is its own: never guess.
            Shape::Text => None,
            Shape::Array { .. } => binary_array(bytes, &value),
            Shape::Composite(fields) => {
                let parsed = binary_composite(bytes, fields, &value);
                let count = read_i32(bytes, &mut 0).and_then(|n| usize::try_from(n).ok());
                if parsed.is_none() && count.is_some_and(|n| n != fields.len()) {
                    stale.set(Some(oid));
                }
                parsed
            }
            Shape::Range(subtype) => {
                let (range, end) = binary_range(bytes, &|b| value(subtype, b))?;
                (end == bytes.len()).then_some(range)
            }
            Shape::Multirange(range) => {
                let Some(Shape::Range(subtype)) = self.shape(range) else {
                    return None;
                };
                binary_multirange(bytes, &|b| value(subtype, b))
            }
        }
    }
}

/// Converts one column's text form, knowing only the built-in types.
pub fn text_to_datum(type_oid: u32, text: &str) -> Datum {
    TypeMap::default().text_to_datum(type_oid, text)
}

/// A built-in scalar's text form to its typed value.
fn scalar_text(oid: u32, text: &str) -> Datum {
    match oid {
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
        JSON | JSONB if is_json(text) => Datum::Json(one_line(text)),
        DATE => Datum::Text(iso_datetime(text, DateTime::Date)),
        TIMESTAMP => Datum::Text(iso_datetime(text, DateTime::Timestamp)),
        TIMESTAMPTZ => Datum::Text(iso_datetime(text, DateTime::TimestampTz)),
        // numeric stays text so that no digit is lost; everything else is
        // its text form (docs/events.md).
        _ => Datum::Text(text.to_owned()),
    }
}

/// JSON text embedded as JSON when it is well-formed, else kept as a string.
fn json_datum(text: String) -> Datum {
    if is_json(&text) {
        Datum::Json(one_line(&text))
    } else {
        Datum::Text(text)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum DateTime {
    Date,
    Timestamp,
    TimestampTz,
}

/// Postgres's ISO DateStyle text (`2026-11-28 03:14:02.123456+00`,
/// `0044-03-15 BC`) to ISO 8601 (`2026-11-28T03:14:02.123456Z`,
/// `-0043-03-15`): `T` between date and time, `Z` for the UTC offset, and BC
/// years as astronomical years (1 BC is year 0000, 2 BC is -0001), as ISO
/// 8601 counts them. `infinity` and `-infinity` stay as they are; text of
/// any other shape is kept unchanged.
fn iso_datetime(text: &str, kind: DateTime) -> String {
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let (date, time) = match kind {
        DateTime::Date => (body, None),
        _ => match body.split_once(' ') {
            Some((date, time)) => (date, Some(time)),
            None => return text.to_owned(),
        },
    };
    let Some((year, month_day)) = date.split_once('-') else {
        return text.to_owned();
    };
    if year.is_empty() || !year.bytes().all(|b| b.is_ascii_digit()) || month_day.len() != 5 {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 2);
    if bc {
        let Ok(year) = year.parse::<i64>() else {
            return text.to_owned();
        };
        push_year(&mut out, 1 - year);
    } else {
        out.push_str(year);
    }
    out.push('-');
    out.push_str(month_day);
    if let Some(time) = time {
        out.push('T');
        // With TimeZone=UTC the offset is always +00.
        match (kind, time.strip_suffix("+00")) {
            (DateTime::TimestampTz, Some(time)) => {
                out.push_str(time);
                out.push('Z');
            }
            _ => out.push_str(time),
        }
    }
    out
}

/// An astronomical year as ISO 8601 writes it: at least four digits, a
/// minus sign before year 0.
fn push_year(out: &mut String, year: i64) {
    use std::fmt::Write;
    if year < 0 {
        let _ = write!(out, "-{:04}", -year);
    } else {
        let _ = write!(out, "{year:04}");
    }
}

/// Parses an array literal such as `{a,"b c",NULL}` or `{{1,2},{3,4}}` (with
/// an optional `[1:2]=` bounds prefix, which is dropped) into nested arrays
/// of elements converted by `element`. `None` when the text is not a
/// well-formed array literal.
fn parse_array(text: &str, delimiter: u8, element: &dyn Fn(&str) -> Datum) -> Option<Datum> {
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
        delimiter,
        element,
    };
    let value = parser.array()?;
    (parser.pos == body.len()).then_some(value)
}

struct ArrayParser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
    delimiter: u8,
    element: &'a dyn Fn(&str) -> Datum,
}

impl<'a> ArrayParser<'a> {
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
                    (self.element)(&s)
                }
                _ => {
                    let start = self.pos;
                    let delimiter = self.delimiter;
                    self.pos += self.bytes[start..]
                        .iter()
                        .position(|&b| b == delimiter || b == b'}')?;
                    // array_out quotes an element with white space at
                    // either end; array_in skips ASCII white space only.
                    let raw = self.text[start..self.pos].trim_ascii();
                    // Only an unquoted NULL is a null element; "NULL" is text.
                    if raw.eq_ignore_ascii_case("NULL") {
                        Datum::Null
                    } else {
                        (self.element)(raw)
                    }
                }
            };
            items.push(item);
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    return Some(Datum::Array(items));
                }
                b if b == self.delimiter => self.pos += 1,
                _ => return None,
            }
        }
    }

    /// A quoted element, after its opening quote: a slice of the literal
    /// when it has no backslash (no copy), else the unescaped text.
    fn quoted(&mut self) -> Option<Cow<'a, str>> {
        self.pos += 1; // opening quote
        let start = self.pos;
        loop {
            match self.peek()? {
                // The quotes are ASCII, so the slice is on char boundaries.
                b'"' => {
                    self.pos += 1;
                    return Some(Cow::Borrowed(&self.text[start..self.pos - 1]));
                }
                b'\\' => break,
                _ => self.pos += 1,
            }
        }
        let mut out = self.bytes[start..self.pos].to_vec();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return String::from_utf8(out).ok().map(Cow::Owned);
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

/// Reads one field of a composite or one bound of a range, as `record_out`
/// and `range_out` write them: unquoted, or in double quotes with `""` and
/// `\` escaping. Stops before the first unquoted byte in `ends`. Returns the
/// field (`None` when it is empty: NULL, or an unbounded bound) and the
/// position after it.
fn read_field(text: &str, mut pos: usize, ends: &[u8]) -> Option<(Option<String>, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut seen = false;
    let mut quoted = false;
    loop {
        let b = *bytes.get(pos)?;
        if quoted {
            match b {
                b'"' if bytes.get(pos + 1) == Some(&b'"') => {
                    out.push(b'"');
                    pos += 2;
                }
                b'"' => {
                    quoted = false;
                    pos += 1;
                }
                b'\\' => {
                    out.push(*bytes.get(pos + 1)?);
                    pos += 2;
                }
                _ => {
                    out.push(b);
                    pos += 1;
                }
            }
        } else if ends.contains(&b) {
            let field = if seen {
                Some(String::from_utf8(out).ok()?)
            } else {
                None
            };
            return Some((field, pos));
        } else {
            seen = true;
            match b {
                b'"' => {
                    quoted = true;
                    pos += 1;
                }
                b'\\' => {
                    out.push(*bytes.get(pos + 1)?);
                    pos += 2;
                }
                _ => {
                    out.push(b);
                    pos += 1;
                }
            }
        }
    }
}

/// A composite value `(1,"a b",,"")` to an object of its fields, typed by
/// the field types. An empty field is NULL; `""` is the empty string.
fn parse_composite(
    text: &str,
    fields: &[(Arc<str>, u32)],
    value: &dyn Fn(u32, &str) -> Datum,
) -> Option<Datum> {
    if !text.starts_with('(') || fields.is_empty() {
        return None;
    }
    let mut pos = 1;
    let mut out = Vec::with_capacity(fields.len());
    for (i, (name, oid)) in fields.iter().enumerate() {
        let (field, next) = read_field(text, pos, b",)")?;
        let expected = if i + 1 == fields.len() { b')' } else { b',' };
        if text.as_bytes()[next] != expected {
            return None;
        }
        pos = next + 1;
        let datum = match field {
            None => Datum::Null,
            Some(s) => value(*oid, &s),
        };
        out.push((Arc::clone(name), datum));
    }
    (pos == text.len()).then_some(Datum::Object(out))
}

/// The number of fields of a well-formed composite text, whatever their types.
fn composite_arity(text: &str) -> Option<usize> {
    if !text.starts_with('(') {
        return None;
    }
    let (mut pos, mut count) = (1, 0);
    loop {
        let (_, next) = read_field(text, pos, b",)")?;
        count += 1;
        pos = next + 1;
        if text.as_bytes()[next] == b')' {
            return (pos == text.len()).then_some(count);
        }
    }
}

/// A range `[1,5)` to `{"lower":1,"upper":5,"lower_inc":true,"upper_inc":false}`
/// (an unbounded side is `null`), `empty` to `{"empty":true}`. Returns the
/// value and the position after the range in `text`.
fn parse_range(text: &str, bound: &dyn Fn(&str) -> Datum) -> Option<(Datum, usize)> {
    if text.starts_with("empty") {
        return Some((
            Datum::Object(vec![(Arc::from("empty"), Datum::Bool(true))]),
            "empty".len(),
        ));
    }
    let lower_inc = match text.as_bytes().first()? {
        b'[' => true,
        b'(' => false,
        _ => return None,
    };
    let (lower, pos) = read_field(text, 1, b",")?;
    let (upper, pos) = read_field(text, pos + 1, b")]")?;
    let upper_inc = text.as_bytes()[pos] == b']';
    let side = |s: Option<String>| s.map_or(Datum::Null, |s| bound(&s));
    Some((
        Datum::Object(vec![
            (Arc::from("lower"), side(lower)),
            (Arc::from("upper"), side(upper)),
            (Arc::from("lower_inc"), Datum::Bool(lower_inc)),
            (Arc::from("upper_inc"), Datum::Bool(upper_inc)),
        ]),
        pos + 1,
    ))
}

/// A whole text that is one range.
fn parse_range_only(text: &str, bound: &dyn Fn(&str) -> Datum) -> Option<Datum> {
    let (value, end) = parse_range(text, bound)?;
    (end == text.len()).then_some(value)
}

/// A multirange `{[1,3),[5,7)}` to an array of ranges.
fn parse_multirange(text: &str, bound: &dyn Fn(&str) -> Datum) -> Option<Datum> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut ranges = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (range, end) = parse_range(rest, bound)?;
        ranges.push(range);
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
            if rest.is_empty() {
                return None;
            }
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(Datum::Array(ranges))
}

/// What binary mode says about a value it cannot decode: its bytes, never a
/// guess.
fn undecoded_binary(bytes: &[u8]) -> Datum {
    Datum::Object(vec![(
        Arc::from("binary_base64"),
        Datum::Text(base64_encode(bytes)),
    )])
}

/// A built-in scalar's binary send format to the value its text form gives.
/// `None` for types without a decoder here and for malformed bytes.
fn binary_scalar(oid: u32, b: &[u8]) -> Option<Datum> {
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    Some(match oid {
        BOOL => match b {
            [v] => Datum::Bool(*v != 0),
            _ => return None,
        },
        INT2 => Datum::Int(i16::from_be_bytes(b.try_into().ok()?).into()),
        INT4 => Datum::Int(i32::from_be_bytes(b.try_into().ok()?).into()),
        INT8 => Datum::Int(i64::from_be_bytes(b.try_into().ok()?)),
        OID => Datum::Int(u32::from_be_bytes(b.try_into().ok()?).into()),
        // float4 through its shortest decimal text, as Postgres prints it,
        // so that 0.1::float4 is 0.1 in both modes (not 0.10000000149…).
        FLOAT4 => float_datum(f32::from_be_bytes(b.try_into().ok()?).to_string()),
        FLOAT8 => float_datum(f64::from_be_bytes(b.try_into().ok()?).to_string()),
        NUMERIC => Datum::Text(numeric_text(b)?),
        TEXT | VARCHAR | BPCHAR | NAME | XML => Datum::Text(text(b)?),
        // Only valid JSON is embedded (see the text path).
        JSON => json_datum(text(b)?),
        // jsonb_send: a version byte (1), then the text jsonb_out prints.
        JSONB => match b.split_first() {
            Some((1, rest)) => json_datum(text(rest)?),
            _ => return None,
        },
        UUID => {
            let b: [u8; 16] = b.try_into().ok()?;
            let hex = hex(&b);
            Datum::Text(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        BYTEA => Datum::Text(format!("\\x{}", hex(b))),
        DATE => Datum::Text(match i32::from_be_bytes(b.try_into().ok()?) {
            i32::MIN => "-infinity".into(),
            i32::MAX => "infinity".into(),
            days => iso_date(i64::from(days)),
        }),
        TIMESTAMP | TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(b.try_into().ok()?);
            Datum::Text(match micros {
                i64::MIN => "-infinity".into(),
                i64::MAX => "infinity".into(),
                _ => {
                    let days = micros.div_euclid(86_400_000_000);
                    let mut out = iso_date(days);
                    out.push('T');
                    out.push_str(&time_of_day(micros.rem_euclid(86_400_000_000)));
                    if oid == TIMESTAMPTZ {
                        out.push('Z');
                    }
                    out
                }
            })
        }
        // "char": one byte; char_out writes a high-bit byte as \ooo.
        CHAR => Datum::Text(match b {
            [] | [0] => String::new(),
            [c] if c.is_ascii() => char::from(*c).to_string(),
            [c] => format!("\\{:03o}", c),
            _ => return None,
        }),
        TID => {
            let block = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
            let offset = u16::from_be_bytes(b.get(4..)?.try_into().ok()?);
            Datum::Text(format!("({block},{offset})"))
        }
        XID | CID => Datum::Text(u32::from_be_bytes(b.try_into().ok()?).to_string()),
        XID8 => Datum::Text(u64::from_be_bytes(b.try_into().ok()?).to_string()),
        PG_LSN => {
            let lsn = u64::from_be_bytes(b.try_into().ok()?);
            Datum::Text(format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff))
        }
        MACADDR | MACADDR8 if b.len() == if oid == MACADDR { 6 } else { 8 } => {
            let parts: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            Datum::Text(parts.join(":"))
        }
        BIT | VARBIT => {
            let bits = usize::try_from(i32::from_be_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
            let data = &b[4..];
            if data.len() != bits.div_ceil(8) {
                return None;
            }
            let text: String = (0..bits)
                .map(|i| {
                    if data[i / 8] & (0x80 >> (i % 8)) != 0 {
                        '1'
                    } else {
                        '0'
                    }
                })
                .collect();
            Datum::Text(text)
        }
        INET | CIDR => Datum::Text(inet_text(b, oid == CIDR)?),
        TIME => Datum::Text(time_of_day(i64::from_be_bytes(b.try_into().ok()?))),
        INTERVAL => {
            if b.len() != 16 {
                return None;
            }
            let micros = i64::from_be_bytes(b[..8].try_into().ok()?);
            let days = i32::from_be_bytes(b[8..12].try_into().ok()?);
            let months = i32::from_be_bytes(b[12..].try_into().ok()?);
            Datum::Text(iso_interval(micros, days, months))
        }
        TIMETZ => {
            if b.len() != 12 {
                return None;
            }
            let micros = i64::from_be_bytes(b[..8].try_into().ok()?);
            // Postgres stores the zone as seconds west of UTC.
            let west = i32::from_be_bytes(b[8..].try_into().ok()?);
            let mut out = time_of_day(micros);
            let east = -i64::from(west);
            out.push(if east < 0 { '-' } else { '+' });
            let east = east.abs();
            out.push_str(&format!("{:02}", east / 3600));
            if east % 3600 != 0 {
                out.push_str(&format!(":{:02}", (east / 60) % 60));
                if east % 60 != 0 {
                    out.push_str(&format!(":{:02}", east % 60));
                }
            }
            Datum::Text(out)
        }
        _ => return None,
    })
}

/// inet_send's format (family, bits, is-cidr flag, address length,
/// address) as network_out prints it: every IPv4 octet, `/bits` unless an
/// inet covers a single address. `None` for IPv6 addresses with an
/// embedded IPv4 part, whose spelling Postgres and Rust may not share.
fn inet_text(b: &[u8], cidr: bool) -> Option<String> {
    // PGSQL_AF_INET and PGSQL_AF_INET6 (src/include/utils/inet.h)
    let &[family, bits, _, len] = b.first_chunk::<4>()?;
    let address = &b[4..];
    let (text, max) = match (family, len, address.len()) {
        (2, 4, 4) => (
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(address).ok()?).to_string(),
            32,
        ),
        (3, 16, 16) => {
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(address).ok()?);
            let words = ip.segments();
            if words[..5].iter().all(|w| *w == 0) && ip.to_bits() > 1 {
                return None;
            }
            (ip.to_string(), 128)
        }
        _ => return None,
    };
    Some(if cidr || bits != max {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// An interval as Postgres prints it with IntervalStyle=iso_8601
/// (`EncodeInterval`): each part with its own sign, zero parts left out,
/// `PT0S` for zero.
fn iso_interval(micros: i64, days: i32, months: i32) -> String {
    use std::fmt::Write;
    // interval2tm: C division truncates toward zero, like Rust's.
    let (years, months) = (months / 12, months % 12);
    let hours = micros / 3_600_000_000;
    let minutes = (micros % 3_600_000_000) / 60_000_000;
    let seconds = (micros % 60_000_000) / 1_000_000;
    let fraction = micros % 1_000_000;
    if years == 0 && months == 0 && days == 0 && micros == 0 {
        return "PT0S".into();
    }
    let mut out = String::from("P");
    let mut part = |value: i64, unit: char| {
        if value != 0 {
            let _ = write!(out, "{value}{unit}");
        }
    };
    part(years.into(), 'Y');
    part(months.into(), 'M');
    part(days.into(), 'D');
    if micros != 0 {
        out.push('T');
    }
    let mut part = |value: i64, unit: char| {
        if value != 0 {
            let _ = write!(out, "{value}{unit}");
        }
    };
    part(hours, 'H');
    part(minutes, 'M');
    if seconds != 0 || fraction != 0 {
        if seconds < 0 || fraction < 0 {
            out.push('-');
        }
        let _ = write!(out, "{}", seconds.abs());
        if fraction != 0 {
            let digits = format!(".{:06}", fraction.abs());
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push('S');
    }
    out
}

fn float_datum(text: String) -> Datum {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Datum::Float(f),
        // Rust prints "NaN", "inf", "-inf"; Postgres "NaN", "Infinity", "-Infinity".
        _ => Datum::Text(match text.as_str() {
            "inf" => "Infinity".into(),
            "-inf" => "-Infinity".into(),
            _ => "NaN".into(),
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Days since 2000-01-01 as the ISO date text mode gives.
fn iso_date(days_since_2000: i64) -> String {
    let (year, month, day) = civil_from_days(days_since_2000 + PG_EPOCH_DAYS);
    let mut out = String::with_capacity(11);
    push_year(&mut out, year);
    out.push_str(&format!("-{month:02}-{day:02}"));
    out
}

/// Microseconds since midnight as Postgres prints a time: `HH:MM:SS`, then
/// the fraction without trailing zeros, if any.
fn time_of_day(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!(".{frac:06}");
        out.push_str(digits.trim_end_matches('0'));
    }
    out
}

/// numeric_send's format (ndigits, weight, sign, dscale, base-10000 digits)
/// to the text numeric_out prints.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            b.get(i * 2..i * 2 + 2)?.try_into().ok()?,
        ))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if b.len() != 8 + 2 * ndigits {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    // The digit with weight w is digits[weight - w].
    let digit = |w: i64| -> Option<u16> {
        let index = weight - w;
        if index < 0 || index >= ndigits as i64 {
            Some(0)
        } else {
            let d = word(4 + index as usize)?;
            (d < 10_000).then_some(d)
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for w in (0..=weight).rev() {
            if w == weight {
                out.push_str(&digit(w)?.to_string());
            } else {
                out.push_str(&format!("{:04}", digit(w)?));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut w = -1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(w)?));
            w -= 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Some(out)
}

/// A big-endian i32 at `*pos`, moving past it.
fn read_i32(b: &[u8], pos: &mut usize) -> Option<i32> {
    let v = i32::from_be_bytes(b.get(*pos..pos.checked_add(4)?)?.try_into().ok()?);
    *pos += 4;
    Some(v)
}

/// A length-prefixed value (-1: NULL) at `*pos`, moving past it.
fn read_value<'a>(b: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = read_i32(b, pos)?;
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    let bytes = b.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(Some(bytes))
}

/// record_send's format (field count, then per field its type OID and a
/// length-prefixed value) to an object of the fields by name.
fn binary_composite(
    b: &[u8],
    fields: &[(Arc<str>, u32)],
    value: &dyn Fn(u32, &[u8]) -> Option<Datum>,
) -> Option<Datum> {
    let mut pos = 0;
    let count = usize::try_from(read_i32(b, &mut pos)?).ok()?;
    if count != fields.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for (name, _) in fields {
        let oid = read_i32(b, &mut pos)? as u32;
        let datum = match read_value(b, &mut pos)? {
            None => Datum::Null,
            Some(bytes) => value(oid, bytes)?,
        };
        out.push((Arc::clone(name), datum));
    }
    (pos == b.len()).then_some(Datum::Object(out))
}

/// range_send's format (a flags byte, then the finite bounds as
/// length-prefixed values) to the object text mode gives. Returns the value
/// and the bytes read.
fn binary_range(b: &[u8], bound: &dyn Fn(&[u8]) -> Option<Datum>) -> Option<(Datum, usize)> {
    // RANGE_EMPTY, RANGE_LB_INC, RANGE_UB_INC, RANGE_LB_INF, RANGE_UB_INF
    // (src/include/utils/rangetypes.h)
    const EMPTY: u8 = 0x01;
    const LB_INC: u8 = 0x02;
    const UB_INC: u8 = 0x04;
    const LB_INF: u8 = 0x08;
    const UB_INF: u8 = 0x10;
    let flags = *b.first()?;
    let mut pos = 1;
    if flags & EMPTY != 0 {
        let empty = Datum::Object(vec![(Arc::from("empty"), Datum::Bool(true))]);
        return Some((empty, pos));
    }
    let mut side = |infinite: bool| -> Option<Datum> {
        if infinite {
            return Some(Datum::Null);
        }
        bound(read_value(b, &mut pos)??)
    };
    let lower = side(flags & LB_INF != 0)?;
    let upper = side(flags & UB_INF != 0)?;
    Some((
        Datum::Object(vec![
            (Arc::from("lower"), lower),
            (Arc::from("upper"), upper),
            (Arc::from("lower_inc"), Datum::Bool(flags & LB_INC != 0)),
            (Arc::from("upper_inc"), Datum::Bool(flags & UB_INC != 0)),
        ]),
        pos,
    ))
}

/// multirange_send's format (a range count, then each range length-prefixed)
/// to an array of ranges.
fn binary_multirange(b: &[u8], bound: &dyn Fn(&[u8]) -> Option<Datum>) -> Option<Datum> {
    let mut pos = 0;
    let count = usize::try_from(read_i32(b, &mut pos)?).ok()?;
    // Each range takes at least its 4-byte length and a flags byte.
    if count > b.len() / 5 {
        return None;
    }
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let bytes = read_value(b, &mut pos)??;
        let (range, end) = binary_range(bytes, bound)?;
        if end != bytes.len() {
            return None;
        }
        ranges.push(range);
    }
    (pos == b.len()).then_some(Datum::Array(ranges))
}

/// array_send's format (ndim, has-null flag, element type, dimensions and
/// lower bounds, then each element as length + bytes, -1 for NULL) to nested
/// arrays. `None` when an element cannot be decoded.
fn binary_array(b: &[u8], element: &dyn Fn(u32, &[u8]) -> Option<Datum>) -> Option<Datum> {
    let mut pos = 0;
    let int = |pos: &mut usize| -> Option<i32> {
        let v = i32::from_be_bytes(b.get(*pos..*pos + 4)?.try_into().ok()?);
        *pos += 4;
        Some(v)
    };
    let ndim = usize::try_from(int(&mut pos)?).ok()?;
    let _has_null = int(&mut pos)?;
    let element_oid = int(&mut pos)? as u32;
    if ndim > 6 {
        return None; // MAXDIM
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(int(&mut pos)?).ok()?);
        let _lower_bound = int(&mut pos)?;
    }
    if ndim == 0 {
        return (pos == b.len()).then(|| Datum::Array(Vec::new()));
    }
    let total = dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))?;
    // Each element takes at least its 4-byte length.
    if total > (b.len() - pos) / 4 {
        return None;
    }
    let mut items = Vec::with_capacity(total);
    for _ in 0..total {
        let len = int(&mut pos)?;
        if len < 0 {
            items.push(Datum::Null);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let bytes = b.get(pos..pos.checked_add(len)?)?;
        pos += len;
        items.push(element(element_oid, bytes)?);
    }
    if pos != b.len() {
        return None;
    }
    // Fold the flat elements into nested arrays, innermost dimension first.
    for &dim in dims[1..].iter().rev() {
        if dim == 0 {
            return None;
        }
        let mut grouped = Vec::with_capacity(items.len() / dim);
        let mut it = items.into_iter();
        loop {
            let chunk: Vec<Datum> = it.by_ref().take(dim).collect();
            if chunk.is_empty() {
                break;
            }
            grouped.push(Datum::Array(chunk));
        }
        items = grouped;
    }
    Some(Datum::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn obj(pairs: Vec<(&str, Datum)>) -> Datum {
        Datum::Object(pairs.into_iter().map(|(k, v)| (Arc::from(k), v)).collect())
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
    fn scalar_bit_set_is_the_list() {
        for oid in (0..100_000).chain([u32::MAX - 1, u32::MAX]) {
            assert_eq!(is_builtin_scalar(oid), builtin_scalar_oid(oid), "{oid}");
        }
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
        assert_eq!(
            text_to_datum(TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"),
            t("-0043-03-15T12:00:00Z")
        );
        assert_eq!(text_to_datum(DATE, "0001-01-01 BC"), t("0000-01-01"));
        assert_eq!(
            text_to_datum(TIMESTAMP, "12026-01-01 10:00:00"),
            t("12026-01-01T10:00:00")
        );
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
        assert_eq!(
            text_to_datum(1020, "{(3,4),(1,2);(7,8),(5,6)}"),
            Datum::Array(vec![t("(3,4),(1,2)"), t("(7,8),(5,6)")])
        );
        // malformed: kept as text
        assert_eq!(text_to_datum(1007, "{1,2"), t("{1,2"));
    }

    #[test]
    fn ranges_and_multiranges() {
        let range = |lower, upper, li, ui| {
            obj(vec![
                ("lower", lower),
                ("upper", upper),
                ("lower_inc", Datum::Bool(li)),
                ("upper_inc", Datum::Bool(ui)),
            ])
        };
        assert_eq!(
            text_to_datum(3904, "[1,5)"),
            range(Datum::Int(1), Datum::Int(5), true, false)
        );
        assert_eq!(
            text_to_datum(3906, "(,2.5]"),
            range(Datum::Null, t("2.5"), false, true)
        );
        assert_eq!(
            text_to_datum(3910, r#"["2026-01-01 00:00:00+00",infinity)"#),
            range(t("2026-01-01T00:00:00Z"), t("infinity"), true, false)
        );
        assert_eq!(
            text_to_datum(3904, "empty"),
            obj(vec![("empty", Datum::Bool(true))])
        );
        assert_eq!(
            text_to_datum(4451, "{[1,3),[5,7)}"),
            Datum::Array(vec![
                range(Datum::Int(1), Datum::Int(3), true, false),
                range(Datum::Int(5), Datum::Int(7), true, false)
            ])
        );
        assert_eq!(text_to_datum(4451, "{}"), Datum::Array(vec![]));
        assert_eq!(text_to_datum(3904, "[1,5"), t("[1,5"));
        assert!(parse_range_only("[1,5)x", &|s| t(s)).is_none());
    }

    #[test]
    fn catalog_types() {
        let mut types = TypeMap::default();
        types.insert(
            90_000,
            TypeShape::Composite {
                fields: vec![(Arc::from("n"), INT4), (Arc::from("s"), TEXT)],
            },
        );
        types.insert(
            90_001,
            TypeShape::Array {
                element: 90_000,
                delimiter: b',',
            },
        );
        types.insert(90_002, TypeShape::Domain { base: 90_001 });
        assert_eq!(types.missing([90_002, 90_003, INT4, 1007]), vec![90_003]);
        assert_eq!(
            types.text_to_datum(90_002, r#"{"(1,\"a \"\"b\"\"\")","(,\"\")",NULL}"#),
            Datum::Array(vec![
                obj(vec![("n", Datum::Int(1)), ("s", t("a \"b\""))]),
                obj(vec![("n", Datum::Null), ("s", t(""))]),
                Datum::Null,
            ])
        );
        // a composite text of the wrong arity stays text, and says the type is stale
        let stale = Cell::new(None);
        assert_eq!(
            types.text_to_datum_checked(90_002, "{\"(1,a,b)\"}", &stale),
            Datum::Array(vec![t("(1,a,b)")])
        );
        assert_eq!(stale.get(), Some(90_000));
        let stale = Cell::new(None);
        assert_eq!(
            types.text_to_datum_checked(90_000, "(1,a", &stale),
            t("(1,a")
        );
        assert_eq!(stale.get(), None);
        types.forget(90_002);
        assert_eq!(types.missing([90_002]), vec![90_002]);
        assert!(!types.knows(90_000));
    }

    #[test]
    fn binary_scalars_match_text() {
        let types = TypeMap::default();
        let b = |oid, bytes: &[u8]| types.binary_to_datum(oid, bytes);
        assert_eq!(b(INT4, &(-5i32).to_be_bytes()), Datum::Int(-5));
        assert_eq!(b(FLOAT4, &0.1f32.to_be_bytes()), Datum::Float(0.1));
        assert_eq!(b(FLOAT8, &f64::NEG_INFINITY.to_be_bytes()), t("-Infinity"));
        // 12345.6700 (dscale 4): weight 1, digits [1, 2345, 6700]
        let numeric = [0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1a, 0x2c];
        assert_eq!(b(NUMERIC, &numeric), t("12345.6700"));
        // -0.00012 (dscale 5): weight -1, digits [1, 2000]
        let numeric = [0, 2, 0xff, 0xff, 0x40, 0, 0, 5, 0, 1, 0x07, 0xd0];
        assert_eq!(b(NUMERIC, &numeric), t("-0.00012"));
        assert_eq!(b(NUMERIC, &[0, 0, 0, 0, 0xC0, 0, 0, 0]), t("NaN"));
        assert_eq!(b(NUMERIC, &[0, 0, 0, 0, 0, 0, 0, 2]), t("0.00"));
        // 2026-11-28 03:14:02.5 = 848_027_642.5 s after 2000-01-01
        assert_eq!(
            b(TIMESTAMPTZ, &848_027_642_500_000i64.to_be_bytes()),
            t("2026-11-15T03:14:02.5Z")
        );
        assert_eq!(b(DATE, &(-1i32).to_be_bytes()), t("1999-12-31"));
        assert_eq!(b(DATE, &i32::MAX.to_be_bytes()), t("infinity"));
        assert_eq!(b(BYTEA, &[0xde, 0xad]), t("\\xdead"));
        assert_eq!(
            b(JSONB, b"\x01{\"a\": 1}"),
            Datum::Json("{\"a\": 1}".into())
        );
        assert_eq!(
            b(INTERVAL, &[1, 2, 3]),
            obj(vec![("binary_base64", t("AQID"))])
        );
        // int4range [1,5): flags LB_INC, then two length-prefixed int4s
        let mut range = vec![0x02];
        for v in [4i32, 1, 4, 5] {
            range.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            b(3904, &range),
            obj(vec![
                ("lower", Datum::Int(1)),
                ("upper", Datum::Int(5)),
                ("lower_inc", Datum::Bool(true)),
                ("upper_inc", Datum::Bool(false)),
            ])
        );
        assert_eq!(
            b(3904, &range[..range.len() - 2]),
            obj(vec![(
                "binary_base64",
                Datum::Text(base64_encode(&range[..range.len() - 2]))
            )])
        );
        assert_eq!(b(INET, &[2, 24, 0, 4, 10, 0, 0, 1]), t("10.0.0.1/24"));
        assert_eq!(b(CIDR, &[2, 32, 1, 4, 10, 0, 0, 1]), t("10.0.0.1/32"));
        // ::ffff:1.2.3.4: Postgres spells it with a dotted quad, not guessed here
        let mapped = [
            3, 128, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert!(matches!(b(INET, &mapped), Datum::Object(_)));
        assert_eq!(b(CHAR, &[0xe9]), t("\\351"));
        assert_eq!(iso_interval(0, 0, 0), "PT0S");
        assert_eq!(iso_interval(0, -1, 0), "P-1D");
        assert_eq!(iso_interval(14_706_500_000, 3, 14), "P1Y2M3DT4H5M6.5S");
        assert_eq!(iso_interval(-1_500_000, 0, -1), "P-1MT-1.5S");
        assert_eq!(iso_interval(-500_000, 0, 0), "PT-0.5S");
        // int4[] {{1,NULL}} with lower bounds 1
        let mut arr = Vec::new();
        for v in [2i32, 1, 23, 1, 1, 2, 1, 4, 1, -1] {
            arr.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            b(1007, &arr),
            Datum::Array(vec![Datum::Array(vec![Datum::Int(1), Datum::Null])])
        );
        assert_eq!(
            b(1007, &arr[..arr.len() - 1]),
            obj(vec![(
                "binary_base64",
                Datum::Text(base64_encode(&arr[..arr.len() - 1]))
            )])
        );
    }
}
